"""The real Kafka broker the tests run against: produce/consume, transactions, topic creation."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import UnknownTopicOrPartitionError

from ccm_localkafka import create_topics_sync

pytestmark = pytest.mark.integration


def _create_topics(
    bootstrap: str, topics: dict[str, int], compacted: set[str] | None = None
) -> list[str]:
    return create_topics_sync(bootstrap, topics, compacted or set())


def _unique(prefix: str) -> str:
    return f"test.{prefix}.{uuid.uuid4().hex[:10]}"


async def _consume(
    bootstrap: str,
    topic: str,
    expected: int,
    *,
    isolation_level: str = "read_uncommitted",
    timeout_s: float = 20.0,
) -> list[Any]:
    """Read ``topic`` from the beginning until ``expected`` records arrived (or time out)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(records) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for part in batch.values():
                    records.extend(part)
    except TimeoutError:
        pass  # the assertion in the caller reports what did arrive
    finally:
        await consumer.stop()
    return records


def test_produce_and_consume_roundtrip(kafka_bootstrap: str) -> None:
    topic = _unique("roundtrip")
    assert _create_topics(kafka_bootstrap, {topic: 3}) == [topic]
    # Idempotent: a second call creates nothing and does not fail.
    assert _create_topics(kafka_bootstrap, {topic: 3}) == []

    sent = {f"patient-{i}".encode(): f'{{"minutes": {i * 5}}}'.encode() for i in range(12)}

    async def run() -> list[Any]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in sent.items():
                await producer.send_and_wait(topic, value=value, key=key)
        finally:
            await producer.stop()
        return await _consume(kafka_bootstrap, topic, len(sent))

    records = asyncio.run(run())
    assert {r.key: r.value for r in records} == sent
    assert len(records) == len(sent)
    # Keys spread over the three explicitly created partitions, each key on exactly one.
    partitions_of: dict[bytes, set[int]] = {}
    for r in records:
        partitions_of.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions_of.values())
    assert {r.partition for r in records} <= {0, 1, 2}


def test_transactional_producer_commits_and_aborts(kafka_bootstrap: str) -> None:
    topic = _unique("txn")
    _create_topics(kafka_bootstrap, {topic: 1})

    async def run() -> tuple[list[Any], list[Any]]:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap,
            transactional_id=f"ccm-test-{uuid.uuid4().hex[:8]}",
            enable_idempotence=True,
        )
        await producer.start()
        try:
            async with producer.transaction():
                for i in range(3):
                    await producer.send(topic, key=b"p1", value=f"committed-{i}".encode())
            # An aborted transaction must stay invisible to read_committed consumers.
            await producer.begin_transaction()
            await producer.send_and_wait(topic, key=b"p1", value=b"aborted")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send(topic, key=b"p1", value=b"committed-3")
        finally:
            await producer.stop()
        committed = await _consume(kafka_bootstrap, topic, 4, isolation_level="read_committed")
        everything = await _consume(kafka_bootstrap, topic, 5)
        return committed, everything

    committed, everything = asyncio.run(run())
    assert [r.value for r in committed] == [f"committed-{i}".encode() for i in range(4)]
    assert sorted(r.value for r in everything) == sorted(
        [*(f"committed-{i}".encode() for i in range(4)), b"aborted"]
    )


def test_compacted_topic_and_no_auto_create(kafka_bootstrap: str) -> None:
    changelog = _unique("changelog")
    plain = _unique("plain")
    assert sorted(_create_topics(kafka_bootstrap, {changelog: 2, plain: 1}, {changelog})) == sorted(
        [changelog, plain]
    )

    missing = _unique("never-created")

    async def run() -> tuple[dict[str, str], list[Any], list[str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            responses = await admin.describe_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None})
                    for name in (changelog, plain)
                ]
            )
            policies: dict[str, str] = {}
            for resp in responses:
                for resource in resp.resources:
                    # (error_code, error_message, resource_type, resource_name, config_entries)
                    for entry in resource[4]:
                        if entry[0] == "cleanup.policy":
                            policies[resource[3]] = entry[1]
            # aiokafka's metadata request asks for auto-creation; the broker must refuse.
            described = await admin.describe_topics([missing])
            topics = await admin.list_topics()
        finally:
            await admin.close()
        return policies, described, topics

    policies, described, topics = asyncio.run(run())
    assert policies == {changelog: "compact", plain: "delete"}
    assert {changelog, plain} <= set(topics)
    assert [(t["topic"], t["error_code"]) for t in described] == [
        (missing, UnknownTopicOrPartitionError.errno)
    ]
    assert missing not in topics


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_restart_keeps_ports_topics_records_and_offsets(kill: bool) -> None:
    """``LocalKafka.restart``: the same broker comes back on the same address with its topics,
    records and committed offsets, after a clean stop (SIGTERM) and after a crash (SIGKILL);
    the reliability suite's broker outages rely on it."""
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    from ccm_localkafka import LocalKafka

    topic, group = _unique("restart"), f"g-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)

    async def produce_and_commit(bootstrap: str) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(topic, value=f"r{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.commit({tp: OffsetAndMetadata(3, "")})
        finally:
            await consumer.stop()

    async def committed_offset(bootstrap: str) -> int:
        """The group's committed offset, once the restarted coordinator has loaded it."""
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            async with asyncio.timeout(60):
                while True:
                    offsets = await admin.list_consumer_group_offsets(group)
                    if tp in offsets:
                        return int(offsets[tp].offset)
                    await asyncio.sleep(0.2)
        finally:
            await admin.close()

    with LocalKafka() as kafka:
        bootstrap = kafka.bootstrap_servers
        assert kafka.work_dir is not None
        work_dir = kafka.work_dir
        _create_topics(bootstrap, {topic: 1})
        asyncio.run(produce_and_commit(bootstrap))
        old_pid = kafka.pid

        kafka.stop(kill=kill, keep_data=True)
        assert not kafka.is_running()
        assert work_dir.is_dir(), "keep_data keeps the data directory"
        kafka.start()

        assert kafka.is_running() and kafka.pid != old_pid
        assert kafka.bootstrap_servers == bootstrap, "same address after the restart"
        assert _create_topics(bootstrap, {topic: 1}) == [], "the topic survived"
        values = [r.value for r in asyncio.run(_consume(bootstrap, topic, 5, timeout_s=60))]
        assert values == [f"r{i}".encode() for i in range(5)]
        assert asyncio.run(committed_offset(bootstrap)) == 3

        assert kafka.restart(down_s=0.5, kill=kill) > 0
        assert kafka.bootstrap_servers == bootstrap
        assert asyncio.run(committed_offset(bootstrap)) == 3
    assert not work_dir.exists(), "a plain stop still removes the directory"
