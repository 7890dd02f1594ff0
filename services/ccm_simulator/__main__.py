"""``ccm-tally simulate`` / ``python -m ccm_simulator``: simulated EHR time logs to Kafka or a file.

The CLI subcommand calls :func:`add_simulator_args` on its sub-parser and :func:`run_simulator`
with the parsed arguments. With ``--out FILE.jsonl`` the payloads are written one per line (the
input format of ``ccm-tally replay``) instead of being produced to Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import IO

from pydantic import ValidationError

from ccm_cli.progress import Progress, wanted

from .generator import EVENT_KINDS, SimEvent, SimulationSpec, generate
from .producer import ProduceStats, produce

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC = "ccm.timelog.v1"
DEFAULT_ENROLLMENT_TOPIC = "ccm.enrollment.v1"


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share is between 0 and 1, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError("the rate must be positive (omit it for no limit)")
    return value


def _payer_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        try:
            mix[name.strip()] = float(weight) if sep else 1.0
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad weight in {part!r}") from exc
    return mix


def _practices(text: str) -> tuple[str, ...]:
    """``3`` -> three generated ids; ``a,b`` -> those ids."""
    if text.isdigit():
        count = int(text)
        if count < 1:
            raise argparse.ArgumentTypeError("at least one practice")
        return tuple(f"practice-{i + 1:03d}" for i in range(count))
    return tuple(p.strip() for p in text.split(",") if p.strip())


def add_simulator_args(parser: argparse.ArgumentParser) -> None:
    """Register the simulator's options on ``parser`` (the ``simulate`` sub-parser)."""
    defaults = SimulationSpec()
    world = parser.add_argument_group("simulated world")
    world.add_argument("--patients", type=_positive_int, default=defaults.patients)
    world.add_argument("--staff", type=_positive_int, default=defaults.staff)
    world.add_argument(
        "--practices",
        type=_practices,
        default=defaults.practices,
        help="a number of practices, or comma-separated practice ids (default: 3)",
    )
    world.add_argument(
        "--time-zone", default=defaults.time_zone, help="IANA time zone of the practices"
    )
    world.add_argument("--months", type=_positive_int, default=defaults.months)
    world.add_argument(
        "--start-month", default=defaults.start_month, help="first service month, YYYY-MM"
    )
    world.add_argument("--seed", type=int, default=defaults.seed)
    world.add_argument(
        "--payer-mix",
        type=_payer_mix,
        default=None,
        help="e.g. cms=0.55,bcbsm=0.2,priority_health=0.12,medicaid=0.13",
    )
    world.add_argument("--id-prefix", default=defaults.id_prefix, help="prefix of every id")
    noise = parser.add_argument_group("input noise (shares, 0..1)")
    noise.add_argument(
        "--duplicates",
        type=_share,
        default=defaults.duplicates,
        help="share of valid events redelivered byte for byte",
    )
    noise.add_argument(
        "--voids", type=_share, default=defaults.voids, help="share of logs voided later"
    )
    noise.add_argument(
        "--late",
        type=_share,
        default=defaults.late,
        help="share of logs recorded after their month ended",
    )
    noise.add_argument(
        "--malformed",
        type=_share,
        default=defaults.malformed,
        help="share of all events that are malformed",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        metavar="FILE.jsonl",
        help="write the payloads as JSON lines ('-' for stdout) instead of producing to Kafka",
    )
    out.add_argument(
        "--bootstrap-servers",
        default=None,
        help=f"Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or {DEFAULT_BOOTSTRAP})",
    )
    out.add_argument("--topic", default=DEFAULT_TOPIC)
    out.add_argument(
        "--enrollment-topic",
        default=DEFAULT_ENROLLMENT_TOPIC,
        help="topic of the enrollment events (consent, eligibility, other codes)",
    )
    out.add_argument(
        "--no-enrollment",
        action="store_true",
        help="no enrollment events (practices without an enrollment feed)",
    )
    out.add_argument("--rate", type=_rate, default=None, help="target events/s (default: no limit)")
    out.add_argument("--limit", type=_positive_int, default=None, help="stop after N events")
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress lines on stderr (default: when stderr is a terminal)",
    )
    from ccm_worker.kafka_security import add_security_args

    add_security_args(parser)


def spec_from_args(args: argparse.Namespace) -> SimulationSpec:
    fields: dict[str, object] = {
        "patients": args.patients,
        "staff": args.staff,
        "practices": args.practices,
        "time_zone": args.time_zone,
        "months": args.months,
        "start_month": args.start_month,
        "seed": args.seed,
        "id_prefix": args.id_prefix,
        "duplicates": args.duplicates,
        "voids": args.voids,
        "late": args.late,
        "malformed": args.malformed,
    }
    if args.payer_mix is not None:
        fields["payer_mix"] = args.payer_mix
    if getattr(args, "no_enrollment", False):
        fields.update(consent=0.0, attested=0.0, other_codes=0.0)
    return SimulationSpec.model_validate(fields)


class _Counted:
    """Counts events by kind as they pass."""

    def __init__(self, events: Iterable[SimEvent]) -> None:
        self.events = events
        self.kinds: Counter[str] = Counter()

    def __iter__(self) -> Iterator[SimEvent]:
        kinds = self.kinds
        for event in self.events:
            kinds[event.kind] += 1
            yield event

    def summary(self) -> str:
        total = sum(self.kinds.values())
        parts = ", ".join(f"{k} {self.kinds[k]}" for k in EVENT_KINDS)
        return f"{total} events ({parts})"


def _write(events: Iterable[SimEvent], sink: IO[bytes], progress: Progress) -> None:
    write = sink.write
    for event in events:
        write(event.value + b"\n")
        progress.add()


def run_simulator(args: argparse.Namespace) -> int:
    """Run the simulator as the parsed arguments say; the process exit code."""
    try:
        spec = spec_from_args(args)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        print(f"simulate: invalid option {where}: {first['msg']}", file=sys.stderr)
        return 2
    events: Iterable[SimEvent] = generate(spec)
    if args.limit is not None:
        events = islice(events, args.limit)
    counted = _Counted(events)
    world = (
        f"{spec.patients} patients, {spec.months} month(s) from {spec.start_month}, "
        f"seed {spec.seed}"
    )
    started = time.perf_counter()
    show_progress = wanted(args.progress)
    if args.out:
        progress = Progress("simulate", "events written", enabled=show_progress)
        try:
            if args.out == "-":
                _write(counted, sys.stdout.buffer, progress)
                sys.stdout.buffer.flush()
            else:
                with open(args.out, "wb") as sink:
                    _write(counted, sink, progress)
        except KeyboardInterrupt:
            print(f"simulate: interrupted after {counted.summary()}", file=sys.stderr)
            return 130
        except OSError as exc:
            print(f"simulate: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        progress.done()
        elapsed = time.perf_counter() - started
        total = sum(counted.kinds.values())
        print(
            f"simulate: {counted.summary()} for {world} -> {args.out} in {elapsed:.2f}s "
            f"({total / elapsed if elapsed > 0 else 0:,.0f} events/s)",
            file=sys.stderr,
        )
        return 0

    bootstrap = (
        args.bootstrap_servers
        or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        or DEFAULT_BOOTSTRAP
    )
    from ccm_core.settings import Settings
    from ccm_worker.kafka_security import (
        KafkaSecurityError,
        aiokafka_kwargs,
        security_overrides,
    )

    try:  # TLS/SASL: CCM_KAFKA_* environment, then the flags (README "Security")
        security = aiokafka_kwargs(
            Settings(kafka_bootstrap_servers=bootstrap, **security_overrides(args))
        )
    except (ValidationError, KafkaSecurityError) as err:
        print(f"simulate: Kafka security settings: {err}", file=sys.stderr)
        return 2

    def report(stats: ProduceStats) -> None:
        print(
            f"simulate: sent {stats.sent:,} ({stats.failed} failed) in {stats.elapsed:.1f}s, "
            f"{stats.rate:,.0f} events/s",
            file=sys.stderr,
        )

    from ccm_worker.connect import (
        BROKER_UNAVAILABLE_EXIT_CODE,
        BrokerUnreachableError,
        broker_wait_seconds,
        wait_for_broker,
    )

    try:
        wait = broker_wait_seconds()
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2

    enrollment: list[SimEvent] = []

    def time_logs() -> Iterator[SimEvent]:
        """Time logs to their topic as they come; enrollment events kept for their own."""
        for event in counted:
            if event.kind == "enrollment":
                enrollment.append(event)
            else:
                yield event

    async def run() -> ProduceStats:
        # bounded: one clear line when there is no broker
        await wait_for_broker(bootstrap, wait, **security)
        callback = report if show_progress else None
        stats = await produce(
            bootstrap, args.topic, time_logs(), args.rate, callback, security=security
        )
        if enrollment:
            more = await produce(
                bootstrap, args.enrollment_topic, enrollment, args.rate, security=security
            )
            stats.sent += more.sent
            stats.failed += more.failed
            stats.errors += more.errors
        return stats

    try:
        stats = asyncio.run(run())
    except BrokerUnreachableError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return BROKER_UNAVAILABLE_EXIT_CODE
    except KeyboardInterrupt:
        print(f"simulate: interrupted after {counted.summary()}", file=sys.stderr)
        return 130
    except Exception as exc:  # authorization, a missing topic, the broker gone meanwhile ...
        detail = (str(exc) or type(exc).__name__).splitlines()[0]
        print(f"simulate: Kafka at {bootstrap} failed: {detail}", file=sys.stderr)
        return 1
    errors = f"; errors: {' | '.join(stats.errors)}" if stats.errors else ""
    print(
        f"simulate: {counted.summary()} for {world} -> {args.topic} at {bootstrap}: "
        f"sent {stats.sent}, failed {stats.failed} in {stats.elapsed:.2f}s "
        f"({stats.rate:,.0f} events/s){errors}",
        file=sys.stderr,
    )
    return 0 if stats.failed == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ccm_simulator",
        description="Simulated EHR: realistic months of complex-CCM time logs, to Kafka or JSONL.",
    )
    add_simulator_args(parser)
    return run_simulator(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
