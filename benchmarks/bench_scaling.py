"""Events/s with 1 and with 2 worker processes on an 8-partition input topic.

One backlog of N simulated time logs is produced once; each configuration is a separate
deployment (its own app id, i.e. consumer group and changelog, and its own output topics)
reading that same input topic from the beginning:
- 1 worker: timed from /readyz until the group has committed the whole backlog;
- 2 workers started together: timed from the moment both answer /readyz (the group has
  settled on one assignment) until the group has committed the whole backlog, counting only
  the events committed in that window; the time from spawn is printed too.
Also the steady-state rate (10%..90% committed) and CPU seconds of workers and broker, which
tell whether the machine's cores, not the workers, are the limit.

    python benchmarks/bench_scaling.py                  # 100,000 events, 8 partitions
    python benchmarks/bench_scaling.py --smoke          # tiny, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any

from ccm_simulator.generator import SimEvent, SimulationSpec, generate

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    Deployment,
    OffsetWatch,
    Worker,
    broker,
    broker_cpu,
    header,
    produce_all,
    say,
    steady_rate,
    workdir,
)


def simulated(count: int, seed: int) -> list[SimEvent]:
    patients = max(10, math.ceil(count / 4.1))
    spec = SimulationSpec(
        patients=patients, staff=max(10, patients // 50), start_month="2026-03", seed=seed
    )
    return list(generate(spec))[:count]


async def measure(
    bootstrap: str, timelog: str, partitions: int, n_workers: int, total: int, tmp: Path
) -> dict[str, Any]:
    dep = Deployment(bootstrap, partitions=partitions, timelog=timelog)
    dep.create_topics()
    workers = [Worker(dep, tmp, f"w{n_workers}-{i}") for i in range(n_workers)]
    broker0 = broker_cpu()
    for w in workers:
        w.spawn()
    spawned = min(w.spawned_at for w in workers)
    samples: list[tuple[float, int]] = []
    try:
        async with OffsetWatch(bootstrap) as watch:
            done_task = asyncio.create_task(
                watch.wait_committed(
                    dep.app_id,
                    dep.input_partitions(),
                    total,
                    samples=samples,
                    alive=lambda: all(
                        w.proc is not None and w.proc.poll() is None for w in workers
                    ),
                )
            )
            # all ready at the same moment: the group has settled (readyz is 503 while rebalancing)
            while True:
                ready = await asyncio.gather(*(asyncio.to_thread(w.ready) for w in workers))
                if all(ready) or done_task.done():
                    break
                await asyncio.sleep(0.05)
            all_ready = time.monotonic()
            committed_at_ready = await watch.committed(dep.app_id, dep.input_partitions())
            cpu_at_ready = sum(w.cpu() for w in workers)
            done_at = await done_task
            cpu = sum(w.cpu() for w in workers) - cpu_at_ready
            assigned = [w.metric("ccm_assigned_partitions") for w in workers]
    finally:
        for w in workers:
            w.stop()
    broker_used = broker_cpu()
    window = done_at - all_ready
    return {
        "rate": (total - committed_at_ready) / window if window > 0 else float("nan"),
        "window": window,
        "committed_at_ready": committed_at_ready,
        "from_spawn": total / (done_at - spawned),
        "startup": all_ready - spawned,
        "steady": steady_rate(samples, total),
        "cpu": cpu,
        "broker_cpu": (broker_used - broker0)
        if broker_used is not None and broker0 is not None
        else float("nan"),
        "assigned": [int(a) if a is not None else "?" for a in assigned],
    }


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> None:
    events = simulated(args.events, args.seed)
    backlog = Deployment(bootstrap, partitions=args.partitions)
    backlog.create_topics()
    stats = await produce_all(bootstrap, backlog.topics.timelog, events)
    print(
        f"backlog: {len(events):,} simulated events on {args.partitions} partitions "
        f"(produced at {stats.rate:,.0f} events/s)"
    )
    results = {}
    for n in (1, 2):
        say(f"{n} worker(s)")
        r = await measure(bootstrap, backlog.topics.timelog, args.partitions, n, len(events), tmp)
        results[n] = r
        print(
            f"{n} worker(s): {r['rate']:>8,.0f} events/s from all ready "
            f"({r['window']:.1f} s; {r['committed_at_ready']:,.0f} committed before ready), "
            f"steady {r['steady']:,.0f}/s, {r['from_spawn']:,.0f}/s incl. start-up "
            f"{r['startup']:.1f} s; worker CPU {r['cpu']:.1f} s, broker CPU "
            f"{r['broker_cpu']:.1f} s; input partitions per worker {r['assigned']} (gauge, 5 s)"
        )
    print(
        f"scaling 2 workers / 1 worker: {results[2]['rate'] / results[1]['rate']:.2f}x "
        f"(steady {results[2]['steady'] / results[1]['steady']:.2f}x) on {args.partitions} "
        "partitions; the machine has the cores printed above"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="backlog size (100,000)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.events = 2000
    header("bench_scaling: 1 vs 2 workers on one input topic")
    with broker() as bootstrap, workdir("ccm-bench-scaling-") as tmp:
        asyncio.run(run(args, bootstrap, tmp))


if __name__ == "__main__":
    main()
