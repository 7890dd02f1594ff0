"""The tally worker: Kafka wiring of the input topics, the ledger table, timers and web views
to the pure core (aiokafka consumer group + idempotent producer; no billing logic here).

Per batch of input messages, under the batch lock:
1. every event is decoded and applied through :func:`ccm_core.ingest.process`;
2. all outputs (thresholds, records, dead letters) are published and their **acks awaited**;
3. then each changed ledger is written once to the compacted changelog, acks awaited;
4. then the input offsets are committed.

So an output can never be lost behind a state change: a crash before 3 replays the batch from
the old state and re-publishes the same outputs with the same deterministic ids, which a
consumer drops as duplicates; a crash between 3 and 4 replays events the ledger already holds,
recognised as duplicates that publish nothing.

Rebalances: the revoke callback takes the batch lock, so it waits for the batch in flight to
finish (outputs, changelog, commit) before the partition can move; the assign callback
recovers the ledgers of every partition it did not hold up to date from the changelog before
any input of that partition is processed. A batch fetched across a rebalance is dropped
unprocessed: the new assignment restarts every partition from its committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from pydantic import ValidationError

from ccm_core import codec as ledger_codec
from ccm_core.config import CoreConfig, load_config
from ccm_core.contracts import (
    BillingRecord,
    MonthCloseCommand,
    Outcome,
    Reason,
    ThresholdEvent,
    reason_from_validation_error,
)
from ccm_core.ingest import Processed, Source, process, rejected_output
from ccm_core.observability import (
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
    THRESHOLDS,
    get_logger,
)
from ccm_core.settings import Settings
from ccm_core.tally import CloseTrigger, Output, PatientLedger, TallyEngine

from .process import STALL_EXIT_CODE
from .routing import RoutingAssignor, advertised_url, routing_assignor

log = get_logger("ccm.worker")

TABLE_NAME = "ledgers"
BATCH_FAILED_EXIT_CODE = 70  # EX_SOFTWARE: outputs or state could not be written
RECOVERY_TIMEOUT_SECONDS = 600.0

Ledgers = dict[str, PatientLedger]


def changelog_topic_name(settings: Settings) -> str:
    return f"{settings.app_id}-{TABLE_NAME}-changelog"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: TallyWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.worker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.worker.on_assigned(set(assigned))


class TallyWorker:
    """One worker process: a consumer-group member holding the ledgers of its partitions."""

    def __init__(self, settings: Settings, config: CoreConfig | None = None) -> None:
        self.settings = settings
        self.engine = TallyEngine(
            config or load_config(settings.profiles_file, settings.practices_file)
        )
        t = settings.topics
        self.inputs = (t.timelog, t.month_close)
        self.changelog = changelog_topic_name(settings)
        self.url = advertised_url(settings)
        self.assignor: type[RoutingAssignor] = routing_assignor(self.url, t.timelog)
        # state: the ledgers of each owned input partition, and the next offset to process
        self.ledgers: dict[int, Ledgers] = {}
        self.owned: set[int] = set()
        self.next_offset: dict[TopicPartition, int] = {}
        self._epoch = 0  # bumped by every revoke and assign: a batch fetched before is stale
        self._ready = False
        self._stopping = False
        self._lock: asyncio.Lock | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._restore: AIOKafkaConsumer | None = None
        self._batch_started: float | None = None
        self._last_batch_done = time.monotonic()
        self._ready_since = time.monotonic()
        self._caught_up_at = time.monotonic()
        self._watchdog_ran_at = time.monotonic()
        self._watchdog_armed = False
        self._lag_partitions: set[int] = set()
        self._outcome_counters = {o: EVENTS.labels(o.value) for o in Outcome}
        self._debug = settings.log_level == "DEBUG"

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or a fatal error (the process exits)."""
        from .web import WebServer  # aiohttp is only needed by a running worker

        s = self.settings
        self._lock = asyncio.Lock()
        session_ms = int(s.session_timeout_seconds * 1000)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"{s.app_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            max_batch_size=256 * 1024,
            request_timeout_ms=30000,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"{s.app_id}-consumer",
            group_id=s.app_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, min(3000, session_ms // 3)),
            rebalance_timeout_ms=max(30000, 3 * session_ms),
            partition_assignment_strategy=(self.assignor,),
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self._restore = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"{s.app_id}-restore",
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        web = WebServer(self)
        await web.start()
        await self._producer.start()
        await self._restore.start()
        await self._consumer.start()
        self._consumer.subscribe(list(self.inputs), listener=_Rebalance(self))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        timers = [
            asyncio.create_task(self._every(s.close_tick_seconds, self._close_tick)),
            asyncio.create_task(self._every(5.0, self._monitor)),
        ]
        self.start_loop_watchdog()
        log.info("worker_started", web=self.url, group=s.app_id, inputs=list(self.inputs))
        try:
            await self._consume()
        finally:
            for task in timers:
                task.cancel()
            await asyncio.gather(*timers, return_exceptions=True)
            await self._consumer.stop()  # leaves the group: the others rebalance at once
            await self._restore.stop()
            await self._producer.stop()
            await web.stop()
            log.info("worker_stopped")
        return 0

    def stop(self) -> None:
        """Finish the batch in flight, commit it, leave the group."""
        self._stopping = True

    async def _every(self, seconds: float, job: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:  # a timer must not die of one failure
                log.exception("timer_failed", job=job.__name__)

    # ------------------------------------------------------------------ the loop

    async def _consume(self) -> None:
        assert self._consumer is not None and self._lock is not None
        consumer = self._consumer
        s = self.settings
        while not self._stopping:
            epoch = self._epoch
            batch = await consumer.getmany(timeout_ms=500, max_records=s.batch_max_events)
            if not batch:
                continue
            async with self._lock:
                if epoch != self._epoch:
                    # A rebalance happened while fetching: the batch may hold messages of an
                    # old assignment. Drop it and fetch again from the next unprocessed offset
                    # of each partition still owned (the others go to their new owner).
                    self._rewind(batch)
                    continue
                try:
                    await self.process_batch(batch)
                except BaseException as exc:
                    # Fail-stop: nothing of this batch is committed; a restarted worker
                    # processes it again from the last committed offsets (at-least-once).
                    log.critical("batch_failed_exiting", error=repr(exc))
                    os._exit(BATCH_FAILED_EXIT_CODE)

    def _rewind(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        for tp in batch:
            if tp in assignment and tp in self.next_offset:
                self._consumer.seek(tp, self.next_offset[tp])
        log.info("stale_batch_refetched", partitions=sorted(map(str, batch)))

    async def process_batch(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        self._batch_started = time.monotonic()
        started = time.perf_counter()
        now = datetime.now(UTC)
        touched: Ledgers = {}
        outputs: list[tuple[int, Output]] = []  # (partition, output): outputs stay co-partitioned
        control = self.settings.topics.month_close
        count = 0
        for tp, messages in batch.items():
            ledgers = self.ledgers.setdefault(tp.partition, {})
            lookup = self._ledger_lookup(tp.partition, ledgers)
            for msg in messages:
                count += 1
                raw = msg.value if msg.value is not None else b""
                if tp.topic == control:
                    closed = self._close(raw, msg, now, ledgers, touched)
                    outputs += [(tp.partition, o) for o in closed]
                    continue
                outputs += [(tp.partition, o) for o in self._apply(raw, msg, lookup, touched, now)]
        await self.publish(outputs)
        await self.persist(touched)
        await self.commit({tp: messages[-1].offset + 1 for tp, messages in batch.items()})
        self._batch_started = None
        self._last_batch_done = time.monotonic()
        finished = time.perf_counter()
        BATCH_SIZE.observe(count)
        per_event = (finished - started) / max(1, count)
        wall = time.time()
        for messages in batch.values():
            for msg in messages:
                PROCESSING.observe(per_event)
                END_TO_END.observe(max(0.0, wall - msg.timestamp / 1000))

    def _apply(
        self, raw: bytes, msg: ConsumerRecord, lookup: Any, touched: Ledgers, now: datetime
    ) -> list[Output]:
        # the input must be keyed by patient id: an unkeyed log is a key mismatch too
        key = msg.key.decode("utf-8", "replace") if msg.key is not None else ""
        source = Source(msg.topic, msg.partition, msg.offset)
        try:
            processed, ledger = process(self.engine, lookup, raw, source, key=key, received_at=now)
        except Exception as exc:  # a bug must not lose the event: dead-letter it
            log.exception("event_failed", partition=msg.partition, offset=msg.offset)
            reason = Reason.INTERNAL_ERROR
            dead = rejected_output(raw, reason, type(exc).__name__, source, key, now)
            processed, ledger = Processed(Outcome.REJECTED, [dead], None, reason), None
        self._outcome_counters[processed.outcome].inc()
        if ledger is not None:
            self.ledgers[msg.partition][ledger.patient_id] = ledger
            touched[ledger.patient_id] = ledger
        if processed.reason is not None:
            REJECTIONS.labels(processed.reason.value).inc()
            self._log_outcome(processed, source)
        elif self._debug:
            self._log_outcome(processed, source)
        return processed.outputs

    @staticmethod
    def _ledger_lookup(partition: int, ledgers: Ledgers) -> Any:
        def lookup(patient_id: str) -> PatientLedger:
            found = ledgers.get(patient_id)
            return found if found is not None else PatientLedger(patient_id, partition=partition)

        return lookup

    async def publish(self, outputs: Iterable[tuple[int, Output]]) -> None:
        """Send outputs to the input's partition number and wait until every one is
        acknowledged (before the ledgers are written: an output is never lost behind state)."""
        messages = []
        for partition, out in outputs:
            topic = self.settings.topics.output_topic(out.kind)
            messages.append((topic, partition, out.key.encode(), out.to_json().encode()))
            self._count_output(out)
        await self._send_all(messages)

    async def persist(self, touched: Ledgers) -> None:
        """Write the batch's changed ledgers to the compacted changelog, once each, to the
        ledger's input partition; wait for the acks (before the input offsets are committed)."""
        changelog, dumps = self.changelog, ledger_codec.dumps
        await self._send_all(
            [
                (changelog, ledger.partition, patient_id.encode(), dumps(ledger))
                for patient_id, ledger in touched.items()
            ]
        )

    async def _send_all(self, messages: Sequence[tuple[str, int, bytes, bytes]]) -> None:
        """Send messages as one record batch per topic-partition (in order) and wait until the
        broker acknowledged them all. Whole batches rather than a send and a future per
        message: the per-message futures cost more CPU than the core in a profile."""
        assert self._producer is not None
        producer = self._producer
        open_: dict[tuple[str, int], Any] = {}
        sent = []
        for topic, partition, key, value in messages:
            batch = open_.get((topic, partition))
            if batch is None:
                batch = open_[(topic, partition)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # batch full
                sent.append(await producer.send_batch(batch, topic, partition=partition))
                batch = open_[(topic, partition)] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a {len(value)}-byte message does not fit a batch")
        for (topic, partition), batch in open_.items():
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        if sent:
            await asyncio.gather(*sent)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError:
            # the group moved on without us (e.g. a long pause): the partitions' new owner
            # replays from the last commit against the changelog we wrote, so nothing is lost;
            # our in-memory state is re-checked against the commit at the next assignment
            log.warning("commit_failed_after_rebalance", partitions=sorted(map(str, offsets)))
            return
        self.next_offset.update(offsets)

    @staticmethod
    def _count_output(out: Output) -> None:
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

    # ------------------------------------------------------------------ rebalancing

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        assert self._lock is not None
        self._ready = False
        self._epoch += 1
        async with self._lock:  # the batch in flight finishes: outputs, changelog, commit
            self._epoch += 1
        log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self._lock is not None and self._consumer is not None
        try:
            async with self._lock:
                self._epoch += 1
                await self._take_over(assigned)
                self._epoch += 1
        except Exception as exc:
            # aiokafka would log and swallow this and let us run on missing state: never
            log.critical("assignment_failed_exiting", error=repr(exc))
            os._exit(STALL_EXIT_CODE)
        self._ready = True
        self._ready_since = time.monotonic()

    async def _take_over(self, assigned: set[TopicPartition]) -> None:
        assert self._consumer is not None
        timelog, control = self.inputs
        partitions = {tp.partition for tp in assigned if tp.topic == timelog}
        controls = {tp.partition for tp in assigned if tp.topic == control}
        if controls != partitions:
            log.error(
                "inputs_not_copartitioned",
                timelog=sorted(partitions),
                month_close=sorted(controls),
            )
        committed: dict[TopicPartition, int] = {}
        for tp in assigned:
            offset = await self._consumer.committed(tp)
            committed[tp] = offset if offset is not None and offset >= 0 else 0
        # a partition held before is up to date only if nobody committed past us meanwhile
        keep = {
            p
            for p in partitions & self.owned
            if all(
                committed.get(TopicPartition(t, p), 0)
                == self.next_offset.get(TopicPartition(t, p), 0)
                for t in self.inputs
            )
        }
        for p in set(self.ledgers) - keep:
            del self.ledgers[p]
        recover = sorted(partitions - keep)
        started = time.perf_counter()
        recovered = await self._recover(recover) if recover else 0
        self.owned = partitions
        self.next_offset = {tp: committed[tp] for tp in assigned}
        ASSIGNED_PARTITIONS.set(len(partitions))
        log.info(
            "partitions_assigned",
            partitions=sorted(partitions),
            kept=sorted(keep),
            recovered_partitions=recover,
            recovered_ledgers=recovered,
            recovery_seconds=round(time.perf_counter() - started, 3),
        )

    async def _recover(self, partitions: Sequence[int]) -> int:
        """Read the changelog of ``partitions`` from the start to its current end."""
        assert self._restore is not None
        restore = self._restore
        tps = [TopicPartition(self.changelog, p) for p in partitions]
        restore.assign(tps)
        await restore.seek_to_beginning(*tps)
        ends = await restore.end_offsets(tps)
        remaining = {tp: end for tp, end in ends.items() if end > 0}
        for p in partitions:
            self.ledgers[p] = {}
        count = 0
        deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelog recovery incomplete: {remaining}")
            batch = await restore.getmany(*remaining, timeout_ms=500, max_records=20000)
            for tp, messages in batch.items():
                ledgers = self.ledgers[tp.partition]
                for msg in messages:
                    if msg.key is None:
                        continue
                    patient_id = msg.key.decode()
                    if msg.value is None:  # tombstone
                        ledgers.pop(patient_id, None)
                        continue
                    ledger = ledger_codec.loads(msg.value)
                    ledger.partition = tp.partition
                    ledgers[patient_id] = ledger
                    count += 1
            for tp in list(remaining):
                if await restore.position(tp) >= remaining[tp]:
                    del remaining[tp]
        restore.unsubscribe()
        return count

    # ------------------------------------------------------------------ month close

    def _close(
        self, raw: bytes, msg: ConsumerRecord, now: datetime, ledgers: Ledgers, touched: Ledgers
    ) -> list[Output]:
        """Apply a close command to the ledgers of the message's partition."""
        started = time.perf_counter()
        source = Source(msg.topic, msg.partition, msg.offset)
        try:
            command = MonthCloseCommand.model_validate_json(raw)
        except ValidationError as err:
            log.warning("close_command_rejected", partition=msg.partition, offset=msg.offset)
            reason, message = reason_from_validation_error(err)
            return [rejected_output(raw, reason, message, source, None, now)]
        trigger: CloseTrigger = "timer" if command.mode == "due" else "command"
        outputs: list[Output] = []
        closed = 0
        archived = 0
        for patient_id, ledger in ledgers.items():
            produced = self.engine.close(ledger, command, trigger)
            if produced:
                closed += len(produced)
                touched[patient_id] = ledger
                outputs += produced
            # due closes also archive months past their filing window: state stays bounded
            if command.mode == "due" and ledger.months:
                pruned = self.engine.prune(ledger, command.as_of)
                if pruned:
                    archived += pruned
                    touched[patient_id] = ledger
        elapsed = time.perf_counter() - started
        MONTH_CLOSE.observe(elapsed)
        log.info(
            "months_closed",
            command_id=command.command_id,
            mode=command.mode,
            partition=msg.partition,
            records=closed,
            archived=archived,
            seconds=round(elapsed, 3),
        )
        return outputs

    async def _close_tick(self) -> None:
        """Ask every input partition this worker owns to close its due months (through the
        control topic, so the close is ordered with the partition's input and replayable)."""
        if not self._ready or self._producer is None:
            return
        now = datetime.now(UTC)
        control = self.settings.topics.month_close
        sent = []
        for partition in sorted(self.owned):
            command = MonthCloseCommand(
                command_id=f"tick-{now.strftime('%Y%m%dT%H%M%S')}-{partition}",
                mode="due",
                as_of=now,
                requested_by="timer",
            )
            value = command.model_dump_json().encode()
            sent.append(await self._producer.send(control, value, partition=partition))
        await asyncio.gather(*sent)  # a failed tick is logged by the timer; the next retries

    # ------------------------------------------------------------------ state metrics

    async def _monitor(self) -> None:
        """Every 5 s: state gauges, consumer lag and the stall watchdog, all from one query of
        the owned input partitions' end offsets."""
        ends = await self._end_offsets()
        try:
            self._state_metrics(ends)
        finally:  # a failing gauge must not starve the watchdog (the loop watchdog checks it)
            self._watchdog(ends)

    def _state_metrics(self, ends: dict[TopicPartition, int] | None) -> None:
        open_, closed, archived, patients = 0, 0, 0, 0
        for ledgers in list(self.ledgers.values()):
            for ledger in list(ledgers.values()):
                patients += 1
                archived += len(ledger.archived)
                for month in ledger.months.values():
                    if month.closed:
                        closed += 1
                    else:
                        open_ += 1
        PATIENTS.set(patients)
        PATIENT_MONTHS.labels("open").set(open_)
        PATIENT_MONTHS.labels("closed").set(closed)
        PATIENT_MONTHS.labels("archived").set(archived)
        ASSIGNED_PARTITIONS.set(len(self.owned))
        if ends:
            self._consumer_lag(ends)

    async def _end_offsets(self) -> dict[TopicPartition, int] | None:
        """End offsets of the owned input partitions (None: the broker did not answer)."""
        if self._consumer is None or not self.owned:
            return {}
        tps = [TopicPartition(t, p) for t in self.inputs for p in self.owned]
        try:
            ends = await asyncio.wait_for(self._consumer.end_offsets(tps), timeout=5.0)
        except (TimeoutError, KafkaError):
            return None
        return dict(ends)

    def _consumer_lag(self, ends: dict[TopicPartition, int]) -> None:
        timelog = self.settings.topics.timelog
        owned = set()
        for tp, end in ends.items():
            if tp.topic == timelog:
                lag = max(0, end - self.next_offset.get(tp, 0))
                CONSUMER_LAG.labels(str(tp.partition)).set(lag)
                owned.add(tp.partition)
        for gone in self._lag_partitions - owned:  # revoked: stop reporting a stale lag
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(str(gone))
        self._lag_partitions = owned

    # ------------------------------------------------------------------ watchdogs

    def _watchdog(self, ends: dict[TopicPartition, int] | None) -> None:
        """Fail-stop when a batch or the stream stops moving while input waits: log every
        task's stack and exit 75 (EX_TEMPFAIL) for the supervisor (Kubernetes, compose
        ``restart``, the test and demo runner) to start a fresh worker, which resumes from
        the committed offsets. ``CCM_STALL_EXIT_SECONDS=0`` turns it off."""
        limit = self.settings.stall_exit_seconds
        now = self._watchdog_ran_at = time.monotonic()
        self._watchdog_armed = True
        if not self._ready:  # rebalancing or recovering: not a stall
            self._ready_since = now
            return
        if limit <= 0:
            return
        if ends is None:
            waiting = 1  # the broker does not answer us: count it as input waiting
        else:
            waiting = sum(max(0, end - self.next_offset.get(tp, 0)) for tp, end in ends.items())
        if waiting == 0:
            self._caught_up_at = now
        stuck_batch = self._batch_started is not None and now - self._batch_started > limit
        quiet = now - max(self._last_batch_done, self._ready_since, self._caught_up_at)
        stuck_stream = self._batch_started is None and waiting > 0 and quiet > limit
        if not (stuck_batch or stuck_stream):
            return
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
        os._exit(STALL_EXIT_CODE)

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
                    os._exit(STALL_EXIT_CODE)

        threading.Thread(target=watch, name="ccm-loop-watchdog", daemon=True).start()

    # ------------------------------------------------------------------ look-ups

    def is_ready(self) -> bool:
        """Partitions assigned and their ledgers recovered; not in a rebalance."""
        return self._ready

    def ledger(self, patient_id: str) -> PatientLedger | None:
        for ledgers in self.ledgers.values():
            found = ledgers.get(patient_id)
            if found is not None:
                return found
        return None

    def route(self, partition: int) -> str | None:
        """The web URL of the worker that owns ``partition`` (None: unknown)."""
        return self.assignor.routes.get(partition)


__all__ = ["TallyWorker", "changelog_topic_name"]
