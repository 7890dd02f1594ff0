"""The reliability suite's size and its figures table.

``CCM_RELIABILITY_SIZE=full`` (the default, ``make test-reliability``) or ``smoke`` (CI: the
same scenarios, smaller and shorter). Each scenario records its :class:`Figures`; they are
printed at the end of the session, passed or failed, and written as JSON to
``$CCM_RELIABILITY_RESULTS`` when that is set.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.reliability.oracle import Figures

_RESULTS = pytest.StashKey[list[Figures]]()


@dataclass(frozen=True)
class Size:
    name: str
    kills: int
    kill_patients: int
    pause_patients: int
    pauses: int
    broker_patients: int
    broker_down_seconds: tuple[float, float]  # SIGTERM outage, SIGKILL outage
    partitioner_patients: int
    scale_patients: int
    scale_steps: tuple[int, ...]  # worker counts after each step (from one worker)


SIZES = {
    "smoke": Size("smoke", 3, 150, 150, 2, 150, (20.0, 20.0), 60, 150, (2, 1)),
    "full": Size("full", 20, 600, 600, 4, 600, (30.0, 60.0), 300, 600, (2, 3, 2, 1)),
}


@pytest.fixture(scope="session")
def size() -> Size:
    name = os.environ.get("CCM_RELIABILITY_SIZE", "full").strip() or "full"
    if name not in SIZES:
        raise pytest.UsageError(f"CCM_RELIABILITY_SIZE must be one of {sorted(SIZES)}: {name!r}")
    return SIZES[name]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[Figures], None]:
    results = request.config.stash.setdefault(_RESULTS, [])
    return results.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    results = terminalreporter.config.stash.get(_RESULTS, [])
    if not results:
        return
    terminalreporter.write_sep("-", "reliability figures (every data figure must be 0)")
    for figures in results:
        bad = figures.failing()
        status = "ok" if not bad else "FAIL " + ", ".join(f"{k}={v}" for k, v in bad.items())
        terminalreporter.write_line(f"[{status}] {figures.line()}")
    out = os.environ.get("CCM_RELIABILITY_RESULTS", "").strip()
    if out:
        doc = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}",
            "size": os.environ.get("CCM_RELIABILITY_SIZE", "full"),
            "scenarios": [f.as_dict() for f in results],
        }
        Path(out).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
