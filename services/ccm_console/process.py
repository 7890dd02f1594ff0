"""``ccm-tally console`` as a child process (the demo and the browser test start it so)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ccm_core.settings import Settings
from ccm_worker.process import free_port, log_tail, terminate, worker_env


class ConsoleProcess:
    """One console replica on a free port (or ``port``), logging to ``<workdir>/``."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        label: str = "console",
        port: int | None = None,
        refresh_seconds: float | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dir = workdir / f"{label}-{self.port}"
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "console.log"
        update: dict[str, Any] = {"console_port": self.port}
        if refresh_seconds is not None:
            update["console_refresh_seconds"] = refresh_seconds
        self.settings = settings.model_copy(update=update)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.console_host}:{self.port}/"

    def env(self) -> dict[str, str]:
        s = self.settings
        return worker_env(
            s,
            CCM_CONSOLE_HOST=s.console_host,
            CCM_CONSOLE_PORT=str(s.console_port),
            CCM_CONSOLE_REFRESH_SECONDS=str(s.console_refresh_seconds),
        )

    def start(self, timeout: float = 120.0) -> ConsoleProcess:
        """Start and wait until the view has read the status topic to its end (/readyz)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ccm_cli.main", "console"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"console exited early; log {self.log_path}:\n{self.tail()}")
            if self.get("/readyz") is not None:
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"console not ready after {timeout}s:\n{self.tail()}")

    def get(self, path: str) -> Any:
        """JSON of a 2xx answer, or None."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 20.0) -> None:
        terminate(self.proc, timeout)

    def tail(self, n: int = 60) -> str:
        return log_tail(self.log_path, n)
