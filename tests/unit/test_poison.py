"""No poison pill: every input, whatever its bytes, ends as one outcome and never raises.

Named regressions for the single messages that stopped a partition for good (issue 8), the
coercions the service used to accept, and the shape of dead letters (bounded, deterministic).
Everything goes through ``ccm_core.ingest.process``, the function the worker and replay share.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ccm_core import codec
from ccm_core.contracts import Outcome, Reason, RejectedInput, TimeLogged
from ccm_core.ingest import (
    DEAD_LETTER_PREFIX_BYTES,
    MAX_PAYLOAD_BYTES,
    LocalTally,
    Processed,
    Source,
    process,
)
from ccm_core.tally import PatientLedger, TallyEngine
from tests.unit.unit_helpers import PATIENT, Harness, encode, local, log

KAFKA_MESSAGE_LIMIT = 1024 * 1024  # the broker's default max.message.bytes, about 1 MiB


def feed(raw: bytes, **source: Any) -> tuple[Processed, LocalTally]:
    tally = LocalTally()
    processed = tally.feed(raw, Source("ccm.timelog.v1", source.get("partition", 3), 42))
    return processed, tally


def dead_letter(processed: Processed) -> RejectedInput:
    [out] = [o for o in processed.outputs if o.kind == "rejected"]
    data = out.envelope.data
    assert isinstance(data, RejectedInput)
    # it serialises, and within Kafka's message limit
    assert len(out.to_json().encode()) < KAFKA_MESSAGE_LIMIT
    return data


def good(**changes: Any) -> dict[str, Any]:
    event = log("e-1", local(10), 30)
    event.update(changes)
    return event


# ---------------------------------------------------------------- the five poison kinds


def test_poison_deeply_nested_json_is_dead_lettered() -> None:
    """Poison 1: JSON nested thousands deep (RecursionError while peeking at the ids) is
    rejected as invalid JSON, alone and inside an otherwise plausible event."""
    deep = b"[" * 100_000 + b"]" * 100_000
    processed, _ = feed(deep[:MAX_PAYLOAD_BYTES])
    assert processed.reason is Reason.INVALID_JSON
    dead_letter(processed)
    nested = json.dumps(good()).encode()[:-1] + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    processed, _ = feed(nested)
    assert processed.outcome is Outcome.REJECTED
    assert dead_letter(processed).event_id is None  # not readable by the service's parser


def test_poison_lone_surrogate_in_an_id_is_dead_lettered() -> None:
    """Poison 2: a lone UTF-16 surrogate escape (not a Unicode character: RFC 8259 8.2) is
    invalid JSON; its dead letter serialises and names no id."""
    raw = b'{"event_type": "time_logged", "event_id": "\\ud800", "patient_id": "\\udfff"}'
    processed, _ = feed(raw)
    assert processed.reason is Reason.INVALID_JSON
    dead = dead_letter(processed)
    assert dead.event_id is None and dead.patient_id is None
    assert dead.original == raw.decode()


def test_poison_log_recorded_before_1901_is_rejected_not_fatal() -> None:
    """Poison 3: a log recorded before 1901-12-13 (below the old 64-bit packing) is outside
    the accepted years and dead-lettered as timestamp_out_of_range."""
    raw = encode(good(recorded_at="1901-12-13T20:45:51Z"))
    processed, _ = feed(raw)
    assert processed.reason is Reason.TIMESTAMP_OUT_OF_RANGE
    dead_letter(processed)


@pytest.mark.parametrize("year", [2038, 2062, 2099])
def test_poison_log_recorded_from_2038_is_tallied_and_its_ledger_persists(year: int) -> None:
    """Poison 4: a log recorded from 2038-01-19T03:14:08Z on (a typo year such as 2062 is
    enough) overflowed the ledger codec's 64-bit packing; now it is tallied and the ledger
    round-trips through the codec unchanged."""
    start = datetime(year, 1, 19, 3, 0, tzinfo=UTC)
    event = log("e-1", start, 30, recorded_at=start + timedelta(minutes=44, seconds=8))
    processed, tally = feed(encode(event))
    assert processed.outcome is Outcome.COUNTED
    ledger = tally.ledgers[PATIENT]
    raw = codec.dumps(ledger)
    assert codec.dumps(codec.loads(raw)) == raw
    # the restored ledger still recognises the redelivery and a changed copy
    restored = codec.loads(raw)
    engine = TallyEngine()
    again, _ = process(engine, lambda _: restored, encode(event), Source("t", 0, 1))
    assert again.outcome is Outcome.DUPLICATE
    changed = {**event, "note": "edited"}
    conflict, _ = process(engine, lambda _: restored, encode(changed), Source("t", 0, 2))
    assert conflict.reason is Reason.EVENT_ID_CONFLICT


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(os.urandom(300_000), id="300KB-random"),
        pytest.param(os.urandom(1_000_000), id="1MB-random"),
        pytest.param(b'{"note": "' + b'\\"' * 500_000 + b'"}', id="1MB-quotes"),
        pytest.param(b'"' * 1_000_000, id="1MB-bare-quotes"),
        pytest.param(b"\x01" * 1_000_000, id="1MB-control"),
    ],
)
def test_poison_oversize_payload_gives_a_bounded_dead_letter(raw: bytes) -> None:
    """Poison 5: 300 KB-1 MB of random bytes or quote characters: the dead letter keeps a
    prefix, the length and a SHA-256, and stays far below the 1 MiB message limit."""
    processed, _ = feed(raw)
    assert processed.reason is Reason.PAYLOAD_TOO_LARGE
    dead = dead_letter(processed)
    assert dead.original_length == len(raw)
    assert dead.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert dead.original_truncated
    assert dead.source_partition == 3 and dead.source_offset == 42
    kept = raw[:DEAD_LETTER_PREFIX_BYTES]
    if dead.original_base64 is not None:
        import base64

        assert base64.b64decode(dead.original_base64) == kept
    else:
        assert dead.original.encode() == kept


def test_dead_letter_of_a_valid_size_payload_keeps_it_whole() -> None:
    """A rejected realistic event is kept whole (not truncated), with its ids."""
    raw = encode(good(minutes=0))
    processed, _ = feed(raw)
    dead = dead_letter(processed)
    assert dead.original == raw.decode() and not dead.original_truncated
    assert dead.original_length == len(raw) and dead.event_id == "e-1"
    assert dead.patient_id == PATIENT


def test_dead_letter_cut_inside_a_multibyte_character_stays_utf8() -> None:
    """A valid UTF-8 payload cut by the prefix drops the cut character; no base64."""
    raw = ("é" * MAX_PAYLOAD_BYTES).encode()
    processed, _ = feed(raw)
    dead = dead_letter(processed)
    assert dead.original_base64 is None
    assert raw.startswith(dead.original.encode())
    assert len(dead.original.encode()) >= DEAD_LETTER_PREFIX_BYTES - 1


# ---------------------------------------------------------------- deterministic dead letters


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not json", id="undecodable"),
        pytest.param(encode(good(minutes=0)), id="invalid"),
        pytest.param(encode(good(payer="nobody")), id="engine-rejected"),
    ],
)
def test_republished_dead_letter_is_identical(raw: bytes) -> None:
    """Processing the same input again (a restart re-reads it) gives the same dead letter:
    same id and the same content, whatever the wall clock says."""
    source = Source("ccm.timelog.v1", 1, 7, timestamp=datetime(2026, 3, 9, tzinfo=UTC))
    outputs = []
    for received in (datetime(2026, 3, 9, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)):
        processed, _ = process(TallyEngine(), PatientLedger, raw, source, received_at=received)
        outputs.append([o.to_json() for o in processed.outputs if o.kind == "rejected"])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 1


def test_dead_letter_time_comes_from_the_input() -> None:
    """The envelope time is the event's recorded_at, else the Kafka record's timestamp, else
    the epoch: never the clock."""
    stamp = datetime(2026, 3, 9, 12, tzinfo=UTC)
    raw_bad = b"{}"
    with_ts, _ = process(TallyEngine(), PatientLedger, raw_bad, Source("t", 0, 1, timestamp=stamp))
    without, _ = process(TallyEngine(), PatientLedger, raw_bad, Source("t", 0, 1))
    event = good(payer="nobody")
    rejected, _ = process(TallyEngine(), PatientLedger, encode(event), Source("t", 0, 1))
    assert with_ts.outputs[0].envelope.time == stamp
    assert without.outputs[0].envelope.time == datetime(1970, 1, 1, tzinfo=UTC)
    assert rejected.outputs[0].envelope.time == datetime.fromisoformat(event["recorded_at"])


def test_a_failing_engine_dead_letters_the_input_as_internal_error() -> None:
    """A bug on one input (here: an engine that raises) does not escape process(): the input
    is dead-lettered as internal_error and the next input is processed normally."""

    class Broken(TallyEngine):
        def apply(self, ledger: PatientLedger, event: Any) -> Any:
            if event.event_id == "boom":
                raise ZeroDivisionError("bug")
            return super().apply(ledger, event)

    engine, ledger = Broken(), PatientLedger(PATIENT)
    bad, changed = process(engine, lambda _: ledger, encode(good(event_id="boom")), Source("t"))
    assert bad.outcome is Outcome.REJECTED and bad.reason is Reason.INTERNAL_ERROR
    assert changed is None
    assert dead_letter(bad).message.startswith("the service failed on this input")
    ok, _ = process(engine, lambda _: ledger, encode(good()), Source("t"))
    assert ok.outcome is Outcome.COUNTED


def test_oversized_or_garbled_kafka_key_is_not_repeated_on_the_dead_letter() -> None:
    """A dead letter is keyed like its input when the key is an id, else by the patient."""
    raw = encode(good())
    big, _ = process(TallyEngine(), PatientLedger, raw, Source("t"), key="k" * 100_000)
    assert big.reason is Reason.KEY_MISMATCH
    assert big.outputs[0].key == PATIENT
    other, _ = process(TallyEngine(), PatientLedger, raw, Source("t"), key="someone-else")
    assert other.outputs[0].key == "someone-else"


# ---------------------------------------------------------------- no coercion, plausible ranges


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"minutes": True}, Reason.INVALID_FIELD, id="minutes-true"),
        pytest.param({"minutes": "30"}, Reason.INVALID_FIELD, id="minutes-string"),
        pytest.param({"minutes": 30.5}, Reason.INVALID_FIELD, id="minutes-fraction"),
        pytest.param({"licensed": "true"}, Reason.INVALID_FIELD, id="licensed-string"),
        pytest.param({"licensed": 1}, Reason.INVALID_FIELD, id="licensed-one"),
        pytest.param(
            {"schema_version": True}, Reason.UNSUPPORTED_SCHEMA_VERSION, id="version-true"
        ),
        pytest.param(
            {"schema_version": "1"}, Reason.UNSUPPORTED_SCHEMA_VERSION, id="version-string"
        ),
        pytest.param({"start": 1}, Reason.INVALID_FIELD, id="start-number"),
        pytest.param({"event_id": " e-1"}, Reason.INVALID_FIELD, id="id-leading-space"),
        pytest.param({"event_id": "e\x001"}, Reason.INVALID_FIELD, id="id-nul"),
        pytest.param({"event_id": "e\x7f"}, Reason.INVALID_FIELD, id="id-del"),
        pytest.param({"patient_id": "p\n"}, Reason.INVALID_FIELD, id="id-newline"),
        pytest.param({"patient_id": "p\uffff"}, Reason.INVALID_FIELD, id="id-uffff"),
        pytest.param({"staff_id": "x" * 129}, Reason.INVALID_FIELD, id="id-too-long"),
        pytest.param({"payer": "cms\n"}, Reason.INVALID_FIELD, id="payer-newline"),
        pytest.param(
            {"start": "0001-01-01T00:00:00-05:00"},
            Reason.TIMESTAMP_OUT_OF_RANGE,
            id="year-1",
        ),
        pytest.param(
            {"start": "9999-12-31T23:00:00Z", "recorded_at": "9999-12-31T23:59:00Z"},
            Reason.TIMESTAMP_OUT_OF_RANGE,
            id="year-9999",
        ),
        pytest.param(
            {"minutes": 1e30, "end": "2026-03-10T11:00:00-04:00"},
            Reason.DURATION_EXCEEDS_BOUND,
            id="minutes-1e30-with-end",
        ),
        pytest.param({"minutes": 1441}, Reason.DURATION_EXCEEDS_BOUND, id="minutes-over-a-day"),
        pytest.param({"start": "2026-02-29T10:00:00Z"}, Reason.INVALID_FIELD, id="no-29-feb-2026"),
        pytest.param({"start": "2026-03-10 10:00:00Z"}, Reason.INVALID_FIELD, id="space-sep"),
        pytest.param({"start": "2026-03-10T10:00Z"}, Reason.INVALID_FIELD, id="no-seconds"),
        pytest.param({"extra_field": 1}, Reason.INVALID_FIELD, id="unknown-field"),
    ],
)
def test_strict_validation_rejects_without_coercion(
    changes: dict[str, Any], reason: Reason
) -> None:
    """Rule 5 / issue 8: no coercion, printable bounded ids, plausible timestamps; each
    rejection carries its reason and the payload is kept."""
    processed, _ = feed(encode(good(**changes)))
    assert processed.outcome is Outcome.REJECTED
    assert processed.reason is reason, dead_letter(processed).message
    dead_letter(processed)


def test_json_integers_with_a_zero_fraction_are_integers() -> None:
    """30.0 is the JSON number 30 (the schema says so too): accepted, as 30 minutes; so is
    schema_version 1.0."""
    harness = Harness()
    processed = harness.feed_one(good(minutes=30.0, schema_version=1.0))
    assert processed.outcome is Outcome.COUNTED
    assert isinstance(processed.event, TimeLogged) and processed.event.minutes == 30


def test_message_never_quotes_an_unknown_key() -> None:
    """An unknown key may be free text (a name): the message does not repeat it."""
    processed, _ = feed(encode(good(**{"Jane Doe, DOB 1950": 1})))
    dead = dead_letter(processed)
    assert "Jane" not in dead.message and processed.reason is Reason.INVALID_FIELD


def test_every_reason_code_is_documented_with_an_example() -> None:
    """docs/events.md has a row (code, when, example) for every reason code."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text("utf-8")
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in text.splitlines()
        if line.startswith("| `")
    }
    for reason in Reason:
        assert reason.value in rows, reason
        assert len([c for c in rows[reason.value].split("|") if c.strip()]) == 3, reason


# ------------------------------------------ rules 6 (issue 9) through the strict decode path


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"minutes": "30"}, Reason.INVALID_FIELD, id="minutes-string"),
        pytest.param({"licensed": "true"}, Reason.INVALID_FIELD, id="licensed-string"),
        pytest.param({"staff_id": "a b"}, Reason.INVALID_FIELD, id="staff-id-space"),
        pytest.param(
            {"recorded_at": "1901-12-13T20:45:51Z"},
            Reason.TIMESTAMP_OUT_OF_RANGE,
            id="recorded-1901",
        ),
        pytest.param({"minutes": 1441}, Reason.DURATION_EXCEEDS_BOUND, id="minutes-over-a-day"),
    ],
)
@pytest.mark.parametrize("month_open", [True, False], ids=["month-open", "payer-opens-month"])
def test_rule_6_strictly_rejected_log_is_listed_on_its_month_record(
    changes: dict[str, Any], reason: Reason, month_open: bool
) -> None:
    """Rules 6 with issue 8's validation: a log that strict validation rejects, whose patient,
    practice, start and payer are valid, is one dead letter and is listed on its month's record
    with the same reason code (the month opened already, or opened by the payer named)."""
    harness = Harness()
    if month_open:
        harness.feed(log("ok", local(3), 30))
    processed = harness.feed_one(good(event_id="bad-1", **changes))
    assert processed.outcome is Outcome.REJECTED and processed.reason is reason
    dead_letter(processed)
    harness.close()
    assert [(r.event_id, r.reason) for r in harness.record().rejected] == [("bad-1", reason)]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"start": "9999-12-31T23:00:00Z"}, id="start-year-9999"),
        pytest.param({"start": "0001-01-01T00:00:00-05:00"}, id="start-year-1"),
        pytest.param({"start": 1}, id="start-number"),
        pytest.param({"start": "2026-03-10 10:00:00Z"}, id="start-space"),
        pytest.param({"practice_id": "prac-1\n"}, id="practice-newline"),
        pytest.param({"patient_id": "\x00"}, id="patient-nul"),
        pytest.param({"patient_id": "x" * 129, "minutes": 0}, id="patient-too-long"),
    ],
)
def test_rule_6_log_placed_by_no_valid_month_is_only_dead_lettered(
    changes: dict[str, Any],
) -> None:
    """A rejected log whose patient, practice or start is not valid as the contracts define it
    places itself in no month: one dead letter, no month opened, nothing raises."""
    harness = Harness()
    harness.feed(log("ok", local(3), 30))
    processed = harness.feed_one(good(event_id="bad-2", **changes))
    assert processed.outcome is Outcome.REJECTED
    assert [o.kind for o in processed.outputs] == ["rejected"]
    assert list(harness.local.ledgers[PATIENT].months) == [("prac-1", "2026-03")]
    harness.close()
    assert harness.record().rejected == []


def test_rule_6_listing_survives_the_hostile_payloads() -> None:
    """The hostile list through the rules-6 listing step: one outcome each, never
    internal_error (nothing raised on the way to the record)."""
    from tests.unit.hostile import HOSTILE_PAYLOADS

    harness = Harness()
    harness.feed(log("ok", local(3), 30))
    for name, raw in HOSTILE_PAYLOADS:
        processed = harness.feed_one(raw)
        assert processed.outcome is Outcome.REJECTED, name
        assert processed.reason is not Reason.INTERNAL_ERROR, (name, processed.detail)
    harness.close()
    assert harness.record().rejected  # some hostile logs were placed on the month
