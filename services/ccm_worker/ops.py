"""Operator-side helpers over Kafka: how far the workers are, and what they published.

Used by the demo, the integration tests and the benchmarks; plain aiokafka.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ccm_core.settings import Settings

from .kafka_security import aiokafka_kwargs


async def committed_lag(settings: Settings) -> int:
    """Input messages (time logs, enrollment events and close commands) the worker group has
    not committed yet."""
    topics = [settings.topics.timelog, settings.topics.enrollment, settings.topics.month_close]
    security = aiokafka_kwargs(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, **security)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **security)
    await consumer.start()
    await admin.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(settings.app_id)
        behind: dict[TopicPartition, int] = {}
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            if ends[tp] > done:
                behind[tp] = done
        lag = 0
        for tp, done in behind.items():
            gap = ends[tp] - done
            # a transactional producer's commit marker ends the partition: an offset that holds
            # no record, which the group never commits past until a record follows it
            if gap <= 10 and not await _has_record(settings, tp, done, ends[tp]):
                continue
            lag += gap
        return lag
    finally:
        await admin.close()
        await consumer.stop()


async def _has_record(settings: Settings, tp: TopicPartition, start: int, end: int) -> bool:
    """Whether ``tp`` holds a committed record in ``[start, end)`` (not only markers)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
        **aiokafka_kwargs(settings),
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=200)
            if any(m.offset < end for m in batch.get(tp, [])):
                return True
            if await consumer.position(tp) >= end:
                return False
        return True  # could not tell: count it as waiting
    finally:
        await consumer.stop()


async def wait_processed(
    settings: Settings,
    timeout: float = 300.0,
    progress: Any = None,
) -> None:
    """Wait until the worker group has committed every input message."""
    deadline = time.monotonic() + timeout
    lag = -1
    while time.monotonic() < deadline:
        lag = await committed_lag(settings)
        if progress is not None:
            progress(lag)
        if lag == 0:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{lag} input messages still unprocessed after {timeout}s")


async def read_raw(
    bootstrap: str,
    tps: Sequence[TopicPartition],
    timeout: float = 120.0,
    security: dict[str, Any] | None = None,
) -> dict[str, list[bytes]]:
    """Every value of ``tps`` up to their current end, per topic (read_committed).

    ``security``: TLS/SASL client options (``kafka_security.aiokafka_kwargs``)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        **(security or {}),
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    out: dict[str, list[bytes]] = {tp.topic: [] for tp in tps}
    try:
        consumer.assign(list(tps))
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(list(tps))
        remaining = {tp: end for tp, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for tp, messages in batch.items():
                out[tp.topic].extend(m.value for m in messages if m.value is not None)
            for tp in list(remaining):
                if await consumer.position(tp) >= remaining[tp]:
                    remaining.pop(tp)
        if remaining:
            raise TimeoutError(f"could not read up to the end: {remaining}")
        return out
    finally:
        await consumer.stop()


async def read_all(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int,
    timeout: float = 120.0,
    security: dict[str, Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every message of ``topics`` up to their current end, decoded as JSON."""
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    raw = await read_raw(bootstrap, tps, timeout, security)
    return {topic: [json.loads(v) for v in values] for topic, values in raw.items()}


async def read_outputs(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """{"threshold": [...], "billing_record": [...], "dlq": [...], "status": [...],
    "fhir_chargeitem": [...]} as published so far (the status feed in offset order per
    partition, before compaction)."""
    t = settings.topics
    raw = await read_all(
        settings.kafka_bootstrap_servers,
        [t.threshold, t.billing_record, t.dlq, t.tally_status, t.fhir_chargeitem],
        settings.partitions,
        security=aiokafka_kwargs(settings),
    )
    return {
        "threshold": raw[t.threshold],
        "billing_record": raw[t.billing_record],
        "dlq": raw[t.dlq],
        "status": raw[t.tally_status],
        "fhir_chargeitem": raw[t.fhir_chargeitem],
    }
