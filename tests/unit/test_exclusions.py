"""Rule 2 Decision and rule 3: minutes that do not count, per payer profile (role,
licensure, activity), each excluded log naming the rule that excluded it."""

from __future__ import annotations

import pytest

from tests.unit.unit_helpers import bill, lines_of, local, log

# ------------------------------------------------------------------ rule 2 decision: cms


@pytest.mark.parametrize("activity", ["prior_authorization", "benefit_check"])
def test_rule_2_decision_cms_prior_authorization_and_benefit_check_excluded(
    activity: str,
) -> None:
    """Rule 2 Decision: under cms, prior authorization and benefit checks do not count."""
    record = bill([log("care", local(10), 45), log("x", local(11), 30, activity=activity)])
    assert record.qualifying_minutes == 45
    assert record.lines == []  # 75 logged, but only 45 qualify: not billable
    assert record.excluded_minutes == 30
    assert record.excluded_minutes_by_rule == {f"cms:excluded_activity:{activity}": 30}
    [line] = [entry for entry in record.logs if entry.event_id == "x"]
    assert line.status == "excluded"
    assert line.excluded_by == f"cms:excluded_activity:{activity}"


@pytest.mark.parametrize(
    "activity", ["documentation", "gap_reminder", "chart_prep", "email", "portal_conversation"]
)
def test_rule_3_cms_counts_activities_only_bcbsm_excludes(activity: str) -> None:
    """Rule 3 table: cms excludes only prior_authorization and benefit_check."""
    record = bill([log("x", local(10), 60, activity=activity, payer="cms")])
    assert lines_of(record) == {"99487": 1}


# ------------------------------------------------------------------ rule 3: bcbsm


@pytest.mark.parametrize(
    "activity",
    [
        "email",
        "documentation",
        "gap_reminder",
        "chart_prep",
        "prior_authorization",
        "benefit_check",
    ],
)
def test_rule_3_bcbsm_excluded_activities(activity: str) -> None:
    """Rule 3: BCBSM excludes email, documentation, gap reminders, chart prep, PA, benefits."""
    record = bill(
        [
            log("ok", local(10), 25, payer="bcbsm"),
            log("x", local(11), 20, activity=activity, payer="bcbsm"),
        ]
    )
    assert record.qualifying_minutes == 25
    assert record.lines == []  # 45 logged, only 25 qualify: below the 31-minute entry
    assert record.excluded_minutes_by_rule == {f"bcbsm:excluded_activity:{activity}": 20}


def test_rule_3_bcbsm_portal_conversation_counts() -> None:
    """Rule 3: portal conversation with the patient counts for BCBSM."""
    record = bill([log("portal", local(10), 31, activity="portal_conversation", payer="bcbsm")])
    assert record.qualifying_minutes == 31
    assert lines_of(record) == {"99487": 1}


@pytest.mark.parametrize("role", ["ma", "chw"])
def test_rule_3_bcbsm_unlicensed_care_team_members_count(role: str) -> None:
    """Rule 3: BCBSM counts licensed and unlicensed care-team members (MA, CHW)."""
    record = bill([log("x", local(10), 31, role=role, payer="bcbsm")])
    assert lines_of(record) == {"99487": 1}


# ------------------------------------------------------------------ rule 3: priority health


@pytest.mark.parametrize("role", ["ma", "chw"])
def test_rule_3_priority_health_ma_chw_excluded_licensed_only(role: str) -> None:
    """Rule 3: Priority Health counts licensed staff only; MA/CHW minutes are excluded."""
    record = bill(
        [
            log("rn", local(10), 30, role="rn", payer="priority_health"),
            log("unlic", local(11), 30, role=role, payer="priority_health"),
        ]
    )
    assert record.qualifying_minutes == 30
    assert record.lines == []
    assert record.excluded_minutes_by_rule == {f"priority_health:licensed_only:{role}": 30}


@pytest.mark.parametrize("role", ["rn", "lpn", "physician", "np", "pa"])
def test_rule_3_priority_health_licensed_staff_and_physician_count(role: str) -> None:
    """Rule 3: Priority Health: licensed staff count, physician time counts."""
    record = bill([log("x", local(10), 60, role=role, payer="priority_health")])
    assert lines_of(record) == {"99487": 1}


@pytest.mark.parametrize("activity", ["prior_authorization", "benefit_check"])
def test_rule_3_priority_health_activities_as_cms(activity: str) -> None:
    """Rule 3: Priority Health excludes the same activities as cms."""
    record = bill([log("x", local(10), 60, activity=activity, payer="priority_health")])
    assert record.lines == []
    assert record.excluded_minutes == 60


# ------------------------------------------------------------------ rule 3: medicaid


def test_rule_3_medicaid_physician_minutes_excluded_np_counted() -> None:
    """Rule 3: Michigan Medicaid, "not billable by a physician": physician minutes excluded,
    NP minutes counted."""
    record = bill(
        [
            log("md", local(10), 40, role="physician", payer="medicaid"),
            log("np", local(11), 40, role="np", payer="medicaid"),
            log("rn", local(12), 25, role="rn", payer="medicaid"),
        ]
    )
    assert record.qualifying_minutes == 65
    assert lines_of(record) == {"99487": 1}  # with the physician's 40 it would have been 105
    assert record.excluded_minutes_by_rule == {"medicaid:excluded_role:physician": 40}
    statuses = {line.event_id: line.status for line in record.logs}
    assert statuses == {"md": "excluded", "np": "counted", "rn": "counted"}


@pytest.mark.parametrize("activity", ["prior_authorization", "benefit_check"])
def test_rule_3_medicaid_activities_as_cms(activity: str) -> None:
    """Rule 3: Medicaid excludes the same activities as cms."""
    record = bill([log("x", local(10), 60, activity=activity, payer="medicaid")])
    assert record.lines == []


def test_rule_3_excluded_minutes_are_summed_per_rule() -> None:
    """Rule 6: the record says how many minutes each rule excluded."""
    record = bill(
        [
            log("e1", local(10), 10, activity="email", payer="bcbsm"),
            log("e2", local(11), 15, activity="email", payer="bcbsm"),
            log("d1", local(12), 5, activity="documentation", payer="bcbsm"),
            log("ok", local(13), 40, payer="bcbsm"),
        ]
    )
    assert record.excluded_minutes_by_rule == {
        "bcbsm:excluded_activity:documentation": 5,
        "bcbsm:excluded_activity:email": 25,
    }
    assert record.excluded_minutes == 30
    assert record.qualifying_minutes == 40
