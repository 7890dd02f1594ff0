"""Progress lines on stderr for long-running commands (simulate, export, sink catch-up).

A line at most every ``interval`` seconds and one at the end; stdout stays for data. On by
default when stderr is a terminal (``--progress`` / ``--no-progress`` override), so that piped
and tested runs keep their stderr to the final summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress lines on stderr (default: when stderr is a terminal)",
    )


def wanted(flag: bool | None, stream: TextIO | None = None) -> bool:
    """The ``--progress`` flag's answer, or whether ``stream`` (stderr) is a terminal."""
    if flag is not None:
        return flag
    out = stream or sys.stderr
    return bool(getattr(out, "isatty", lambda: False)())


class Progress:
    """``<label>: 12,345 <unit> (1,234/s)[ of 20,000]`` every ``interval`` seconds."""

    def __init__(
        self,
        label: str,
        unit: str,
        *,
        enabled: bool = True,
        interval: float = 1.0,
        total: int | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.label, self.unit, self.enabled = label, unit, enabled
        self.interval, self.total = interval, total
        self.stream = stream or sys.stderr
        self.count = 0
        self.started = time.monotonic()
        self._next = self.started + interval

    def add(self, n: int = 1) -> None:
        self.count += n
        if self.enabled and time.monotonic() >= self._next:
            self._next = time.monotonic() + self.interval
            self._print()

    def done(self, extra: str = "") -> None:
        if self.enabled:
            self._print(extra or "done")

    def _print(self, extra: str = "") -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        of = f" of {self.total:,}" if self.total is not None else ""
        tail = f", {extra}" if extra else ""
        print(
            f"{self.label}: {self.count:,}{of} {self.unit} in {elapsed:.1f}s "
            f"({self.count / elapsed:,.0f}/s){tail}",
            file=self.stream,
            flush=True,
        )
