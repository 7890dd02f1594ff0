"""The tally worker: a faust-streaming app wiring topics, the ledger table, timers and web views
to the pure core (no billing logic here).

- **Agent** ``tally`` over the time-log and month-close topics (and any further input topic
  in :func:`input_topics`), in batches of what is ready (:mod:`.batching`). Each input is
  decoded and applied through :func:`ccm_core.ingest.process`, the function ``ccm-tally
  replay`` uses too.
- **Table** ``ledgers``: one :class:`~ccm_core.tally.PatientLedger` per patient id, in faust's
  store, with its compacted changelog ``<app id>-ledgers-changelog`` (values in the core's
  ledger codec). faust recovers it on every assignment (``read_committed``).
- **Fence** (``processing_guarantee="exactly_once"``): faust keeps one transactional producer
  per input partition (transactional id ``<app id>-<group>-<partition>``) and commits a
  partition's input offsets inside that producer's transaction. Every output of an input
  record and every changelog write of its ledger go through **that input partition's**
  producer (:meth:`TallyWorker._send_all`), and a commit never runs in the middle of a batch
  (:meth:`TallyWorker._guard_commits`). So a batch's outputs, its state and its offsets
  become visible together or not at all, and a worker that lost its partitions (paused past
  the session timeout, cut off) is fenced by the new owner's producer: nothing it writes
  afterwards is ever read by a ``read_committed`` consumer, and it exits (code 71) when it
  learns so.
- **Any producer partitioner**: a time log must be on its patient's partition (Kafka's default
  murmur2 of the key, which faust's table routing uses too). One that arrived elsewhere (a
  librdkafka CRC32 producer, random or explicit partitions) is forwarded, unchanged, to its
  key's partition of the same topic before the arrival offset is committed, and counted in
  ``ccm_rerouted_records_total``; it is tallied when it arrives there (once, however many
  times it is forwarded: the core drops a redelivered log as a duplicate).
- **Timer** ``close_due_months`` puts a due-close command on each owned control partition; the
  agent applies it in order with the partition's input (closes and retention).
- **Web views** (faust's aiohttp server): ``/metrics``, ``/healthz``, ``/readyz`` and
  ``/tally/{patient_id}``, routed to the owner of the key by faust's table router.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import io
import os
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from . import faust_fixes

faust_fixes.apply()  # before any faust object is built: see the module's docstring

import faust  # noqa: E402  (the fixes must be applied first)
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from aiokafka.errors import KafkaError  # noqa: E402
from aiokafka.partitioner import murmur2  # noqa: E402
from faust.serializers import codecs  # noqa: E402
from faust.types import TP  # noqa: E402

from ccm_core import codec as ledger_codec  # noqa: E402
from ccm_core import observability  # noqa: E402
from ccm_core.binding import kafka_headers  # noqa: E402
from ccm_core.config import CoreConfig, load_config  # noqa: E402
from ccm_core.contracts import (  # noqa: E402
    BillingRecord,
    MonthCloseCommand,
    Outcome,
    Reason,
    ThresholdEvent,
)
from ccm_core.ingest import (  # noqa: E402
    Processed,
    Source,
    apply_close,
    decode_close,
    process,
    rejected_output,
)
from ccm_core.observability import (  # noqa: E402
    ASSIGNED_PARTITIONS,
    BATCH_SIZE,
    CONSUMER_LAG,
    END_TO_END,
    EVENTS,
    MONTH_CLOSE,
    PATIENT_MONTHS,
    PATIENTS,
    PROCESSING,
    RECORD_LINES,
    RECORDS,
    REJECTIONS,
    REROUTED,
    THRESHOLDS,
    get_logger,
)
from ccm_core.settings import Settings  # noqa: E402
from ccm_core.tally import (  # noqa: E402
    Output,
    PatientLedger,
    TallyEngine,
    coalesce_status,
)

from . import http_auth, kafka_security  # noqa: E402
from . import store as ledger_store  # noqa: E402
from .batching import take_ready  # noqa: E402
from .exits import BATCH_FAILED, FENCED, STALLED  # noqa: E402
from .routing import advertised_url  # noqa: E402

log = get_logger("ccm.worker")

TABLE_NAME = "ledgers"
AGENT_NAME = "tally"

Ledgers = dict[str, PatientLedger]
Message = tuple[str, int, bytes | None, bytes | None, list[tuple[str, bytes]] | None]
"""(topic, partition, key, value, headers) to send"""


def changelog_topic_name(settings: Settings) -> str:
    return f"{settings.app_id}-{TABLE_NAME}-changelog"


def input_topics(settings: Settings) -> list[str]:
    """The agent's input topics: time logs, enrollment events and close commands."""
    t = settings.topics
    return [t.timelog, t.enrollment, t.month_close]


@functools.lru_cache(maxsize=1 << 16)
def home_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java clients, aiokafka, faust's router)
    gives a key: a patient's ledger, its inputs and its outputs all live there. Cached: it is
    asked for every input, and aiokafka's murmur2 is pure Python (3 us a key)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class LedgerCodec(codecs.Codec):
    """Changelog value codec: the core's compact ledger layout (``ccm_core.codec``)."""

    def _dumps(self, obj: Any) -> bytes:
        return ledger_codec.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return ledger_codec.loads(s)


codecs.register("ccm_ledger", LedgerCodec())


class LedgerTable(faust.Table[str, PatientLedger]):
    """The ledger table: raw patient-id keys, core-codec values on the changelog; each
    recovered ledger remembers its partition (closes and revokes select ledgers by it).
    With ``store_config`` its store is a :class:`~ccm_worker.store.LedgerStore` (RocksDB)."""

    def __init__(
        self, *args: Any, store_config: ledger_store.StoreConfig | None = None, **kw: Any
    ) -> None:
        self.store_config = store_config
        super().__init__(*args, **kw)

    def _new_store(self) -> Any:
        if self.store_config is None:
            return super()._new_store()
        return ledger_store.LedgerStore(
            "rocksdb://",
            self.app,
            self,
            config=self.store_config,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
        )

    def _serializer_from_type(self, typ: Any) -> str:
        return "raw" if typ is str else "ccm_ledger"

    def apply_changelog_batch(self, batch: Any) -> None:
        events = list(batch)
        super().apply_changelog_batch(events)
        # The recovered ledgers stay for the run: out of the cyclic collector's reach at once
        # (see TallyWorker._freeze_heap; the monitor that does it runs only after the first
        # recovery). Without it the collector walked every ledger recovered so far again and
        # again: most of the recovery's CPU at 100,000 patient-months.
        gc.freeze()
        data = self.data
        if isinstance(data, ledger_store.LedgerStore):
            return  # stored encoded; a ledger read from it takes its key's partition
        for event in events:
            key = event.key
            if isinstance(key, bytes | bytearray):
                key = bytes(key).decode()
            ledger = data.get(key)
            if ledger is not None:
                ledger.partition = event.message.partition


RECORD_BATCH_BYTES = 256 * 1024
"""Size of the record batches the worker's producers fill (see ``producer_max_batch_size``)."""
HEAP_FULL_COLLECTION_SECONDS = 3600.0
"""How often the frozen heap is collected in full (see ``TallyWorker._freeze_heap``)."""
COLLECTOR_OFF_EVENTS = 1000
"""A batch this large (a backlog) runs with the cyclic collector off, as a close does."""


class FencedError(Exception):
    """This worker's transactional producer for a partition is gone or fenced."""


class TallyWorker:
    """Builds the faust app for one :class:`Settings` and holds its wiring."""

    def __init__(self, settings: Settings, config: CoreConfig | None = None) -> None:
        self.settings = s = settings
        self.engine = TallyEngine(
            config or load_config(settings.profiles_file, settings.practices_file)
        )
        # every CPT code of the configured profiles has its series at 0 from the start
        observability.initialize_labels(observability.profile_codes(self.engine.config.profiles))
        self.url = advertised_url(s)
        host_port = self.url.split("://", 1)[1].rsplit(":", 1)
        data_dir = ledger_store.resolve_data_dir(s.data_dir)  # "{hostname}" (compose replicas)
        data_dir.mkdir(parents=True, exist_ok=True)
        session = s.session_timeout_seconds
        rocksdb = s.store == "rocksdb"
        self.app = faust.App(
            s.app_id,
            **kafka_security.faust_broker_kwargs(s),  # brokers, TLS and SASL
            **http_auth.faust_web_kwargs(s),  # bind, port, HTTPS, bearer-token/mTLS middleware
            store="rocksdb://" if rocksdb else "memory://",
            datadir=str(data_dir),
            processing_guarantee="exactly_once",
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            topic_allow_declare=True,
            # a standby is a kept copy only on disk (the memory store re-reads from the start)
            table_standby_replicas=s.standby_replicas if rocksdb else 0,
            broker_session_timeout=session,
            broker_heartbeat_interval=max(0.1, min(3.0, session / 3)),
            broker_rebalance_timeout=max(30.0, 3 * session),
            # commits are made by the agent after each batch (latency of read_committed
            # consumers); faust's own timer is a backstop and waits for the batch in flight
            broker_commit_interval=5.0,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            producer_linger_ms=2,
            # faust's default is 16 KiB, and aiokafka puts one record batch per
            # topic-partition in a produce request, one request in flight per broker for an
            # idempotent (transactional) producer: a close of 100,000 patient-months (about
            # 480 MB of records, statuses, ChargeItems and ledgers) was some 30,000 round trips.
            # 256 KiB stays well under the broker's and the topics' 1 MB message limit.
            producer_max_batch_size=RECORD_BATCH_BYTES,
            stream_buffer_maxsize=max(4096, 2 * s.batch_max_events),
            stream_wait_empty=True,
            stream_recovery_delay=0.2,
            web_enabled=True,
            web_host=host_port[0],
            canonical_url=self.url,
            web_in_thread=False,
            # faust's own pages would list table contents (PHI) and internals: off
            web_stats_enabled=False,
            web_graph_enabled=False,
            web_router_enabled=False,
            web_tables_enabled=False,
            web_metrics_enabled=False,
        )
        n = s.partitions
        self.inputs = input_topics(s)
        self.control = s.topics.month_close
        self.rerouted_topics = {t for t in self.inputs if t != self.control}
        self.input_topic = self.app.topic(
            *self.inputs,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=n,
        )
        self.table = LedgerTable(
            self.app,
            name=TABLE_NAME,
            default=None,
            partitions=n,
            key_type=str,
            help="One PatientLedger per patient id (all its patient-months).",
            store_config=ledger_store.StoreConfig(
                app_id=s.app_id,
                changelog_topic=changelog_topic_name(s),
                partitions=n,
                cache_entries=s.ledger_cache,
            )
            if rocksdb
            else None,
        )
        self.app.tables.add(self.table)
        self.changelog = self.table.changelog_topic.get_topic_name()
        if self.changelog != changelog_topic_name(s):  # topics.py creates this one
            raise RuntimeError(f"unexpected changelog topic {self.changelog}")
        self.app.agent(self.input_topic, name=AGENT_NAME)(self._agent)
        self.app.timer(s.close_tick_seconds, on_leader=False, name="close_due_months")(
            self._close_tick
        )
        self.app.timer(5.0, on_leader=False, name="monitor")(self._monitor)
        self._recovery_probe = faust_fixes.RecoveryEndProbe()
        self._recovery_probe_task: asyncio.Task[None] | None = None
        self._offsets_client: AIOKafkaConsumer | None = None  # see _end_offsets
        self.app.on_before_shutdown.connect(cast(Any, self._stop_offsets_client))
        self.app.on_partitions_assigned.connect(cast(Any, self._on_assigned))
        self._batch_lock = asyncio.Lock()
        self._commits_guarded = False
        self._batch_started: float | None = None
        self._batch_progress = time.monotonic()  # a batch's last step (a close, its sends)
        self._last_progress = time.monotonic()
        # per input partition: (committed offset, when it was first seen at that offset)
        self._last_committed: dict[TP, tuple[int, float]] = {}
        # next offset after the last record processed, per partition, since the last assignment
        self._delivered: dict[TP, int] = {}
        self._refetched: dict[TP, int] = {}  # committed offset last read again (marker tails)
        self._tail_seen: dict[TP, tuple[int, int]] = {}  # (committed, position) last tick
        self._assigned_at = time.monotonic()
        self._last_unready = time.monotonic()
        self._unready_since: float | None = None
        self._recovered_seen = -1
        self._watchdog_ran_at = time.monotonic()
        self._watchdog_armed = False
        self._lag_partitions: set[int] = set()
        self._heap_collected_at = time.monotonic()  # the last full collection (_freeze_heap)
        self._outcome_counters = {o: EVENTS.labels(o.value) for o in Outcome}
        self._debug = s.log_level == "DEBUG"
        from .web import register_views  # aiohttp views need the app built

        register_views(self)

    # ------------------------------------------------------------------ the agent

    async def _agent(self, stream: Any) -> None:
        s = self.settings
        self._guard_commits()
        uncommitted_since: float | None = None
        async for events in take_ready(stream, s.batch_max_events, s.batch_within_seconds):
            try:
                async with self._batch_lock:
                    await self.process_batch(events)
                    for event in events:  # acked now, so that the commit below covers them
                        await stream.ack(event)
                now = time.monotonic()
                uncommitted_since = uncommitted_since or now
                backlog = self._queued(stream) > max(500, 2 * len(events))
                if backlog and now - uncommitted_since < s.commit_max_seconds:
                    # a backlog: the next batch joins these transactions (a commit costs a
                    # few round trips per partition; at a backlog it would be most of a batch)
                    continue
                t_commit = time.perf_counter()
                # a commit already running (faust's timer) took the lock after this batch,
                # so it covers it: faust's commit() then waits for it and returns
                await self.app.consumer.commit()
                uncommitted_since = None
                if self._debug:
                    log.debug("commit_timing", ms=round((time.perf_counter() - t_commit) * 1e3, 1))
            except FencedError as exc:
                # The group gave our partitions to another worker, whose producer fenced ours:
                # nothing of this batch is visible to read_committed readers. Exit, so the
                # supervisor starts a fresh worker (no stale ledger can survive in memory).
                log.error("producer_fenced_exiting", error=str(exc))
                os._exit(FENCED)
            except BaseException as exc:
                # An unfinished batch must never be committed (some of its events may be
                # acked already). Fail-stop: exit now; a fresh worker replays the batch.
                log.critical("batch_failed_exiting", error=repr(exc), events=len(events))
                os._exit(BATCH_FAILED)

    @staticmethod
    def _queued(stream: Any) -> int:
        """Input already fetched and queued for the agent (a backlog when it is large)."""
        try:
            return int(stream.channel.queue.qsize())
        except Exception:  # no queue to look at: no backlog
            return 0

    def _guard_commits(self) -> None:
        """Make faust's commits take the batch lock, and commit partitions side by side.

        faust commits (its timer, a rebalance's ``wait_empty``, the fetcher's
        ``broker_commit_every``) may run while the agent is in the middle of a batch. A commit
        then must neither make half a batch visible nor carry offsets computed before a batch
        whose writes it would seal: ``Consumer.force_commit`` reads the acked offsets first
        and only then reaches the transactions, so the lock is taken around the whole of
        ``force_commit`` (offsets read, transactions committed, ``_committed_offset`` updated
        under one lock). Inside it, :meth:`_commit_transactions` replaces faust's
        ``TransactionManager.commit``, which commits the partitions' transactions one after
        the other (four round trips each): ours run side by side, which is most of the
        produce-to-readable latency at low rates.
        """
        if self._commits_guarded:
            return
        consumer: Any = self.app.consumer
        lock = self._batch_lock
        force_commit = consumer.force_commit  # faust's, bound

        async def guarded(*args: Any, **kwargs: Any) -> bool:
            async with lock:
                return bool(await force_commit(*args, **kwargs))

        consumer.force_commit = guarded
        consumer.transactions.commit = self._commit_transactions
        self._commits_guarded = True

    async def _commit_transactions(
        self, offsets: dict[TP, int], start_new_transaction: bool = True
    ) -> bool:
        """Commit each input partition's transaction with its offsets, concurrently.

        Same grouping as faust's ``TransactionManager.commit`` (transactional id
        ``<app id>-<group>-<partition>``); a partition whose producer faust already stopped
        (revoked) is left to its new owner, as faust does. A fenced producer means another
        worker owns the partition now: exit (71) rather than go on with stale state.
        """
        producer: Any = self.app.producer
        group_id = self.app.conf.id
        by_tid: dict[str, dict[TP, int]] = defaultdict(dict)
        for tp, offset in offsets.items():
            group = self.app.assignor.group_for_topic(tp.topic)
            by_tid[f"{group_id}-{group}-{tp.partition}"][tp] = offset

        async def one(tid: str, tp_offsets: dict[TP, int]) -> None:
            async with producer._trn_locks[tid]:
                txn = producer._transaction_producers.get(tid)
                if txn is None:
                    log.info("commit_skipped_revoked", transactional_id=tid)
                    return
                await txn.send_offsets_to_transaction(tp_offsets, group_id)
                await txn.commit_transaction()
                ledger_store.committed(self.table.data, {tp.partition for tp in tp_offsets})
                if start_new_transaction:
                    await txn.begin_transaction()

        results = await asyncio.gather(
            *(one(tid, tp_offsets) for tid, tp_offsets in by_tid.items()),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if any(_is_fenced(f) for f in failures):
            log.error("producer_fenced_exiting", error=repr(failures[0]))
            os._exit(FENCED)
        if failures:
            raise failures[0]
        return True

    async def process_batch(self, events: Sequence[Any]) -> None:
        self._batch_started = self._batch_progress = time.monotonic()
        started = time.perf_counter()
        n = self.settings.partitions
        data = self.table.data
        touched: dict[int, Ledgers] = defaultdict(dict)  # input partition -> its changed ledgers
        produced: dict[int, list[Output]] = defaultdict(list)  # input partition -> outputs
        forwards: list[Message] = []  # inputs off their patient's partition
        delivered = self._delivered
        if len(events) >= COLLECTOR_OFF_EVENTS:
            # a backlog's batch makes its outputs and ledgers faster than the young
            # generations empty: collections walked them for nothing (no reference cycles;
            # 0.6 s of 7.8 s of CPU in a 100,000-event backlog with the per-batch freeze)
            self._pause_collector()
        for event in events:
            msg = event.message
            p = msg.partition
            delivered[msg.tp] = msg.offset + 1
            raw = msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b"")
            if msg.topic == self.control:
                produced[p] += self._close(raw, msg, touched[p])
                # a close of a large partition takes seconds: let the monitor and the web
                # views run between closes, and tell the watchdog the batch is moving
                self._batch_progress = time.monotonic()
                await asyncio.sleep(0)
                continue
            key: bytes | None = msg.key
            if key is not None and msg.topic in self.rerouted_topics:
                home = home_partition(key, n)
                if home != p:
                    # not on its patient's partition (another partitioner): forward it there
                    forwards.append((msg.topic, home, key, raw, _headers(msg)))
                    REROUTED.labels(msg.topic).inc()
                    if self._debug:
                        log.debug("input_rerouted", partition=p, offset=msg.offset, to=home)
                    continue
            produced[p] += self._apply(raw, msg, key, data, touched[p])
        out: dict[int, list[Message]] = {}  # input partition -> what it sends
        for p, outputs in produced.items():
            # one status per patient-month per batch: the topic is compacted, the last wins
            out[p] = [self._message(p, o) for o in coalesce_status(outputs)]
        changelog, dumps = self.changelog, ledger_store.encoder(data)
        for p, ledgers in touched.items():
            sends = out.setdefault(p, [])
            for patient_id, ledger in ledgers.items():
                data[patient_id] = ledger
                sends.append((changelog, p, patient_id.encode(), dumps(ledger), None))
        t_sent = time.perf_counter()
        self._batch_progress = time.monotonic()
        await self._send_all(out, forwards)
        if self._collector_paused:  # by a close (see _pause_collector): sent, so let go
            produced.clear()
            out.clear()
            self._resume_collector()
        # What the batch made that lives on (its ledgers) goes out of the collector's reach at
        # once (see _freeze_heap): in a backlog the table grows by thousands of ledgers a
        # second, and full collections walked them all again and again before the monitor's
        # next tick (20 in a 100,000-event backlog: 1.7 s of the worker's 9.2 s of CPU).
        gc.freeze()
        if self._debug:
            log.debug(
                "batch_timing",
                events=len(events),
                compute_ms=round((t_sent - started) * 1e3, 1),
                send_ms=round((time.perf_counter() - t_sent) * 1e3, 1),
            )
        self._batch_started = None
        finished = time.perf_counter()
        BATCH_SIZE.observe(len(events))
        per_event = (finished - started) / max(1, len(events))
        wall = time.time()
        for event in events:
            PROCESSING.observe(per_event)
            END_TO_END.observe(max(0.0, wall - event.message.timestamp))

    def _apply(
        self,
        raw: bytes,
        msg: Any,
        key_bytes: bytes | None,
        data: Any,
        touched: Ledgers,
    ) -> list[Output]:
        # the input must be keyed by patient id: an unkeyed log is a key mismatch too
        key = key_bytes.decode("utf-8", "replace") if key_bytes is not None else ""
        source = _source(msg)
        partition = msg.partition

        def lookup(patient_id: str) -> PatientLedger:
            found: PatientLedger | None = touched.get(patient_id)
            if found is None:
                found = data.get(patient_id)
            if found is None:
                found = PatientLedger(patient_id, partition=partition)
            return found

        try:
            processed, ledger = process(self.engine, lookup, raw, source, key=key)
        except Exception as exc:  # a bug must not lose the event nor stop the partition
            log.exception("event_failed", partition=msg.partition, offset=msg.offset)
            reason = Reason.INTERNAL_ERROR
            dead = rejected_output(raw, reason, type(exc).__name__, source, key)
            processed, ledger = Processed(Outcome.REJECTED, [dead], None, reason), None
        self._outcome_counters[processed.outcome].inc()
        if ledger is not None:
            ledger.partition = partition
            touched[ledger.patient_id] = ledger
        if processed.reason is not None:
            REJECTIONS.labels(processed.reason.value).inc()
            self._log_outcome(processed, source)
        elif self._debug:
            self._log_outcome(processed, source)
        return processed.outputs

    def _message(self, partition: int, out: Output) -> Message:
        """An output as a message on the input's partition number (outputs stay
        co-partitioned with their patient), in CloudEvents structured mode (the
        ``content-type: application/cloudevents+json`` header)."""
        self._count_output(out)
        topic = self.settings.topics.output_topic(out.kind)
        return (topic, partition, out.key.encode(), out.to_json().encode(), kafka_headers(out))

    def _transactional_id(self, partition: int) -> str:
        """The transactional id faust gives input partition ``partition`` (all input topics
        are one co-partitioned group: partition *p* of each lands on the same worker)."""
        group = self.app.assignor.group_for_topic(self.inputs[0])
        return f"{self.app.conf.id}-{group}-{partition}"

    async def _send_all(self, out: dict[int, list[Message]], forwards: list[Message]) -> None:
        """Send each input partition's messages through that partition's transactional
        producer, as one record batch per topic-partition, and wait for the broker's acks.

        Forwarded inputs go through faust's plain (idempotent) producer instead: a
        transaction would leave its commit marker on the input topic, an offset no consumer
        ever processes, so committed-lag checks would never see the input drained. Not
        fencing them is safe: the home partition applies a forwarded log once, however many
        times it arrives (same event id, same content: a duplicate), and the forward is
        acknowledged before the input offset that caused it is committed.

        faust's ``TransactionManager.send`` picks the producer by the *destination*
        partition's group, which is wrong for output topics (not consumed, so in no group)
        and would let a crash or a pause split a batch's writes across transactions. The
        per-partition producer is faust's own (started and fenced by faust on rebalance); we
        only choose it by the input partition and append whole record batches to it, under
        faust's per-producer lock (per-message futures cost more CPU than the core did).
        """
        producer: Any = self.app.producer

        async def submit(partition: int, messages: list[Message]) -> list[Awaitable[Any]]:
            tid = self._transactional_id(partition)
            txn = producer._transaction_producers.get(tid)
            if txn is None:
                raise FencedError(f"no transactional producer for {tid} (partition revoked)")
            async with producer._trn_locks[tid]:
                return await _send_batches(txn, messages)

        # The partitions' producers submit side by side: a producer accepts a topic-partition's
        # next record batch only once the one before is in a request, so one after the other
        # a large batch (a close) waited for every round trip of each producer in turn.
        submitted = await asyncio.gather(*(submit(p, m) for p, m in out.items() if m))
        pending: list[Awaitable[Any]] = [future for part in submitted for future in part]
        if forwards:
            pending += await _send_batches(producer._ensure_producer(), forwards)
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                if any(_is_fenced(f) for f in failures):
                    raise FencedError(repr(failures[0]))
                raise failures[0]
            ledger_store.note_sent(self.table.data, results)  # changelog offsets (RocksDB)

    @staticmethod
    def _count_output(out: Output) -> None:
        if out.kind == "status":  # its envelope is built only when read: do not
            return
        data = out.envelope.data
        if isinstance(data, ThresholdEvent):
            THRESHOLDS.labels(data.code, data.kind).inc()
            log.info(
                "threshold",
                kind=data.kind,
                code=data.code,
                unit=data.unit,
                patient_id=data.patient_id,
                service_month=data.service_month,
                qualifying_minutes=data.qualifying_minutes,
                output_id=out.envelope.id,
            )
        elif isinstance(data, BillingRecord):
            RECORDS.labels(data.close_trigger).inc()
            for line in data.lines:
                RECORD_LINES.labels(line.code).inc(line.units)
            log.info(
                "billing_record",
                patient_id=data.patient_id,
                service_month=data.service_month,
                revision=data.revision,
                billable=data.billable,
                qualifying_minutes=data.qualifying_minutes,
                output_id=out.envelope.id,
            )

    @staticmethod
    def _log_outcome(processed: Any, source: Source) -> None:
        event = processed.event
        fields = {
            "outcome": processed.outcome.value,
            "partition": source.partition,
            "offset": source.offset,
            "event_id": event.event_id if event is not None else None,
            "patient_id": event.patient_id if event is not None else None,
        }
        if processed.outcome is Outcome.REJECTED:
            log.warning("input_rejected", reason=processed.reason, **fields)
        else:
            log.debug("input_applied", detail=processed.detail, **fields)

    # ------------------------------------------------------------------ month close

    _collector_paused = False  # the cyclic garbage collector is off until the batch is sent

    def _pause_collector(self) -> None:
        """Switch the cyclic garbage collector off until this batch's outputs are sent.

        A close makes a few objects per patient-month (the record, its envelope, FHIR items,
        the status) that all live until the batch is sent, then go at once (reference
        counting frees them: no cycles). On a heap of 100,000 ledgers (a million tracked
        objects) they set off a full collection of the whole heap every time a quarter more
        objects survived: at the close of 100,000 patient-months, 8 to 11 collections of
        about 2 s each, most of the close's CPU, finding nothing to free. With the collector
        off for the batch the objects are freed as before and never walked; it is switched
        on again by :meth:`process_batch` after the sends (a failing batch ends the process).
        """
        if gc.isenabled():
            gc.disable()
            self._collector_paused = True

    def _resume_collector(self) -> None:
        self._collector_paused = False
        gc.enable()

    def _freeze_heap(self) -> None:
        """Every monitor tick: collect the young generations and freeze what survived.

        The ledgers are most of the heap and live for the whole run; CPython 3.11 walks every
        tracked object of the heap in a full collection, which it runs whenever a quarter more
        objects than the last time have survived the young generations. Every applied input
        replaces a ledger, so full collections come every few seconds, and each one stops the
        worker for as long as it takes to walk all ledgers: 60-160 ms with the 20,000 events
        of ``bench_stream.py``, about 2 s at 100,000 ledgers. That was the tail of the latency
        (p99 166-248 ms on a fresh worker). ``gc.freeze()`` moves the survivors out of the
        collector's reach; they are still freed by reference counting when replaced (ledgers,
        events and outputs hold no reference cycles). Cyclic garbage that was frozen would stay,
        so once per ``HEAP_FULL_COLLECTION_SECONDS`` everything is unfrozen and collected in
        full (one known pause, logged as ``heap_collected``) and frozen again.
        """
        if not gc.isenabled():
            return  # a close batch is in flight (see _pause_collector)
        now = time.monotonic()
        if now - self._heap_collected_at >= HEAP_FULL_COLLECTION_SECONDS:
            self._heap_collected_at = now
            frozen = gc.get_freeze_count()
            gc.unfreeze()
            started = time.perf_counter()
            found = gc.collect()
            log.info(
                "heap_collected",
                objects=frozen,
                garbage=found,
                ms=round((time.perf_counter() - started) * 1e3, 1),
            )
        else:
            gc.collect(1)
        gc.freeze()

    def _close(self, raw: bytes, msg: Any, touched: Ledgers) -> list[Output]:
        """Apply a close command to the ledgers of the message's partition (the core's
        ``apply_close``, which replay applies to a close line too)."""
        started = time.perf_counter()
        self._pause_collector()
        command, dead = decode_close(raw, _source(msg))
        if command is None:
            log.warning("close_command_rejected", partition=msg.partition, offset=msg.offset)
            return [dead] if dead is not None else []
        partition = msg.partition
        # ledgers are changed in place: a stored one is also this batch's; ledgers created in
        # this batch and not stored yet are in ``touched``
        ledgers = ledger_store.ledgers_of(self.table.data, partition, touched)
        outputs, changed = apply_close(self.engine, ledgers, command)
        for ledger in changed:
            touched[ledger.patient_id] = ledger
        elapsed = time.perf_counter() - started
        MONTH_CLOSE.observe(elapsed)
        log.info(
            "months_closed",
            command_id=command.command_id,
            mode=command.mode,
            partition=partition,
            outputs=len(outputs),
            ledgers_changed=len(changed),
            seconds=round(elapsed, 3),
        )
        return outputs

    async def _close_tick(self) -> None:
        """Put a due-close command on every control partition this worker owns (through the
        topic, so the close is ordered with the partition's input and replayable)."""
        if not self.is_ready():
            return
        now = datetime.now(UTC)
        producer = self.app.producer  # plain (not transactional): the command is an input
        sent = []
        for partition in sorted(self.owned_partitions()):
            command = MonthCloseCommand(
                command_id=f"tick-{now.strftime('%Y%m%dT%H%M%S')}-{partition}",
                mode="due",
                as_of=now,
                requested_by="timer",
            )
            value = command.model_dump_json().encode()
            sent.append(await producer.send(self.control, None, value, partition, None, None))
        await asyncio.gather(*sent)  # a failed tick is logged by faust; the next one retries

    # ------------------------------------------------------------------ rebalancing

    async def _on_assigned(self, app: Any, assigned: set[TP], **kwargs: Any) -> None:
        """Forget the ledgers of partitions we no longer own: whoever owns them next (maybe
        us again) rebuilds them from the committed changelog, never from our memory.

        (faust's revoke callback names every partition in an eager rebalance, the kept ones
        too, and faust does not recover a kept partition again: so the drop happens here,
        against the new assignment.)"""
        self._assigned_at = time.monotonic()
        self._delivered = {}
        ledger_store.shorten_fetch_wait(self.app)  # latency after a backlog: see there
        if self._recovery_probe_task is None:
            self._recovery_probe_task = asyncio.ensure_future(self._recovery_end())
        mine = {tp.partition for tp in assigned if tp.topic in self.inputs}
        dropped = ledger_store.keep_partitions(self.table.data, mine)
        log.info("partitions_assigned", partitions=sorted(mine), ledgers_dropped=dropped)

    async def _recovery_end(self) -> None:
        """Every 0.25 s, from the first assignment on (faust timers start only once the
        first recovery is over, too late for it): see ``faust_fixes.RecoveryEndProbe``."""
        app: Any = self.app
        while not app.should_stop:
            await asyncio.sleep(0.25)
            try:
                if await self._recovery_probe(app):
                    log.info("recovery_ended_at_transaction_markers")
            except Exception:  # a probe failure leaves faust's own (slower) detection
                if app.should_stop:
                    return  # stopping: the consumer thread and its event loop are gone
                log.exception("recovery_probe_failed")

    # ------------------------------------------------------------------ monitoring

    def owned_partitions(self) -> set[int]:
        timelog = self.settings.topics.timelog
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # before the first assignment
            return set()
        return {tp.partition for tp in actives if tp.topic == timelog}

    async def _monitor(self) -> None:
        """Every 5 s: state gauges, consumer lag and the stall watchdog, from one query of the
        owned input partitions' last stable offsets."""
        self._freeze_heap()
        ends = await self._end_offsets()
        if ends:
            ends = await self._without_marker_tails(ends)
        try:
            self._state_metrics(ends)
        finally:  # a failing gauge must not starve the watchdog
            read_again = self._watchdog(ends)
        for tp in read_again:
            await self._read_again(tp, ends or {})

    async def _without_marker_tails(self, ends: dict[TP, int]) -> dict[TP, int]:
        """End offsets with a trailing run of offsets that hold no record taken off.

        A transactional producer (an EHR's) ends a partition with its commit marker, and an
        aborted transaction leaves records ``read_committed`` never returns: offsets the group
        commits past only when a record follows. Where everything the agent got is committed
        and the fetch has passed the end, the partition is drained: its end counts as the
        committed offset (else the lag gauge would show it and the watchdog take it for a
        stall). But a record fetched and lost on its way to the agent looks the same (seen
        after a kill -9 rebalance: 8 time logs, and once a month-close command, never
        processed while this check took their partition for drained). So the partition is
        also read again from the committed offset, once per committed offset, when two
        monitor ticks in a row saw it so (records fetched a moment ago may still be on their
        way to the agent): markers and aborted records are skipped again, a lost record is
        delivered."""
        consumer: Any = self.app.consumer
        settled = dict(ends)
        for tp, end in ends.items():
            committed = self._committed(tp)
            if end <= committed or committed < self._delivered.get(tp, 0):
                continue
            try:
                position = await consumer.position(tp)
            except Exception:  # no verdict: keep the end as it is
                continue
            if position is None or position < end:
                continue
            settled[tp] = committed
            if self._refetched.get(tp) != committed:
                # records fetched a moment ago may still be on their way to the agent: only
                # the same state on two monitor ticks in a row (5 s apart) is read again
                seen, self._tail_seen[tp] = self._tail_seen.get(tp), (committed, position)
                if seen == (committed, position) and self.is_ready():
                    await self._read_again(tp, ends, position, "fetched past the end")
        return settled

    async def _read_again(
        self, tp: TP, ends: dict[TP, int], position: int | None = None, why: str = "stuck"
    ) -> None:
        """Fetch ``tp`` again from its committed offset (once per committed offset): records
        fetched but never handed to the agent (seen after rebalances: the fetch position past
        records the agent never got) are delivered again; what the agent already applied
        comes back as duplicates, which the core ignores."""
        committed = self._committed(tp)
        self._refetched[tp] = committed
        log.info(
            "input_read_again",
            why=why,
            topic=tp.topic,
            partition=tp.partition,
            committed=committed,
            position=position,
            end=ends.get(tp),
            delivered=self._delivered.get(tp),
        )
        consumer: Any = self.app.consumer
        await consumer.seek(tp, committed)

    def _state_metrics(self, ends: dict[TP, int] | None) -> None:
        counts = ledger_store.census(self.table.data)
        if counts is None:  # RocksDB: an estimate of the keys, months not decoded for a gauge
            PATIENTS.set(cast(Any, self.table.data).estimated_keys())
        else:
            patients, open_, closed, archived = counts
            PATIENTS.set(patients)
            PATIENT_MONTHS.labels("open").set(open_)
            PATIENT_MONTHS.labels("closed").set(closed)
            PATIENT_MONTHS.labels("archived").set(archived)
        owned = self.owned_partitions()
        ASSIGNED_PARTITIONS.set(len(owned))
        if not ends:
            return
        timelog = self.settings.topics.timelog
        seen = set()
        for tp, end in ends.items():
            if tp.topic == timelog:
                CONSUMER_LAG.labels(str(tp.partition)).set(max(0, end - self._committed(tp)))
                seen.add(tp.partition)
        for gone in self._lag_partitions - seen:  # revoked: stop reporting a stale lag
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(str(gone))
        self._lag_partitions = seen

    def _committed(self, tp: TP) -> int:
        consumer: Any = self.app.consumer
        offset = consumer._committed_offset.get(tp)
        return int(offset) if offset is not None else 0

    async def _end_offsets(self) -> dict[TP, int] | None:
        """Last stable offsets of the owned input partitions (None: no answer).

        Asked through a client of our own (``read_committed``, no group), not faust's
        consumer: that one lives in faust's consumer thread, whose two-worker method queue also
        serves the fetch loop, and its ListOffsets request went out on the fetch connection,
        where Kafka answers it only after the parked long-poll fetch. Every 5 s the query took
        about 100 ms and the input fetched meanwhile waited (clusters of produce-to-threshold
        latency 5 s apart, 120-220 ms, in ``bench_stream.py``)."""
        owned = self.owned_partitions()
        if not owned:
            return {}
        tps = [TopicPartition(t, p) for t in self.inputs for p in owned]
        try:
            client = await self._offsets()
            ends = await asyncio.wait_for(client.end_offsets(tps), timeout=5.0)
        except (TimeoutError, KafkaError, Exception):
            return None
        return {TP(tp.topic, tp.partition): int(v) for tp, v in ends.items() if v is not None}

    async def _offsets(self) -> AIOKafkaConsumer:
        if self._offsets_client is None:
            s = self.settings
            client = AIOKafkaConsumer(
                bootstrap_servers=s.kafka_bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",  # end offsets are last stable offsets
                client_id=f"{s.app_id}-offsets",
                **kafka_security.aiokafka_kwargs(s),
            )
            try:
                await client.start()
            except BaseException:  # no broker now: nothing left open; the next tick retries
                with contextlib.suppress(Exception):
                    await client.stop()
                raise
            self._offsets_client = client
        return self._offsets_client

    async def _stop_offsets_client(self, app: Any, **kwargs: Any) -> None:
        client, self._offsets_client = self._offsets_client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.stop()

    def _watchdog(self, ends: dict[TP, int] | None) -> list[TP]:
        """Fail-stop when committed offsets stop moving while input waits.

        The stall faust-streaming was seen in kept *processing* (so processed offsets moved)
        while a gap blocked the *commits*: the watchdog looks at the committed lag. After
        ``stall_exit_seconds`` with input waiting and no commit progress it logs every
        task's stack and exits 75 (EX_TEMPFAIL) for the supervisor to start a fresh worker,
        which resumes from the committed offsets. ``CCM_STALL_EXIT_SECONDS=0``: off.
        """
        limit = self.settings.stall_exit_seconds
        now = self._watchdog_ran_at = time.monotonic()
        self._watchdog_armed = True
        if limit <= 0:
            return []
        ready = self.is_ready()
        if ready:
            self._unready_since = None
        else:
            self._last_unready = now
            recovered = self._recovery_position()
            if self._unready_since is None or recovered != self._recovered_seen:
                # a recovery reading its changelog is progressing, however long it takes
                self._unready_since = now
                self._recovered_seen = recovered
        waiting = 0
        quiet_partitions: dict[TP, float] = {}  # input waiting, committed offset not moving
        since_floor = max(self._assigned_at, self._last_unready)
        if ends is None:
            waiting = 1  # the broker does not answer us: count it as input waiting
        else:
            for tp, end in ends.items():
                committed = self._committed(tp)
                behind = max(0, end - committed)
                waiting += behind
                last = self._last_committed.get(tp)
                if behind == 0 or last is None or last[0] != committed:
                    self._last_committed[tp] = (committed, now)
                    continue
                quiet_partitions[tp] = now - max(last[1], since_floor)
        if ends is not None or waiting == 0:
            self._last_progress = now  # the broker answered: per-partition checks below
        # a batch is stuck when its current step (a close, the sends) waits past the limit
        stuck_batch = self._batch_started is not None and now - self._batch_progress > limit
        if not ready:
            # rebalancing or recovering is not a stall, unless it never ends while input waits
            unready = now - (self._unready_since or now)
            if not (waiting > 0 and unready > max(120.0, 4 * limit)):
                return []
            quiet = unready
        else:
            # each partition on its own: one whose commits stopped is a stall even while the
            # others move (a record that never reached the agent blocks its partition's commits)
            quiet = max([now - max(self._last_progress, since_floor), *quiet_partitions.values()])
        read_again = [
            tp
            for tp, seconds in quiet_partitions.items()
            if ready and seconds > limit / 2 and self._refetched.get(tp) != self._committed(tp)
        ]
        if waiting > 0 and quiet > limit / 2:
            log.warning(
                "input_waiting_without_commits",
                waiting=waiting,
                seconds_quiet=round(quiet, 1),
                ready=ready,
                in_batch=self._batch_started is not None,
                partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in quiet_partitions),
            )
        if not (stuck_batch or (waiting > 0 and quiet > limit)):
            return read_again
        stacks = []
        for task in asyncio.all_tasks():
            buf = io.StringIO()
            task.print_stack(limit=12, file=buf)
            stacks.append(buf.getvalue())
        log.error(
            "worker_stalled_exiting",
            in_batch=stuck_batch,
            waiting=waiting,
            seconds_quiet=round(quiet, 1),
            stacks="\n".join(stacks),
        )
        os._exit(STALLED)

    def _recovery_position(self) -> int:
        """How far the table recovery has read (sum of its changelog offsets): moves while a
        recovery makes progress."""
        try:
            offsets = cast(Any, self.app.tables).recovery.active_offsets
            return int(sum(v for v in offsets.values() if v is not None))
        except Exception:
            return -1

    def start_loop_watchdog(self) -> None:
        """A thread that exits the process when the event loop stops running the watchdog
        timer (a blocked loop cannot run the asyncio watchdog itself)."""
        limit = self.settings.stall_exit_seconds
        if limit <= 0:
            return

        def watch() -> None:
            while True:
                time.sleep(5.0)
                silent = time.monotonic() - self._watchdog_ran_at
                if self._watchdog_armed and silent > max(60.0, 2 * limit):
                    log.error("event_loop_stalled_exiting", seconds_silent=round(silent, 1))
                    os._exit(STALLED)

        threading.Thread(target=watch, name="ccm-loop-watchdog", daemon=True).start()

    # ------------------------------------------------------------------ look-ups

    def is_ready(self) -> bool:
        """Partitions assigned, the table recovered, not in a rebalance."""
        recovery = cast(Any, self.app.tables).recovery
        return bool(recovery.completed.is_set() and not self.app.rebalancing)

    def ledger(self, patient_id: str) -> PatientLedger | None:
        found: PatientLedger | None = self.table.data.get(patient_id)
        return found


def _source(msg: Any) -> Source:
    """Where an input came from, with the record's own timestamp (faust gives seconds): it
    stamps dead letters of payloads without a readable time, the same at every re-read."""
    stamp = datetime.fromtimestamp(msg.timestamp, UTC) if msg.timestamp else None
    return Source(msg.topic, msg.partition, msg.offset, timestamp=stamp)


def _headers(msg: Any) -> list[tuple[str, bytes]] | None:
    headers = getattr(msg, "headers", None)
    if not headers:
        return None
    items = headers.items() if hasattr(headers, "items") else headers
    return [(str(k), bytes(v) if v is not None else b"") for k, v in items]


def _is_fenced(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name in {"ProducerFenced", "InvalidProducerEpoch", "TransactionalIdAuthorizationFailed"}


async def _send_batches(producer: Any, messages: Sequence[Message]) -> list[Awaitable[Any]]:
    """Append ``messages`` (in order) to one record batch per topic-partition of the aiokafka
    producer and submit them; the futures resolve on the broker's acks."""
    open_: dict[tuple[str, int], Any] = {}
    sent: list[Awaitable[Any]] = []
    for topic, partition, key, value, headers in messages:
        batch = open_.get((topic, partition))
        if batch is None:
            batch = open_[(topic, partition)] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
            sent.append(await producer.send_batch(batch, topic, partition=partition))
            batch = open_[(topic, partition)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                raise ValueError(f"a {len(value or b'')}-byte message does not fit a batch")
    for (topic, partition), batch in open_.items():
        # complete: closed, it is sent at once (aiokafka lets an open batch linger for
        # linger_ms, 2 ms here, in every batch cycle, waiting for sends that never come)
        batch.close()
        sent.append(await producer.send_batch(batch, topic, partition=partition))
    return sent


__all__ = ["TallyWorker", "changelog_topic_name", "home_partition", "input_topics"]
