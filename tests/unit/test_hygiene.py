"""Rule 5: input hygiene. Every rejection carries a reason code and is kept (dead-letter
record with the original bytes); an identical redelivery counts once and is not an error."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ccm_core.config import CoreConfig, PracticeSettings
from ccm_core.contracts import Outcome, Reason, RejectedInput
from ccm_core.ingest import decode
from tests.unit.unit_helpers import Harness, lines_of, local, log, void


def _good(**changes: Any) -> dict[str, Any]:
    event = log("e1", local(10), 20)
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def _rejected_input(harness: Harness) -> RejectedInput:
    [dead] = [o.envelope.data for o in harness.outputs if o.kind == "rejected"]
    assert isinstance(dead, RejectedInput)
    return dead


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"patient_id": None}, Reason.MISSING_FIELD, id="missing-patient"),
        pytest.param({"patient_id": "  "}, Reason.MISSING_FIELD, id="blank-patient"),
        pytest.param({"practice_id": None}, Reason.MISSING_FIELD, id="missing-practice"),
        pytest.param({"practice_id": ""}, Reason.MISSING_FIELD, id="empty-practice"),
        pytest.param({"activity": "golf"}, Reason.UNKNOWN_ACTIVITY, id="unknown-activity"),
        pytest.param({"role": "janitor"}, Reason.UNKNOWN_ROLE, id="unknown-role"),
        pytest.param({"minutes": 0}, Reason.NON_POSITIVE_MINUTES, id="zero-minutes"),
        pytest.param({"minutes": -15}, Reason.NON_POSITIVE_MINUTES, id="negative-minutes"),
        pytest.param(
            {"minutes": None, "end": local(10, 9).isoformat()},
            Reason.END_BEFORE_START,
            id="end-before-start",
        ),
        pytest.param(
            {"minutes": None, "end": local(10).isoformat()},
            Reason.END_BEFORE_START,
            id="end-equals-start",
        ),
        pytest.param(
            {"start": "2026-03-10T10:00:00"}, Reason.TIMESTAMP_WITHOUT_OFFSET, id="naive-start"
        ),
        pytest.param(
            {"minutes": None, "end": "2026-03-10T10:20:00"},
            Reason.TIMESTAMP_WITHOUT_OFFSET,
            id="naive-end",
        ),
        pytest.param(
            {"recorded_at": "2026-03-10T12:00:00"},
            Reason.TIMESTAMP_WITHOUT_OFFSET,
            id="naive-recorded-at",
        ),
        pytest.param({"minutes": None}, Reason.MISSING_DURATION, id="no-duration"),
        pytest.param({"event_type": "time_fished"}, Reason.UNKNOWN_EVENT_TYPE, id="event-type"),
    ],
)
def test_rule_5_invalid_logs_rejected_with_reason_code(
    changes: dict[str, Any], reason: Reason
) -> None:
    """Rule 5: missing patient/practice, unknown activity/role, zero/negative minutes, end
    before start, timestamps without UTC offset are rejected with a reason and kept."""
    harness = Harness()
    raw = json.dumps(_good(**changes)).encode()
    processed = harness.feed_one(raw)
    assert processed.outcome is Outcome.REJECTED
    assert processed.reason is reason
    dead = _rejected_input(harness)
    assert dead.reason is reason
    assert dead.message
    assert dead.original == raw.decode()  # the rejection is kept with the original payload
    assert dead.event_id == "e1"
    assert harness.local.outcomes[Outcome.REJECTED] == 1
    assert harness.thresholds() == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"event_type": "time_logged", "event_id": ', Reason.INVALID_JSON),
        (b"\xff\xfe not utf-8", Reason.INVALID_JSON),
        (b"[1, 2, 3]", Reason.NOT_AN_OBJECT),
        (b"{}", Reason.MISSING_FIELD),
    ],
)
def test_rule_5_malformed_payloads_are_kept_with_a_reason(raw: bytes, reason: Reason) -> None:
    """Rule 5: a malformed payload is dead-lettered with its reason; bytes are kept."""
    harness = Harness()
    processed = harness.feed_one(raw)
    assert (processed.outcome, processed.reason) == (Outcome.REJECTED, reason)
    dead = _rejected_input(harness)
    assert dead.reason is reason
    if dead.original_base64 is None:
        assert dead.original.encode() == raw
    else:  # not UTF-8: the exact bytes travel base64-encoded
        import base64

        assert base64.b64decode(dead.original_base64) == raw


def test_rule_5_rejection_message_never_echoes_free_text() -> None:
    """Rule 5 / contracts: messages name the field and never quote free text (PHI)."""
    harness = Harness()
    harness.feed_one(_good(activity="Mrs Smith's diabetes call"))
    dead = _rejected_input(harness)
    assert dead.reason is Reason.UNKNOWN_ACTIVITY
    assert "Smith" not in dead.message


def test_rule_5_log_longer_than_480_minutes_is_rejected() -> None:
    """Rule 5: a single log above the default plausibility bound (480 min) is rejected;
    exactly 480 is accepted."""
    harness = Harness()
    ok, too_long = harness.feed(log("ok", local(10, 8), 480), log("long", local(11, 8), 481))
    assert ok.outcome is Outcome.COUNTED
    assert (too_long.outcome, too_long.reason) == (
        Outcome.REJECTED,
        Reason.DURATION_EXCEEDS_BOUND,
    )
    assert _rejected_input(harness).reason is Reason.DURATION_EXCEEDS_BOUND
    harness.close_all()
    record = harness.record()
    assert record.qualifying_minutes == 480
    assert [(r.event_id, r.reason) for r in record.rejected] == [
        ("long", Reason.DURATION_EXCEEDS_BOUND)
    ]


def test_rule_5_plausibility_bound_is_a_practice_setting() -> None:
    """Rule 5: the bound is the practice's own (here 120 minutes)."""
    config = CoreConfig(practices={"short": PracticeSettings(max_log_minutes=120)})
    harness = Harness(config)
    results = harness.feed(log("a", local(10), 121, practice_id="short"), log("b", local(10), 121))
    assert [r.reason for r in results] == [Reason.DURATION_EXCEEDS_BOUND, None]


def test_rule_5_identical_redelivery_counts_once_and_is_not_an_error() -> None:
    """Rule 5: same event id and same content: counted once, outcome duplicate, no DLQ."""
    harness = Harness()
    event = log("e1", local(10), 40)
    first, again, third = harness.feed(event, event, dict(event))
    assert first.outcome is Outcome.COUNTED
    assert again.outcome is Outcome.DUPLICATE and again.outputs == []
    assert third.outcome is Outcome.DUPLICATE
    harness.feed(log("e2", local(11), 20))
    harness.close_all()
    record = harness.record()
    assert record.qualifying_minutes == 60  # not 100
    assert record.counted_log_minutes == 60
    assert record.rejected == []
    assert [o for o in harness.outputs if o.kind == "rejected"] == []


def test_rule_5_same_event_id_different_content_is_event_id_conflict() -> None:
    """Rule 5: an event id reused with different content is rejected (event_id_conflict);
    the first content stays and the rejection is listed on the month's record."""
    harness = Harness()
    first, conflict = harness.feed(log("e1", local(10), 40), log("e1", local(10), 60))
    assert first.outcome is Outcome.COUNTED
    assert (conflict.outcome, conflict.reason) == (Outcome.REJECTED, Reason.EVENT_ID_CONFLICT)
    assert _rejected_input(harness).reason is Reason.EVENT_ID_CONFLICT
    harness.close_all()
    record = harness.record()
    assert record.qualifying_minutes == 40
    assert record.lines == []
    assert [(r.event_id, r.reason) for r in record.rejected] == [("e1", Reason.EVENT_ID_CONFLICT)]


def test_rule_5_log_reusing_a_void_event_id_is_event_id_conflict() -> None:
    """Rule 5: an id already used by a void cannot be reused by a log."""
    harness = Harness()
    harness.feed(log("e1", local(10), 40), void("v1", "e1"))
    clash = harness.feed_one(log("v1", local(12), 40))
    assert (clash.outcome, clash.reason) == (Outcome.REJECTED, Reason.EVENT_ID_CONFLICT)


def test_rule_5_timely_filing_recorded_more_than_12_months_after_service_rejected() -> None:
    """Rule 5: a log recorded more than 12 months after its date of service is rejected;
    exactly 12 months later is still on time."""
    harness = Harness()
    service = local(10, 10, year=2025)  # 10 March 2025
    on_time, too_late = harness.feed(
        log("on-time", service, 30, recorded_at=local(10, 18, year=2026)),
        log("too-late", service + timedelta(hours=2), 30, recorded_at=local(11, 9, year=2026)),
    )
    assert on_time.outcome is Outcome.COUNTED
    assert (too_late.outcome, too_late.reason) == (Outcome.REJECTED, Reason.PAST_TIMELY_FILING)
    assert _rejected_input(harness).reason is Reason.PAST_TIMELY_FILING
    harness.close_all(as_of=datetime(2026, 3, 12, tzinfo=UTC))
    record = harness.record(month="2025-03")
    assert record.qualifying_minutes == 30


def test_rule_5_late_log_belongs_to_the_month_of_service() -> None:
    """Rule 5: a log recorded in May for work done in March is March time."""
    harness = Harness()
    harness.feed(log("late", local(10), 60, recorded_at=local(20, month=5)))
    harness.close_all(as_of=local(21, month=5))
    [record] = harness.records()
    assert record.service_month == "2026-03"
    assert lines_of(record) == {"99487": 1}


def test_rule_5_unlicensed_role_claiming_licence_is_rejected() -> None:
    """Rules 3/5: an MA log claiming licensed=true would dodge licensed_only: rejected."""
    result = decode(json.dumps(log("x", local(10), 30, role="ma", licensed=True)).encode())
    assert result.event is None
    assert result.reason is Reason.INCONSISTENT_LICENSURE


def test_rule_5_unknown_payer_profile_is_rejected() -> None:
    """Rules 3/5: a payer with no configured profile cannot be tallied: rejected."""
    harness = Harness()
    result = harness.feed_one(log("x", local(10), 30, payer="acme_health"))
    assert (result.outcome, result.reason) == (Outcome.REJECTED, Reason.UNKNOWN_PAYER_PROFILE)


def test_rule_5_unknown_practice_rejected_when_practices_are_required() -> None:
    """Rule 5: with require_known_practice, a log of an unconfigured practice is rejected."""
    config = CoreConfig(practices={"known": PracticeSettings()}, require_known_practice=True)
    harness = Harness(config)
    known, unknown = harness.feed(
        log("a", local(10), 30, practice_id="known"), log("b", local(10), 30)
    )
    assert known.outcome is Outcome.COUNTED
    assert (unknown.outcome, unknown.reason) == (Outcome.REJECTED, Reason.UNKNOWN_PRACTICE)


@pytest.mark.parametrize("rejected_first", [True, False])
def test_rule_5_rejected_log_does_not_decide_the_month_payer(rejected_first: bool) -> None:
    """Rule 5: a rejected log is kept but has no effect on billing. A 500-minute log
    (duration_exceeds_bound) that says payer bcbsm must not make the patient-month a bcbsm
    month and turn the valid 60-minute cms log into a payer_conflict: in either order, the
    month bills 99487 under cms and lists only the over-long log as rejected."""
    bad = log("bad", local(10, 6), 500, payer="bcbsm")
    good = log("ok", local(11), 60, payer="cms")
    harness = Harness()
    harness.feed(*([bad, good] if rejected_first else [good, bad]))
    harness.close_all()
    record = harness.record()
    assert record.payer == "cms"
    assert lines_of(record) == {"99487": 1}
    assert [(r.event_id, r.reason) for r in record.rejected] == [
        ("bad", Reason.DURATION_EXCEEDS_BOUND)
    ]
