"""From raw input bytes to outputs: decode, route to the patient's ledger, apply, dead-letter.

Shared by the streaming worker, ``ccm-tally replay``, the tests and the benchmarks, so that the
stream and the replay cannot disagree on anything but transport.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from .contracts import (
    ANY_INPUT_ADAPTER,
    ID_PATTERN,
    PAYER_PATTERN,
    EnrollmentEvent,
    MonthCloseCommand,
    Outcome,
    Reason,
    RejectedInput,
    TimeLogged,
    TimeLogVoided,
    Timestamp,
    reason_from_validation_error,
)
from .tally import CloseTrigger, Output, PatientLedger, Result, TallyEngine, envelope, stable_id

MAX_PAYLOAD_BYTES = 64 * 1024
"""Inputs longer than this are not parsed (``payload_too_large``)."""
DEAD_LETTER_PREFIX_BYTES = 16 * 1024
"""A dead letter keeps this much of the original payload (every realistic event whole); with
JSON escaping and base64 its record stays far below Kafka's 1 MiB message limit whatever the
input (at most about 120 KB)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ID_RE = re.compile(ID_PATTERN)
_PAYER_RE = re.compile(PAYER_PATTERN)
_TIMESTAMP_ADAPTER: TypeAdapter[datetime] = TypeAdapter(Timestamp)


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input came from: a Kafka topic/partition/offset, or a file and line.

    ``timestamp`` is the Kafka record's own timestamp, when there is one: it stamps the dead
    letter of a payload that has no readable time, and is the same every time the record is
    read again (the wall clock is not: a re-published dead letter must be identical).
    """

    topic: str
    partition: int | None = None
    offset: int | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    event: TimeLogged | TimeLogVoided | EnrollmentEvent | None
    reason: Reason | None = None
    message: str = ""


def decode(raw: bytes) -> Decoded:
    """Parse and validate one input payload; a failure carries its reason code."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        return Decoded(None, Reason.PAYLOAD_TOO_LARGE, f"payload exceeds {MAX_PAYLOAD_BYTES} bytes")
    try:
        # time logs, voids and the enrollment feed's events: one discriminated union, so the
        # worker only has to subscribe to the enrollment topic
        return Decoded(ANY_INPUT_ADAPTER.validate_json(raw))
    except ValidationError as err:
        reason, message = reason_from_validation_error(err)
        return Decoded(None, reason, message)


def _peek(raw: bytes, *fields: str) -> list[str | None]:
    """Best-effort ids of a payload that failed validation (for the dead letter only).

    Parsed with the same parser as :func:`decode` (bounded nesting, no lone surrogates), and an
    id is kept only if it is a valid id: whatever the payload, the dead letter serialises.
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        return [None for _ in fields]
    try:
        data = pydantic_core.from_json(raw)
    except Exception:  # any parse failure (invalid JSON, nesting too deep ...): no ids
        return [None for _ in fields]
    if not isinstance(data, dict):
        return [None for _ in fields]
    found = [data.get(f) for f in fields]
    return [v if isinstance(v, str) and _ID_RE.fullmatch(v) else None for v in found]


def rejected_output(
    raw: bytes,
    reason: Reason,
    message: str,
    source: Source,
    key: str | None,
    at: datetime | None = None,
    event: TimeLogged | TimeLogVoided | EnrollmentEvent | None = None,
) -> Output:
    """The dead-letter record of one input: why, where from, and the original, bounded.

    Deterministic: the same input (bytes and source) always gives the same record, id and
    content. Its ``time`` is ``at`` if given, else the event's ``recorded_at``, else the
    source record's timestamp, else the epoch: never the clock.
    """
    prefix = raw[:DEAD_LETTER_PREFIX_BYTES]
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        text = prefix.decode("utf-8", "replace")
        b64: str | None = base64.b64encode(prefix).decode("ascii")
    else:  # valid UTF-8: a character cut by the prefix is dropped, not replaced
        text, b64 = prefix.decode("utf-8", "ignore"), None
    event_id: str | None
    patient: str | None
    if event is not None:
        event_id, patient = event.event_id, event.patient_id
    else:
        event_id, patient = _peek(raw, "event_id", "patient_id")
    data = RejectedInput(
        reason=reason,
        message=message,
        event_id=event_id,
        patient_id=patient,
        original=text,
        original_base64=b64,
        original_length=len(raw),
        original_sha256=hashlib.sha256(raw).hexdigest(),
        original_truncated=len(raw) > DEAD_LETTER_PREFIX_BYTES,
        source_topic=source.topic,
        source_partition=source.partition,
        source_offset=source.offset,
    )
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    oid = stable_id("rejected", source.topic, source.partition, source.offset, reason, digest)
    # keyed like the input when its key is an id (an oversized or garbled key is not repeated)
    out_key = key if key and _ID_RE.fullmatch(key) else patient or ""
    subject = f"{source.topic}/{source.partition}/{source.offset}"
    if at is None:
        at = event.recorded_at if event is not None else source.timestamp or _EPOCH
    return Output("rejected", out_key, envelope(data, oid, subject, at))


@dataclass(frozen=True, slots=True)
class Processed:
    """The fate of one input and everything it caused."""

    outcome: Outcome
    outputs: list[Output]
    event: TimeLogged | TimeLogVoided | EnrollmentEvent | None
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
    """Decode ``raw`` (a time log, a void or an enrollment-feed event: one function for every
    input topic but the control topic) and apply it to its patient's ledger. A log that fails
    validation is dead-lettered and, when its patient-month is readable, also listed on that
    month's record (a closed month's record is re-issued). Never raises: every input ends as
    exactly one outcome, a failure of the service on it included (``internal_error``).

    ``key`` is the Kafka message key, when there is one: it must be the patient id, or the
    patient's state would be split across partitions. ``received_at`` is accepted for older
    callers and ignored: dead letters are stamped from the input (see :func:`rejected_output`).
    Returns the ledger that was changed (the caller persists it), or None.
    """
    del received_at  # the core reads no clock, and a dead letter must not depend on one
    try:
        return _process(engine, ledger_for, raw, source, key)
    except Exception as exc:  # a bug must not stop the partition: the input is dead-lettered
        reason = Reason.INTERNAL_ERROR
        message = f"the service failed on this input ({type(exc).__name__}); kept for replay"
        dead = rejected_output(raw, reason, message, source, key)
        return Processed(Outcome.REJECTED, [dead], None, reason, type(exc).__name__), None


def _process(
    engine: TallyEngine,
    ledger_for: LedgerLookup,
    raw: bytes,
    source: Source,
    key: str | None,
) -> tuple[Processed, PatientLedger | None]:
    decoded = decode(raw)
    event = decoded.event
    if event is None:
        assert decoded.reason is not None
        dead = rejected_output(raw, decoded.reason, decoded.message, source, key)
        # rules 6: a log that failed validation is listed on its month's record too
        listed, ledger = _list_on_record(engine, ledger_for, raw, key, decoded)
        return Processed(Outcome.REJECTED, [dead, *listed], None, decoded.reason), ledger
    if key is not None and key != event.patient_id:
        message = "message key is not the event's patient_id"
        dead = rejected_output(raw, Reason.KEY_MISMATCH, message, source, key, event=event)
        return Processed(Outcome.REJECTED, [dead], event, Reason.KEY_MISMATCH), None
    ledger = ledger_for(event.patient_id)
    result: Result = engine.apply(ledger, event)
    outputs = result.outputs
    if result.outcome is Outcome.REJECTED:
        assert result.reason is not None
        outputs = [
            rejected_output(raw, result.reason, result.message, source, key, event=event),
            *outputs,
        ]
    return Processed(result.outcome, outputs, event, result.reason, result.detail), ledger


def _readable_log(raw: bytes) -> dict[str, object] | None:
    """The fields of a rejected ``time_logged`` that place it in a patient-month, if readable:
    patient, practice, start, and payer, event id, recorded_at if any. Read with the parser and
    the strict types :func:`decode` uses (bounded nesting; ids printable ASCII; timestamps
    RFC 3339 in 2000-2099), so that whatever the payload nothing here raises or is misread."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        return None
    try:
        data = pydantic_core.from_json(raw)
    except Exception:  # any parse failure (invalid JSON, nesting too deep ...): not readable
        return None
    if not isinstance(data, dict) or data.get("event_type", "time_logged") != "time_logged":
        return None
    patient, practice, event_id = _peek(raw, "patient_id", "practice_id", "event_id")
    start = _timestamp(data.get("start"))
    if patient is None or practice is None or start is None:
        return None
    payer = data.get("payer")
    return {
        "patient_id": patient,
        "practice_id": practice,
        "start": start,
        "payer": payer if isinstance(payer, str) and _PAYER_RE.fullmatch(payer) else None,
        "event_id": event_id or "",
        "recorded_at": _timestamp(data.get("recorded_at")) or start,
    }


def _timestamp(value: object) -> datetime | None:
    """A wire timestamp valid as the contracts define it (else None)."""
    if not isinstance(value, str):
        return None
    try:
        return _TIMESTAMP_ADAPTER.validate_json(pydantic_core.to_json(value))
    except ValidationError:
        return None


def _list_on_record(
    engine: TallyEngine,
    ledger_for: LedgerLookup,
    raw: bytes,
    key: str | None,
    decoded: Decoded,
) -> tuple[list[Output], PatientLedger | None]:
    """List an undecodable log on its month's record (re-issued when closed)."""
    fields = _readable_log(raw)
    if fields is None or (key is not None and key != fields["patient_id"]):
        return [], None
    assert decoded.reason is not None
    patient = str(fields["patient_id"])
    ledger = ledger_for(patient)
    start, at = fields["start"], fields["recorded_at"]
    assert isinstance(start, datetime) and isinstance(at, datetime)
    payer = fields["payer"]
    outputs = engine.list_unreadable(
        ledger,
        str(fields["practice_id"]),
        start,
        payer if isinstance(payer, str) else None,
        str(fields["event_id"]),
        decoded.reason,
        decoded.message,
        at,
    )
    return outputs, ledger


# ---------------------------------------------------------------- month close commands


def is_close_command(raw: bytes) -> bool:
    """Does an input line hold a control-topic command (``command_type``) rather than an
    event? Replay reads both from one file."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        return False
    try:
        data = pydantic_core.from_json(raw)  # bounded nesting, as decode: never raises here
    except Exception:
        return False
    return isinstance(data, dict) and "command_type" in data and "event_type" not in data


def close_trigger(command: MonthCloseCommand) -> CloseTrigger:
    """How a record closed by ``command`` says it was closed: the timer sends ``due``."""
    return "timer" if command.mode == "due" else "command"


def apply_close(
    engine: TallyEngine, ledgers: Iterable[PatientLedger], command: MonthCloseCommand
) -> tuple[list[Output], list[PatientLedger]]:
    """Apply one month-close command to ledgers, as the stream does with the control topic
    (every ledger of the command's partition) and replay with a close line (every ledger).

    Returns the records issued and the ledgers changed (the caller persists them). A ``due``
    close also archives the months past their filing window, so that state stays bounded.
    """
    trigger = close_trigger(command)
    outputs: list[Output] = []
    changed: list[PatientLedger] = []
    for ledger in ledgers:
        produced = engine.close(ledger, command, trigger)
        pruned = (
            engine.prune(ledger, command.as_of) if command.mode == "due" and ledger.months else 0
        )
        if produced or pruned:
            changed.append(ledger)
        outputs += produced
    return outputs, changed


def decode_close(
    raw: bytes, source: Source, at: datetime | None = None
) -> tuple[MonthCloseCommand | None, Output | None]:
    """A control-topic message as a command, or its dead-letter record (stamped ``at`` if
    given, else the source record's timestamp: deterministic either way)."""
    try:
        return MonthCloseCommand.model_validate_json(raw), None
    except ValidationError as err:
        reason, message = reason_from_validation_error(err)
        return None, rejected_output(raw, reason, message, source, None, at)


class LocalTally:
    """An in-memory set of ledgers: the stream's logic without the stream (replay, tests)."""

    def __init__(self, engine: TallyEngine | None = None) -> None:
        self.engine = engine or TallyEngine()
        self.ledgers: dict[str, PatientLedger] = {}
        self.outcomes: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.latest: datetime | None = None  # latest recorded_at seen: replay's close time
        self.closes = 0  # month-close commands applied

    def ledger(self, patient_id: str) -> PatientLedger:
        found = self.ledgers.get(patient_id)
        if found is None:
            found = self.ledgers[patient_id] = PatientLedger(patient_id)
        return found

    def feed(self, raw: bytes, source: Source, key: str | None = None) -> Processed:
        """One input; ``key`` is the Kafka key it had, when replaying a keyed stream."""
        processed, _ = process(self.engine, self.ledger, raw, source, key)
        self.outcomes[processed.outcome] += 1
        if processed.event is not None and (
            self.latest is None or processed.event.recorded_at > self.latest
        ):
            self.latest = processed.event.recorded_at
        return processed

    def feed_lines(self, lines: Iterable[bytes], name: str = "stdin") -> Iterator[Output]:
        """Input events and month-close commands, applied in file order (the stream applies a
        partition's inputs and its control commands in their order too)."""
        for number, line in enumerate(lines, start=1):
            raw = line.strip()
            if not raw:
                continue
            source = Source(name, None, number)
            if is_close_command(raw):
                yield from self.feed_close(raw, source)
            else:
                yield from self.feed(raw, source).outputs

    def feed_close(self, raw: bytes, source: Source) -> list[Output]:
        """One month-close command line; an invalid one is dead-lettered, as by the worker."""
        stamp = self.latest or datetime(1970, 1, 1, tzinfo=UTC)
        command, dead = decode_close(raw, source, stamp)
        if command is None:
            assert dead is not None
            return [dead]
        self.closes += 1
        return apply_close(self.engine, self.ledgers.values(), command)[0]

    def close(self, command: MonthCloseCommand) -> list[Output]:
        return [o for ledger in self.ledgers.values() for o in self.engine.close(ledger, command)]

    def close_all(self, as_of: datetime) -> list[Output]:
        return [o for ledger in self.ledgers.values() for o in self.engine.close_all(ledger, as_of)]
