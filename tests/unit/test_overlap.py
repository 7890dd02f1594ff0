"""Rule 2: whose time counts, and overlapping time counts once (union of intervals)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.unit.unit_helpers import bill, lines_of, local, log

COUNTING_ACTIVITIES = [
    "home_health_coordination",
    "dme_coordination",
    "specialist_coordination",
    "community_agency_coordination",
    "medication_reconciliation",
    "care_plan",
    "caregiver_communication",
    "patient_education",
    "resource_research",
    "forms_completion",
]


def test_rule_2_overlapping_logs_across_two_staff_counted_once() -> None:
    """Rule 2: RN 10:00-10:40 and MA 10:20-11:00 for one patient = 60 minutes, not 80."""
    record = bill(
        [
            log("rn", local(10, 10, 0), 40, role="rn", staff_id="rn-1"),
            log("ma", local(10, 10, 20), 40, role="ma", staff_id="ma-1"),
        ]
    )
    assert record.qualifying_minutes == 60
    assert record.counted_log_minutes == 80
    assert record.overlap_minutes == 20
    assert lines_of(record) == {"99487": 1}
    assert record.contributing_event_ids == ["ma", "rn"]


def test_rule_2_overlap_does_not_create_an_addon_unit() -> None:
    """Rule 2: 10:00-11:00 (RN) and 10:30-11:30 (LPN) = 90 min union -> 99489 x1, not x2."""
    record = bill(
        [
            log("rn", local(10, 10, 0), 60, role="rn"),
            log("lpn", local(10, 10, 30), 60, role="lpn"),
        ]
    )
    assert record.qualifying_minutes == 90
    assert lines_of(record) == {"99487": 1, "99489": 1}


def test_rule_2_same_person_logging_the_same_interval_twice_counts_once() -> None:
    """Rule 2: one person logs 10:00-10:45 twice under two event ids: 45 minutes."""
    record = bill(
        [
            log("first", local(10, 10), 45, staff_id="rn-1"),
            log("again", local(10, 10), 45, staff_id="rn-1"),
            log("other-day", local(11, 10), 20, staff_id="rn-1"),
        ]
    )
    assert record.qualifying_minutes == 65
    assert record.overlap_minutes == 45


def test_rule_2_adjacent_intervals_do_not_overlap() -> None:
    """Rule 2: 10:00-10:20 and 10:20-10:40 are adjacent: 40 minutes, no overlap."""
    record = bill(
        [
            log("a", local(10, 10, 0), end=local(10, 10, 20)),
            log("b", local(10, 10, 20), end=local(10, 10, 40), staff_id="rn-2"),
        ]
    )
    assert record.qualifying_minutes == 40
    assert record.overlap_minutes == 0


def test_rule_2_interval_contained_in_another_adds_nothing() -> None:
    """Rule 2: a 10-minute log inside a 60-minute log of another staff member adds 0."""
    record = bill(
        [
            log("outer", local(10, 9), 60, staff_id="rn-1"),
            log("inner", local(10, 9, 25), 10, role="lpn", staff_id="lpn-1"),
        ]
    )
    assert record.qualifying_minutes == 60
    assert record.counted_log_minutes == 70


def test_rule_2_chain_of_overlaps_is_one_interval() -> None:
    """Rule 2: 10:00-10:30, 10:20-10:50, 10:45-11:15 overlap pairwise: union 75 minutes."""
    record = bill(
        [
            log("a", local(10, 10, 0), 30, staff_id="s1"),
            log("b", local(10, 10, 20), 30, staff_id="s2"),
            log("c", local(10, 10, 45), 30, staff_id="s3"),
        ]
    )
    assert record.qualifying_minutes == 75


def test_rule_2_union_is_exact_wall_clock_time_with_seconds() -> None:
    """Rule 2: wall-clock union of logs given with end times to the second."""
    start = local(10, 10)
    record = bill(
        [
            log("a", start, end=start + timedelta(minutes=30, seconds=30)),
            log(
                "b", start + timedelta(minutes=30), end=start + timedelta(minutes=61), staff_id="x"
            ),
        ]
    )
    assert record.qualifying_seconds == 61 * 60
    assert record.qualifying_minutes == 61
    assert lines_of(record) == {"99487": 1}


def test_rule_2_overlap_with_an_excluded_log_adds_nothing() -> None:
    """Rules 2 and 3: an excluded log does not count, even where it does not overlap."""
    record = bill(
        [
            log("counted", local(10, 10), 50),
            log("pa", local(10, 10, 40), 30, activity="prior_authorization", staff_id="x"),
        ]
    )
    assert record.qualifying_minutes == 50
    assert record.contributing_event_ids == ["counted"]


@pytest.mark.parametrize("role", ["rn", "lpn", "ma", "chw", "pharmacist", "social_worker"])
def test_rule_2_clinical_staff_time_counts_under_cms(role: str) -> None:
    """Rule 2: clinical staff under the billing practitioner's direction count (cms)."""
    record = bill([log("x", local(10), 60, role=role)])
    assert record.qualifying_minutes == 60
    assert lines_of(record) == {"99487": 1}


@pytest.mark.parametrize("role", ["physician", "np", "pa"])
def test_rule_2_billing_practitioner_time_counts_under_cms(role: str) -> None:
    """Rule 2: the billing practitioner's own time (physician, NP, PA) counts under cms."""
    record = bill([log("x", local(10), 60, role=role)])
    assert lines_of(record) == {"99487": 1}
    assert record.excluded_minutes == 0


@pytest.mark.parametrize("payer", ["cms", "bcbsm", "priority_health", "medicaid"])
@pytest.mark.parametrize("activity", COUNTING_ACTIVITIES)
def test_rule_2_care_coordination_activities_count_under_every_profile(
    payer: str, activity: str
) -> None:
    """Rule 2: the listed non-face-to-face care-coordination activities count everywhere."""
    record = bill([log("x", local(10), 30, activity=activity, payer=payer)])
    assert record.qualifying_minutes == 30
    assert record.excluded_minutes == 0
