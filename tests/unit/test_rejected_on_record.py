"""Rule 6: every rejected log whose patient, practice and service month are readable is listed
on that month's record with its reason code, also when it failed wire validation."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from ccm_core.contracts import Outcome, Reason
from tests.unit.unit_helpers import CLOSE_AT, MARCH, Harness, lines_of, local, log


def _bad(event_id: str, **changes: Any) -> dict[str, Any]:
    event = log(event_id, local(12), 20)
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


INVALID = [
    pytest.param({"minutes": -5}, Reason.NON_POSITIVE_MINUTES, id="negative-minutes"),
    pytest.param({"activity": "golf"}, Reason.UNKNOWN_ACTIVITY, id="unknown-activity"),
    pytest.param({"role": "wizard"}, Reason.UNKNOWN_ROLE, id="unknown-role"),
    pytest.param(
        {"minutes": None, "end": local(12, 9).isoformat()},
        Reason.END_BEFORE_START,
        id="end-before-start",
    ),
    pytest.param({"minutes": None}, Reason.MISSING_DURATION, id="missing-duration"),
    pytest.param({"staff_id": None}, Reason.MISSING_FIELD, id="missing-staff"),
    pytest.param({"role": "ma", "licensed": True}, Reason.INCONSISTENT_LICENSURE, id="ma-licensed"),
]


@pytest.mark.parametrize(("changes", "reason"), INVALID)
def test_rule_6_invalid_log_is_listed_on_its_month_record(
    changes: dict[str, Any], reason: Reason
) -> None:
    harness = Harness()
    harness.feed(log("ok", local(10), 60))
    result = harness.feed_one(_bad("bad", **changes))
    assert (result.outcome, result.reason) == (Outcome.REJECTED, reason)
    assert [o.kind for o in result.outputs] == ["rejected"]  # dead-lettered as before
    harness.close()
    record = harness.record()
    assert [(r.event_id, r.reason) for r in record.rejected] == [("bad", reason)]
    assert lines_of(record) == {"99487": 1}


def test_rule_6_invalid_log_alone_opens_its_month_record_when_the_payer_is_known() -> None:
    harness = Harness()
    harness.feed(_bad("bad", activity="golf"))
    harness.close()
    record = harness.record()
    assert [(r.event_id, r.reason) for r in record.rejected] == [("bad", Reason.UNKNOWN_ACTIVITY)]
    assert record.lines == [] and record.payer == "cms"


def test_rule_6_invalid_log_counts_in_the_practice_local_month() -> None:
    """21:30 EDT on 31 March is 01:30 UTC on 1 April: it is listed on March's record."""
    harness = Harness()
    harness.feed(log("ok", local(10), 60))
    harness.feed(_bad("bad", start=local(31, 21, 30).isoformat(), activity="golf"))
    harness.close()
    assert [r.event_id for r in harness.record(month=MARCH).rejected] == ["bad"]


def test_rule_6_late_invalid_log_reissues_the_closed_record() -> None:
    harness = Harness()
    harness.feed(log("ok", local(10), 60))
    harness.close()
    late = _bad("bad", minutes=0, recorded_at=(CLOSE_AT + timedelta(days=1)).isoformat())
    result = harness.feed_one(late)
    kinds = [o.kind for o in result.outputs if o.kind != "fhir_chargeitem"]
    assert kinds == ["rejected", "billing_record"]
    record = harness.record()
    assert record.revision == 1 and record.close_trigger == "late_event"
    assert record.closed_at == CLOSE_AT + timedelta(days=1)
    assert [(r.event_id, r.reason) for r in record.rejected] == [
        ("bad", Reason.NON_POSITIVE_MINUTES)
    ]
    again = harness.feed_one(late)  # redelivered: listed once, no new revision
    assert [o.kind for o in again.outputs] == ["rejected"]


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"event_type": "time_logged", "patient_id": "pat-1"', id="invalid-json"),
        pytest.param(_bad("x", start=None), id="no-start"),
        pytest.param(_bad("x", start="2026-03-12T10:00:00"), id="start-without-offset"),
        pytest.param(_bad("x", practice_id=None), id="no-practice"),
        pytest.param(_bad("x", patient_id="  "), id="blank-patient"),
        pytest.param(_bad("x", payer="nobody", activity="golf"), id="unknown-payer-no-month"),
        pytest.param(_bad("x", event_type="time_log_voided"), id="a-void"),
    ],
)
def test_rule_6_log_without_a_readable_month_is_only_dead_lettered(
    payload: dict[str, Any] | bytes,
) -> None:
    harness = Harness()
    result = harness.feed_one(payload if isinstance(payload, bytes) else json.dumps(payload))
    assert [o.kind for o in result.outputs] == ["rejected"]
    assert harness.local.ledgers == {} or all(
        not ledger.months for ledger in harness.local.ledgers.values()
    )


def test_rule_6_rejected_listing_message_never_echoes_free_text() -> None:
    harness = Harness()
    harness.feed(log("ok", local(10), 60))
    harness.feed(_bad("bad", minutes=-1, note="Patient Jane Roe said something private"))
    harness.close()
    [line] = harness.record().rejected
    assert "Jane" not in line.message and "private" not in line.message


def test_rule_6_unknown_payer_profile_is_listed_on_an_open_month() -> None:
    harness = Harness()
    harness.feed(log("ok", local(10), 60))
    result = harness.feed_one(log("odd", local(11), 20, payer="acme"))
    assert result.reason is Reason.UNKNOWN_PAYER_PROFILE
    harness.close()
    assert [(r.event_id, r.reason) for r in harness.record().rejected] == [
        ("odd", Reason.UNKNOWN_PAYER_PROFILE)
    ]
