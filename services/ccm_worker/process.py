"""``ccm-tally worker`` as a child process: the one runner the demo, tests and benchmarks share.

The environment is built from a :class:`Settings`, so a worker started here reads exactly the
settings its caller holds (topic names, partitions, app id, guarantee ...). It supervises the
child as Kubernetes or compose would: a worker that exits for any reason but our own stop is
started again, with a backoff (0.5 s doubling to 10 s, back to 0.5 s after 60 s of life).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from ccm_core.settings import Settings

from .exits import STALLED as STALL_EXIT_CODE  # noqa: F401  (kept for callers)
from .kafka_security import SECURITY_ENV_NAMES, security_env

BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET_AFTER = 0.5, 10.0, 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM a child and wait for it; SIGKILL it if it is still there after ``timeout``."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_tail(path: Path, n: int = 60) -> str:
    """The last ``n`` lines of a child's log ("" if there is none yet)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The process environment that makes a worker run with ``settings`` (plus ``extra``)."""
    t = settings.topics
    inherited = {k: v for k, v in os.environ.items() if k not in SECURITY_ENV_NAMES}
    env = {
        **inherited,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CCM_APP_ID": settings.app_id,
        "CCM_PARTITIONS": str(settings.partitions),
        # every topic of Topics (a new output topic reaches the worker without an edit here)
        **{f"CCM_TOPIC_{name.upper()}": getattr(t, name) for name in type(t).model_fields},
        "CCM_WEB_HOST": settings.web_host,
        "CCM_WEB_PORT": str(settings.web_port),
        "CCM_PROCESSING_GUARANTEE": settings.processing_guarantee,
        "CCM_SESSION_TIMEOUT_SECONDS": str(settings.session_timeout_seconds),
        "CCM_CLOSE_TICK_SECONDS": str(settings.close_tick_seconds),
        "CCM_LOG_LEVEL": settings.log_level,
        "CCM_STALL_EXIT_SECONDS": str(settings.stall_exit_seconds),
        "CCM_BATCH_MAX_EVENTS": str(settings.batch_max_events),
        "CCM_BATCH_WITHIN_SECONDS": str(settings.batch_within_seconds),
        "CCM_COMMIT_MAX_SECONDS": str(settings.commit_max_seconds),
        "CCM_BROKER_WAIT_SECONDS": str(settings.broker_wait_seconds),
        "CCM_DATA_DIR": str(settings.data_dir),
        "CCM_STORE": settings.store,
        "CCM_LEDGER_CACHE": str(settings.ledger_cache),
        "CCM_STANDBY_REPLICAS": str(settings.standby_replicas),
        **security_env(settings),
    }
    for name, path in (
        ("CCM_PRACTICES_FILE", settings.practices_file),
        ("CCM_PROFILES_FILE", settings.profiles_file),
    ):
        if path is not None:
            env[name] = str(path)
    env.update(extra)
    return env


class WorkerProcess:
    """One worker process on a free web port, logging to ``<workdir>/<label>-<port>/``."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        label: str = "worker",
        port: int | None = None,
        data_dir: Path | None = None,
    ) -> None:
        """``data_dir``: the worker's local store (default: a new one in its own folder; a
        restart on a kept data directory passes the previous one)."""
        self.port = port or free_port()
        self.dir = workdir / f"{label}-{self.port}"
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "worker.log"
        self.settings = settings.model_copy(
            update={"web_port": self.port, "data_dir": data_dir or self.dir / "data"}
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.restarts = 0  # respawns after any exit we did not ask for, as a supervisor would
        self.exit_codes: list[int] = []  # the codes of those exits
        self._stopping = False
        self._supervisor: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> WorkerProcess:
        """Start the process without waiting (see :meth:`wait_ready`), supervised: a worker
        that exits for any reason is started again, as Kubernetes or compose would."""
        self._stopping = False
        self._popen()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        return self

    def _popen(self) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ccm_cli.main", "worker"],
                env=worker_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _supervise(self) -> None:
        delay = BACKOFF_FIRST
        while not self._stopping and self.proc is not None:
            code = self.proc.wait()
            if self._stopping:
                return
            self.exit_codes.append(code)
            lived = time.monotonic() - self.spawned_at
            delay = BACKOFF_FIRST if lived > BACKOFF_RESET_AFTER else delay
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            if self._stopping:
                return
            self.restarts += 1
            self._popen()

    def wait_ready(self, timeout: float = 120.0, poll: float = 0.1) -> float:
        """Block until /readyz answers 200 and return that monotonic time; a worker that
        exits or never gets ready is killed and its log tail raised."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None:
                raise RuntimeError(f"worker not started; log {self.log_path}")
            if len(self.exit_codes) >= 5:  # restarted in a loop: it will not get ready
                self.kill()
                raise RuntimeError(
                    f"worker exited {self.exit_codes}; log {self.log_path}:\n{self.tail()}"
                )
            if self.ready():
                return time.monotonic()
            time.sleep(poll)
        self.kill()
        raise TimeoutError(
            f"worker not ready after {timeout}s; log {self.log_path}:\n{self.tail()}"
        )

    def ready(self) -> bool:
        """/readyz answers 200: partitions assigned, table recovered."""
        return self.get("/readyz") is not None

    def start(self, timeout: float = 120.0) -> WorkerProcess:
        self.spawn()
        self.wait_ready(timeout)
        return self

    def get(self, path: str) -> Any:
        """JSON of a 2xx answer of the worker's web port, or None (not up, 503, 404 ...).
        Carries the settings' bearer token (``CCM_WEB_AUTH_TOKEN[_FILE]``) when there is one."""
        from .http_auth import HttpAuth

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            headers=HttpAuth.from_settings(self.settings).forward_headers(),
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def metrics(self) -> str:
        """The Prometheus exposition text ("" when it cannot be read)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the exposition (None if absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        prefix = f"{name}{{{want}}}" if want else name
        for line in self.metrics().splitlines():
            if line.startswith(prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self, timeout: float = 60.0) -> float:
        """Graceful stop (SIGTERM: the batch in flight finishes, commits); the seconds it took."""
        self._stopping = True
        started = time.monotonic()
        terminate(self.proc, timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        """Crash it (SIGKILL): no commit, no flush."""
        self._stopping = True
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 60) -> str:
        return log_tail(self.log_path, n)

    def errors(self) -> list[str]:
        """Crash and traceback lines of the worker's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [
            line
            for line in text.splitlines()
            if ("Traceback" in line or "Crashed" in line) and "CancelledError" not in line
        ]
