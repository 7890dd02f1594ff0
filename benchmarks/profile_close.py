"""CPU profile of the worker's month close, without a broker.

The same fill as ``bench_close.py`` (``synthetic_month``: 100,000 patient-months, 1-3 logs
each), applied through ``TallyWorker.process_batch`` in batches of 2,000 on each patient's home
partition; then one batch of the close commands ``bench_close.py`` sends (``mode=month`` for
each practice, to every partition: 24 commands), through ``process_batch`` again. The sends are
left out (the broker's part): ``_send_all`` is replaced by a function that keeps the messages,
so that everything the worker computes for the batch (the core's close, the status coalescing,
each output's CloudEvents JSON, headers, metrics and log line, the changelog values) is
measured, in CPU time.

    python benchmarks/profile_close.py                        # 100,000, cProfile of the close
    python benchmarks/profile_close.py --patients 20000 --no-profile
    python benchmarks/profile_close.py --digest               # sha256 of the close's messages
    python benchmarks/profile_close.py --stream 20000         # the stream path instead

``--stream N`` profiles the steady stream instead of the close: ``bench_stream.py``'s N
simulated events (logs, enrollments, voids, duplicates, malformed payloads) through
``process_batch`` in batches of 800 on their home partitions, sends left out. It is the worker's
own CPU per event; ``bench_stream.py``'s "CPU per event" of the worker process also counts
faust's and aiokafka's (fetch, messages, streams, acks, producers, transactions).

``--digest`` prints a hash of every message of the close batch (topic, partition, key, value,
headers, in order): it must not change when the close path is optimised.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import io
import pstats
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from ccm_core.observability import configure_logging
from ccm_core.settings import Settings
from ccm_worker.app import TallyWorker, home_partition

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_close import MONTH, month_commands
from benchmarks.common import synthetic_month

CLOSED_AT = datetime(2026, 4, 10, 12, 0, tzinfo=UTC)  # fixed: the digest is reproducible


def event(topic: str, partition: int, offset: int, key: bytes | None, value: bytes) -> Any:
    message = SimpleNamespace(
        topic=topic,
        partition=partition,
        offset=offset,
        tp=TP(topic, partition),
        key=key,
        value=value,
        timestamp=1_775_000_000.0,
        headers=None,
    )
    return SimpleNamespace(message=message)


def close_events(worker: TallyWorker) -> list[Any]:
    """What ``bench_close.py`` sends: one ``mode=month`` command per practice, on every
    partition of the control topic."""
    out = []
    n = worker.settings.partitions
    for i, command in enumerate(month_commands(CLOSED_AT, "profile")):
        raw = command.model_dump_json().encode()
        out += [event(worker.control, p, i, None, raw) for p in range(n)]
    return out


def worker_without_broker(tmp: Path) -> tuple[TallyWorker, list[list[Any]]]:
    """A worker whose sends (the broker's part) are kept in the returned list instead, one
    entry per batch."""
    worker = TallyWorker(Settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp))
    sent: list[list[Any]] = []

    async def keep(out: dict[int, list[Any]], forwards: list[Any]) -> None:
        sent.append([m for p in sorted(out) for m in out[p]] + forwards)

    worker._send_all = keep  # type: ignore[method-assign]
    return worker, sent


def on_home_partitions(worker: TallyWorker, payloads: Iterable[Any]) -> list[Any]:
    """Time-log topic events of ``payloads`` (``.key``, ``.value``), each on its key's home
    partition with consecutive offsets there."""
    n = worker.settings.partitions
    offsets = [0] * n
    events = []
    for payload in payloads:
        key = payload.key.encode()
        p = home_partition(key, n)
        events.append(event(worker.settings.topics.timelog, p, offsets[p], key, payload.value))
        offsets[p] += 1
    return events


def in_batches(worker: TallyWorker, events: list[Any], size: int) -> Any:
    async def run() -> None:
        for i in range(0, len(events), size):
            await worker.process_batch(events[i : i + size])

    return run()


def cpu_of(work: Any, profile: bool) -> tuple[float, cProfile.Profile | None]:
    """CPU seconds of running the coroutine ``work`` (under cProfile if ``profile``)."""
    profiler = cProfile.Profile() if profile else None
    cpu0 = time.process_time()
    if profiler is not None:
        profiler.enable()
    asyncio.run(work)
    if profiler is not None:
        profiler.disable()
    return time.process_time() - cpu0, profiler


def print_profile(profiler: cProfile.Profile, sorts: Sequence[str], top: int) -> None:
    for sort in sorts:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats(sort).print_stats(top)
        print(buf.getvalue(), file=sys.__stdout__)


def build(patients: int, tmp: Path) -> tuple[TallyWorker, list[list[Any]]]:
    worker, sent = worker_without_broker(tmp)
    events = on_home_partitions(worker, synthetic_month(patients, MONTH))
    asyncio.run(in_batches(worker, events, 2000))
    sent.clear()
    return worker, sent


def profile_stream(count: int, top: int, profile: bool) -> None:
    from benchmarks.bench_stream import simulated

    with tempfile.TemporaryDirectory(prefix="ccm-profile-stream-") as tmp:
        worker, _sent = worker_without_broker(Path(tmp))
        events = on_home_partitions(worker, simulated(count, 1, "sim"))
        gc.collect()
        gc.freeze()  # as the worker's monitor does
        cpu, profiler = cpu_of(in_batches(worker, events, 800), profile)
    label = " (under cProfile)" if profiler is not None else ""
    print(
        f"stream: {len(events):,} events, {cpu:.2f} s CPU, {1e6 * cpu / len(events):.0f} us "
        f"per event{label}",
        file=sys.__stdout__,
    )
    if profiler is not None:
        print_profile(profiler, ("tottime",), top)


def digest(messages: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for topic, partition, key, value, headers in messages:
        for part in (topic.encode(), str(partition).encode(), key or b"", value or b""):
            h.update(len(part).to_bytes(8, "big") + part)
        h.update(repr(headers).encode())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--no-profile", action="store_true", help="CPU time only")
    parser.add_argument("--digest", action="store_true", help="hash of the close's messages")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--log", type=Path, default=Path("/dev/null"), help="worker's log")
    parser.add_argument("--stream", type=int, metavar="N", help="profile N stream events")
    args = parser.parse_args()

    log_file = args.log.open("w")
    sys.stderr, real_stderr = log_file, sys.stderr
    configure_logging("INFO", json=True)  # as the worker runs: one JSON line per log call
    if args.stream:
        sys.stdout = log_file  # structlog's lines
        profile_stream(args.stream, args.top, not args.no_profile)
        return
    with tempfile.TemporaryDirectory(prefix="ccm-profile-close-") as tmp:
        t0 = time.process_time()
        worker, sent = build(args.patients, Path(tmp))
        print(f"fill: {args.patients:,} patients, {time.process_time() - t0:.1f} s CPU")
        batch = close_events(worker)
        gc.collect()
        gc_seconds = [0.0, 0.0]  # time in the cyclic garbage collector, collections
        gc_by_generation = [[0, 0.0], [0, 0.0], [0, 0.0]]  # collections, seconds

        def gc_clock(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_seconds[1] += 1
                gc_started[0] = time.process_time()
            else:
                spent = time.process_time() - gc_started[0]
                gc_seconds[0] += spent
                gc_by_generation[info["generation"]][0] += 1
                gc_by_generation[info["generation"]][1] += spent

        gc_started = [0.0]
        gc.callbacks.append(gc_clock)
        cpu, profiler = cpu_of(worker.process_batch(batch), not args.no_profile)
        gc.callbacks.remove(gc_clock)
    sys.stderr = real_stderr
    log_file.close()
    messages = sent[0]
    kinds: dict[str, list[int]] = {}  # topic -> [messages, bytes of keys and values]
    for topic, _, key, value, _ in messages:
        seen = kinds.setdefault(topic, [0, 0])
        seen[0] += 1
        seen[1] += len(key or b"") + len(value or b"")
    print(
        f"close batch: {len(batch)} commands, {len(messages):,} messages, {cpu:.2f} s CPU "
        f"(of which {gc_seconds[0]:.2f} s in {gc_seconds[1]:.0f} garbage collections)"
    )
    print(
        "  collections by generation: "
        + ", ".join(f"gen{g} {n:,} ({t:.2f} s)" for g, (n, t) in enumerate(gc_by_generation))
    )
    for topic, (count, size) in sorted(kinds.items()):
        print(f"  {topic}: {count:,} messages, {size / 1e6:,.1f} MB")
    if args.digest:
        print(f"digest: {digest(messages)}")
    if profiler is not None:
        print_profile(profiler, ("cumulative", "tottime"), args.top)


if __name__ == "__main__":
    main()
