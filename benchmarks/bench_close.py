"""Time for one worker to close and publish 100,000 patient-months through a real Kafka broker.

Fill: 100,000 patients with 1-3 time logs each in one service month (small synthetic payloads,
so that producing them is quick; every patient-month gets a record, billable or not) are
produced and processed by one ``ccm-tally worker`` until the group has committed them all.
Close: a close command (``mode=month`` for each practice, or one ``mode=due`` after the close
deadline) is sent to every partition of the control topic as ``ccm-tally close`` does; the time
runs from sending it until every billing record is on the billing-record topic (its end offsets
reach the number of patient-months). The records are then read back and checked.

    python benchmarks/bench_close.py                    # 100,000 patient-months
    python benchmarks/bench_close.py --patients 20000   # smaller
    python benchmarks/bench_close.py --smoke            # tiny, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from ccm_core.contracts import MonthCloseCommand
from ccm_core.months import close_deadline
from ccm_worker.cli import send_close

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    PRACTICES,
    Deployment,
    OffsetWatch,
    Profiler,
    Worker,
    broker,
    header,
    produce_all,
    read_values,
    say,
    summarize_profile,
    synthetic_month,
    verdict,
    workdir,
)

MONTH = "2026-03"


async def fill(dep: Deployment, tmp: Path, patients: int, logs: tuple[int, int]) -> Worker:
    """Produce the month, start a worker, wait until it has committed every log."""
    payloads = synthetic_month(patients, MONTH, logs)
    stats = await produce_all(dep.bootstrap, dep.topics.timelog, payloads)
    print(
        f"fill: {len(payloads):,} time logs for {patients:,} patient-months "
        f"(produced at {stats.rate:,.0f} events/s)"
    )
    worker = Worker(dep, tmp).spawn()
    ready_at = await asyncio.to_thread(worker.wait_ready)
    async with OffsetWatch(dep.bootstrap) as watch:
        done_at = await watch.wait_committed(
            dep.app_id,
            dep.input_partitions(),
            len(payloads),
            interval=0.25,
            alive=lambda: worker.proc is not None and worker.proc.poll() is None,
        )
    seconds = done_at - ready_at
    print(f"fill: processed in {seconds:.1f} s ({len(payloads) / seconds:,.0f} events/s)")
    return worker


def commands(mode: str) -> list[MonthCloseCommand]:
    if mode == "due":
        as_of = max(close_deadline(MONTH, "America/Detroit", 5), datetime.now(UTC))
        return [
            MonthCloseCommand(
                command_id=f"bench-close-due-{int(time.time())}",
                mode="due",
                as_of=as_of.astimezone(UTC),
                requested_by="bench",
            )
        ]
    return month_commands(datetime.now(UTC), str(int(time.time())))


def month_commands(as_of: datetime, tag: str) -> list[MonthCloseCommand]:
    """One ``mode=month`` close of ``MONTH`` per practice (``profile_close.py`` too)."""
    return [
        MonthCloseCommand(
            command_id=f"bench-close-{practice}-{tag}",
            mode="month",
            practice_id=practice,
            service_month=MONTH,
            as_of=as_of,
            requested_by="bench",
        )
        for practice in PRACTICES
    ]


def target(seconds: float, patients: int) -> str:
    if patients < 100_000:
        return f"[target <= 30 s for 100,000: not run at that size ({patients:,})]"
    return f"[target <= 30 s for 100,000: {verdict(seconds <= 30)}]"


async def close(
    dep: Deployment, worker: Worker, patients: int, mode: str, profile: Path | None
) -> None:
    records = [dep.topics.billing_record]
    async with OffsetWatch(dep.bootstrap) as watch:
        tps = [tp for tp in dep.output_partitions() if tp.topic in records]
        before = await watch.end_total(tps)
        cpu0 = worker.cpu()
        profiler = Profiler(worker.pid, profile) if profile is not None else None
        if profiler is not None and not profiler.start():
            profiler = None
        started = time.monotonic()
        sent = 0
        for command in commands(mode):
            sent += await send_close(dep.settings, command)
        sent_at = time.monotonic()
        deadline = started + 600
        published = 0
        while time.monotonic() < deadline:
            published = await watch.end_total(tps) - before
            if published >= patients:
                break
            if worker.proc is None or worker.proc.poll() is not None:
                raise RuntimeError(f"worker died:\n{worker.tail()}")
            await asyncio.sleep(0.1)
        done_at = time.monotonic()
        cpu = worker.cpu() - cpu0
        if profiler is not None:
            profiler.stop()
        committed_at = await watch.wait_committed(
            dep.app_id, dep.input_partitions(), await watch.end_total(dep.input_partitions())
        )
    seconds = done_at - started
    print(
        f"close ({mode}, {sent} command messages sent in {sent_at - started:.2f} s): "
        f"{published:,} billing records readable after {seconds:.2f} s "
        f"({published / seconds:,.0f} records/s; worker CPU {cpu:.1f} s; commands committed "
        f"after {committed_at - started:.1f} s)  {target(seconds, patients)}"
    )
    out = await read_values(dep.bootstrap, tps)
    ids: set[str] = set()
    billable = 0
    for value in out[dep.topics.billing_record]:
        data = json.loads(value)["data"]
        ids.add(data["record_id"])
        billable += bool(data["billable"])
    print(f"check: {len(ids):,} distinct records ({billable:,} billable) for {patients:,} months")
    seconds_in_close = worker.metric("ccm_month_close_duration_seconds_sum")
    if seconds_in_close is not None:
        print(f"worker: {seconds_in_close:.2f} s inside close (ccm_month_close_duration sum)")
    if profiler is not None:
        for line in summarize_profile(profiler.out, seconds=profiler.seconds):
            print(line)


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> None:
    dep = Deployment(bootstrap, partitions=args.partitions)
    dep.create_topics()
    say("fill")
    worker = await fill(dep, tmp, args.patients, (args.logs_min, args.logs_max))
    try:
        say("close")
        await close(dep, worker, args.patients, args.mode, args.profile)
        errors = worker.errors()
        if errors:
            print(f"worker log errors: {errors[:3]}")
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=100_000, help="patient-months (100,000)")
    parser.add_argument("--logs-min", type=int, default=1, help="logs per patient-month, min")
    parser.add_argument("--logs-max", type=int, default=3, help="logs per patient-month, max")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--mode", choices=["month", "due"], default="month")
    parser.add_argument("--profile", type=Path, help="py-spy raw output of the close phase")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.patients = 500
    header("bench_close: close and publish patient-months on one worker")
    with broker() as bootstrap, workdir("ccm-bench-close-") as tmp:
        asyncio.run(run(args, bootstrap, tmp))


if __name__ == "__main__":
    main()
