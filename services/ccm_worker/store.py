"""The ledger table on RocksDB (``CCM_STORE=rocksdb``): faust's ``rocksdb`` store with the
``rocksdict`` binding, made safe for a worker that writes its changelog itself inside Kafka
transactions.

The hazard. The worker sends each batch's changelog records through the input partition's
transactional producer and commits them with the input offsets. faust's RocksDB store writes
a table assignment to disk at once, before the transaction commits; a crash would then leave
the local store *ahead* of the committed changelog (ledgers holding input that is re-delivered
and dropped as a duplicate, with the outputs of that input aborted: thresholds lost), and
faust, trusting the store's persisted offset, would keep it. So:

- **Overlay.** A ledger written during a batch stays in memory (``_overlay[partition]``); it
  goes to RocksDB only when that partition's transaction has committed
  (:meth:`LedgerStore.committed`, called right after ``commit_transaction``), in one
  ``WriteBatch`` together with faust's persisted changelog offset (the base offset of the
  last changelog batch sent in that transaction, which is never past what is on disk: faust
  re-reads from there). A crash at any point leaves the store at a committed state, behind
  or equal to the changelog: recovery reads the gap.
- **Bounded cache.** Decoded ledgers are kept in an LRU of ``CCM_LEDGER_CACHE`` entries; the
  rest stay encoded on disk. RSS depends on the cache, not on the number of patients.
- **Checks at assignment** (:meth:`LedgerStore.on_rebalance`, before faust reads a persisted
  offset): a partition store of another app id or changelog topic, one marked corrupt, one
  that RocksDB cannot open or whose offset is unreadable, one whose persisted offset is at or
  past the changelog's (committed) end, or older than the changelog's start: logged, wiped
  and rebuilt from the changelog, never trusted.

Standby replicas (faust's ``table_standby_replicas``) are applied by faust itself: the worker's
consumer reads changelogs ``read_committed`` under exactly_once, and the RocksDB store writes
each standby batch with its persisted offset, so a failover reads only the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import shutil
import socket
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from faust.stores import rocksdb as faust_rocksdb
from faust.types import TP
from rocksdict import WriteBatch

from ccm_core import codec as ledger_codec
from ccm_core.observability import get_logger
from ccm_core.tally import PatientLedger

log = get_logger("ccm.store")

META_SUFFIX = ".ccm.json"
CORRUPT_SUFFIX = ".corrupt"
META_VERSION = 1
# faust builds its consumer with fetch_max_wait_ms=1500. aiokafka keeps one fetch in flight
# per broker and leaves out of it the partitions that still have records buffered, so input
# arriving on such a partition waits for the parked fetch to return: after a backlog (some
# partition always has records buffered) the produce-to-threshold latency was about 1 s at
# p50 instead of 80 ms (bench_stream, 2026-12-07). Offsets queries (these checks, faust's
# recovery) also wait behind it: a restart with nothing to read took about 5 s more. The
# worker polls at most this long instead (an idle worker sends ten fetches a second).
FETCH_MAX_WAIT_MS = 100


def shorten_fetch_wait(app: Any) -> None:
    """Cap the worker consumer's fetch long-poll at :data:`FETCH_MAX_WAIT_MS` (either store)."""
    with contextlib.suppress(Exception):  # faust's or aiokafka's internals moved: keep theirs
        fetcher = app.consumer._thread._ensure_consumer()._fetcher
        fetcher._fetch_max_wait_ms = min(fetcher._fetch_max_wait_ms, FETCH_MAX_WAIT_MS)


# The state gauges (patients, patient-months open/closed/archived) of a RocksDB store come
# from a scan of the stored values, this many ledgers per monitor tick (5 s): about 50 ms of
# parsing (JSON only, not decoded into objects) a tick, a full pass every few minutes at
# 1,000,000 patient-months, every tick for a small store.
CENSUS_STEP = 2000


@dataclass(frozen=True)
class StoreConfig:
    """What the ledger store needs beyond faust's table: who it belongs to and its sizes."""

    app_id: str
    changelog_topic: str
    partitions: int
    cache_entries: int
    # RocksDB memory per partition: faust's defaults (a 2 GiB block cache and 3 x 64 MiB
    # write buffers per partition) would make RSS grow with the partitions held
    block_cache_bytes: int = 16 * 2**20
    write_buffer_bytes: int = 8 * 2**20
    max_write_buffers: int = 2

    def rocksdb_options(self) -> dict[str, Any]:
        return {
            "driver": "rocksdict",
            "block_cache_size": self.block_cache_bytes,
            "write_buffer_size": self.write_buffer_bytes,
            "max_write_buffer_number": self.max_write_buffers,
        }


def resolve_data_dir(path: Path) -> Path:
    """``CCM_DATA_DIR`` with ``{hostname}`` replaced by this host's name: replicas sharing one
    volume (docker compose ``--scale``) each keep their stores in a folder of their own."""
    text = str(path)
    if "{hostname}" in text:
        text = text.replace("{hostname}", socket.gethostname())
    return Path(text)


def home_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition of a key (the ledger of a patient lives there)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def store_verdict(
    *,
    meta: dict[str, Any] | None,
    app_id: str,
    changelog_topic: str,
    persisted: int | None,
    has_keys: bool,
    earliest: int | None,
    end: int | None,
) -> str | None:
    """Why a partition's local store must not be trusted (None: it may be).

    ``persisted`` is faust's persisted offset (the offset of a changelog record already
    applied to the store; faust reads on from there). ``earliest`` and ``end``: the
    changelog partition's log start and committed end (last stable offset)."""
    if meta is None:
        return "no ccm metadata (not written by this worker)"
    if meta.get("version") != META_VERSION:
        return f"metadata version {meta.get('version')!r}"
    if meta.get("app_id") != app_id:
        return f"store of another app id ({meta.get('app_id')!r})"
    if meta.get("changelog") != changelog_topic:
        return f"store of another changelog ({meta.get('changelog')!r})"
    if persisted is None:
        return "keys without a persisted offset" if has_keys else None
    if end is not None and persisted >= end:
        return f"persisted offset {persisted} at or past the changelog's end {end}"
    if earliest is not None and earliest > persisted + 1:
        return f"persisted offset {persisted} older than the changelog's start {earliest}"
    return None


def weight(ledger: PatientLedger) -> int:
    """A ledger's share of the cache: its patient-months (memory grows with them)."""
    return max(1, len(ledger.months))


class LedgerCache:
    """An LRU of decoded ledgers by patient id, bounded by ``limit`` patient-months (a
    ledger weighs its months, :func:`weight`; memory is about 3 KB per decoded month)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._items: OrderedDict[str, PatientLedger] = OrderedDict()
        self._weights: dict[str, int] = {}
        self.size = 0  # patient-months held
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> PatientLedger | None:
        found = self._items.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return found

    def put(self, key: str, ledger: PatientLedger) -> None:
        items, weights = self._items, self._weights
        self.size += weight(ledger) - weights.get(key, 0)
        weights[key] = weight(ledger)
        items[key] = ledger
        items.move_to_end(key)
        while self.size > self.limit and len(items) > 1:
            old, _ = items.popitem(last=False)
            self.size -= weights.pop(old)

    def pop(self, key: str) -> None:
        if self._items.pop(key, None) is not None:
            self.size -= self._weights.pop(key)

    def drop_partitions(self, keep: set[int]) -> int:
        gone = [k for k, v in self._items.items() if v.partition not in keep]
        for k in gone:
            self.pop(k)
        return len(gone)

    def __len__(self) -> int:
        return len(self._items)


class LedgerStore(faust_rocksdb.Store):
    """faust's RocksDB store with an in-memory overlay of uncommitted ledgers, a bounded
    cache of decoded ones, and local-store checks at assignment (module docstring)."""

    def __init__(self, url: Any, app: Any, table: Any, *, config: StoreConfig, **kwargs: Any):
        kwargs["options"] = config.rocksdb_options()
        super().__init__(url, app, table, **kwargs)
        self.config = config
        self.cache = LedgerCache(config.cache_entries)
        self._overlay: dict[int, dict[str, PatientLedger]] = defaultdict(dict)
        self._encoded: dict[int, dict[str, bytes]] = defaultdict(dict)  # as sent, per overlay
        self._sent: dict[int, int] = {}  # changelog partition -> offset of its last record
        self._unsent: dict[int, int] = defaultdict(int)  # ledgers set, not yet sent
        self.recovered: dict[int, int] = defaultdict(int)  # changelog records applied
        self._census: Generator[tuple[int, int, int]] | None = None
        self._census_sum = [0, 0, 0, 0]
        self.census_counts: tuple[int, int, int, int] | None = None  # last complete pass
        self.rebuilt: dict[int, str] = {}  # partition -> why its local store was wiped

    # ------------------------------------------------------------------ mapping (decoded)

    def _partition_of(self, key: str) -> int:
        return home_partition(key.encode(), self.config.partitions)

    def get(self, key: Any, default: Any = None) -> Any:
        key = _text(key)
        p = self._partition_of(key)
        found = self._overlay.get(p, {}).get(key)
        if found is not None:
            return found
        found = self.cache.get(key)
        if found is not None:
            return found
        raw = self._read(p, key.encode())
        if raw is None:
            return default
        ledger = ledger_codec.loads(raw)
        ledger.partition = p
        self.cache.put(key, ledger)
        return ledger

    def __getitem__(self, key: Any) -> Any:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None

    def __setitem__(self, key: Any, value: Any) -> None:
        """Into the overlay only: RocksDB gets it once its transaction committed."""
        key = _text(key)
        partition = value.partition if value.partition is not None else self._partition_of(key)
        self._overlay[partition][key] = value
        self._encoded[partition].pop(key, None)  # changed: encoded again when sent
        self._unsent[partition] += 1  # the worker sends one changelog record per set
        self.cache.put(key, value)

    def encode(self, ledger: PatientLedger) -> bytes:
        """The changelog value of a ledger just set, kept for its write after the commit
        (the same bytes go to the changelog and to RocksDB, encoded once)."""
        raw = ledger_codec.dumps(ledger)
        partition = ledger.partition
        if partition is None:
            partition = self._partition_of(ledger.patient_id)
        if ledger.patient_id in self._overlay.get(partition, {}):
            self._encoded[partition][ledger.patient_id] = raw
        return raw

    def __delitem__(self, key: Any) -> None:  # the worker never deletes a ledger
        raise NotImplementedError("ledgers are not deleted")

    def pop(self, key: Any, default: Any = None) -> Any:
        """Forget a decoded ledger (memory only; the disk copy stays committed)."""
        key = _text(key)
        found = self.get(key, default)
        self.cache.pop(key)
        for overlay in self._overlay.values():
            overlay.pop(key, None)
        return found

    def ledgers_of(self, partition: int) -> Iterator[tuple[str, PatientLedger]]:
        """Every ledger of one partition: the overlay's, then the cached or stored ones."""
        overlay = self._overlay.get(partition, {})
        db = self._dbs.get(partition)
        if db is not None:
            for raw_key, raw in db.items():
                if raw_key == self.offset_key:
                    continue
                key = bytes(raw_key).decode()
                if key in overlay:
                    continue
                found = self.cache.get(key)
                if found is None:
                    found = ledger_codec.loads(raw)
                    found.partition = partition
                yield key, found
        yield from list(overlay.items())

    def items(self) -> Any:
        return list(self._iter_items())

    def values(self) -> Any:
        return [ledger for _, ledger in self._iter_items()]

    def _iter_items(self) -> Iterator[tuple[str, PatientLedger]]:
        actives = {
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.config.changelog_topic
        }
        for p in sorted(actives | set(self._overlay)):
            yield from self.ledgers_of(p)

    def census_step(self, budget: int = CENSUS_STEP) -> tuple[int, int, int, int] | None:
        """Go on with the scan of the stored ledgers of the active partitions for ``budget``
        ledgers; (patients, open, closed, archived) of the last complete pass, or None."""
        if self._census is None:
            self._census = self._census_scan()
            self._census_sum = [0, 0, 0, 0]
        total = self._census_sum
        for _ in range(budget):
            counts = next(self._census, None)
            if counts is None:
                self.census_counts = (total[0], total[1], total[2], total[3])
                self._census = None
                break
            total[0] += 1
            total[1] += counts[0]
            total[2] += counts[1]
            total[3] += counts[2]
        return self.census_counts

    def _census_scan(self) -> Generator[tuple[int, int, int]]:
        actives = sorted(
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.config.changelog_topic
        )
        for p in actives:
            db = self._dbs.get(p)
            if db is None:
                continue
            for key, raw in db.items():
                if key == self.offset_key:
                    continue
                try:
                    value = orjson.loads(raw)
                    # a month's revision (index 11) is >= 0 once it was closed
                    closed = sum(1 for m in value["m"] if m[11] >= 0)
                    yield len(value["m"]) - closed, closed, len(value.get("ar") or ())
                except (ValueError, KeyError, IndexError, TypeError):
                    continue

    def _stop_census(self) -> None:
        """Before a rebalance: an open scan holds its databases (and their locks)."""
        census, self._census = self._census, None
        if census is not None:
            census.close()

    def estimated_keys(self) -> int:
        total = 0
        for db in list(self._dbs.values()):
            with contextlib.suppress(Exception):
                total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
        return total

    def _read(self, partition: int, key: bytes) -> bytes | None:
        try:
            db = self._db_for_partition(partition)
            value = db.get(key)
        except Exception:
            self._mark_corrupt(partition)
            raise
        return bytes(value) if value is not None else None

    # ------------------------------------------------------------------ the commit path

    def note_sent(self, results: Iterable[Any]) -> None:
        """The record metadata of a batch's sends (one per record batch, with its base
        offset): remember the offset of the last changelog record per partition, the
        persisted offset once its transaction commits.

        The batch's changelog records of a partition (one per ledger set since the last
        call) follow its first record batch's base offset; only this partition's producer
        writes there, so they are contiguous, and were they not, the offset computed would
        be lower than the true one: faust would re-read a few records, never skip one."""
        topic = self.config.changelog_topic
        first: dict[int, int] = {}
        for md in results:
            if getattr(md, "topic", None) == topic and md.offset is not None:
                p = md.partition
                first[p] = min(md.offset, first.get(p, md.offset))
        sent, unsent = self._sent, self._unsent
        for p, base in first.items():
            last = base + max(1, unsent.pop(p, 1)) - 1
            sent[p] = max(last, sent.get(p, -1))
        unsent.clear()

    def committed(self, partition: int) -> None:
        """Partition ``partition``'s transaction committed: write its ledgers and the
        changelog offset they correspond to, atomically, to its RocksDB."""
        overlay = self._overlay.pop(partition, None)
        encoded = self._encoded.pop(partition, {})
        offset = self._sent.pop(partition, None)
        if not overlay and offset is None:
            return
        batch = WriteBatch(raw_mode=True)
        dumps = ledger_codec.dumps
        for key, ledger in (overlay or {}).items():
            raw = encoded.get(key)
            batch.put(key.encode(), raw if raw is not None else dumps(ledger))
        if offset is not None:
            batch.put(self.offset_key, str(offset).encode())
        self._db_for_partition(partition).write(batch)

    def drop_uncommitted(self, keep: set[int]) -> int:
        """Forget the in-memory ledgers of partitions not in ``keep`` (revoked): their
        uncommitted writes are aborted, their next owner rebuilds from the changelog."""
        dropped = 0
        for p in [p for p in self._overlay if p not in keep]:
            dropped += len(self._overlay.pop(p))
            self._encoded.pop(p, None)
            self._sent.pop(p, None)
        for p in [p for p in self._sent if p not in keep]:
            self._sent.pop(p, None)
        self._unsent.clear()
        return dropped + self.cache.drop_partitions(keep)

    # ------------------------------------------------------------------ recovery (faust)

    def apply_changelog_batch(self, batch: Any, to_key: Any, to_value: Any) -> None:
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        for event in events:
            msg = event.message
            self.recovered[msg.partition] += 1
            if msg.key is not None:
                self.cache.pop(bytes(msg.key).decode())

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Log how many changelog records this recovery applied (a restart on a kept data
        directory reads only those written since the last flush)."""
        await super().on_recovery_completed(active_tps, standby_tps)
        read = dict(sorted(self.recovered.items()))
        log.info(
            "changelog_recovered",
            records=sum(read.values()),
            by_partition={str(k): v for k, v in read.items()},
            active=sorted(tp.partition for tp in active_tps),
            standby=sorted(tp.partition for tp in standby_tps),
            rebuilt={str(k): v for k, v in sorted(self.rebuilt.items())},
        )
        self.recovered.clear()

    # ------------------------------------------------------------------ checks at assignment

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        self.recovered.clear()  # count this recovery's reads only (standbys read on before)
        self._stop_census()
        shorten_fetch_wait(self.app)
        mine = {tp for tp in newly_assigned if tp.topic == self.config.changelog_topic}
        if mine:
            try:
                await self.check_partitions(mine)
            except Exception:
                log.exception("local_store_check_failed")
                raise
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def check_partitions(self, tps: set[TP]) -> None:
        consumer: Any = self.app.consumer
        ordered = sorted(tps)
        earliest, ends = await asyncio.gather(
            consumer.earliest_offsets(*ordered), consumer.highwaters(*ordered)
        )
        for tp in ordered:
            self._check_one(tp, earliest.get(tp), ends.get(tp))

    def _check_one(self, tp: TP, earliest: int | None, end: int | None) -> None:
        p = tp.partition
        path = self.partition_path(p)
        if not path.exists():
            self._write_meta(p)
            log.info("local_store_new", partition=p, changelog_end=end)
            return
        reason: str | None = None
        persisted: int | None = None
        if _sidecar(path, CORRUPT_SUFFIX).exists():
            reason = "marked corrupt after a failed read"
        else:
            meta = self._read_meta(p)
            try:
                self._close_db(p)
                db = self._db_for_partition(p)
                raw = db.get(self.offset_key)
                persisted = int(raw) if raw is not None else None
                has_keys = any(True for _ in _first_keys(db, self.offset_key))
            except Exception as exc:
                reason = f"unreadable ({type(exc).__name__}: {exc})"
            else:
                reason = store_verdict(
                    meta=meta,
                    app_id=self.config.app_id,
                    changelog_topic=self.config.changelog_topic,
                    persisted=persisted,
                    has_keys=has_keys,
                    earliest=earliest,
                    end=end,
                )
        if reason is None:
            log.info(
                "local_store_kept",
                partition=p,
                persisted_offset=persisted,
                changelog_start=earliest,
                changelog_end=end,
                to_read=max(0, (end or 0) - (persisted or 0) - 1) if persisted is not None else end,
            )
            return
        log.warning("local_store_rebuilt", partition=p, reason=reason, changelog_end=end)
        self.rebuilt[p] = reason
        self._wipe(p)

    def _close_db(self, partition: int) -> None:
        db = self._dbs.pop(partition, None)
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()
            del db
            gc.collect()

    def _wipe(self, partition: int) -> None:
        self._close_db(partition)
        path = self.partition_path(partition)
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a file where the directory should be
        _sidecar(path, CORRUPT_SUFFIX).unlink(missing_ok=True)
        self._overlay.pop(partition, None)
        self._encoded.pop(partition, None)
        self._sent.pop(partition, None)
        self._unsent.pop(partition, None)
        self.cache.drop_partitions({p for p in range(self.config.partitions) if p != partition})
        self._write_meta(partition)

    def _meta_path(self, partition: int) -> Path:
        return _sidecar(self.partition_path(partition), META_SUFFIX)

    def _write_meta(self, partition: int) -> None:
        path = self._meta_path(partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "version": META_VERSION,
            "app_id": self.config.app_id,
            "changelog": self.config.changelog_topic,
            "partition": partition,
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(path)

    def _read_meta(self, partition: int) -> dict[str, Any] | None:
        try:
            meta = json.loads(self._meta_path(partition).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def _mark_corrupt(self, partition: int) -> None:
        with contextlib.suppress(OSError):
            _sidecar(self.partition_path(partition), CORRUPT_SUFFIX).touch()
        log.error("local_store_read_failed", partition=partition)


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _first_keys(db: Any, offset_key: bytes) -> Iterator[bytes]:
    for key in db.keys():  # noqa: SIM118  (an Rdict, not a dict)
        if key != offset_key:
            yield key
            return


def _text(key: Any) -> str:
    return bytes(key).decode() if isinstance(key, bytes | bytearray) else str(key)


# ---------------------------------------------------------------------- helpers for app.py
# (the same calls work on faust's memory store, where ledgers are all decoded in a dict)


def ledgers_of(
    data: Any, partition: int, touched: dict[str, PatientLedger]
) -> Iterable[PatientLedger]:
    """The ledgers of one partition, those of the batch so far (``touched``) instead of their
    stored versions. RocksDB: one at a time, decoded as the iteration reaches them (a close
    keeps only the ledgers it changes, so memory stays bounded by the cache)."""
    if isinstance(data, LedgerStore):
        return _stored_then(data, partition, touched)
    # One pass over the memory store's dict, not over a copy of it: nothing else runs during
    # this loop. The copy made a tuple per ledger of the whole table for every close command
    # (24 commands for 3 practices on 8 partitions): at 100,000 ledgers, 2.4 million short-lived
    # tracked objects, which set off full garbage collections of the heap (its ledgers and the
    # close's outputs: ~1.8 s each); the iterator reuses its one tuple.
    ledgers = {pid: ledger for pid, ledger in data.items() if ledger.partition == partition}
    ledgers.update(touched)
    return list(ledgers.values())


def _stored_then(
    data: LedgerStore, partition: int, touched: dict[str, PatientLedger]
) -> Iterator[PatientLedger]:
    pending = dict(touched)
    for pid, ledger in data.ledgers_of(partition):
        yield pending.pop(pid, ledger)
    yield from pending.values()


def keep_partitions(data: Any, mine: set[int]) -> int:
    """After an assignment: forget in-memory ledgers of partitions we no longer own."""
    if isinstance(data, LedgerStore):
        return data.drop_uncommitted(mine)
    stale = [pid for pid, ledger in list(data.items()) if ledger.partition not in mine]
    for pid in stale:
        data.pop(pid, None)
    return len(stale)


def encoder(data: Any) -> Callable[[PatientLedger], bytes]:
    """The changelog value encoder of a batch (RocksDB: keeps the bytes for the flush)."""
    if isinstance(data, LedgerStore):
        return data.encode
    return ledger_codec.dumps


def note_sent(data: Any, results: Iterable[Any]) -> None:
    if isinstance(data, LedgerStore):
        data.note_sent(results)


def committed(data: Any, partitions: Iterable[int]) -> None:
    """After ``commit_transaction`` of the input partitions ``partitions``."""
    if isinstance(data, LedgerStore):
        for p in partitions:
            data.committed(p)


def census(data: Any) -> tuple[int, int, int, int] | None:
    """(patients, open, closed, archived months). RocksDB: from a scan spread over the
    monitor's ticks (:meth:`LedgerStore.census_step`), None until its first pass ends (then
    its patients are estimated by :meth:`LedgerStore.estimated_keys`)."""
    if isinstance(data, LedgerStore):
        return data.census_step()
    open_ = closed = archived = patients = 0
    for ledger in list(data.values()):
        patients += 1
        archived += len(ledger.archived)
        for month in ledger.months.values():
            if month.closed:
                closed += 1
            else:
                open_ += 1
    return patients, open_, closed, archived
