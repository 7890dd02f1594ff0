"""Hostile payloads on the input stream: a real worker never stops on any of them.

The hostile list of the unit tests (deep nesting, lone surrogates, year-1901 and year-2062 logs,
300 KB-1 MB of random bytes or quote characters, coercions, garbage) is interleaved with a
patient's valid events on ONE partition, produced with aiokafka to that explicit partition.
The worker must not exit (no restart either), the valid events behind the hostile ones must be
tallied exactly as ``replay`` tallies the same sequence, and dead letters in = out: one per
hostile payload, no more (none twice), with its source offset.

Engine-agnostic: only Kafka topics, the harness's worker process and its /metrics are used.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from ccm_core.contracts import MonthCloseCommand
from ccm_core.ingest import LocalTally, Source
from ccm_worker import ops, process
from tests.integration.harness import (
    Stack,
    WorkerProcess,
    collect,
    final_records,
    send_close,
    wait_processed,
)
from tests.unit.hostile import HOSTILE_PAYLOADS
from tests.unit.unit_helpers import encode, local, log

pytestmark = pytest.mark.integration

PATIENT = "pat-hostile"
AS_OF = datetime(2063, 1, 1, tzinfo=UTC)  # after every month below (2026 and 2062) closes
CLOSE_ALL_DUE = {
    "command_type": "month_close",
    "command_id": "close-due-hostile",
    "mode": "due",
    "as_of": AS_OF.isoformat(),
}


def valid_events() -> list[bytes]:
    """Ten 20-minute logs in March 2026 (200 minutes: 99487 and four 99489 for cms), a void,
    and a log recorded in 2062 (a typo year, past the old year-2038 packing)."""
    events = [
        log(f"ok-{day}", local(day), 20, patient_id=PATIENT, recorded_at=local(day, 12))
        for day in range(2, 12)
    ]
    events.append(
        {
            "event_type": "time_log_voided",
            "event_id": "void-ok-5",
            "patient_id": PATIENT,
            "practice_id": "prac-1",
            "voided_event_id": "ok-5",
            "reason": "entered_in_error",
            "recorded_at": local(20, 12).isoformat(),
        }
    )
    start = datetime(2062, 3, 3, 15, tzinfo=UTC)
    events.append(
        log("ok-2062", start, 45, patient_id=PATIENT, recorded_at=start + timedelta(hours=1))
    )
    return [encode(e) for e in events]


def interleaved() -> list[bytes]:
    """Valid events with hostile payloads between and around them, in a fixed order."""
    valid = valid_events()
    hostile = [raw for _, raw in HOSTILE_PAYLOADS]
    mixed: list[bytes] = []
    for i, raw in enumerate(hostile):
        mixed.append(raw)
        if i < len(valid):
            mixed.append(valid[i])
    mixed += valid[len(hostile) :]
    return mixed


async def _produce_to_partition(bootstrap: str, topic: str, values: list[bytes]) -> int:
    """Every value, keyed by the patient, to the patient's partition (named explicitly)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=2 * 1024 * 1024,
        max_batch_size=2 * 1024 * 1024,
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        partition: int = DefaultPartitioner()(PATIENT.encode(), partitions, partitions)
        for value in values:  # one at a time: the order on the partition is the list's
            await (await producer.send(topic, value, key=PATIENT.encode(), partition=partition))
        return partition
    finally:
        await producer.stop()


def replayed(values: list[bytes]) -> dict[str, list[dict[str, Any]]]:
    """The core on the same values with the same Kafka key as the stream: a hostile log of
    another patient (``pat-1``) keyed ``pat-hostile`` is dead-lettered but, the key not being
    its patient, not listed on a month's record (its state would be split across partitions)."""
    tally = LocalTally()
    out: dict[str, list[dict[str, Any]]] = {"threshold": [], "billing_record": [], "dlq": []}
    names = {"threshold": "threshold", "billing_record": "billing_record", "rejected": "dlq"}
    outputs = [
        o
        for i, raw in enumerate(values)
        for o in tally.feed(raw, Source("r", 0, i), key=PATIENT).outputs
    ]
    outputs += tally.close(MonthCloseCommand.model_validate(CLOSE_ALL_DUE))
    for o in outputs:
        if o.kind in names:  # the other feeds (tally status) are not compared here
            out[names[o.kind]].append(json.loads(o.to_json()))
    return out


def test_hostile_payloads_never_stop_the_partition(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Hostile payloads among valid events on one partition: the worker never exits, the valid
    events are tallied as replay says, and dead letters in = out."""
    values = interleaved()
    valid = set(valid_events())
    hostile_offsets = {i for i, raw in enumerate(values) if raw not in valid}
    assert len(hostile_offsets) == len(HOSTILE_PAYLOADS)
    stack = Stack(kafka_bootstrap, partitions=2)
    stack.create_topics()
    worker = WorkerProcess(stack, tmp_path).start()
    try:
        partition = asyncio.run(
            _produce_to_partition(stack.bootstrap, stack.topics.timelog, values)
        )
        wait_processed(stack, timeout=240)
        send_close(stack, CLOSE_ALL_DUE)
        wait_processed(stack, timeout=240)
        deadline = time.monotonic() + 60  # outputs are published before the commit; poll anyway
        stream = collect(stack)
        while len({d["id"] for d in stream["dlq"]}) < len(hostile_offsets):
            assert time.monotonic() < deadline, "dead letters missing"
            time.sleep(1)
            stream = collect(stack)
        alive = worker.proc is not None and worker.proc.poll() is None
        restarts = worker.restarts
        errors = worker.errors()
        rejected = worker.metric("ccm_events_total", outcome="rejected")
    finally:
        worker.stop()
    assert alive and restarts == 0, worker.tail()
    assert errors == []
    assert rejected == len(hostile_offsets)
    core = replayed(values)
    # dead letters in = out: one per hostile payload, each once, from its offset
    dlq = stream["dlq"]
    assert len(dlq) == len({d["id"] for d in dlq}) == len(hostile_offsets)
    assert {d["data"]["source_offset"] for d in dlq} == hostile_offsets
    assert {d["data"]["source_partition"] for d in dlq} == {partition}
    assert Counter((d["data"]["reason"], d["data"]["original_sha256"]) for d in dlq) == Counter(
        (d["data"]["reason"], d["data"]["original_sha256"]) for d in core["dlq"]
    )
    assert all(len(json.dumps(d)) < 1024 * 1024 for d in dlq)
    # the valid events: the same thresholds and records as replay
    assert {e["id"] for e in stream["threshold"]} == {e["id"] for e in core["threshold"]}
    assert final_records(stream["billing_record"]) == final_records(core["billing_record"])
    march = [
        r for r in final_records(core["billing_record"]).values() if r["service_month"] == "2026-03"
    ]
    assert [r["qualifying_minutes"] for r in march] == [180]  # ten logs of 20, one voided
    assert any(
        r["service_month"] == "2062-03" for r in final_records(stream["billing_record"]).values()
    )


def test_hostile_dead_letters_are_republished_identically(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Re-publishing a dead letter gives the same id AND the same content: a second worker
    group reading the same input again (as after a lost commit) publishes every dead letter
    again byte for byte, whatever the time it runs at."""
    values = interleaved()
    stack = Stack(kafka_bootstrap, partitions=2)
    stack.create_topics()
    asyncio.run(_produce_to_partition(stack.bootstrap, stack.topics.timelog, values))
    first = WorkerProcess(stack, tmp_path, "first").start()
    try:
        wait_processed(stack, timeout=240)
    finally:
        first.stop()
    time.sleep(1.5)  # a different wall clock for the second reading
    again = stack.settings.model_copy(update={"app_id": f"{stack.settings.app_id}-again"})
    second = process.WorkerProcess(again, tmp_path, "second").start()
    try:
        asyncio.run(ops.wait_processed(again, 240))
        deadline = time.monotonic() + 60
        dlq = collect(stack)["dlq"]
        while len(dlq) < 2 * len(HOSTILE_PAYLOADS):
            assert time.monotonic() < deadline, f"{len(dlq)} dead letters"
            time.sleep(1)
            dlq = collect(stack)["dlq"]
    finally:
        second.stop()
    by_id: dict[str, list[str]] = {}
    for env in dlq:
        by_id.setdefault(env["id"], []).append(json.dumps(env, sort_keys=True))
    assert len(by_id) == len(HOSTILE_PAYLOADS)
    for copies in by_id.values():
        assert len(copies) == 2 and copies[0] == copies[1]


async def _produce_keyed(
    bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=2 * 1024 * 1024,
    )
    await producer.start()
    try:
        for key, value in messages:  # default partitioner: where a producer would put them
            await (await producer.send(topic, value, key=key))
    finally:
        await producer.stop()


def test_hostile_keys_are_dead_lettered_once_each(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Valid events under hostile Kafka keys (not UTF-8, empty, 100 KB, absent, another
    patient's): each is one key_mismatch dead letter, the worker keeps running, and the
    patient's correctly keyed event is still counted."""
    event = log("k-1", local(3), 30, patient_id=PATIENT, recorded_at=local(3, 12))
    raw = encode(event)
    hostile_keys: list[bytes | None] = [b"\xff\xfe", b"", b"k" * 100_000, None, b"pat-other"]
    messages = [(key, raw) for key in hostile_keys] + [(PATIENT.encode(), raw)]
    stack = Stack(kafka_bootstrap, partitions=2)
    stack.create_topics()
    worker = WorkerProcess(stack, tmp_path).start()
    try:
        asyncio.run(_produce_keyed(stack.bootstrap, stack.topics.timelog, messages))
        wait_processed(stack, timeout=240)
        deadline = time.monotonic() + 60
        stream = collect(stack)
        while len({d["id"] for d in stream["dlq"]}) < len(hostile_keys):
            assert time.monotonic() < deadline, "dead letters missing"
            time.sleep(1)
            stream = collect(stack)
        alive = worker.proc is not None and worker.proc.poll() is None
        restarts = worker.restarts
        counted = worker.metric("ccm_events_total", outcome="counted")
    finally:
        worker.stop()
    assert alive and restarts == 0, worker.tail()
    dlq = {d["id"]: d["data"] for d in stream["dlq"]}
    assert len(dlq) == len(stream["dlq"]) == len(hostile_keys)
    assert {d["reason"] for d in dlq.values()} == {"key_mismatch"}
    assert all(len(json.dumps(d)) < 64 * 1024 for d in dlq.values())
    assert counted == 1
