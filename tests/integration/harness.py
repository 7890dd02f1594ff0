"""Drive real worker processes against the real broker: start, stop, kill, produce, collect.

Every test gets its own app id (consumer group, changelog) and its own topic names, so tests
share one broker without seeing each other's data.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from ccm_core.settings import Settings, Topics
from ccm_worker import ops
from ccm_worker.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """One isolated deployment: settings shared by its workers, producer and collectors."""

    bootstrap: str
    partitions: int = 4
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    guarantee: str = "at_least_once"
    close_tick_seconds: float = 3600.0  # the month-close timer; tests of it shorten it

    @property
    def topics(self) -> Topics:
        n = self.name
        return Topics(
            timelog=f"{n}.timelog",
            month_close=f"{n}.month-close",
            threshold=f"{n}.threshold",
            billing_record=f"{n}.billing-record",
            dlq=f"{n}.dlq",
        )

    @property
    def settings(self) -> Settings:
        return Settings(
            kafka_bootstrap_servers=self.bootstrap,
            app_id=f"ccm-{self.name}",
            partitions=self.partitions,
            topics=self.topics,
            processing_guarantee=self.guarantee,
        )

    def env(self, web_port: int, data_dir: Path) -> dict[str, str]:
        t = self.topics
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CCM_APP_ID": f"ccm-{self.name}",
            "CCM_PARTITIONS": str(self.partitions),
            "CCM_TOPIC_TIMELOG": t.timelog,
            "CCM_TOPIC_MONTH_CLOSE": t.month_close,
            "CCM_TOPIC_THRESHOLD": t.threshold,
            "CCM_TOPIC_BILLING_RECORD": t.billing_record,
            "CCM_TOPIC_DLQ": t.dlq,
            "CCM_WEB_PORT": str(web_port),
            "CCM_DATA_DIR": str(data_dir),
            "CCM_PROCESSING_GUARANTEE": self.guarantee,
            "CCM_SESSION_TIMEOUT_SECONDS": "6",
            "CCM_CLOSE_TICK_SECONDS": str(self.close_tick_seconds),
            "CCM_LOG_LEVEL": "INFO",
        }
        return env

    def create_topics(self) -> None:
        ensure_topics(self.settings)


class WorkerProcess:
    """``ccm-tally worker`` as a real child process."""

    def __init__(self, stack: Stack, tmp: Path, label: str = "w") -> None:
        self.stack = stack
        self.port = free_port()
        self.dir = tmp / f"{label}-{self.port}"
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: float = 90.0) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ccm_cli.main", "worker"],
            env=self.stack.env(self.port, self.dir / "data"),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + wait_ready
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.tail()}")
            if self.get("/readyz", ok_only=True) is not None:
                return self
            time.sleep(0.3)
        self.kill()  # never leave a half-started worker behind
        raise TimeoutError(f"worker not ready after {wait_ready}s:\n{self.tail()}")

    def get(self, path: str, ok_only: bool = False) -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                body = r.read()
                return json.loads(body) if path != "/metrics" else body.decode()
        except Exception:
            return None

    def metrics(self) -> str:
        return str(self.get("/metrics") or "")

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop (SIGTERM): faust commits offsets and flushes."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """Crash (SIGKILL): no commit, no flush."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def errors(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [
            line
            for line in text.splitlines()
            if ("Traceback" in line or "Crashed" in line) and "CancelledError" not in line
        ]


async def _produce(bootstrap: str, topic: str, events: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in events]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


def produce(stack: Stack, events: Iterable[tuple[bytes | None, bytes]]) -> int:
    return asyncio.run(_produce(stack.bootstrap, stack.topics.timelog, events))


def send_close(stack: Stack, command: dict[str, Any]) -> None:
    """A close command to every partition of the control topic (as ``ccm-tally close``)."""
    payload = json.dumps(command).encode()

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        try:
            for p in range(stack.partitions):
                await producer.send_and_wait(stack.topics.month_close, payload, partition=p)
        finally:
            await producer.stop()

    asyncio.run(run())


def wait_processed(stack: Stack, timeout: float = 120.0) -> None:
    """Block until the worker group has committed every input message."""
    asyncio.run(ops.wait_processed(stack.settings, timeout))


def collect(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """Every output message so far: {"threshold": [...], "billing_record": [...], "dlq": [...]}"""
    return asyncio.run(ops.read_outputs(stack.settings))
