"""``ccm-tally sink postgres --dsn …``: billing records into PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from ccm_cli.progress import Progress, add_progress_flag, wanted
from ccm_core.observability import configure_logging
from ccm_core.settings import Settings
from ccm_worker.kafka_security import (
    KafkaSecurityError,
    add_security_args,
    aiokafka_kwargs,
    security_overrides,
)

from .postgres import PostgresSink, SinkOptions

DSN_ENV = "CCM_SINK_DSN"


def add_sink_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sink = sub.add_parser("sink", help="reference consumers of the outputs")
    sink_sub = sink.add_subparsers(dest="sink_command", required=True)
    pg = sink_sub.add_parser(
        "postgres", help="upsert billing records into PostgreSQL (offsets kept in the database)"
    )
    pg.add_argument(
        "--dsn",
        default=os.environ.get(DSN_ENV),
        help="libpq connection string or URL (default: $CCM_SINK_DSN)",
    )
    pg.add_argument("--bootstrap-servers", help="Kafka brokers (default: the service settings)")
    pg.add_argument("--topic", help="billing-record topic (default: CCM_TOPIC_BILLING_RECORD)")
    pg.add_argument(
        "--name",
        default="ccm-billing-sink",
        help="sink name: consumer group and the key of its offsets in the database",
    )
    pg.add_argument("--batch", type=int, default=500, help="most messages per transaction")
    pg.add_argument(
        "--stop-at-end",
        action="store_true",
        help="exit once caught up with the end offsets seen at start (a batch run)",
    )
    add_progress_flag(pg)
    add_security_args(pg)
    pg.set_defaults(func=cmd_sink_postgres)


def cmd_sink_postgres(args: argparse.Namespace) -> int:
    if not args.dsn:
        print("sink postgres: give --dsn or set CCM_SINK_DSN", file=sys.stderr)
        return 2
    try:
        settings = Settings(**security_overrides(args))
        security = aiokafka_kwargs(settings)
    except (ValueError, KafkaSecurityError) as err:
        print(f"sink postgres: Kafka security settings: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    options = SinkOptions(
        dsn=args.dsn,
        bootstrap_servers=args.bootstrap_servers or settings.kafka_bootstrap_servers,
        topic=args.topic or settings.topics.billing_record,
        name=args.name,
        batch_max=args.batch,
        stop_at_end=args.stop_at_end,
        kafka_security=security,
    )
    progress = Progress("sink postgres", "messages", enabled=wanted(args.progress))

    def report(consumed: int, behind: int, caught_up: bool) -> None:
        progress.count = consumed
        if caught_up:
            progress.done("caught up")
        else:
            progress.add(0)
            progress.unit = f"messages ({behind:,} behind)"

    try:
        totals = asyncio.run(PostgresSink(options, report).run())
    except KeyboardInterrupt:
        return 130
    print(
        f"sink postgres: {totals.consumed} messages: applied {totals.applied}, duplicate "
        f"{totals.duplicate}, stale {totals.stale}, invalid {totals.invalid}",
        file=sys.stderr,
    )
    return 0
