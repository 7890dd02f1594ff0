"""The tally worker: faust wiring of topics, the ledger table, timers and web views to the core.

No billing logic lives here. Per batch of input messages the agent:
1. decodes and applies every event through :func:`ccm_core.ingest.process`;
2. publishes all outputs (thresholds, records, dead letters) and **waits for their acks**;
3. only then writes the changed ledgers to the table (changelog), once per patient per batch;
4. faust commits the input offsets after flushing the producer.

So an output can never be lost behind a state change: a crash between 2 and 3 replays the batch
from the old state and re-publishes the same outputs with the same deterministic ids, which a
consumer drops as duplicates. A crash after 3 replays events the ledger already holds: they are
recognised as duplicates and publish nothing.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import faust
from faust.serializers import codecs
from faust.web import Request, Response, View
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
from .web import register_views

log = get_logger("ccm.worker")

TABLE_NAME = "ledgers"


class LedgerCodec(codecs.Codec):
    """Changelog value codec: the core's compact ledger layout."""

    def _dumps(self, obj: Any) -> bytes:
        return ledger_codec.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return ledger_codec.loads(s)


codecs.register("ccm_ledger", LedgerCodec())


class LedgerTable(faust.Table[str, PatientLedger]):
    """The ledger table: raw patient-id keys, core-codec values on the changelog."""

    def _serializer_from_type(self, typ: Any) -> str:
        return "raw" if typ is str else "ccm_ledger"


def changelog_topic_name(settings: Settings) -> str:
    return f"{settings.app_id}-{TABLE_NAME}-changelog"


class TallyWorker:
    """Builds the faust app for one :class:`Settings` and holds its wiring."""

    def __init__(self, settings: Settings, config: CoreConfig | None = None) -> None:
        self.settings = settings
        self.engine = TallyEngine(
            config or load_config(settings.profiles_file, settings.practices_file)
        )
        s = settings
        self.app = faust.App(
            s.app_id,
            broker=[f"kafka://{b}" for b in s.kafka_bootstrap_servers.split(",")],
            store="memory://",
            datadir=str(s.data_dir),
            processing_guarantee=s.processing_guarantee,
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            topic_allow_declare=True,
            table_standby_replicas=0,
            broker_session_timeout=s.session_timeout_seconds,
            broker_heartbeat_interval=min(3.0, s.session_timeout_seconds / 3),
            broker_commit_interval=1.0,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            producer_linger_ms=2,
            stream_buffer_maxsize=max(4096, 2 * s.batch_max_events),
            web_enabled=True,
            web_bind=s.web_host,
            web_port=s.web_port,
            web_host=s.web_advertised_host or s.web_host,
            web_in_thread=False,
        )
        topics = s.topics
        self.input_topic = self.app.topic(
            topics.timelog,
            topics.month_close,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.partitions,
        )
        self.control_topic = self.app.topic(
            topics.month_close,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.partitions,
        )
        self.out_topics = {
            "threshold": topics.threshold,
            "billing_record": topics.billing_record,
            "rejected": topics.dlq,
        }
        for name in self.out_topics.values():
            self.app.topic(name, partitions=s.partitions)
        self.table = LedgerTable(
            self.app,
            name=TABLE_NAME,
            default=None,
            partitions=s.partitions,
            key_type=str,
            help="One PatientLedger per patient id (all its patient-months).",
        )
        self.app.tables.add(self.table)
        self.app.agent(self.input_topic, name="tally")(self._tally_agent)
        self.app.timer(s.close_tick_seconds, on_leader=False, name="close_due_months")(
            self._close_tick
        )
        self.app.timer(5.0, on_leader=False, name="state_metrics")(self._state_metrics)
        self.app.timer(5.0, on_leader=False, name="stall_watchdog")(self._watchdog)
        self._batch_started: float | None = None
        self._last_batch_done = time.monotonic()
        self._ready_since = time.monotonic()
        self._caught_up_at = time.monotonic()  # last time the watchdog saw no input waiting
        self._done_offsets: dict[tuple[str, int], int] = {}  # next offset to process
        self._watchdog_ran_at = time.monotonic()
        self._watchdog_armed = False
        self._lag_partitions: set[int] = set()
        self._changelog = self.table.changelog_topic.get_topic_name()  # what recovery reads
        if self._changelog != changelog_topic_name(s):  # topics.py creates this one
            raise RuntimeError(f"unexpected changelog topic {self._changelog}")
        self._outcome_counters = {o: EVENTS.labels(o.value) for o in Outcome}
        self._debug = s.log_level == "DEBUG"
        register_views(self)

    # ------------------------------------------------------------------ the agent

    async def _tally_agent(self, stream: Any) -> None:
        s = self.settings
        async for events in stream.take_events(s.batch_max_events, within=s.batch_within_seconds):
            try:
                await self.process_batch(events)
            except BaseException as exc:
                # faust's take_events acks a batch even when its body fails; an unfinished
                # batch must not be committed. Fail-stop: exit now, without committing, and
                # let the restarted worker process the batch again (at-least-once).
                log.critical("batch_failed_exiting", error=repr(exc), events=len(events))
                os._exit(70)

    async def process_batch(self, events: Sequence[Any]) -> None:
        self._batch_started = time.monotonic()
        started = time.perf_counter()
        now = datetime.now(UTC)
        touched: dict[str, PatientLedger] = {}
        lookups: dict[int, Any] = {}
        outputs: list[tuple[int, Output]] = []  # (partition, output): outputs stay co-partitioned
        control = self.settings.topics.month_close
        done = self._done_offsets
        for event in events:
            msg = event.message
            done[(msg.topic, msg.partition)] = msg.offset + 1
            raw = msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b"")
            if msg.topic == control:
                outputs += [(msg.partition, o) for o in self._close(raw, msg, now, touched)]
                continue
            # the input must be keyed by patient id: an unkeyed log is a key mismatch too
            key = msg.key.decode("utf-8", "replace") if msg.key is not None else ""
            source = Source(msg.topic, msg.partition, msg.offset)
            lookup = lookups.get(msg.partition)
            if lookup is None:
                lookup = lookups[msg.partition] = self._ledger_lookup(msg.partition, touched)
            try:
                processed, ledger = process(
                    self.engine, lookup, raw, source, key=key, received_at=now
                )
            except Exception as exc:  # a bug must not lose the event: dead-letter it
                log.exception("event_failed", partition=msg.partition, offset=msg.offset)
                reason = Reason.INTERNAL_ERROR
                dead = rejected_output(raw, reason, type(exc).__name__, source, key, now)
                processed, ledger = Processed(Outcome.REJECTED, [dead], None, reason), None
            self._outcome_counters[processed.outcome].inc()
            if ledger is not None:
                touched[ledger.patient_id] = ledger
            if processed.reason is not None:
                REJECTIONS.labels(processed.reason.value).inc()
                self._log_outcome(processed, source)
            elif self._debug:
                self._log_outcome(processed, source)
            outputs += [(msg.partition, o) for o in processed.outputs]
        await self.publish(outputs)
        self.persist(touched)
        self._batch_started = None
        self._last_batch_done = time.monotonic()
        finished = time.perf_counter()
        BATCH_SIZE.observe(len(events))
        per_event = (finished - started) / max(1, len(events))
        wall = time.time()
        for event in events:
            PROCESSING.observe(per_event)
            END_TO_END.observe(max(0.0, wall - event.message.timestamp))

    def _ledger_lookup(self, partition: int, touched: dict[str, PatientLedger]) -> Any:
        data = self.table.data

        def lookup(patient_id: str) -> PatientLedger:
            found = touched.get(patient_id)
            if found is None:
                found = data.get(patient_id)
            if found is None:
                found = PatientLedger(patient_id, partition=partition)
            return found

        return lookup

    def persist(self, touched: dict[str, PatientLedger]) -> None:
        """Write the batch's changed ledgers to the table and its changelog, once each, to the
        ledger's input partition (faust flushes them before it commits the input offsets).

        Writing them straight to the producer instead was 50% faster in bench_stream; it was
        set aside after a stall that later showed on this path too (docs/benchmarks.md).
        """
        data = self.table.data
        for patient_id, ledger in touched.items():
            data[patient_id] = ledger
            self.table.send_changelog(ledger.partition, patient_id, ledger)

    async def publish(self, outputs: Iterable[tuple[int, Output]]) -> None:
        """Send outputs to the input's partition number; wait until every one is acknowledged
        (before the batch's ledgers are written: an output is never lost behind its state)."""
        producer = await self.app.maybe_start_producer()
        pending = []
        for partition, out in outputs:
            topic = self.out_topics[out.kind]
            fut = await producer.send(
                topic, out.key.encode(), out.to_json().encode(), partition, None, None
            )
            pending.append(fut)
            self._count_output(out)
        if pending:
            await asyncio.gather(*pending)

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

    # ------------------------------------------------------------------ month close

    def _close(
        self, raw: bytes, msg: Any, now: datetime, touched: dict[str, PatientLedger]
    ) -> list[Output]:
        """Apply a close command to the ledgers of the message's partition."""
        started = time.perf_counter()
        try:
            command = MonthCloseCommand.model_validate_json(raw)
        except ValidationError as err:
            log.warning("close_command_rejected", partition=msg.partition, offset=msg.offset)
            reason, message = reason_from_validation_error(err)
            return [
                rejected_output(
                    raw, reason, message, Source(msg.topic, msg.partition, msg.offset), None, now
                )
            ]
        trigger: CloseTrigger = "timer" if command.mode == "due" else "command"
        outputs: list[Output] = []
        closed = 0
        stored = self.table.data
        # ledgers are changed in place, so a stored one is also this batch's; only ledgers
        # created in this batch are not stored yet (snapshots: the loop adds to ``touched``)
        fresh = [(p, ledger) for p, ledger in touched.items() if p not in stored]
        for patient_id, ledger in chain(list(stored.items()), fresh):
            if ledger.partition != msg.partition:
                continue
            produced = self.engine.close(ledger, command, trigger)
            if produced:
                closed += len(produced)
                touched[patient_id] = ledger
                outputs += produced
        elapsed = time.perf_counter() - started
        MONTH_CLOSE.observe(elapsed)
        log.info(
            "months_closed",
            command_id=command.command_id,
            mode=command.mode,
            partition=msg.partition,
            records=closed,
            seconds=round(elapsed, 3),
        )
        return outputs

    async def _close_tick(self) -> None:
        """Ask every input partition this worker owns to close its due months."""
        now = datetime.now(UTC)
        control = self.settings.topics.month_close
        timelog = self.settings.topics.timelog
        partitions = sorted(
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == timelog
        )
        producer = await self.app.maybe_start_producer()
        for partition in partitions:
            command = MonthCloseCommand(
                command_id=f"tick-{now.strftime('%Y%m%dT%H%M%S')}-{partition}",
                mode="due",
                as_of=now,
                requested_by="timer",
            )
            await producer.send(
                control, None, command.model_dump_json().encode(), partition, None, None
            )

    # ------------------------------------------------------------------ state metrics

    async def _state_metrics(self) -> None:
        open_, closed = 0, 0
        patients = 0
        for ledger in list(self.table.data.values()):
            patients += 1
            for month in ledger.months.values():
                if month.closed:
                    closed += 1
                else:
                    open_ += 1
        PATIENTS.set(patients)
        PATIENT_MONTHS.labels("open").set(open_)
        PATIENT_MONTHS.labels("closed").set(closed)
        await self._consumer_lag()

    async def _consumer_lag(self) -> None:
        consumer = getattr(self.app, "_consumer", None)
        if consumer is None:
            return
        timelog = self.settings.topics.timelog
        tps = [tp for tp in consumer.assignment() if tp.topic == timelog]
        ASSIGNED_PARTITIONS.set(len(tps))
        if not tps:
            return
        try:
            highwaters = await asyncio.wait_for(consumer.highwaters(*tps), timeout=5.0)
        except Exception:  # lag is best effort (a stuck consumer is the watchdog's case)
            return
        owned = set()
        for tp in tps:
            position = consumer._read_offset.get(tp)
            done = (position + 1) if position is not None else 0
            CONSUMER_LAG.labels(str(tp.partition)).set(max(0, highwaters.get(tp, 0) - done))
            owned.add(tp.partition)
        for gone in self._lag_partitions - owned:  # revoked: stop reporting a stale lag
            CONSUMER_LAG.remove(str(gone))
        self._lag_partitions = owned

    async def _watchdog(self) -> None:
        """Fail-stop when a batch or the stream stops moving while input waits.

        faust-streaming was seen to stop delivering messages after a rebalance, with no error
        and lag waiting. The watchdog logs every task's stack, then exits with code 75
        (EX_TEMPFAIL) so that the supervisor (Kubernetes, compose ``restart``, the test and
        demo runner) starts a fresh worker, which resumes from the committed offsets: at-least-
        once, nothing lost. ``CCM_STALL_EXIT_SECONDS=0`` turns it off.
        """
        limit = self.settings.stall_exit_seconds
        now = self._watchdog_ran_at = time.monotonic()
        self._watchdog_armed = True
        if not self.is_ready():  # rebalancing or recovering: not a stall
            self._ready_since = now
            return
        if limit <= 0:
            return
        lag = await self._waiting_input()
        if lag == 0:
            self._caught_up_at = now
        stuck_batch = self._batch_started is not None and now - self._batch_started > limit
        quiet = now - max(self._last_batch_done, self._ready_since, self._caught_up_at)
        stuck_stream = self._batch_started is None and lag > 0 and quiet > limit
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
            lag=lag,
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
                # armed by the first watchdog tick: start-up and recovery may take long
                if self._watchdog_armed and silent > max(60.0, 2 * limit):
                    log.error("event_loop_stalled_exiting", seconds_silent=round(silent, 1))
                    os._exit(STALL_EXIT_CODE)

        threading.Thread(target=watch, name="ccm-loop-watchdog", daemon=True).start()

    async def _waiting_input(self) -> int:
        """Input messages (time logs, close commands) of owned partitions not yet processed:
        highwater minus what this worker processed (or found committed). Counts messages
        faust fetched but never delivered, which the fetch-position lag gauge does not."""
        consumer = getattr(self.app, "_consumer", None)
        if consumer is None:
            return 0
        inputs = {self.settings.topics.timelog, self.settings.topics.month_close}
        tps = [tp for tp in consumer.assignment() if tp.topic in inputs]
        if not tps:
            return 0
        try:
            highwaters = await asyncio.wait_for(consumer.highwaters(*tps), timeout=5.0)
        except TimeoutError:  # the consumer does not answer: count it as input waiting
            return 1
        except Exception:  # best effort: no verdict without highwaters
            return 0
        waiting = 0
        for tp in tps:
            done = max(
                self._done_offsets.get((tp.topic, tp.partition), 0),
                consumer._committed_offset.get(tp) or 0,
            )
            waiting += max(0, highwaters.get(tp, 0) - done)
        return waiting

    def is_ready(self) -> bool:
        recovery = self.app.tables.recovery  # type: ignore[attr-defined]
        return bool(recovery.completed.is_set() and not self.app.rebalancing)


__all__ = ["Request", "Response", "TallyWorker", "View", "changelog_topic_name"]
