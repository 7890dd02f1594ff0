"""The ledger table on RocksDB (``CCM_STORE=rocksdb``) through a real broker.

- A restart on a kept data directory gives the same ledgers and outputs as a cold rebuild,
  and reads only the changelog written since the store's last flush (counted by the worker's
  ``changelog_recovered`` log line).
- A local store that must not be trusted (corrupt, another app id, ahead of the changelog,
  older than the changelog's start) is detected, wiped and rebuilt from the changelog.
- kill -9 mid-stream on RocksDB gives the replay's results (the store never runs ahead of the
  committed changelog).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from rocksdict import AccessType, Options, Rdict

from ccm_core import codec
from ccm_worker.app import changelog_topic_name
from ccm_worker.store import META_SUFFIX, home_partition
from tests.integration.harness import (
    Stack,
    WorkerProcess,
    collect,
    process_with,
    produce,
    send_close,
    wait_processed,
)
from tests.integration.test_stream import (
    CLOSE_ALL_DUE,
    assert_agrees_with_replay,
    crash_mid_stream_and_finish,
    replayed,
    simulated,
)

pytestmark = pytest.mark.integration

OFFSET_KEY = b"__faust\0offset__"


def store_dirs(data_dir: Path) -> dict[int, Path]:
    """Partition -> its RocksDB directory under a worker's data directory."""
    found = {}
    for path in data_dir.rglob("ledgers-*.db"):
        found[int(path.name.removeprefix("ledgers-").removesuffix(".db"))] = path
    return found


def stored_ledgers(data_dir: Path) -> dict[str, Any]:
    """Every ledger in a (stopped) worker's local stores, decoded to the codec's dict."""
    ledgers: dict[str, Any] = {}
    for path in store_dirs(data_dir).values():
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                assert isinstance(key, bytes) and isinstance(value, bytes)
                if key != OFFSET_KEY:
                    ledgers[key.decode()] = codec.ledger_to_dict(codec.loads(value))
        finally:
            db.close()
    return ledgers


def raw_items(path: Path) -> tuple[Rdict, int | None]:
    db = Rdict(str(path), options=Options(raw_mode=True))
    offset = db.get(OFFSET_KEY)
    return db, int(offset) if offset is not None else None


def log_events(worker: WorkerProcess, name: str) -> list[dict[str, Any]]:
    events = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if f'"{name}"' not in line:
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return [e for e in events if e.get("event") == name]


def recovered(worker: WorkerProcess) -> int:
    """Changelog records the worker's (first) recovery applied."""
    found = log_events(worker, "changelog_recovered")
    assert found, f"no changelog_recovered line:\n{worker.tail()}"
    return int(found[0]["records"])


async def _changelog_bounds(stack: Stack) -> dict[int, tuple[int, int]]:
    from aiokafka import AIOKafkaConsumer

    topic = changelog_topic_name(stack.settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(stack.partitions)]
        start = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: (start[tp], end[tp]) for tp in tps}


def changelog_bounds(stack: Stack) -> dict[int, tuple[int, int]]:
    return asyncio.run(_changelog_bounds(stack))


def test_restart_on_kept_store_reads_only_the_gap_and_equals_a_cold_rebuild(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = simulated(seed=31)
    half, three_quarters = len(events) // 2, 3 * len(events) // 4
    stack = Stack(kafka_bootstrap, store="rocksdb")
    stack.create_topics()
    kept = tmp_path / "kept-data"
    first = process_with(stack, tmp_path, "first", events[:half], data_dir=kept)
    written = sum(end for _, end in changelog_bounds(stack).values())
    assert written > 100
    assert recovered(first) == 0  # a new store on an empty changelog

    # another worker (its own data directory) goes on while the kept store is offline
    other = process_with(stack, tmp_path, "other", events[half:three_quarters])
    assert recovered(other) > 0  # a new data directory: the whole changelog
    written_after = sum(end for _, end in changelog_bounds(stack).values())
    assert written_after > written

    second = WorkerProcess(stack, tmp_path, "second", data_dir=kept).start()
    try:
        # everything up to the graceful stop was flushed with its offset: only what the other
        # worker wrote since is read (end offsets also count transaction markers)
        again = recovered(second)
        assert 0 < again <= written_after - written, (again, written, written_after)
        kept_lines = log_events(second, "local_store_kept")
        assert len(kept_lines) == stack.partitions, second.tail()
        assert not log_events(second, "local_store_rebuilt")
        produce(stack, events[three_quarters:])
        wait_processed(stack)
        send_close(stack, CLOSE_ALL_DUE)
        wait_processed(stack)
        stream = collect(stack)
    finally:
        second.stop()
    assert_agrees_with_replay(stream, replayed(events))
    ids = [e["id"] for e in stream["threshold"]]
    assert len(ids) == len(set(ids)), "a restart must not republish thresholds"

    cold = WorkerProcess(stack, tmp_path, "cold").start()  # a new, empty data directory
    try:
        total = sum(end for _, end in changelog_bounds(stack).values())
        assert recovered(cold) > again
        assert recovered(cold) <= total
    finally:
        cold.stop()
    warm_ledgers = stored_ledgers(kept)
    assert warm_ledgers, "the kept store holds the ledgers"
    assert warm_ledgers == stored_ledgers(cold.settings.data_dir)
    assert first.errors() == [] and second.errors() == [] and cold.errors() == []


async def _delete_records(stack: Stack, partition: int, before: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        topic = changelog_topic_name(stack.settings)
        tp = TopicPartition(topic, partition)
        # a compacted-only topic refuses DeleteRecords: let retention delete too, as a
        # changelog with cleanup.policy=compact,delete would
        policy = {"cleanup.policy": "compact,delete"}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, policy)])
        await admin.delete_records({tp: RecordsToDelete(before_offset=before)})
    finally:
        await admin.close()


def test_untrusted_local_stores_are_detected_and_rebuilt(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = simulated(patients=200, seed=37)
    stack = Stack(kafka_bootstrap, store="rocksdb")
    stack.create_topics()
    kept = tmp_path / "kept-data"
    first = process_with(stack, tmp_path, "first", events, data_dir=kept)
    before = stored_ledgers(kept)
    dirs = store_dirs(kept)
    assert sorted(dirs) == list(range(stack.partitions))
    bounds = changelog_bounds(stack)

    # 0: corrupt (RocksDB's CURRENT names no manifest)
    (dirs[0] / "CURRENT").write_text("MANIFEST-999999\n")
    # 1: written by another app id
    meta1 = dirs[1].with_name(dirs[1].name + META_SUFFIX)
    meta = json.loads(meta1.read_text())
    meta1.write_text(json.dumps({**meta, "app_id": "someone-else"}))
    # 2: ahead of the changelog (a store of another cluster, or a topic recreated)
    db, _ = raw_items(dirs[2])
    db.put(OFFSET_KEY, str(bounds[2][1] + 1000).encode())
    db.close()
    # 3: older than the changelog's start (retention removed what it would need)
    db, persisted3 = raw_items(dirs[3])
    db.put(OFFSET_KEY, b"0")
    db.close()
    assert persisted3 is not None and persisted3 > 2
    asyncio.run(_delete_records(stack, 3, 2))
    deleted_patients = {
        pid for pid in before if home_partition(pid.encode(), stack.partitions) == 3
    }

    second = WorkerProcess(stack, tmp_path, "second", data_dir=kept).start()
    try:
        rebuilt = log_events(second, "local_store_rebuilt")
        reasons = {int(e["partition"]): e["reason"] for e in rebuilt}
    finally:
        second.stop()
    assert set(reasons) == {0, 1, 2, 3}, reasons
    assert "unreadable" in reasons[0]
    assert "another app id" in reasons[1]
    assert "past the changelog's end" in reasons[2]
    assert "older than the changelog's start" in reasons[3]
    after = stored_ledgers(kept)
    # partitions 0-2 rebuilt from their whole changelog: the same ledgers as before
    for pid, ledger in before.items():
        if pid not in deleted_patients:
            assert after.get(pid) == ledger, pid
    # partition 3 was rebuilt from what is left of its changelog, not from the stale store
    rebuilt3 = {pid for pid in after if home_partition(pid.encode(), stack.partitions) == 3}
    assert rebuilt3 < deleted_patients or not deleted_patients
    assert first.errors() == [] and second.errors() == []


def test_kill_mid_stream_on_rocksdb_equals_replay(kafka_bootstrap: str, tmp_path: Path) -> None:
    events = simulated(patients=1500, seed=41)
    stack = Stack(kafka_bootstrap, store="rocksdb")
    stack.create_topics()
    stream, second = crash_mid_stream_and_finish(stack, tmp_path, events, tmp_path / "kept")
    assert not log_events(second, "local_store_rebuilt"), "a crash leaves a trusted store"
    assert_agrees_with_replay(stream, replayed(events))


def test_failover_to_a_standby_reads_only_the_gap_and_equals_replay(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two workers with standby replicas (the default 1): each keeps a committed copy of the
    other's partitions. When one stops, the other takes its partitions over from its standby
    copies: it reads only what was committed after its standby last caught up."""
    events = simulated(patients=300, seed=43)
    half = len(events) // 2
    stack = Stack(kafka_bootstrap, store="rocksdb")
    stack.create_topics()
    a = WorkerProcess(stack, tmp_path, "a").start()
    b = WorkerProcess(stack, tmp_path, "b").start()
    try:
        produce(stack, events[:half])
        wait_processed(stack)
        time.sleep(3.0)  # the standbys read the last commits (read_committed, continuously)
        total = sum(end for _, end in changelog_bounds(stack).values())
        first_b = len(log_events(b, "changelog_recovered"))
        a.stop()  # b takes every partition over
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = b.get("/readyz")
            if body is not None and len(body["partitions"]) == stack.partitions:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"b never took every partition:\n{b.tail()}")
        recoveries = log_events(b, "changelog_recovered")[first_b:]
        assert recoveries, b.tail()
        took_over = recoveries[-1]
        assert took_over["standby"] == [] and len(took_over["active"]) == stack.partitions
        # the partitions it took over were standbys: nothing (or a few records committed
        # during the stop) is read, not their whole changelog
        assert int(took_over["records"]) < total / 4, (took_over, total)
        produce(stack, events[half:])
        wait_processed(stack)
        send_close(stack, CLOSE_ALL_DUE)
        wait_processed(stack)
        stream = collect(stack)
    finally:
        a.stop()
        b.stop()
    assert_agrees_with_replay(stream, replayed(events))
    assert a.errors() == [] and b.errors() == []
