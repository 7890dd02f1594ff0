"""Rule 6: what the month-close billing record carries; revisions; deterministic ids."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from ccm_core.config import CoreConfig, PracticeSettings
from ccm_core.contracts import BillingLine, MonthCloseCommand, Reason
from ccm_core.profiles import load_profiles
from tests.unit.unit_helpers import (
    CLOSE_AT,
    MARCH,
    PATIENT,
    PRACTICE,
    Harness,
    daily_logs,
    lines_of,
    local,
    log,
    void,
)

THRESHOLD_MET = CoreConfig(
    practices={
        PRACTICE: PracticeSettings(date_of_service_policy="threshold_met", enrollment_feed=False)
    }
)


# ------------------------------------------------------------------ lines


def test_rule_6_lines_99487_only_when_no_addon_units() -> None:
    """Rule 6: 99487 units 1 alone; no 99489 line with units 0."""
    harness = Harness()
    harness.feed(*daily_logs(75))
    harness.close_all()
    assert harness.record().lines == [BillingLine(code="99487", units=1)]


def test_rule_6_lines_99489_units_n_on_its_own_line() -> None:
    """Rule 6: 99487 units 1 and 99489 units N on its own line when N >= 1 (150 -> N = 3)."""
    harness = Harness()
    harness.feed(*daily_logs(150))
    harness.close_all()
    record = harness.record()
    assert record.lines == [
        BillingLine(code="99487", units=1),
        BillingLine(code="99489", units=3),
    ]
    assert record.billable
    assert record.minutes_to_next_threshold == 30


def test_rule_6_non_billable_month_still_gets_a_record_with_no_lines() -> None:
    """Rule 6: a month under the entry threshold closes with an empty, non-billable record."""
    harness = Harness()
    harness.feed(log("a", local(10), 20))
    harness.close_all()
    record = harness.record()
    assert (record.lines, record.billable, record.date_of_service) == ([], False, None)
    assert record.minutes_to_next_threshold == 40


# ------------------------------------------------------------------ contents


def test_rule_6_record_carries_minutes_exclusions_voids_rejections_and_audit_trail() -> None:
    """Rule 6: qualifying minutes (union), excluded minutes and why, overlap, voided and
    rejected logs, contributing log ids, profile and version."""
    harness = Harness()
    harness.feed(
        log("rn", local(10, 10), 40, staff_id="rn-1"),
        log("ma", local(10, 10, 20), 40, role="ma", staff_id="ma-1"),  # 20 min overlap
        log("pa", local(11), 25, activity="prior_authorization"),
        log("oops", local(12), 15),
        void("v", "oops", recorded_at=local(13)),
        log("long", local(14, 8), 500),  # rejected: above 480
    )
    harness.close_all()
    record = harness.record()
    assert record.patient_id == PATIENT
    assert record.practice_id == PRACTICE
    assert record.service_month == MARCH
    assert record.payer == "cms"
    cms = load_profiles().get("cms")
    assert cms is not None
    assert record.profile_version == cms.version
    assert record.qualifying_minutes == 60
    assert record.counted_log_minutes == 80
    assert record.overlap_minutes == 20
    assert record.excluded_minutes == 25
    assert record.excluded_minutes_by_rule == {"cms:excluded_activity:prior_authorization": 25}
    assert record.contributing_event_ids == ["ma", "rn"]
    assert {line.event_id: line.status for line in record.logs} == {
        "rn": "counted",
        "ma": "counted",
        "pa": "excluded",
        "oops": "voided",
    }
    assert [(r.event_id, r.reason) for r in record.rejected] == [
        ("long", Reason.DURATION_EXCEEDS_BOUND)
    ]
    assert lines_of(record) == {"99487": 1}


def test_rule_6_each_log_carries_claim_documentation() -> None:
    """Rule 6 (seed 000): date and duration of each interaction, care-team member name and
    credentials, agency contacted and nature of the activity; never the free-text note."""
    start = local(10, 14, 5)
    harness = Harness()
    harness.feed(
        log(
            "doc",
            start,
            35,
            role="rn",
            staff_id="rn-42",
            staff_name="Jane Doe",
            credentials="RN, BSN",
            activity="home_health_coordination",
            agency_contacted="Sunrise Home Health",
            note="patient said something private",
        ),
        log("doc2", local(11), 30, role="ma", staff_id="ma-9", staff_name="Sam Roe"),
    )
    harness.close_all()
    record = harness.record()
    by_id = {line.event_id: line for line in record.logs}
    doc = by_id["doc"]
    assert (doc.staff_id, doc.staff_name, doc.credentials) == ("rn-42", "Jane Doe", "RN, BSN")
    assert (doc.role.value, doc.licensed) == ("rn", True)
    assert doc.activity.value == "home_health_coordination"
    assert doc.agency_contacted == "Sunrise Home Health"
    assert doc.start == start
    assert doc.end == start + timedelta(minutes=35)
    assert doc.minutes == 35
    assert (by_id["doc2"].role.value, by_id["doc2"].licensed) == ("ma", False)
    assert "patient said something private" not in record.model_dump_json()


def test_rule_6_counted_log_minutes_never_below_qualifying_minutes() -> None:
    """Rule 6: two separate 90-second contacts are 3 minutes of logged time and 3 qualifying
    minutes; the record must not say 2 minutes were logged but 3 qualify (overlap_minutes is
    defined as counted_log_minutes - qualifying_minutes and cannot be negative)."""
    start = local(10, 10)
    harness = Harness()
    harness.feed(
        log("a", start, end=start + timedelta(seconds=90)),
        log("b", start + timedelta(minutes=5), end=start + timedelta(minutes=6, seconds=30)),
    )
    harness.close_all()
    record = harness.record()
    assert record.qualifying_seconds == 180
    assert record.qualifying_minutes == 3
    assert record.counted_log_minutes >= record.qualifying_minutes
    assert record.overlap_minutes == record.counted_log_minutes - record.qualifying_minutes


# ------------------------------------------------------------------ date of service


def test_rule_6_date_of_service_defaults_to_last_day_of_month() -> None:
    """Rule 6 Decision: the date of service defaults to the last day of the month."""
    harness = Harness()
    harness.feed(log("a", local(3), 60))
    harness.close_all()
    record = harness.record()
    assert record.date_of_service_policy == "last_day_of_month"
    assert record.date_of_service == date(2026, 3, 31)


def test_rule_6_date_of_service_last_day_of_february_in_a_leap_year() -> None:
    """Rule 6: last day of February 2028 is the 29th."""
    harness = Harness()
    harness.feed(log("a", datetime(2028, 2, 10, 15, tzinfo=UTC), 60))
    harness.close_all(as_of=datetime(2028, 3, 10, tzinfo=UTC))
    assert harness.record(month="2028-02").date_of_service == date(2028, 2, 29)


def test_rule_6_date_of_service_threshold_met_policy() -> None:
    """Rule 6: under date_of_service_policy="threshold_met" the date is the local day the
    qualifying time reached 60 minutes (30 on the 10th + 20 on the 15th + 15 on the 20th)."""
    harness = Harness(THRESHOLD_MET)
    harness.feed(log("a", local(10), 30), log("b", local(15), 20), log("c", local(20), 15))
    harness.close_all()
    record = harness.record()
    assert record.date_of_service_policy == "threshold_met"
    assert record.date_of_service == date(2026, 3, 20)


def test_rule_6_threshold_met_date_follows_service_time_not_arrival_order() -> None:
    """Rule 6: the threshold is met on the day of service, whatever order the logs came in:
    30 min on the 5th, 30 on the 12th, 30 on the 25th -> met on the 12th."""
    harness = Harness(THRESHOLD_MET)
    harness.feed(log("late", local(25), 30), log("mid", local(12), 30), log("early", local(5), 30))
    harness.close_all()
    assert harness.record().date_of_service == date(2026, 3, 12)


def test_rule_6_threshold_met_date_uses_local_day() -> None:
    """Rules 4/6: threshold met at 21:45 EDT on 17 March (01:45 UTC on the 18th): the 17th."""
    harness = Harness(THRESHOLD_MET)
    harness.feed(log("a", local(10), 45), log("b", local(17, 21, 30), 30))
    harness.close_all()
    assert harness.record().date_of_service == date(2026, 3, 17)


def test_rule_6_threshold_met_date_stays_in_the_service_month() -> None:
    """Rules 4/6: a log starting 23:40 on 31 March and crossing local midnight belongs wholly
    to March (rule 4); if it completes the 60 minutes after midnight the threshold-met date
    of service of the March claim must still be a March date (31 March), not 1 April."""
    harness = Harness(THRESHOLD_MET)
    harness.feed(log("a", local(10), 30), log("cross", local(31, 23, 40), 40))
    harness.close_all(as_of=datetime(2026, 4, 10, tzinfo=UTC))
    record = harness.record()
    assert record.service_month == MARCH
    assert lines_of(record) == {"99487": 1}
    assert record.date_of_service is not None
    assert record.date_of_service.strftime("%Y-%m") == MARCH
    assert record.date_of_service == date(2026, 3, 31)


def test_rule_6_threshold_met_date_is_none_when_not_billable() -> None:
    """Rule 6: no threshold met, no date of service."""
    harness = Harness(THRESHOLD_MET)
    harness.feed(log("a", local(10), 59))
    harness.close_all()
    assert harness.record().date_of_service is None


# ------------------------------------------------------------------ revisions


def test_rule_6_late_log_after_close_reissues_record_as_revision_1() -> None:
    """Rule 6: a late log for a closed month re-issues the record: same record_id,
    revision 1, close_trigger late_event, new envelope id; never silently changed."""
    harness = Harness()
    harness.feed(log("a", local(10), 50))
    [first_out, closed_status] = harness.close()
    assert (first_out.kind, closed_status.kind) == ("billing_record", "status")
    first = harness.record()
    assert (first.revision, first.close_trigger, first.lines) == (0, "command", [])
    assert first.closed_at == CLOSE_AT

    late_at = CLOSE_AT + timedelta(days=2)
    result = harness.feed_one(log("late", local(20), 15, recorded_at=late_at))
    records = [o for o in result.outputs if o.kind == "billing_record"]
    thresholds = [t for t in harness.thresholds() if t.month_closed]
    assert len(records) == 1
    second = harness.record()
    assert second.revision == 1
    assert second.record_id == first.record_id
    assert second.close_trigger == "late_event"
    assert second.closed_at == late_at
    assert lines_of(second) == {"99487": 1}
    assert records[0].envelope.id != first_out.envelope.id
    assert [(t.code, t.triggering_event_id) for t in thresholds] == [("99487", "late")]


def test_rule_6_void_after_close_reissues_as_revision_2() -> None:
    """Rule 6: a late log then a late void give revisions 1 and 2 of the same record."""
    harness = Harness()
    harness.feed(log("a", local(10), 50))
    harness.close()
    harness.feed(log("late", local(20), 15, recorded_at=CLOSE_AT + timedelta(days=1)))
    harness.feed(void("x", "late", recorded_at=CLOSE_AT + timedelta(days=2)))
    revisions = harness.records()
    assert [r.revision for r in revisions] == [0, 1, 2]
    assert len({r.record_id for r in revisions}) == 1
    envelope_ids = [o.envelope.id for o in harness.outputs if o.kind == "billing_record"]
    assert len(set(envelope_ids)) == 3
    assert [lines_of(r) for r in revisions] == [{}, {"99487": 1}, {}]
    revoked = [t for t in harness.thresholds() if t.kind == "revoked"]
    assert [(t.code, t.month_closed) for t in revoked] == [("99487", True)]


def test_rule_6_late_rejected_log_for_closed_month_reissues_with_rejection_listed() -> None:
    """Rule 6: a late log is re-issued even when it is rejected: the record lists it."""
    harness = Harness()
    harness.feed(log("a", local(10), 60))
    harness.close()
    harness.feed(log("long", local(20, 6), 600, recorded_at=CLOSE_AT + timedelta(days=1)))
    record = harness.record()
    assert record.revision == 1
    assert [(r.event_id, r.reason) for r in record.rejected] == [
        ("long", Reason.DURATION_EXCEEDS_BOUND)
    ]
    assert lines_of(record) == {"99487": 1}


def test_rule_6_redelivery_after_close_does_not_reissue() -> None:
    """Rules 5/6: an identical redelivery after close changes nothing: no new revision."""
    harness = Harness()
    event = log("a", local(10), 60)
    harness.feed(event)
    harness.close()
    result = harness.feed_one(event)
    assert result.outputs == []
    assert [r.revision for r in harness.records()] == [0]


def test_rule_6_closing_a_closed_month_again_emits_nothing() -> None:
    """Rule 6: a closed month is never silently re-closed or changed."""
    harness = Harness()
    harness.feed(log("a", local(10), 60))
    assert sorted(o.kind for o in harness.close()) == [
        "billing_record",
        "fhir_chargeitem",
        "status",
    ]
    assert harness.close(as_of=CLOSE_AT + timedelta(days=3)) == []
    assert harness.close_all(as_of=CLOSE_AT + timedelta(days=4)) == []


def test_rule_6_due_close_waits_for_month_end_plus_grace() -> None:
    """Rule 6 / practice settings: the timer closes a month at local month end + grace days
    (default 5): 1 April 00:00 EDT + 5 days = 6 April 04:00 UTC."""
    harness = Harness()
    harness.feed(log("a", local(10), 60))
    deadline = datetime(2026, 4, 6, 4, 0, tzinfo=UTC)
    early = MonthCloseCommand(command_id="t1", mode="due", as_of=deadline - timedelta(seconds=1))
    due = MonthCloseCommand(command_id="t2", mode="due", as_of=deadline)
    assert harness.local.close(early) == []
    closed = harness.local.close(due)
    assert sorted(o.kind for o in closed) == ["billing_record", "fhir_chargeitem", "status"]


# ------------------------------------------------------------------ determinism


def _scenario(harness: Harness) -> None:
    harness.feed(
        log("a", local(10), 45),
        log("b", local(10, 10, 30), 30, role="lpn", staff_id="lpn-1"),
        log("c", local(11), 40, activity="benefit_check"),
        b"not json",
        void("v", "c", recorded_at=local(12)),
        log("d", local(13), 40),
    )
    harness.close()
    harness.feed(log("late", local(20), 20, recorded_at=CLOSE_AT + timedelta(days=1)))


def test_rule_6_same_input_gives_the_same_output_ids_and_content() -> None:
    """Rule 6: output envelope ids are deterministic: the same input gives the same ids
    (consumers dedupe on them)."""
    one, two = Harness(), Harness()
    _scenario(one)
    _scenario(two)
    assert [o.to_json() for o in one.outputs] == [o.to_json() for o in two.outputs]
    ids = [o.envelope.id for o in one.outputs]
    assert len(ids) == len(set(ids))
    kinds = {o.kind for o in one.outputs}
    assert kinds == {"threshold", "billing_record", "rejected", "status", "fhir_chargeitem"}


@pytest.mark.parametrize(("other_patient", "other_month"), [("pat-2", MARCH), (PATIENT, "2026-04")])
def test_rule_6_record_ids_differ_per_patient_month(other_patient: str, other_month: str) -> None:
    """Rule 6: one record id per patient, practice and month."""
    harness = Harness()
    start = local(10, month=int(other_month[-2:]))
    harness.feed(log("a", local(10), 60), log("b", start, 60, patient_id=other_patient))
    harness.close_all(as_of=datetime(2026, 5, 10, tzinfo=UTC))
    ids = {r.record_id for r in harness.records()}
    assert len(ids) == 2
