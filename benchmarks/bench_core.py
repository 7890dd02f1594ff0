"""Core throughput: events/s through the pure tally core on the simulator's realistic mix.

Measures, in one process on the same events:
- ``apply``: TallyEngine.apply on already-validated events (apply + threshold detection),
  the figure the target (>= 200,000 events/s) is about;
- ``decode+apply``: the full per-message path of the worker (JSON validation, routing, apply,
  dead letters), i.e. ccm_core.ingest.process;
- baseline ``json.loads``: parsing the same payloads with the standard library, so the figures
  can be read as ratios on a noisy shared machine.

    python benchmarks/bench_core.py            # 20,000 patients, one month
    python benchmarks/bench_core.py --smoke    # tiny, for CI
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime

from ccm_core.contracts import MonthCloseCommand
from ccm_core.ingest import LocalTally, Source, decode
from ccm_core.tally import PatientLedger, TallyEngine
from ccm_simulator.generator import SimulationSpec, generate


def best_of(runs: int, fn: Callable[[], int]) -> tuple[float, int]:
    """Fastest wall time of ``runs`` runs (the least disturbed by other load)."""
    best = float("inf")
    count = 0
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - started)
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.patients, args.runs = 200, 1

    spec = SimulationSpec(
        patients=args.patients,
        staff=max(10, args.patients // 50),
        start_month="2026-03",
        months=1,
        seed=1,
    )
    payloads = [e.value for e in generate(spec)]
    decoded = [d.event for d in map(decode, payloads)]
    valid = [e for e in decoded if e is not None]
    engine = TallyEngine()

    def baseline() -> int:
        for p in payloads:
            with suppress(ValueError):  # the malformed share of the mix
                json.loads(p)
        return len(payloads)

    def apply_only() -> int:
        ledgers: dict[str, PatientLedger] = {}
        for event in valid:
            ledger = ledgers.get(event.patient_id)
            if ledger is None:
                ledger = ledgers[event.patient_id] = PatientLedger(event.patient_id)
            engine.apply(ledger, event)
        return len(valid)

    def full() -> int:
        tally = LocalTally(engine)
        for offset, p in enumerate(payloads):
            tally.feed(p, Source("bench", 0, offset))
        return len(payloads)

    def close_all() -> int:
        tally = LocalTally(engine)
        for offset, p in enumerate(payloads):
            tally.feed(p, Source("bench", 0, offset))
        command = MonthCloseCommand(
            command_id="bench", mode="due", as_of=datetime(2026, 5, 1, tzinfo=UTC)
        )
        started = time.perf_counter()
        outputs = tally.close(command)
        close_all.seconds = time.perf_counter() - started  # type: ignore[attr-defined]
        records = sum(o.kind == "billing_record" for o in outputs)  # not the status outputs
        return records

    t_base, n_base = best_of(args.runs, baseline)
    t_apply, n_apply = best_of(args.runs, apply_only)
    t_full, n_full = best_of(args.runs, full)
    _, n_records = best_of(1, close_all)
    t_close = close_all.seconds  # type: ignore[attr-defined]

    print(
        f"machine: {platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}, {args.patients} patients, {len(payloads)} events "
        f"({len(valid)} valid), best of {args.runs}"
    )
    print(f"baseline json.loads : {n_base / t_base:>12,.0f} events/s")
    print(
        f"apply (core)        : {n_apply / t_apply:>12,.0f} events/s  "
        f"ratio to json.loads {t_base / n_base / (t_apply / n_apply):.2f}  [target >= 200,000]"
    )
    print(
        f"decode+apply        : {n_full / t_full:>12,.0f} events/s  "
        f"ratio to json.loads {t_base / n_base / (t_full / n_full):.2f}"
    )
    print(
        f"close {n_records} patient-months: {t_close:.2f} s "
        f"({n_records / t_close:,.0f} records/s, core only)"
    )


if __name__ == "__main__":
    main()
