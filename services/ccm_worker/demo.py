"""``ccm-tally demo``: the whole stack on a local Kafka, one simulated month, a readable summary.

Steps: start a single-node Kafka (KRaft) on 127.0.0.1 -> create topics -> start a worker
process and the care-team console -> produce a month of simulated EHR logs -> wait until
processed -> close the month -> produce the late logs and voids that arrive after the close
(re-issued records) -> read every output -> print a summary and the console's URL -> stop
everything (or, with ``--keep-running``, keep it up to browse the worklist and metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ccm_console.process import ConsoleProcess
from ccm_core.months import close_deadline
from ccm_core.settings import Settings

from . import ops
from .process import WorkerProcess
from .topics import ensure_topics


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patients", type=int, default=300, help="simulated patients (300)")
    parser.add_argument("--staff", type=int, default=24, help="simulated staff (24)")
    parser.add_argument("--month", default="2026-10", help="service month YYYY-MM (2026-10)")
    parser.add_argument("--seed", type=int, default=2026, help="simulation seed")
    parser.add_argument("--rate", type=float, default=None, help="events/s (default: max)")
    parser.add_argument("--web-port", type=int, default=6066, help="worker web port (6066)")
    parser.add_argument(
        "--console-port", type=int, default=6070, help="care-team console port (6070)"
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the summary, keep broker, worker and console up until Ctrl-C (to browse "
        "the worklist and the metrics)",
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _status(text: str, final: bool = False) -> None:
    """A progress line, redrawn in place on a terminal; only the final one elsewhere."""
    if sys.stderr.isatty():
        print(f"\r{text}   ", end="\n" if final else "", file=sys.stderr, flush=True)
    elif final:
        print(text, file=sys.stderr, flush=True)


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


async def _produce(settings: Settings, events: list[Any], rate: float | None, label: str) -> None:
    from ccm_simulator.producer import produce

    from .kafka_security import aiokafka_kwargs

    total = len(events)

    def progress(stats: Any) -> None:
        _status(f"  {label} {_bar(stats.submitted, total)}")

    await produce(
        settings.kafka_bootstrap_servers,
        settings.topics.timelog,
        events,
        rate,
        progress,
        progress_every=max(1, total // 20),
        security=aiokafka_kwargs(settings),
    )
    _status(f"  {label} {_bar(total, total)}", final=True)


async def _wait(settings: Settings, label: str) -> None:
    def progress(lag: int) -> None:
        _status(f"  {label}: {lag} messages to go")

    await ops.wait_processed(settings, timeout=600, progress=progress)
    _status(f"  {label}: done", final=True)


def summarize(outputs: dict[str, list[dict[str, Any]]], metrics_url: str) -> str:
    """A readable summary of what the billing systems received."""
    latest: dict[str, dict[str, Any]] = {}
    revisions = 0
    for env in outputs["billing_record"]:
        data = env["data"]
        revisions += data["revision"] > 0
        seen = latest.get(data["record_id"])
        if seen is None or data["revision"] > seen["revision"]:
            latest[data["record_id"]] = data
    records = list(latest.values())
    billed = [r for r in records if r["billable"]]
    units: Counter[str] = Counter()
    by_payer: Counter[str] = Counter()
    for r in billed:
        by_payer[r["payer"]] += 1
        for line in r["lines"]:
            units[line["code"]] += line["units"]
    minutes = sum(r["qualifying_minutes"] for r in records)
    excluded = sum(r["excluded_minutes"] for r in records)
    overlap = sum(r["overlap_minutes"] for r in records)
    voided = sum(1 for r in records for log in r["logs"] if log["status"] == "voided")
    reasons = Counter(d["data"]["reason"] for d in outputs["dlq"])
    thresholds = Counter((t["data"]["kind"], t["data"]["code"]) for t in outputs["threshold"])
    lines = [
        "",
        "ccm-tally demo: billing summary",
        "=" * 52,
        f"patient-months with a record   {len(records):>8}",
        f"  billable (99487 reached)     {len(billed):>8}",
        f"  not billable (< entry time)  {len(records) - len(billed):>8}",
        "billed patients by payer       "
        + ", ".join(f"{p} {n}" for p, n in sorted(by_payer.items())),
        "units by CPT code              "
        + ", ".join(f"{c} x{n}" for c, n in sorted(units.items())),
        f"qualifying minutes (union)     {minutes:>8}",
        f"overlapping minutes (once)     {overlap:>8}",
        f"excluded minutes (by rule)     {excluded:>8}",
        f"voided logs                    {voided:>8}",
        f"records re-issued (revisions)  {revisions:>8}",
        "threshold events               "
        + ", ".join(f"{k} {c} x{n}" for (k, c), n in sorted(thresholds.items())),
        f"rejected inputs (DLQ)          {sum(reasons.values()):>8}",
        *(f"  {reason:<28} {n:>8}" for reason, n in reasons.most_common()),
        "=" * 52,
        f"metrics: {metrics_url}",
    ]
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    from ccm_localkafka import LocalKafka
    from ccm_simulator.generator import SimulationSpec, generate

    started = time.monotonic()
    spec = SimulationSpec(
        patients=args.patients,
        staff=args.staff,
        start_month=args.month,
        months=1,
        seed=args.seed,
    )
    events = list(generate(spec))
    on_time = [e for e in events if e.kind != "late"]
    late = [e for e in events if e.kind == "late"]
    with tempfile.TemporaryDirectory(prefix="ccm-demo-") as tmp:
        workdir = Path(tmp)
        _say("1/6 starting a local Apache Kafka (KRaft) on 127.0.0.1 ...")
        with LocalKafka() as kafka:
            _say(f"    broker up at {kafka.bootstrap_servers} in {kafka.startup_seconds:.1f}s")
            settings = Settings(
                kafka_bootstrap_servers=kafka.bootstrap_servers,
                partitions=4,
                web_port=args.web_port,
            )
            ensure_topics(settings)
            _say("2/6 starting the tally worker and the care-team console ...")
            worker = WorkerProcess(settings, workdir, "worker", port=args.web_port).start()
            console = ConsoleProcess(settings, workdir, "console", port=args.console_port)
            try:
                _say(f"    worker ready; logs: {worker.log_path}")
                console.start()
                _say(f"    console ready; logs: {console.log_path}")
                _say(
                    f"3/6 producing {len(on_time)} EHR events for {args.month} "
                    f"({args.patients} patients)"
                )
                asyncio.run(_produce(settings, on_time, args.rate, "events"))
                asyncio.run(_wait(settings, "processing"))
                _say(f"4/6 closing {args.month} (as the timer would after the grace period)")
                as_of = close_deadline(args.month, spec.time_zone, 5)
                asyncio.run(_close(settings, as_of))
                asyncio.run(_wait(settings, "closing"))
                _say(f"5/6 {len(late)} late logs arrive after the close (records re-issued)")
                asyncio.run(_produce(settings, late, args.rate, "late"))
                asyncio.run(_wait(settings, "processing"))
                _say("6/6 reading what the billing systems received ...")
                outputs = asyncio.run(ops.read_outputs(settings))
                url = f"http://{settings.web_host}:{settings.web_port}/metrics"
                print(summarize(outputs, url))
                print(_metrics_excerpt(worker.metrics()))
                if not args.keep_running:
                    _say("(everything stops now; --keep-running keeps it up to browse)")
                _say(f"done in {time.monotonic() - started:.0f}s")
                practice = spec.practices[0]
                shown = _worklist_rows(console, practice, args.month, outputs["status"])
                if args.keep_running:
                    _say("broker, worker and console keep running; Ctrl-C to stop")
                print(
                    f"care-team worklist ({shown} patients of {practice}): "
                    f"{console_url(console, practice, args.month)}",
                    flush=True,
                )
                if args.keep_running:
                    try:
                        while worker.proc is not None and worker.proc.poll() is None:
                            time.sleep(1)
                    except KeyboardInterrupt:
                        pass
            finally:
                console.stop()
                worker.stop(30)
    return 0


def _worklist_rows(
    console: ConsoleProcess, practice_id: str, month: str, statuses: list[dict[str, Any]]
) -> int:
    """Rows the console lists for the practice-month, once it has caught up with every
    patient-month the worker published a status for (waits up to 60 s)."""
    expected = {
        env["subject"]
        for env in statuses
        if env["data"]["practice_id"] == practice_id and env["data"]["service_month"] == month
    }
    query = urlencode({"practice": practice_id, "month": month})
    rows = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = console.get(f"/api/worklist?{query}")
        rows = len(answer["rows"]) if answer else 0
        if rows >= len(expected):
            break
        time.sleep(0.5)
    return rows


def console_url(console: ConsoleProcess, practice_id: str, month: str) -> str:
    """The worklist page of one of the demo's practices for the demo's month."""
    return f"{console.url}?{urlencode({'practice': practice_id, 'month': month})}"


def _metrics_excerpt(text: str) -> str:
    """The worker's own counters, as Prometheus scrapes them."""
    if not text:
        return "(worker metrics not readable)"
    wanted = ("ccm_events_total{", "ccm_billing_records_total{", "ccm_patient_months{")
    lines = [line for line in text.splitlines() if line.startswith(wanted)]
    return "worker metrics (excerpt):\n" + "\n".join(f"  {line}" for line in lines)


async def _close(settings: Settings, as_of: datetime) -> None:
    from ccm_core.contracts import MonthCloseCommand

    from .cli import send_close

    command = MonthCloseCommand(
        command_id=f"demo-close-{as_of:%Y%m%d}",
        mode="due",
        as_of=as_of.astimezone(UTC),
        requested_by="demo",
    )
    await send_close(settings, command)
