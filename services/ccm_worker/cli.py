"""Subcommands of the streaming service: worker, topics, close (and simulate, demo)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ccm_cli.main import (
    USAGE_EXIT_CODE,
    CliError,
    aware_datetime,
    config_from_args,
    service_month,
    validation_line,
    web_port,
)
from ccm_core.contracts import MonthCloseCommand
from ccm_core.settings import Settings

from .connect import BROKER_UNAVAILABLE_EXIT_CODE, BrokerUnreachableError, ensure_broker
from .kafka_security import (
    SECURITY_FLAGS,
    KafkaSecurityError,
    add_security_args,
    aiokafka_kwargs,
    preflight,
)

_FLAG_SETTINGS = (
    ("bootstrap_servers", "kafka_bootstrap_servers"),
    ("partitions", "partitions"),
    ("web_port", "web_port"),
    ("profiles", "profiles_file"),
    ("practices", "practices_file"),
    ("close_tick_seconds", "close_tick_seconds"),
    ("log_level", "log_level"),
    *SECURITY_FLAGS,
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment (CCM_*) first, then explicit flags on top; validated as a whole, and the
    security files read once (an inconsistent setting or a missing file is an error here, not
    a failed connection later). A problem exits at once: one line, exit 1."""
    overrides: dict[str, Any] = {}
    for flag, name in _FLAG_SETTINGS:
        value = getattr(args, flag, None)
        if value is not None:
            overrides[name] = value
    try:
        settings = Settings(**overrides)
        preflight(settings)  # a missing CA or secret file: stop now, naming the file
        return settings
    except KafkaSecurityError as err:
        raise SystemExit(f"ccm-tally: {err}") from None
    except ValidationError as err:
        problems = "; ".join(
            (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "")
            + str(e["msg"]).removeprefix("Value error, ")
            for e in err.errors(include_input=False)
        )
        raise SystemExit(f"ccm-tally: invalid settings: {problems}") from None


def require_broker(settings: Settings) -> None:
    """Wait up to ``broker_wait_seconds`` for the broker, else one line and exit 69."""
    try:
        ensure_broker(
            settings.kafka_bootstrap_servers,
            settings.broker_wait_seconds,
            **aiokafka_kwargs(settings),
        )
    except BrokerUnreachableError as exc:
        raise CliError(str(exc), BROKER_UNAVAILABLE_EXIT_CODE) from None


def _kafka_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        help="Kafka bootstrap servers (default: env KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument("--partitions", type=int, help="partitions per topic (default 8)")
    add_security_args(parser)


def cmd_worker(args: argparse.Namespace) -> int:
    from .runner import run_worker

    settings = settings_from_args(args)
    config_from_args(settings.profiles_file, settings.practices_file)  # fail fast, one line
    return run_worker(settings)  # waits for the broker itself (bounded, each retry logged)


def cmd_topics(args: argparse.Namespace) -> int:
    from .topics import ensure_topics, topic_plan

    settings = settings_from_args(args)
    require_broker(settings)
    created = ensure_topics(settings)
    plan, compacted = topic_plan(settings)
    for name, partitions in plan.items():
        state = "created" if name in created else "exists"
        policy = "compact" if name in compacted else "delete"
        print(f"{name}\tpartitions={partitions}\tcleanup.policy={policy}\t{state}")
    return 0


async def send_close(settings: Settings, command: MonthCloseCommand) -> int:
    """Fan a close command out to every partition of the control topic."""
    from aiokafka import AIOKafkaProducer

    from .kafka_security import aiokafka_kwargs

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        **aiokafka_kwargs(settings),
    )
    await producer.start()
    try:
        topic = settings.topics.month_close
        found = await producer.partitions_for(topic)
        if not found:
            raise CliError(f"topic {topic} does not exist (create it: ccm-tally topics)")
        partitions = sorted(found)
        payload = command.model_dump_json().encode()
        futures = [await producer.send(topic, payload, partition=p) for p in partitions]
        await asyncio.gather(*futures)
        return len(partitions)
    finally:
        await producer.stop()


def cmd_close(args: argparse.Namespace) -> int:
    if args.month and not args.practice:
        raise CliError("--month needs --practice (the practice whose month to close)", 2)
    if args.due and args.practice:
        raise CliError("--due closes every practice's due months: drop --practice", 2)
    settings = settings_from_args(args)
    try:
        command = MonthCloseCommand(
            command_id=args.command_id or f"close-{uuid.uuid4()}",
            mode="due" if args.due else "month",
            practice_id=args.practice,
            service_month=args.month,
            as_of=args.as_of or datetime.now(UTC),
            requested_by=args.requested_by,
        )
    except ValidationError as err:
        raise CliError(f"invalid close command: {validation_line(err)}", USAGE_EXIT_CODE) from None
    require_broker(settings)
    sent = asyncio.run(send_close(settings, command))
    print(f"close command {command.command_id} sent to {sent} partitions", file=sys.stderr)
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from ccm_localkafka.__main__ import run

    return run(args)


def add_commands(sub: Any, config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the service's subcommands on the ``ccm-tally`` parser."""
    worker = sub.add_parser("worker", help="run the tally worker against Kafka")
    _kafka_args(worker)
    config_args(worker)
    worker.add_argument("--web-port", type=web_port, help="metrics/health/look-up port (6066)")
    worker.add_argument("--close-tick-seconds", type=float, help="month-close timer period")
    worker.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    worker.set_defaults(func=cmd_worker)

    topics = sub.add_parser("topics", help="create the service's topics (idempotent)")
    _kafka_args(topics)
    topics.set_defaults(func=cmd_topics)

    close = sub.add_parser("close", help="close a practice's month now (or all due months)")
    _kafka_args(close)
    target = close.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--month", type=service_month, help="service month YYYY-MM (with --practice)"
    )
    target.add_argument("--due", action="store_true", help="close every month past its grace")
    close.add_argument("--practice", help="practice id")
    close.add_argument("--as-of", type=aware_datetime, help="close time (default now)")
    close.add_argument("--command-id", help="idempotency id of the command")
    close.add_argument("--requested-by", help="who asked (kept on the command)")
    close.set_defaults(func=cmd_close)

    broker = sub.add_parser("broker", help="run a local single-node Kafka (KRaft) on 127.0.0.1")
    from ccm_localkafka.__main__ import add_arguments as broker_arguments

    broker_arguments(broker)
    broker.set_defaults(func=cmd_broker)

    try:
        from ccm_simulator.__main__ import add_simulator_args, run_simulator
    except ImportError:
        pass
    else:
        simulate = sub.add_parser("simulate", help="produce a realistic month of EHR time logs")
        add_simulator_args(simulate)
        simulate.set_defaults(func=run_simulator)

    from .demo import add_demo_args, run_demo

    demo = sub.add_parser("demo", help="broker + worker + simulator, one month, a summary")
    add_demo_args(demo)
    demo.set_defaults(func=run_demo)
