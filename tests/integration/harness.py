"""Drive real worker processes against the real broker: start, stop, kill, produce, collect.

Every test gets its own app id (consumer group, changelog) and its own topic names, so tests
share one broker without seeing each other's data. Worker processes are the service's own
runner (``ccm_worker.process``), as the demo and the benchmarks use.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from ccm_core.contracts import MonthCloseCommand
from ccm_core.settings import Settings, Topics
from ccm_worker import cli, ops, process
from ccm_worker.kafka_security import aiokafka_kwargs
from ccm_worker.topics import ensure_topics


@dataclass
class Stack:
    """One isolated deployment: settings shared by its workers, producer and collectors."""

    bootstrap: str
    partitions: int = 4
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    close_tick_seconds: float = 3600.0  # the month-close timer; tests of it shorten it
    stall_exit_seconds: float = 30.0  # the stall watchdog; tests of it shorten it
    store: str | None = None
    """``memory`` or ``rocksdb`` (None: the settings' default, ``CCM_STORE`` if set)."""
    security: dict[str, Any] = field(default_factory=dict)
    """Settings fields for TLS/SASL/HTTP auth (``kafka_security_protocol`` ...), e.g. from
    the ``kafka_secure`` fixture; ``bootstrap`` is then the secure listener."""
    web_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    """Bearer token of the workers' patient-data endpoints (they are off without one);
    ``WorkerProcess.get`` sends it. A ``web_auth_token_file`` in ``security`` replaces it."""

    @property
    def topics(self) -> Topics:
        return Topics.prefixed(self.name)

    @property
    def settings(self) -> Settings:
        return Settings(
            kafka_bootstrap_servers=self.bootstrap,
            app_id=f"ccm-{self.name}",
            partitions=self.partitions,
            topics=self.topics,
            session_timeout_seconds=6.0,
            close_tick_seconds=self.close_tick_seconds,
            stall_exit_seconds=self.stall_exit_seconds,
            **self._store(),
            **self._auth_and_security(),
        )

    def _store(self) -> dict[str, Any]:
        return {"store": self.store} if self.store else {}

    def _auth_and_security(self) -> dict[str, Any]:
        if "web_auth_token_file" in self.security:
            return dict(self.security)
        return {"web_auth_token": self.web_token, **self.security}

    def create_topics(self) -> None:
        ensure_topics(self.settings)


class WorkerProcess(process.WorkerProcess):
    """A worker of a test's :class:`Stack`."""

    def __init__(
        self, stack: Stack, tmp: Path, label: str = "w", data_dir: Path | None = None
    ) -> None:
        super().__init__(stack.settings, tmp, label, data_dir=data_dir)

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        super().start(timeout)
        return self


async def _produce(
    settings: Settings, topic: str, events: Iterable[tuple[bytes | None, bytes]]
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        **aiokafka_kwargs(settings),
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in events]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


def produce(stack: Stack, events: Iterable[tuple[bytes | None, bytes]]) -> int:
    return asyncio.run(_produce(stack.settings, stack.topics.timelog, events))


def produce_enrollment(stack: Stack, events: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Enrollment-feed events (consent, eligibility, other codes) to ``ccm.enrollment.v1``."""
    return asyncio.run(_produce(stack.settings, stack.topics.enrollment, events))


def send_close(stack: Stack, command: dict[str, Any]) -> None:
    """A close command to every partition of the control topic, as ``ccm-tally close`` does."""
    asyncio.run(cli.send_close(stack.settings, MonthCloseCommand.model_validate(command)))


def wait_processed(stack: Stack, timeout: float = 120.0) -> None:
    """Block until the worker group has committed every input message."""
    asyncio.run(ops.wait_processed(stack.settings, timeout))


def process_with(
    stack: Stack,
    tmp: Path,
    label: str,
    events: Iterable[tuple[bytes | None, bytes]],
    data_dir: Path | None = None,
) -> WorkerProcess:
    """Start a worker, let it process ``events`` until the group committed them, stop it
    (gracefully); the stopped worker (its log, its settings) is returned."""
    worker = WorkerProcess(stack, tmp, label, data_dir=data_dir).start()
    try:
        produce(stack, events)
        wait_processed(stack)
    finally:
        worker.stop()
    return worker


def collect(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """Every output message so far: {"threshold": [...], "billing_record": [...], "dlq": [...]}"""
    return asyncio.run(ops.read_outputs(stack.settings))


def final_records(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Latest revision of each record, without the fields that say when/why it was issued."""
    latest: dict[str, dict[str, Any]] = {}
    for env in records:
        data = env["data"]
        seen = latest.get(data["record_id"])
        if seen is None or data["revision"] > seen["revision"]:
            latest[data["record_id"]] = data
    return {
        rid: {k: v for k, v in d.items() if k not in ("revision", "closed_at", "close_trigger")}
        for rid, d in latest.items()
    }
