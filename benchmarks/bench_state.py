"""The ledger table at 1,000,000 patient-months: RocksDB store vs memory store, in one run.

The state is made by writing the changelog directly: template ledgers come from the
simulator's realistic months (``--months`` months of history per patient, the core's own
ledgers through ``LocalTally``), each cloned under new patient ids on their home partitions
(values in the core's ledger codec, unchanged). Then, on one broker and one changelog:

1. cold start of a RocksDB worker (empty data directory): seconds to /readyz, RSS;
2. throughput (a backlog of new time logs for random patients) and p99 latency (a paced
   stream; the worker's ``ccm_event_age_seconds`` histogram, Kafka timestamp to outputs
   published, interpolated in its buckets), RSS;
3. restart on the same data directory (graceful stop, new process): seconds to /readyz and
   changelog records read;
4. failover to a standby: a second worker with its own data directory joins (standby
   replicas 1) and catches up; the first stops; seconds until the second is ready with every
   partition, and changelog records it read for them;
5. the memory store on the same changelog: cold start, RSS, throughput and p99 likewise;
6. bytes per retained patient-month: changelog value and RocksDB on disk.

    python benchmarks/bench_state.py                  # 1,000,000 patient-months
    python benchmarks/bench_state.py --patient-months 200000
    python benchmarks/bench_state.py --smoke          # tiny, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from ccm_core import codec
from ccm_core.ingest import LocalTally, Source
from ccm_simulator.generator import SimulationSpec, generate
from ccm_worker.app import changelog_topic_name
from ccm_worker.store import home_partition

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    Deployment,
    OffsetWatch,
    Payload,
    Profiler,
    Worker,
    broker,
    header,
    produce_all,
    say,
    summarize_profile,
    time_log,
    verdict,
    workdir,
)

from ccm_simulator.producer import produce

MIB = 2**20


@dataclass
class Template:
    value: dict[str, Any]  # the codec's dict of a ledger
    months: int
    practice: str
    payer: str


def templates(count: int, months: int, seed: int) -> list[Template]:
    """Ledgers of ``count`` simulated patients with ``months`` months of realistic logs."""
    spec = SimulationSpec(
        patients=count,
        staff=max(10, count // 20),
        start_month="2026-01",
        months=months,
        seed=seed,
        malformed=0.0,
        duplicates=0.0,
        active=1.0,
    )
    tally = LocalTally()
    for offset, e in enumerate(generate(spec)):
        tally.feed(e.value, Source("bench", 0, offset))
    out = []
    for ledger in tally.ledgers.values():
        if not ledger.months:
            continue
        last = max(ledger.months.values(), key=lambda m: m.service_month)
        out.append(
            Template(codec.ledger_to_dict(ledger), len(ledger.months), last.practice_id, last.payer)
        )
    return out


@dataclass
class State:
    patients: list[tuple[str, Template]]
    patient_months: int
    value_bytes: int


def make_state(wanted: int, months: int, partitions: int, seed: int) -> State:
    tpls = templates(200, months, seed)
    per = sum(t.months for t in tpls) / len(tpls)
    count = max(1, round(wanted / per))
    rng = random.Random(seed)
    patients = [(f"bs-pt-{i:08d}", tpls[rng.randrange(len(tpls))]) for i in range(count)]
    total = sum(t.months for _, t in patients)
    value_bytes = 0
    for pid, t in patients[:2000]:
        value_bytes += len(clone(pid, t, partitions))
    sample = min(2000, len(patients))
    sample_months = sum(t.months for _, t in patients[:sample])
    return State(patients, total, int(value_bytes * total / max(1, sample_months)))


def clone(pid: str, t: Template, partitions: int) -> bytes:
    value = dict(t.value)
    value["p"] = pid
    value["pt"] = home_partition(pid.encode(), partitions)
    return orjson.dumps(value)


async def write_changelog(dep: Deployment, state: State) -> tuple[float, int]:
    """Every ledger to its home partition of the changelog (plain producer, acks=all)."""
    topic = changelog_topic_name(dep.settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=dep.bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    started = time.monotonic()
    written = 0
    try:
        pending = []
        for pid, t in state.patients:
            value = clone(pid, t, dep.partitions)
            written += len(value)
            p = home_partition(pid.encode(), dep.partitions)
            pending.append(await producer.send(topic, value, key=pid.encode(), partition=p))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started, written


def new_logs(state: State, count: int, seed: int, prefix: str) -> list[Payload]:
    """Time logs for random patients in their latest month's practice (December 2026)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        pid, t = state.patients[rng.randrange(len(state.patients))]
        start = datetime(2026, 12, 1 + rng.randrange(28), rng.randrange(8, 17), tzinfo=UTC)
        recorded = datetime(2026, 12, 30, 12, tzinfo=UTC)
        value = time_log(
            f"{prefix}-{i:08d}", pid, t.practice, t.payer, start, rng.randint(5, 30), recorded
        )
        out.append(Payload(pid, value))
    return out


def histogram(metrics: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of a Prometheus histogram (upper bound -> count)."""
    out = {}
    pattern = re.compile(rf'^{name}_bucket\{{le="([^"]+)"\}} (\S+)$')
    for line in metrics.splitlines():
        m = pattern.match(line)
        if m:
            out[float(m.group(1))] = float(m.group(2))
    return out


def hist_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Quantile of the observations between two scrapes, interpolated linearly in a bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cum in zip(bounds, counts, strict=True):
        if cum >= rank:
            if bound == float("inf"):
                return lower
            inside = cum - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cum
    return lower


def changelog_read(worker: Worker) -> int:
    """Changelog records applied by the worker's last completed recovery (its log)."""
    found = -1
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if '"changelog_recovered"' in line:
            try:
                found = int(json.loads(line)["records"])
            except (ValueError, KeyError):
                continue
    return found


def worker(dep: Deployment, tmp: Path, label: str, store: str, data: Path | None = None) -> Worker:
    w = Worker(dep, tmp, label)
    update: dict[str, Any] = {"store": store}
    if data is not None:
        update["data_dir"] = data
    w.settings = w.settings.model_copy(update=update)
    return w


async def throughput(dep: Deployment, w: Worker, events: list[Payload]) -> float:
    """Events/s of a backlog, from its first record produced to the last one committed."""
    async with OffsetWatch(dep.bootstrap) as watch:
        before = await watch.committed(dep.app_id, dep.input_partitions())
        started = time.monotonic()
        await produce_all(dep.bootstrap, dep.topics.timelog, events)
        done = await watch.wait_committed(
            dep.app_id,
            dep.input_partitions(),
            before + len(events),
            interval=0.1,
            alive=lambda: w.proc is not None and w.proc.poll() is None,
        )
    return len(events) / (done - started)


async def paced(dep: Deployment, w: Worker, events: list[Payload], rate: float) -> float:
    """p99 seconds (Kafka timestamp to outputs published) of a stream at ``rate``/s."""
    before = histogram(w.metrics(), "ccm_event_age_seconds")
    async with OffsetWatch(dep.bootstrap) as watch:
        start = await watch.committed(dep.app_id, dep.input_partitions())
        stats = await produce(dep.bootstrap, dep.topics.timelog, events, rate)
        if stats.failed:
            raise RuntimeError(f"{stats.failed} not delivered")
        await watch.wait_committed(dep.app_id, dep.input_partitions(), start + len(events))
    after = histogram(w.metrics(), "ccm_event_age_seconds")
    return hist_quantile(before, after, 0.99)


def ready_all(w: Worker, partitions: int, timeout: float = 600.0) -> float:
    """Block until ``w`` is ready and owns every partition; that monotonic time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = w.get("/readyz")
        if body is not None and len(body.get("partitions", [])) == partitions:
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"{w.log_path}: not ready with {partitions} partitions:\n{w.tail()}")


def idle(w: Worker, cpu_per_second: float = 0.05, timeout: float = 900.0) -> float:
    """Wait until the worker's CPU is nearly idle for 2 s (a standby has caught up)."""
    started = time.monotonic()
    last = w.cpu()
    while time.monotonic() - started < timeout:
        time.sleep(2.0)
        now = w.cpu()
        if now - last < 2.0 * cpu_per_second:
            return time.monotonic() - started
        last = now
    return float("nan")


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> None:
    say("templates")
    state = make_state(args.patient_months, args.months, args.partitions, args.seed)
    dep = Deployment(bootstrap, partitions=args.partitions)
    dep.create_topics()
    say(f"writing {len(state.patients):,} ledgers to the changelog")
    seconds, written = await write_changelog(dep, state)
    per_month = written / state.patient_months
    months_each = state.patient_months / len(state.patients)
    print(
        f"state: {len(state.patients):,} patients x {months_each:.1f} months = "
        f"{state.patient_months:,} patient-months; changelog {written / MIB:,.0f} MiB "
        f"written in {seconds:.1f} s"
    )
    print(
        f"changelog value: {per_month:,.0f} bytes per retained patient-month "
        f"[target <= 1 KB (1,024 bytes): {verdict(per_month <= 1024)}]"
    )
    parts = args.partitions
    results: dict[str, Any] = {}

    # ---- RocksDB: cold start
    say("rocksdb: cold start")
    data1 = tmp / "data-rocks-1"
    a = worker(dep, tmp, "rocks-cold", "rocksdb", data1).spawn()
    try:
        cold = a.wait_ready(1800.0) - a.spawned_at
        rss_cold = a.rss_bytes()
        print(
            f"rocksdb cold start (changelog only): ready in {cold:.1f} s, read "
            f"{changelog_read(a):,} changelog records, RSS {rss_cold / MIB:,.0f} MiB"
        )
        say("rocksdb: throughput")
        profiler = None
        if args.profile is not None:
            profiler = Profiler(a.pid, args.profile)
            if not profiler.start():
                profiler = None
        rate = await throughput(dep, a, new_logs(state, args.events, 1, "rt"))
        if profiler is not None:
            profiler.stop()
            for line in summarize_profile(profiler.out, seconds=profiler.seconds):
                print(line)
        p99 = await paced(dep, a, new_logs(state, args.paced, 2, "rp"), args.rate)
        rss_a = a.rss_bytes()
        results["rocksdb"] = (rate, p99)
        print(
            f"rocksdb: {rate:,.0f} events/s (backlog of {args.events:,}); p99 {1000 * p99:,.0f} ms"
            f" at {args.rate:,.0f} events/s; RSS {rss_a / MIB:,.0f} MiB "
            f"[target <= 1 GiB: {verdict(rss_a <= 2**30)}]"
        )
    finally:
        a.stop()
    disk = du(data1)
    print(
        f"rocksdb on disk: {disk / MIB:,.0f} MiB, {disk / state.patient_months:,.0f} bytes per "
        f"retained patient-month [target <= 1 KB: {verdict(disk / state.patient_months <= 1024)}]"
    )

    # ---- RocksDB: restart on the same data directory
    say("rocksdb: restart on the kept data directory")
    b = worker(dep, tmp, "rocks-restart", "rocksdb", data1).spawn()
    standby = None
    try:
        restart = b.wait_ready(600.0) - b.spawned_at
        print(
            f"rocksdb restart on the same data directory: ready in {restart:.2f} s, read "
            f"{changelog_read(b):,} changelog records, RSS {b.rss_bytes() / MIB:,.0f} MiB "
            f"[target <= 5 s: {verdict(restart <= 5)}]"
        )
        # ---- failover to a standby
        say("rocksdb: a second worker with standby replicas joins and catches up")
        standby = worker(dep, tmp, "rocks-standby", "rocksdb", tmp / "data-rocks-2").spawn()
        standby.wait_ready(1800.0)
        caught_up = idle(standby)
        print(
            f"standby: second worker ready and its standbys caught up after "
            f"{time.monotonic() - standby.spawned_at:.1f} s (idle after {caught_up:.1f} s)"
        )
        before_read = changelog_read(standby)
        stopped_at = time.monotonic()
        b.stop()
        took_over = ready_all(standby, parts) - stopped_at
        time.sleep(0.5)
        print(
            f"failover to the standby (first worker stopped): the second one ready with all "
            f"{parts} partitions in {took_over:.2f} s, read {changelog_read(standby):,} changelog "
            f"records (its first recovery read {before_read:,}) [target <= 5 s: "
            f"{verdict(took_over <= 5)}]"
        )
    finally:
        b.stop()
        if standby is not None:
            standby.stop()

    if args.rocksdb_only:
        return
    # ---- memory store, same changelog
    say("memory: cold start")
    m = worker(dep, tmp, "memory", "memory").spawn()
    try:
        cold_m = m.wait_ready(1800.0) - m.spawned_at
        rss_m = m.rss_bytes()
        print(f"memory cold start: ready in {cold_m:.1f} s, RSS {rss_m / MIB:,.0f} MiB")
        say("memory: throughput")
        rate_m = await throughput(dep, m, new_logs(state, args.events, 3, "mt"))
        p99_m = await paced(dep, m, new_logs(state, args.paced, 4, "mp"), args.rate)
        results["memory"] = (rate_m, p99_m)
        print(
            f"memory: {rate_m:,.0f} events/s (backlog of {args.events:,}); p99 "
            f"{1000 * p99_m:,.0f} ms at {args.rate:,.0f} events/s; RSS "
            f"{m.rss_bytes() / MIB:,.0f} MiB"
        )
    finally:
        m.stop()
    r, mm = results["rocksdb"], results["memory"]
    print(
        f"rocksdb vs memory: cold start {cold:.1f} s vs {cold_m:.1f} s; throughput "
        f"{r[0]:,.0f} vs {mm[0]:,.0f} events/s ({r[0] / mm[0]:.2f}); p99 {1000 * r[1]:,.0f} vs "
        f"{1000 * mm[1]:,.0f} ms; RSS {rss_a / MIB:,.0f} vs {rss_m / MIB:,.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patient-months", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=12, help="months of history per patient")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--events", type=int, default=20_000, help="backlog for throughput")
    parser.add_argument("--paced", type=int, default=3_000, help="events of the latency run")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s of the latency run")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="py-spy the RocksDB throughput phase")
    parser.add_argument("--rocksdb-only", action="store_true", help="skip the memory store")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.patient_months, args.events, args.paced, args.rate = 2_000, 500, 200, 200.0
    header("bench_state: the ledger table on RocksDB vs in memory")
    with broker() as bootstrap, workdir("ccm-bench-state-") as tmp:
        asyncio.run(run(args, bootstrap, tmp))


if __name__ == "__main__":
    main()
