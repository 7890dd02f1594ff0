"""The console's view of the compacted status topic: the latest status of every patient-month.

Every console replica reads the whole topic from the beginning with its own group-less
consumer (``group_id=None``, partitions assigned by hand, nothing committed) and
``isolation_level=read_committed``, then follows it. Replicas share nothing and ask no worker:
run as many as you like. The view is ready once it has read up to the end offsets it found at
start (``/readyz``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from pydantic import ValidationError

from ccm_core.contracts import TallyStatus, TallyStatusEnvelope

log = structlog.get_logger("ccm_console")


@dataclass
class StatusView:
    """key (``patient/practice/month``) -> (latest status, its envelope time)."""

    statuses: dict[str, tuple[TallyStatus, datetime]] = field(default_factory=dict)
    invalid: int = 0  # messages that were not a status envelope (skipped, counted)
    ready: bool = False
    applied: int = 0

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the topic, in offset order: the later status of a key wins, a
        tombstone (no value) removes the key."""
        if value is None:
            if key is not None:
                self.statuses.pop(key.decode("utf-8", "replace"), None)
            return
        try:
            env = TallyStatusEnvelope.model_validate_json(value)
        except ValidationError:
            self.invalid += 1
            return
        data = env.data
        name = f"{data.patient_id}/{data.practice_id}/{data.service_month}"
        self.statuses[name] = (data, env.time)
        self.applied += 1

    def __iter__(self) -> Iterator[tuple[TallyStatus, datetime]]:
        return iter(list(self.statuses.values()))

    def practices(self) -> list[str]:
        return sorted({s.practice_id for s, _ in self.statuses.values()})

    def months(self, practice_id: str) -> list[str]:
        return sorted(
            {s.service_month for s, _ in self.statuses.values() if s.practice_id == practice_id},
            reverse=True,
        )


async def follow(view: StatusView, bootstrap: str, topic: str, stop: asyncio.Event) -> None:
    """Read ``topic`` from the beginning into ``view`` and keep following it until ``stop``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    partitions = await _partitions(bootstrap, topic, stop)
    if not partitions:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        behind = {tp: end for tp, end in ends.items() if end > 0}
        log.info("console_catching_up", topic=topic, records=sum(behind.values()))
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    view.apply(record.key, record.value)
            if not view.ready:
                for tp in list(behind):
                    if await consumer.position(tp) >= behind[tp]:
                        behind.pop(tp)
                if not behind:
                    view.ready = True
                    log.info("console_ready", patient_months=len(view.statuses))
    finally:
        await consumer.stop()


async def follow_forever(view: StatusView, bootstrap: str, topic: str, stop: asyncio.Event) -> None:
    """:func:`follow`, started again (from the beginning, into the same view: re-reading
    applies the same statuses in the same order) when the consumer fails."""
    while not stop.is_set():
        try:
            await follow(view, bootstrap, topic, stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("console_feed_failed", topic=topic)
            await asyncio.sleep(2.0)


async def _partitions(bootstrap: str, topic: str, stop: asyncio.Event) -> list[int]:
    """The topic's partition numbers, once the topic exists (the workers create it)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while not stop.is_set():
            try:
                [found] = await admin.describe_topics([topic])
            except Exception:  # the broker not reachable yet: try again
                log.warning("console_metadata_failed", topic=topic, exc_info=True)
            else:
                if found.get("error_code") == 0 and found.get("partitions"):
                    return sorted(int(p["partition"]) for p in found["partitions"])
            await asyncio.sleep(1.0)
        return []
    finally:
        await admin.close()
