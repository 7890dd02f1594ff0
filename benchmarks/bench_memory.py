"""Resident memory per active patient-month in the worker (and in-process, as a cross-check).

Worker: a ``ccm-tally worker`` process is started on an empty table; a small warm-up month of
other patients is processed (so that lazily loaded code and caches are in the baseline); its
RSS (VmRSS of /proc/PID/status) is read; then K patient-months of simulated logs (realistic
log counts: the simulator's month) are processed; after a settle time the RSS is read again.
bytes per patient-month = (RSS loaded - RSS after warm-up) / K.

Cross-check: the same events are fed to ``ccm_core.ingest.LocalTally`` in this process under
tracemalloc: traced bytes held by the ledgers / K. Also the changelog value size (the core's
ledger codec) per patient-month.

    python benchmarks/bench_memory.py                      # K = 50,000
    python benchmarks/bench_memory.py --patient-months 20000
    python benchmarks/bench_memory.py --smoke              # tiny, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

from ccm_core import codec
from ccm_core.ingest import LocalTally, Source
from ccm_simulator.generator import SimEvent, SimulationSpec, generate

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    Deployment,
    OffsetWatch,
    Worker,
    broker,
    header,
    patient_months,
    produce_all,
    replay,
    say,
    verdict,
    workdir,
)

ACTIVE = 0.9  # the simulator's default share of patients with time in a month


def simulated(patient_months_wanted: int, seed: int, prefix: str) -> list[SimEvent]:
    patients = max(10, math.ceil(patient_months_wanted / ACTIVE))
    spec = SimulationSpec(
        patients=patients,
        staff=max(10, patients // 50),
        start_month="2026-03",
        months=1,
        seed=seed,
        id_prefix=prefix,
    )
    return list(generate(spec))


def settled_rss(worker: Worker, seconds: float) -> int:
    """Median of RSS samples over the last part of a settle period."""
    time.sleep(seconds / 2)
    samples = []
    for _ in range(10):
        samples.append(worker.rss_bytes())
        time.sleep(seconds / 20)
    return int(statistics.median(samples))


async def load(dep: Deployment, worker: Worker, events: list[SimEvent], total: int) -> None:
    await produce_all(dep.bootstrap, dep.topics.timelog, events)
    async with OffsetWatch(dep.bootstrap) as watch:
        await watch.wait_committed(
            dep.app_id,
            dep.input_partitions(),
            total,
            interval=0.25,
            alive=lambda: worker.proc is not None and worker.proc.poll() is None,
        )


def in_process(events: list[SimEvent]) -> tuple[int, int, int]:
    """(traced bytes held by the ledgers, patient-months, changelog bytes) of the same events."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tally = LocalTally()
    for offset, e in enumerate(events):
        tally.feed(e.value, Source("bench", 0, offset))
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    months = patient_months(tally)
    changelog = sum(len(codec.dumps(ledger)) for ledger in tally.ledgers.values())
    return held, months, changelog


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> None:
    warm = simulated(args.warmup, args.seed + 100, "warm")
    events = simulated(args.patient_months, args.seed, "mem")
    warm_tally, _ = replay(warm)
    main_tally, _ = replay(events)
    k_warm, k = patient_months(warm_tally), patient_months(main_tally)
    logs_per_month = sum(
        len(m.logs) for ledger in main_tally.ledgers.values() for m in ledger.months.values()
    ) / max(1, k)
    del warm_tally, main_tally
    print(
        f"load: {len(events):,} simulated events -> {k:,} patient-months "
        f"({logs_per_month:.1f} logs each on average); warm-up {k_warm:,} patient-months"
    )

    dep = Deployment(bootstrap, partitions=args.partitions)
    dep.create_topics()
    worker = Worker(dep, tmp).start()
    try:
        rss_empty = settled_rss(worker, args.settle)
        say("warm-up")
        await load(dep, worker, warm, len(warm))
        rss_warm = settled_rss(worker, args.settle)
        say(f"loading {k:,} patient-months")
        await load(dep, worker, events, len(warm) + len(events))
        rss_loaded = settled_rss(worker, max(args.settle, 6.0))  # state gauges update every 5 s
        in_table = worker.metric("ccm_patient_months", state="open")
        per_month = (rss_loaded - rss_warm) / k
        mib = 2**20
        print(
            f"worker RSS: empty table {rss_empty / mib:.1f} MiB, after warm-up "
            f"{rss_warm / mib:.1f} MiB, with {k:,} more patient-months {rss_loaded / mib:.1f} MiB "
            f"(table holds {in_table or 0:,.0f} open patient-months)"
        )
        print(
            f"worker: {per_month:,.0f} bytes per active patient-month "
            f"[target <= 2 KB (2,048 bytes): {verdict(per_month <= 2048)}]"
        )
        errors = worker.errors()
        if errors:
            print(f"worker log errors: {errors[:3]}")
    finally:
        worker.stop()

    say("tracemalloc cross-check")
    held, months, changelog = in_process(events)
    print(
        f"in-process (tracemalloc, LocalTally): {held / months:,.0f} bytes per patient-month "
        f"({months:,} patient-months, {held / 2**20:.1f} MiB traced)"
    )
    print(f"changelog value (ledger codec): {changelog / months:,.0f} bytes per patient-month")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patient-months", type=int, default=50_000, help="K (50,000)")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up patient-months (500)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--settle", type=float, default=4.0, help="seconds before reading RSS")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.patient_months, args.warmup, args.settle = 500, 50, 1.0
    header("bench_memory: resident bytes per active patient-month")
    with broker() as bootstrap, workdir("ccm-bench-memory-") as tmp:
        asyncio.run(run(args, bootstrap, tmp))


if __name__ == "__main__":
    main()
