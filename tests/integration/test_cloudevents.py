"""CloudEvents over the real broker, read back with the official Python SDK.

1. Messages produced with ``ccm_core.binding.kafka_headers`` through aiokafka (the worker's
   client) come back from the broker as structured-mode CloudEvents the SDK parses.
2. The worker's own outputs (thresholds, records, dead letters, FHIR ChargeItems) carry the
   header and parse the same way: this one needs the worker to attach ``kafka_headers(out)``
   to every message it publishes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, get_args

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka
from cloudevents.core.formats.json import JSONFormat

from ccm_core.binding import STRUCTURED_JSON, kafka_headers
from ccm_core.tally import Output, OutputKind
from tests.integration.harness import Stack, WorkerProcess, produce, send_close, wait_processed
from tests.unit.test_binding import month_outputs
from tests.unit.unit_helpers import encode, local
from tests.unit.unit_helpers import log as time_log

pytestmark = pytest.mark.integration


async def _read_messages(
    bootstrap: str, topics: list[str], partitions: int, timeout: float = 120.0
) -> list[Any]:
    """Every message of ``topics`` up to their end, as aiokafka returns them (with headers)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = {tp: end for tp, end in (await consumer.end_offsets(tps)).items() if end > 0}
        out: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while ends and loop.time() < deadline:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(messages)
            for tp in list(ends):
                if await consumer.position(tp) >= ends[tp]:
                    ends.pop(tp)
        assert not ends, f"could not read up to the end: {ends}"
        return out
    finally:
        await consumer.stop()


def output_topics(stack: Stack) -> list[str]:
    """The topic of every output kind."""
    return [stack.settings.topics.output_topic(kind) for kind in get_args(OutputKind)]


def sdk_message(msg: Any) -> KafkaMessage:
    """An aiokafka ConsumerRecord as the SDK's KafkaMessage (headers: name -> bytes)."""
    return KafkaMessage(headers=dict(msg.headers), key=msg.key, value=msg.value)


async def _produce_outputs(stack: Stack, outputs: list[Output]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        for out in outputs:
            await producer.send_and_wait(
                stack.settings.topics.output_topic(out.kind),
                out.to_json().encode(),
                key=out.key.encode(),
                headers=kafka_headers(out),
            )
    finally:
        await producer.stop()


def test_headers_survive_the_broker_and_the_sdk_reads_the_events(kafka_bootstrap: str) -> None:
    stack = Stack(kafka_bootstrap, partitions=2)
    stack.create_topics()
    outputs = month_outputs()
    asyncio.run(_produce_outputs(stack, outputs))
    topics = output_topics(stack)
    messages = asyncio.run(_read_messages(kafka_bootstrap, topics, stack.partitions))
    assert len(messages) == len(outputs)
    by_id = {json.loads(o.to_json())["id"]: o for o in outputs}
    for msg in messages:
        assert ("content-type", STRUCTURED_JSON.encode()) in list(msg.headers)
        event = from_kafka(sdk_message(msg), JSONFormat())
        out = by_id.pop(event.get_id())
        envelope = json.loads(out.to_json())
        assert event.get_type() == envelope["type"]
        assert event.get_data() == envelope["data"]
        assert event.get_extension("partitionkey") == out.key
    assert by_id == {}


AS_OF = "2026-05-01T00:00:00+00:00"


def test_worker_outputs_are_structured_mode_cloudevents(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Real worker outputs of every kind: each message has ``content-type:
    application/cloudevents+json`` and the SDK reads it (needs the worker to publish with
    ``headers=kafka_headers(out)``)."""
    stack = Stack(kafka_bootstrap, partitions=2)
    stack.create_topics()
    events = [
        time_log("a", local(3), 50),
        time_log("b", local(4), 50),
        time_log("c", local(5), 20, activity="benefit_check"),
    ]
    raw = [(e["patient_id"].encode(), encode(e)) for e in events]
    raw.append((b"pat-1", b"{not json"))
    worker = WorkerProcess(stack, tmp_path).start()
    try:
        produce(stack, raw)
        wait_processed(stack)
        send_close(
            stack,
            {"command_type": "month_close", "command_id": "c1", "mode": "due", "as_of": AS_OF},
        )
        wait_processed(stack)
    finally:
        worker.stop()
    topics = output_topics(stack)
    messages = asyncio.run(_read_messages(kafka_bootstrap, topics, stack.partitions))
    assert {m.topic for m in messages} == set(topics)
    for msg in messages:
        assert dict(msg.headers).get("content-type") == STRUCTURED_JSON.encode(), msg.topic
        event = from_kafka(sdk_message(msg), JSONFormat())
        assert event.get_id() == json.loads(msg.value)["id"]
