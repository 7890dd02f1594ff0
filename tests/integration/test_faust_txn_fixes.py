"""``lso_highwaters`` against the real broker: the highwater faust's recovery reads with
transactions must be the partition's last stable offset, also for a partition this consumer
has not fetched yet."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from ccm_localkafka.broker import create_topics
from ccm_worker import faust_fixes

LSO = 4


class _Thread:
    """What ``AIOKafkaConsumerThread._highwaters`` reads of its consumer thread: the real
    aiokafka consumer, and whether the app runs with transactions."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.consumer: Any = type("C", (), {"in_transaction": True})()

    def _ensure_consumer(self) -> AIOKafkaConsumer:
        return self._consumer


async def highwater_of_unfetched_partition(bootstrap: str) -> int | None:
    """The highwater faust reads, with transactions, of a partition holding one committed
    transaction of three records (last stable offset 4: the records and the commit marker)."""
    topic = f"lso-{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, {topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"t-{topic}")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(3):
                await producer.send(topic, f"v{i}".encode(), key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])  # assigned and paused, never fetched: where a recovery starts
        consumer.pause(tp)
        thread: Any = _Thread(consumer)
        value = None
        for _ in range(50):  # the broker writes the commit marker just after the commit
            await asyncio.sleep(0.1)
            highwaters = await AIOKafkaConsumerThread._highwaters(thread, [TP(topic, 0)])
            value = highwaters.get(TP(topic, 0))
            if value == LSO:
                break
        return int(value) if value is not None else None
    finally:
        await consumer.stop()


def test_transactional_highwater_is_the_last_stable_offset(kafka_bootstrap: str) -> None:
    with faust_fixes.fixes_only(*faust_fixes.FIXES):
        found = asyncio.run(highwater_of_unfetched_partition(kafka_bootstrap))
    assert found == LSO


def test_unpatched_faust_reads_no_highwater_for_an_unfetched_partition(
    kafka_bootstrap: str,
) -> None:
    # pins the bug: faust's cached last_stable_offset is None before the first fetch
    with faust_fixes.fixes_only(*(set(faust_fixes.FIXES) - {"lso_highwaters"})):
        found = asyncio.run(highwater_of_unfetched_partition(kafka_bootstrap))
    assert found is None
