"""Reference billing consumer: ``ccm.billing-record.v1`` into PostgreSQL tables.

``ccm-tally sink postgres --dsn …`` reads the billing records (``read_committed``) and keeps
tables a billing team can query:

- ``ccm_billing_records``: one row per record id, at its **highest revision**;
- ``ccm_billing_lines``: the CPT lines of that revision (code, units);
- ``ccm_billing_logs``: the time logs of that revision (counted, excluded, voided), the
  contributing ones flagged;
- ``ccm_sink_messages``: one row per consumed message (topic, partition, offset, envelope id,
  what became of it: ``applied``, ``duplicate``, ``stale``, ``invalid``), the audit trail;
- ``ccm_sink_offsets``: the next offset to read per sink name, topic and partition.

Exactly-once into the database without Kafka transactions: each batch of messages is applied
and its next offsets written **in one database transaction**. On start (and whenever the group
assigns it partitions) the sink seeks to the offsets stored in the database, not Kafka's
committed ones, so a crash at any point either applied a batch with its offsets or neither.
Within a transaction the partition's offset row is locked (``FOR UPDATE``) and messages below
it are skipped, so two sinks racing over a partition during a rebalance cannot apply a message
twice either; the primary key of ``ccm_sink_messages`` would refuse it. Envelope ids dedupe
records the worker re-published (a redelivered batch): a second copy is ``duplicate``; an older
revision arriving after a newer one is ``stale`` (the newer row stays).

Kafka's committed offsets are also written after each database commit, for lag monitoring
only (``kafka-consumer-groups --describe``); they are never read back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from pydantic import ValidationError

from ccm_core.contracts import BillingRecord, BillingRecordEnvelope
from ccm_core.observability import get_logger

log = get_logger("ccm_sink")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ccm_billing_records (
    record_id                 text PRIMARY KEY,
    revision                  integer NOT NULL,
    envelope_id               text NOT NULL,
    patient_id                text NOT NULL,
    practice_id               text NOT NULL,
    service_month             text NOT NULL,
    time_zone                 text NOT NULL,
    payer                     text NOT NULL,
    profile_version           text NOT NULL,
    billable                  boolean NOT NULL,
    date_of_service           date,
    date_of_service_policy    text NOT NULL,
    qualifying_minutes        integer NOT NULL,
    qualifying_seconds        integer NOT NULL,
    counted_log_minutes       integer NOT NULL,
    overlap_minutes           integer NOT NULL,
    excluded_minutes          integer NOT NULL,
    excluded_minutes_by_rule  jsonb NOT NULL,
    minutes_to_next_threshold integer,
    close_trigger             text NOT NULL,
    closed_at                 timestamptz NOT NULL,
    record                    jsonb NOT NULL,
    applied_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ccm_billing_records_month
    ON ccm_billing_records (practice_id, service_month);
CREATE TABLE IF NOT EXISTS ccm_billing_lines (
    record_id text NOT NULL REFERENCES ccm_billing_records ON DELETE CASCADE,
    code      text NOT NULL,
    units     integer NOT NULL,
    PRIMARY KEY (record_id, code)
);
CREATE TABLE IF NOT EXISTS ccm_billing_logs (
    record_id        text NOT NULL REFERENCES ccm_billing_records ON DELETE CASCADE,
    event_id         text NOT NULL,
    staff_id         text NOT NULL,
    staff_name       text,
    role             text NOT NULL,
    credentials      text,
    licensed         boolean NOT NULL,
    activity         text NOT NULL,
    start_at         timestamptz NOT NULL,
    end_at           timestamptz NOT NULL,
    minutes          integer NOT NULL,
    status           text NOT NULL,
    contributing     boolean NOT NULL,
    excluded_by      text,
    voided_by        text,
    void_reason      text,
    PRIMARY KEY (record_id, event_id)
);
CREATE TABLE IF NOT EXISTS ccm_sink_messages (
    sink        text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    envelope_id text,
    record_id   text,
    revision    integer,
    outcome     text NOT NULL,
    consumed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS ccm_sink_messages_envelope ON ccm_sink_messages (envelope_id);
CREATE TABLE IF NOT EXISTS ccm_sink_offsets (
    sink        text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, partition)
);
"""

_RECORD_COLUMNS = (
    "record_id, revision, envelope_id, patient_id, practice_id, service_month, time_zone, "
    "payer, profile_version, billable, date_of_service, date_of_service_policy, "
    "qualifying_minutes, qualifying_seconds, counted_log_minutes, overlap_minutes, "
    "excluded_minutes, excluded_minutes_by_rule, minutes_to_next_threshold, close_trigger, "
    "closed_at, record"
)
_UPSERT_RECORD = f"""
INSERT INTO ccm_billing_records ({_RECORD_COLUMNS}, applied_at)
VALUES ({", ".join(["%s"] * 22)}, now())
ON CONFLICT (record_id) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _RECORD_COLUMNS.split(", ")[1:])},
    applied_at = now()
WHERE ccm_billing_records.revision < EXCLUDED.revision
RETURNING record_id
"""


@dataclass
class Message:
    """What the sink needs of a Kafka record."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class BatchResult:
    applied: int = 0
    duplicate: int = 0
    stale: int = 0
    invalid: int = 0
    skipped: int = 0  # below the stored offset (another sink got there first)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def consumed(self) -> int:
        return self.applied + self.duplicate + self.stale + self.invalid


def create_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(SCHEMA)


def stored_offsets(conn: psycopg.Connection[Any], sink: str, topic: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT partition, next_offset FROM ccm_sink_offsets WHERE sink = %s AND topic = %s",
        (sink, topic),
    ).fetchall()
    return {int(p): int(o) for p, o in rows}


def _record_row(record: BillingRecord, envelope_id: str, raw: dict[str, Any]) -> tuple[Any, ...]:
    return (
        record.record_id,
        record.revision,
        envelope_id,
        record.patient_id,
        record.practice_id,
        record.service_month,
        record.time_zone,
        record.payer,
        record.profile_version,
        record.billable,
        record.date_of_service,
        record.date_of_service_policy,
        record.qualifying_minutes,
        record.qualifying_seconds,
        record.counted_log_minutes,
        record.overlap_minutes,
        record.excluded_minutes,
        json.dumps(record.excluded_minutes_by_rule),
        record.minutes_to_next_threshold,
        record.close_trigger,
        record.closed_at,
        json.dumps(raw),
    )


def _replace_details(cur: psycopg.Cursor[Any], record: BillingRecord) -> None:
    cur.execute("DELETE FROM ccm_billing_lines WHERE record_id = %s", (record.record_id,))
    cur.execute("DELETE FROM ccm_billing_logs WHERE record_id = %s", (record.record_id,))
    if record.lines:
        cur.executemany(
            "INSERT INTO ccm_billing_lines (record_id, code, units) VALUES (%s, %s, %s)",
            [(record.record_id, line.code, line.units) for line in record.lines],
        )
    contributing = set(record.contributing_event_ids)
    if record.logs:
        cur.executemany(
            "INSERT INTO ccm_billing_logs (record_id, event_id, staff_id, staff_name, role, "
            "credentials, licensed, activity, start_at, end_at, minutes, status, contributing, "
            "excluded_by, voided_by, void_reason) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    record.record_id,
                    line.event_id,
                    line.staff_id,
                    line.staff_name,
                    line.role.value,
                    line.credentials,
                    line.licensed,
                    line.activity.value,
                    line.start,
                    line.end,
                    line.minutes,
                    line.status,
                    line.event_id in contributing,
                    line.excluded_by,
                    line.voided_by,
                    line.void_reason.value if line.void_reason else None,
                )
                for line in record.logs
            ],
        )


def apply_batch(
    conn: psycopg.Connection[Any], sink: str, messages: Sequence[Message]
) -> BatchResult:
    """Apply ``messages`` (in partition order) and store the next offsets, in one transaction."""
    result = BatchResult()
    # pipeline mode: statements whose results are not read (deletes, inserts, the audit row)
    # travel with the next one that is, instead of a round trip each
    with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
        # lock (or create) each partition's offset row first: the batch owns the partition
        starts: dict[tuple[str, int], int] = {}
        for topic, partition in sorted({(m.topic, m.partition) for m in messages}):
            cur.execute(
                "INSERT INTO ccm_sink_offsets (sink, topic, partition, next_offset) "
                "VALUES (%s, %s, %s, 0) ON CONFLICT DO NOTHING",
                (sink, topic, partition),
            )
            cur.execute(
                "SELECT next_offset FROM ccm_sink_offsets "
                "WHERE sink = %s AND topic = %s AND partition = %s FOR UPDATE",
                (sink, topic, partition),
            )
            row = cur.fetchone()
            assert row is not None
            starts[(topic, partition)] = int(row[0])
        for msg in messages:
            tp = (msg.topic, msg.partition)
            if msg.offset < starts[tp]:
                result.skipped += 1
                continue
            outcome, envelope_id, record = _apply_one(cur, msg)
            cur.execute(
                'INSERT INTO ccm_sink_messages (sink, topic, partition, "offset", envelope_id, '
                "record_id, revision, outcome) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    sink,
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    envelope_id,
                    record.record_id if record else None,
                    record.revision if record else None,
                    outcome,
                ),
            )
            setattr(result, outcome, getattr(result, outcome) + 1)
            result.offsets[tp] = msg.offset + 1
        for (topic, partition), next_offset in result.offsets.items():
            cur.execute(
                "UPDATE ccm_sink_offsets SET next_offset = %s, updated_at = now() "
                "WHERE sink = %s AND topic = %s AND partition = %s",
                (next_offset, sink, topic, partition),
            )
    return result


def _apply_one(
    cur: psycopg.Cursor[Any], msg: Message
) -> tuple[str, str | None, BillingRecord | None]:
    if msg.value is None:
        return "invalid", None, None
    try:
        envelope = BillingRecordEnvelope.model_validate_json(msg.value)
    except ValidationError:
        return "invalid", None, None
    record = envelope.data
    cur.execute(
        "SELECT 1 FROM ccm_sink_messages "
        "WHERE envelope_id = %s AND outcome IN ('applied', 'stale') LIMIT 1",
        (envelope.id,),
    )
    if cur.fetchone() is not None:
        return "duplicate", envelope.id, record
    raw = json.loads(msg.value)["data"]
    cur.execute(_UPSERT_RECORD, _record_row(record, envelope.id, raw))
    if cur.fetchone() is None:  # a revision at or above this one is already there
        return "stale", envelope.id, record
    _replace_details(cur, record)
    return "applied", envelope.id, record


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, seek every partition to the offset stored in the database."""

    def __init__(self, sink: PostgresSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.sink.seek_assigned(list(assigned))


@dataclass
class SinkOptions:
    dsn: str
    bootstrap_servers: str
    topic: str
    name: str = "ccm-billing-sink"
    batch_max: int = 500
    stop_at_end: bool = False
    idle_exit_seconds: float = 0.0
    kafka_security: dict[str, Any] = field(default_factory=dict)  # aiokafka_kwargs(settings)


class PostgresSink:
    """Consume billing records into PostgreSQL, one database transaction per batch."""

    def __init__(
        self, options: SinkOptions, progress: Callable[[int, int, bool], None] | None = None
    ) -> None:
        self.options = options
        self.progress = progress
        self.conn: psycopg.Connection[Any] | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.totals = BatchResult()
        self.targets: dict[TopicPartition, int] = {}  # end offsets at start (catch-up)

    async def seek_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self.conn is not None and self.consumer is not None
        stored = stored_offsets(self.conn, self.options.name, self.options.topic)
        for tp in assigned:
            offset = stored.get(tp.partition)
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        log.info(
            "sink_partitions_assigned",
            partitions=sorted(tp.partition for tp in assigned),
            stored={p: stored.get(p) for p in sorted(tp.partition for tp in assigned)},
        )

    async def run(self) -> BatchResult:
        opts = self.options
        self.conn = psycopg.connect(opts.dsn, autocommit=True)
        create_schema(self.conn)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=opts.bootstrap_servers,
            group_id=opts.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **opts.kafka_security,
        )
        await self.consumer.start()
        try:
            self.consumer.subscribe([opts.topic], listener=_SeekToStored(self))
            partitions = await self._partitions(opts.topic)
            tps = [TopicPartition(opts.topic, p) for p in sorted(partitions)]
            self.targets = dict(await self.consumer.end_offsets(tps)) if tps else {}
            await self._loop()
        finally:
            await self.consumer.stop()
            self.conn.close()
        return self.totals

    async def _partitions(self, topic: str, timeout: float = 60.0) -> set[int]:
        """The topic's partitions, once the subscription's metadata has arrived."""
        assert self.consumer is not None
        deadline = time.monotonic() + timeout
        while True:
            found = self.consumer.partitions_for_topic(topic)
            if found:
                return set(found)
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic!r} not found (create it: ccm-tally topics)")
            await asyncio.sleep(0.1)

    async def _loop(self) -> None:
        assert self.consumer is not None and self.conn is not None
        consumer, opts = self.consumer, self.options
        caught_up_reported = False
        idle_since = time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=opts.batch_max)
            messages = [
                Message(tp.topic, tp.partition, m.offset, m.value)
                for tp, records in batch.items()
                for m in records
            ]
            if messages:
                idle_since = time.monotonic()
                # synchronous on purpose: the rebalance listener (which reads the stored
                # offsets on the same connection) cannot run in the middle of a transaction
                result = apply_batch(self.conn, opts.name, messages)
                self._add(result)
                await self._commit_for_monitoring(result)
            behind = await self._behind()
            caught_up = behind == 0
            if self.progress is not None and (messages or (caught_up and not caught_up_reported)):
                self.progress(self.totals.consumed, behind, caught_up)
            if caught_up and not caught_up_reported:
                caught_up_reported = True
                log.info("sink_caught_up", consumed=self.totals.consumed)
            if opts.stop_at_end and caught_up:
                return
            idle = time.monotonic() - idle_since
            if opts.idle_exit_seconds and not messages and idle > opts.idle_exit_seconds:
                return

    async def _behind(self) -> int:
        """Messages between what is applied and the end offsets seen at start, over every
        partition of the topic: the database's offsets (any sink of the group) or this sink's
        position on the partitions it holds, whichever is further."""
        assert self.consumer is not None and self.conn is not None
        stored = stored_offsets(self.conn, self.options.name, self.options.topic)
        assignment = self.consumer.assignment()
        behind = 0
        for tp, end in self.targets.items():
            done = stored.get(tp.partition, 0)
            if tp in assignment:
                done = max(done, await self.consumer.position(tp))
            behind += max(0, end - done)
        return behind

    def _add(self, result: BatchResult) -> None:
        t = self.totals
        t.applied += result.applied
        t.duplicate += result.duplicate
        t.stale += result.stale
        t.invalid += result.invalid
        t.skipped += result.skipped
        t.offsets.update(result.offsets)

    async def _commit_for_monitoring(self, result: BatchResult) -> None:
        assert self.consumer is not None
        offsets = {TopicPartition(t, p): o for (t, p), o in result.offsets.items()}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # a rebalance: the database holds the truth anyway
            log.warning("sink_kafka_commit_failed", error=type(exc).__name__)
