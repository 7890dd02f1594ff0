"""Clear errors for people: each bad command line prints one line on stderr and exits non-zero,
never a traceback. Run as real ``ccm-tally`` subprocesses, as a new user would type them.

The "no broker" cases point at a port of 127.0.0.1 where nothing listens and bound the wait
with ``CCM_BROKER_WAIT_SECONDS``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.hostile import HOSTILE_PAYLOADS

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sample-month.jsonl"
USAGE = 2
UNAVAILABLE = 69  # EX_UNAVAILABLE: no broker reachable


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "ccm-tally"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]


def closed_port() -> str:
    """An address where nothing listens (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CCM_")}
    environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    environ.update(env or {})
    return subprocess.run(
        [*_cli(), *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environ,
        timeout=120,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exit ``code``, exactly one line on stderr (no traceback) containing ``words``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    line = lines[0]
    for word in words:
        assert word in line, line
    return line


# ---------------------------------------------------------------- files


def test_cli_replay_missing_file(tmp_path: Path) -> None:
    """replay of a file that does not exist: one line naming it."""
    missing = tmp_path / "nope.jsonl"
    line = assert_one_line(run("replay", missing), 1, str(missing), "No such file")
    assert line.startswith("ccm-tally replay: error:")


def test_cli_replay_directory_given_as_file(tmp_path: Path) -> None:
    """replay of a directory: one line saying so."""
    assert_one_line(run("replay", tmp_path), 1, str(tmp_path), "Is a directory")


def test_cli_replay_unreadable_file(tmp_path: Path) -> None:
    """replay of a file that cannot be read: one line naming it. /proc/self/mem opens but
    fails to read (for root too); a mode-000 file is refused at open, except to root, who
    may read anything (so it is tried only when the tests do not run as root)."""
    cases: list[tuple[Path, str]] = [(Path("/proc/self/mem"), "Input/output error")]
    if os.geteuid() != 0:
        private = tmp_path / "private.jsonl"
        private.write_bytes(SAMPLE.read_bytes())
        private.chmod(0o000)
        cases.append((private, "Permission denied"))
    for path, reason in cases:
        assert_one_line(run("replay", path), 1, str(path), reason)


def test_cli_simulate_unwritable_out(tmp_path: Path) -> None:
    """simulate --out into a directory that does not exist: one line."""
    target = tmp_path / "missing-dir" / "sim.jsonl"
    result = run("simulate", "--patients", "2", "--limit", "3", "--out", target)
    assert_one_line(result, 1, str(target), "No such file")


def test_cli_replay_unwritable_out(tmp_path: Path) -> None:
    """replay --out into a directory that does not exist: one line."""
    target = tmp_path / "missing-dir" / "out.jsonl"
    assert_one_line(run("replay", SAMPLE, "--out", target), 1, str(target))


@pytest.mark.parametrize("flag", ["--profiles", "--practices"])
def test_cli_replay_missing_configuration_file(tmp_path: Path, flag: str) -> None:
    """A missing profiles or practices file: one line naming the flag and the file."""
    missing = tmp_path / "missing.toml"
    assert_one_line(run("replay", SAMPLE, flag, missing), USAGE, flag, "does not exist")


def test_cli_replay_configuration_directory(tmp_path: Path) -> None:
    """A directory given as the practices file."""
    assert_one_line(run("replay", SAMPLE, "--practices", tmp_path), USAGE, "is a directory")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[defaults\n", ("not valid TOML",)),
        ('[defaults]\ntime_zone = "Mars/Olympus"\n', ("time_zone", "Mars/Olympus")),
        ("[defaults]\nclose_grace_days = 99\n", ("close_grace_days",)),
    ],
)
def test_cli_replay_invalid_practices_file(tmp_path: Path, text: str, words: tuple[str]) -> None:
    """A practices file that is not TOML, or holds an invalid setting: one line."""
    path = tmp_path / "practices.toml"
    path.write_text(text)
    assert_one_line(run("replay", SAMPLE, "--practices", path), 1, *words)


def test_cli_replay_bad_as_of() -> None:
    """--as-of that is not a time."""
    assert_one_line(run("replay", SAMPLE, "--as-of", "yesterday"), USAGE, "yesterday")


def test_cli_replay_never_crashes_on_hostile_input(tmp_path: Path) -> None:
    """replay dead-letters what the worker dead-letters: every hostile payload (one per line;
    random bytes may hold newlines, so they count as several lines) is a rejected input,
    the valid events around them are tallied, exit 0."""
    path = tmp_path / "hostile.jsonl"
    lines = [raw for _, raw in HOSTILE_PAYLOADS]
    path.write_bytes(SAMPLE.read_bytes() + b"\n".join(lines) + b"\n")
    fed = [line for line in path.read_bytes().split(b"\n") if line.strip()]
    sample_lines = [line for line in SAMPLE.read_bytes().split(b"\n") if line.strip()]
    result = run("replay", path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    outputs = [json.loads(line) for line in result.stdout.split("\n") if line]
    dead = [o for o in outputs if o["type"].endswith("rejected-input.v1")]
    baseline = run("replay", SAMPLE)
    base_dead = [o for o in baseline.stdout.split("\n") if "rejected-input.v1" in o]
    assert len(dead) == len(base_dead) + len(fed) - len(sample_lines)
    assert f"{len(fed)} events" in result.stderr.strip().splitlines()[-1]
    assert all(len(line) < 1024 * 1024 for line in result.stdout.split("\n"))


# ---------------------------------------------------------------- close


def test_cli_close_month_not_two_digits() -> None:
    """close --month 2026-3: one line with the expected form."""
    line = assert_one_line(run("close", "--month", "2026-3", "--practice", "p"), USAGE, "2026-3")
    assert "YYYY-MM" in line


def test_cli_close_month_without_practice() -> None:
    """close --month without --practice."""
    assert_one_line(run("close", "--month", "2026-03"), USAGE, "--practice")


def test_cli_close_without_month_or_due() -> None:
    """close with neither --month nor --due (nor --practice)."""
    assert_one_line(run("close"), USAGE, "--month", "--due")


def test_cli_close_due_with_practice() -> None:
    """close --due --practice P: --due is for every practice."""
    assert_one_line(run("close", "--due", "--practice", "p"), USAGE, "--due")


def test_cli_close_invalid_practice_id() -> None:
    """A practice id that is not an id (a space): one line naming the field."""
    assert_one_line(run("close", "--month", "2026-03", "--practice", "a b"), USAGE, "practice_id")


# ---------------------------------------------------------------- no broker reachable


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["close", "--month", "2026-03", "--practice", "p"], id="close"),
        pytest.param(["close", "--due"], id="close-due"),
        pytest.param(["simulate", "--patients", "3", "--limit", "5"], id="simulate"),
        pytest.param(["topics"], id="topics"),
        pytest.param(["worker", "--web-port", "0"], id="worker"),
    ],
)
def test_cli_no_broker_reachable(command: list[str]) -> None:
    """No broker: the command waits CCM_BROKER_WAIT_SECONDS at most, then one line, exit 69."""
    address = closed_port()
    started = time.monotonic()
    result = run(
        *command,
        env={"KAFKA_BOOTSTRAP_SERVERS": address, "CCM_BROKER_WAIT_SECONDS": "2"},
    )
    elapsed = time.monotonic() - started
    if command[0] == "worker":
        # a service: its structured log (JSON lines) says each retry and the exit, then the
        # one line for a person
        *logged, _ = result.stderr.strip().splitlines()
        events = [json.loads(line)["event"] for line in logged]
        assert events[-1] == "broker_unavailable_exiting", result.stderr
        assert set(events[:-1]) <= {"broker_unavailable_waiting"}, result.stderr
        result.stderr = result.stderr.strip().splitlines()[-1]
    assert_one_line(result, UNAVAILABLE, "no Kafka broker reachable", address)
    assert elapsed < 60  # 2 s of waiting, plus interpreter start on a loaded machine


def test_cli_broker_wait_setting_invalid() -> None:
    """CCM_BROKER_WAIT_SECONDS that is not a number: one line."""
    result = run("close", "--due", env={"CCM_BROKER_WAIT_SECONDS": "soon"})
    assert_one_line(result, 1, "broker_wait_seconds")


# ---------------------------------------------------------------- web port


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_cli_worker_web_port_out_of_range(port: str) -> None:
    """worker --web-port outside 0..65535 (or not a number)."""
    assert_one_line(run("worker", f"--web-port={port}"), USAGE, port)


def test_cli_worker_web_port_out_of_range_from_environment() -> None:
    """CCM_WEB_PORT=70000: one line naming the setting."""
    result = run("worker", env={"CCM_WEB_PORT": "70000"})
    assert_one_line(result, 1, "web_port")


def test_cli_worker_missing_practices_file(tmp_path: Path) -> None:
    """The worker checks its configuration files before it connects."""
    missing = tmp_path / "practices.toml"
    assert_one_line(run("worker", "--practices", missing), USAGE, str(missing))
