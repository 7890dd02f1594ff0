"""The RocksDB ledger store without a broker: the verdict on a local store, the LRU of decoded
ledgers, and the overlay (a ledger reaches RocksDB, with its changelog offset, only once its
partition's transaction committed). A real RocksDB in a temporary directory; no Kafka."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from faust.types import TP

from ccm_core import codec
from ccm_core.settings import Settings
from ccm_core.tally import PatientLedger
from ccm_worker.app import TallyWorker, changelog_topic_name
from ccm_worker.store import (
    META_SUFFIX,
    META_VERSION,
    LedgerCache,
    LedgerStore,
    census,
    home_partition,
    keep_partitions,
    store_verdict,
)

PARTITIONS = 4
META = {"version": META_VERSION, "app_id": "a", "changelog": "a-ledgers-changelog"}


def verdict(**kw: Any) -> str | None:
    args: dict[str, Any] = {
        "meta": META,
        "app_id": "a",
        "changelog_topic": "a-ledgers-changelog",
        "persisted": 10,
        "has_keys": True,
        "earliest": 0,
        "end": 20,
    }
    args.update(kw)
    return store_verdict(**args)


def test_verdict_trusts_a_store_within_the_changelog() -> None:
    assert verdict() is None
    assert verdict(persisted=19) is None  # the last record before the end
    assert verdict(earliest=11) is None  # the next record it needs is still there
    assert verdict(persisted=None, has_keys=False) is None  # new, empty


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"meta": None}, "no ccm metadata"),
        ({"meta": {**META, "version": 99}}, "metadata version"),
        ({"meta": {**META, "app_id": "b"}}, "another app id"),
        ({"meta": {**META, "changelog": "x"}}, "another changelog"),
        ({"persisted": None}, "keys without a persisted offset"),
        ({"persisted": 20}, "past the changelog's end"),
        ({"end": 0}, "past the changelog's end"),  # the topic was recreated
        ({"earliest": 12}, "older than the changelog's start"),
    ],
)
def test_verdict_distrusts(change: dict[str, Any], reason: str) -> None:
    found = verdict(**change)
    assert found is not None and reason in found


def ledger(pid: str) -> PatientLedger:
    return PatientLedger(pid, partition=home_partition(pid.encode(), PARTITIONS))


def test_cache_is_bounded_and_least_recently_used_goes_first() -> None:
    cache = LedgerCache(2)
    a, b, c = ledger("a"), ledger("b"), ledger("c")
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # a is now the most recent
    cache.put("c", c)
    assert len(cache) == 2
    assert cache.get("b") is None and cache.get("a") is a and cache.get("c") is c
    kept = {a.partition}
    cache.drop_partitions(kept)
    assert all(v.partition in kept for v in cache._items.values())


class Metadata(NamedTuple):  # what aiokafka's send_batch futures resolve to (the fields used)
    topic: str
    partition: int
    offset: int


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LedgerStore]:
    settings = Settings(
        store="rocksdb", data_dir=tmp_path, partitions=PARTITIONS, app_id="unit", ledger_cache=3
    )
    worker = TallyWorker(settings)
    data = worker.table.data
    assert isinstance(data, LedgerStore)
    assert worker.app.conf.table_standby_replicas == 1  # CCM_STANDBY_REPLICAS' default
    yield data
    asyncio.run(data.stop())


def patients_on(partition: int, n: int) -> list[str]:
    found: list[str] = []
    i = 0
    while len(found) < n:
        pid = f"pt-{i}"
        if home_partition(pid.encode(), PARTITIONS) == partition:
            found.append(pid)
        i += 1
    return found


def on_disk(store: LedgerStore, partition: int) -> dict[bytes, bytes]:
    db = store._db_for_partition(partition)
    return {bytes(k): bytes(v) for k, v in db.items()}


def test_a_ledger_reaches_rocksdb_only_after_its_transaction_committed(
    store: LedgerStore,
) -> None:
    changelog = store.config.changelog_topic
    p = 1
    pids = patients_on(p, 5)
    for pid in pids:
        store[pid] = ledger(pid)
    # sent as two record batches: the first at base offset 40 (3 records), then 43
    store.note_sent([Metadata(changelog, p, 43), Metadata(changelog, p, 40), Metadata("x", p, 7)])
    assert on_disk(store, p) == {}, "nothing on disk before the commit"
    assert store.get(pids[0]) is not None  # read from the overlay
    store.committed(p)
    disk = on_disk(store, p)
    assert disk[store.offset_key] == b"44"  # the last changelog record of the transaction
    assert store.persisted_offset(TP(changelog, p)) == 44
    assert {k for k in disk if k != store.offset_key} == {pid.encode() for pid in pids}
    assert codec.loads(disk[pids[0].encode()]).patient_id == pids[0]
    # a second transaction: its offset follows the records it sent
    store[pids[0]] = ledger(pids[0])
    store.note_sent([Metadata(changelog, p, 46)])
    store.committed(p)
    assert store.persisted_offset(TP(changelog, p)) == 46


def test_uncommitted_ledgers_of_a_revoked_partition_are_forgotten(store: LedgerStore) -> None:
    p = 2
    pid = patients_on(p, 1)[0]
    store[pid] = ledger(pid)
    store.note_sent([Metadata(store.config.changelog_topic, p, 5)])
    assert keep_partitions(store, {0, 1, 3}) >= 1
    store.committed(p)  # (a commit of it would be skipped: nothing is left to write)
    assert on_disk(store, p) == {}
    assert store.get(pid) is None


def test_reads_beyond_the_cache_decode_from_disk(
    store: LedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = 0
    pids = patients_on(p, 6)
    for pid in pids:
        store[pid] = ledger(pid)
    store.note_sent([Metadata(store.config.changelog_topic, p, 0)])
    store.committed(p)
    assert len(store.cache) == 3  # CCM_LEDGER_CACHE
    assert {pid for pid, _ in store.ledgers_of(p)} == set(pids)
    found = store.get(pids[0])
    assert found is not None and found.patient_id == pids[0] and found.partition == p
    # the gauges' census: a scan of the stored values (6 ledgers of no months here)
    actives = {TP(store.config.changelog_topic, p)}
    monkeypatch.setattr(store.app.assignor, "assigned_actives", lambda: actives)
    assert store.census_step(budget=4) is None  # the first pass is not over
    assert census(store) == (6, 0, 0, 0)


def test_a_foreign_store_is_wiped_at_assignment(store: LedgerStore) -> None:
    changelog = store.config.changelog_topic
    p = 3
    pid = patients_on(p, 1)[0]
    store._check_one(TP(changelog, p), 0, 0)  # new: metadata written
    store[pid] = ledger(pid)
    store.note_sent([Metadata(changelog, p, 0)])
    store.committed(p)
    store._check_one(TP(changelog, p), 0, 5)
    assert store.rebuilt == {} and store.get(pid) is not None  # trusted
    meta_path = store.partition_path(p).with_name(store.partition_path(p).name + META_SUFFIX)
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "app_id": "other"}))
    store._check_one(TP(changelog, p), 0, 5)
    assert "another app id" in store.rebuilt[p]
    assert on_disk(store, p) == {}
    assert json.loads(meta_path.read_text())["app_id"] == "unit"


def test_memory_store_is_the_default(tmp_path: Path) -> None:
    worker = TallyWorker(Settings(data_dir=tmp_path, partitions=PARTITIONS, app_id="m"))
    assert not isinstance(worker.table.data, LedgerStore)
    assert worker.app.conf.table_standby_replicas == 0
    assert changelog_topic_name(worker.settings) == "m-ledgers-changelog"


def test_data_dir_may_name_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from ccm_worker.store import resolve_data_dir

    monkeypatch.setattr(socket, "gethostname", lambda: "worker-7f3a")
    assert resolve_data_dir(Path("/var/lib/ccm-tally/{hostname}")) == Path(
        "/var/lib/ccm-tally/worker-7f3a"
    )
    assert resolve_data_dir(Path("data")) == Path("data")


def test_a_close_sees_the_batch_ledgers_instead_of_the_stored_ones(store: LedgerStore) -> None:
    from ccm_worker.store import ledgers_of

    p = 1
    stored, new = patients_on(p, 3), patients_on(p, 4)[3]
    for pid in stored:
        store[pid] = ledger(pid)
    store.note_sent([Metadata(store.config.changelog_topic, p, 0)])
    store.committed(p)
    in_batch = {stored[0]: ledger(stored[0]), new: ledger(new)}
    seen = list(ledgers_of(store, p, in_batch))
    assert sorted(x.patient_id for x in seen) == sorted([*stored, new])
    assert in_batch[stored[0]] in seen and in_batch[new] in seen
