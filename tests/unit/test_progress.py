"""Long-running commands show progress on stderr (and keep stdout for data)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from ccm_cli.progress import Progress, wanted


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "ccm-tally"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]


def test_progress_lines_count_and_end_with_done() -> None:
    stream = io.StringIO()
    progress = Progress("job", "items", interval=0.0, total=3, stream=stream)
    for _ in range(3):
        progress.add()
    progress.done("3 written")
    lines = stream.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "job: 1 of 3 items",
        "job: 2 of 3 items",
        "job: 3 of 3 items",
        "job: 3 of 3 items",
    ]
    assert lines[-1].endswith(", 3 written")


def test_progress_is_silent_when_disabled_and_defaults_to_the_terminal() -> None:
    stream = io.StringIO()
    progress = Progress("job", "items", enabled=False, interval=0.0, stream=stream)
    progress.add(5)
    progress.done()
    assert stream.getvalue() == "" and progress.count == 5
    assert wanted(None, io.StringIO()) is False  # not a terminal
    assert wanted(True, io.StringIO()) is True


def test_simulate_to_a_file_reports_progress_on_stderr(tmp_path: Path) -> None:
    out = tmp_path / "logs.jsonl"
    done = subprocess.run(
        [*_cli(), "simulate", "--patients", "20", "--out", str(out), "--progress"],
        capture_output=True,
        text=True,
        check=True,
    )
    written = len(out.read_text().splitlines())
    assert f"simulate: {written:,} events written" in done.stderr
    quiet = subprocess.run(
        [*_cli(), "simulate", "--patients", "20", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "events written" not in quiet.stderr  # not a terminal: only the summary
