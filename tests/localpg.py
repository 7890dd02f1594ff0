"""A throwaway PostgreSQL server for the test session: Debian's ``postgresql`` binaries
(``/usr/lib/postgresql/<version>/bin``), a fresh cluster in a temporary directory on a free
port of 127.0.0.1, trust authentication, removed at the end.

PostgreSQL refuses to run as root: when the tests run as root (CI), initdb and pg_ctl run as
the ``postgres`` system user that the Debian package creates (``runuser``), with the cluster
directory owned by it. ``.ci/install-system.sh`` installs the package when it is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg


class PostgresLauncherError(RuntimeError):
    pass


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: Path(p).parts[4])
    if not found:
        on_path = shutil.which("initdb")
        if on_path is None:
            raise PostgresLauncherError(
                "PostgreSQL server binaries not found (Debian: apt-get install postgresql; "
                "bash .ci/install-system.sh does it)"
            )
        return Path(on_path).parent
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ccm-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.as_user: str | None = "postgres" if os.geteuid() == 0 else None
        self.started = False
        self.startup_seconds = 0.0

    def _run(self, *argv: str, timeout: float = 120.0) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_user is not None:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise PostgresLauncherError(
                f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}{log}"
            )

    def start(self) -> LocalPostgres:
        began = time.monotonic()
        if self.as_user is not None:
            try:
                entry = pwd.getpwnam(self.as_user)
            except KeyError as exc:
                raise PostgresLauncherError("running as root and no 'postgres' user") from exc
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "ccm", "-A", "trust", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w",
            "-t", "120", "start",
        )  # fmt: skip
        self.started = True
        self.startup_seconds = time.monotonic() - began
        return self

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=ccm dbname=postgres"

    def new_database(self) -> str:
        """A fresh, empty database; its DSN."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"host=127.0.0.1 port={self.port} user=ccm dbname={name}"

    def stop(self) -> None:
        try:
            if self.started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
