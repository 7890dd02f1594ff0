"""From raw input bytes to outputs: decode, route to the patient's ledger, apply, dead-letter.

Shared by the streaming worker, ``ccm-tally replay``, the tests and the benchmarks, so that the
stream and the replay cannot disagree on anything but transport.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from .contracts import (
    INPUT_ADAPTER,
    MonthCloseCommand,
    Outcome,
    Reason,
    RejectedInput,
    TimeLogged,
    TimeLogVoided,
    reason_from_validation_error,
)
from .tally import Output, PatientLedger, Result, TallyEngine, envelope, stable_id

MAX_PAYLOAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input came from: a Kafka topic/partition/offset, or a file and line."""

    topic: str
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    event: TimeLogged | TimeLogVoided | None
    reason: Reason | None = None
    message: str = ""


def decode(raw: bytes) -> Decoded:
    """Parse and validate one input payload; a failure carries its reason code."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        return Decoded(None, Reason.INVALID_FIELD, f"payload exceeds {MAX_PAYLOAD_BYTES} bytes")
    try:
        return Decoded(INPUT_ADAPTER.validate_json(raw))
    except ValidationError as err:
        reason, message = reason_from_validation_error(err)
        return Decoded(None, reason, message)


def _peek(raw: bytes, field: str) -> str | None:
    """Best-effort id from a payload that failed validation (for the DLQ record only)."""
    try:
        value = json.loads(raw).get(field)
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def rejected_output(
    raw: bytes,
    reason: Reason,
    message: str,
    source: Source,
    key: str | None,
    at: datetime,
) -> Output:
    """The dead-letter record of one input: original bytes, reason, message, source."""
    try:
        text, b64 = raw.decode("utf-8"), None
    except UnicodeDecodeError:
        text, b64 = raw.decode("utf-8", "replace"), base64.b64encode(raw).decode("ascii")
    patient = _peek(raw, "patient_id")
    data = RejectedInput(
        reason=reason,
        message=message,
        event_id=_peek(raw, "event_id"),
        patient_id=patient,
        original=text,
        original_base64=b64,
        source_topic=source.topic,
        source_partition=source.partition,
        source_offset=source.offset,
    )
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    oid = stable_id("rejected", source.topic, source.partition, source.offset, reason, digest)
    out_key = key or patient or ""
    subject = f"{source.topic}/{source.partition}/{source.offset}"
    env = envelope(data, oid, subject, at)
    return Output("rejected", out_key, env)


@dataclass(frozen=True, slots=True)
class Processed:
    """The fate of one input and everything it caused."""

    outcome: Outcome
    outputs: list[Output]
    event: TimeLogged | TimeLogVoided | None
    reason: Reason | None = None
    detail: str = ""


LedgerLookup = Callable[[str], PatientLedger]


def process(
    engine: TallyEngine,
    ledger_for: LedgerLookup,
    raw: bytes,
    source: Source,
    key: str | None = None,
    received_at: datetime | None = None,
) -> tuple[Processed, PatientLedger | None]:
    """Decode ``raw`` and apply it to its patient's ledger.

    ``key`` is the Kafka message key, when there is one: it must be the patient id, or the
    patient's state would be split across partitions. ``received_at`` stamps DLQ records of
    payloads with no usable time (defaults to the epoch: the core reads no clock).
    Returns the ledger that was changed (the caller persists it), or None.
    """
    stamp = received_at or datetime(1970, 1, 1, tzinfo=UTC)
    decoded = decode(raw)
    event = decoded.event
    if event is None:
        assert decoded.reason is not None
        dead = rejected_output(raw, decoded.reason, decoded.message, source, key, stamp)
        return Processed(Outcome.REJECTED, [dead], None, decoded.reason), None
    if key is not None and key != event.patient_id:
        message = "message key is not the event's patient_id"
        dead = rejected_output(raw, Reason.KEY_MISMATCH, message, source, key, event.recorded_at)
        return Processed(Outcome.REJECTED, [dead], event, Reason.KEY_MISMATCH), None
    ledger = ledger_for(event.patient_id)
    result: Result = engine.apply(ledger, event)
    outputs = result.outputs
    if result.outcome is Outcome.REJECTED:
        assert result.reason is not None
        outputs = [
            rejected_output(raw, result.reason, result.message, source, key, event.recorded_at),
            *outputs,
        ]
    return Processed(result.outcome, outputs, event, result.reason, result.detail), ledger


class LocalTally:
    """An in-memory set of ledgers: the stream's logic without the stream (replay, tests)."""

    def __init__(self, engine: TallyEngine | None = None) -> None:
        self.engine = engine or TallyEngine()
        self.ledgers: dict[str, PatientLedger] = {}
        self.outcomes: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.latest: datetime | None = None  # latest recorded_at seen: replay's close time

    def ledger(self, patient_id: str) -> PatientLedger:
        found = self.ledgers.get(patient_id)
        if found is None:
            found = self.ledgers[patient_id] = PatientLedger(patient_id)
        return found

    def feed(self, raw: bytes, source: Source) -> Processed:
        processed, _ = process(self.engine, self.ledger, raw, source)
        self.outcomes[processed.outcome] += 1
        if processed.event is not None and (
            self.latest is None or processed.event.recorded_at > self.latest
        ):
            self.latest = processed.event.recorded_at
        return processed

    def feed_lines(self, lines: Iterable[bytes], name: str = "stdin") -> Iterator[Output]:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield from self.feed(line.strip(), Source(name, None, number)).outputs

    def close(self, command: MonthCloseCommand) -> list[Output]:
        return [o for ledger in self.ledgers.values() for o in self.engine.close(ledger, command)]

    def close_all(self, as_of: datetime) -> list[Output]:
        return [o for ledger in self.ledgers.values() for o in self.engine.close_all(ledger, as_of)]
