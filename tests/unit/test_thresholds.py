"""Rules 1 and 3: codes, thresholds and add-on units of each payer profile.

Expected units are written from domain-rules.md, not from the code: sections 1 and 3 give the
formula and the seed values for each profile.
"""

from __future__ import annotations

import pytest

from ccm_core.profiles import load_profiles
from tests.unit.unit_helpers import Harness, bill, daily_logs, lines_of, local, log, rules_lines

# ------------------------------------------------------------------ rule 1: cms


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        (59, {}),
        (60, {"99487": 1}),
        (75, {"99487": 1}),
        (89, {"99487": 1}),
        (90, {"99487": 1, "99489": 1}),
        (119, {"99487": 1, "99489": 1}),
        (120, {"99487": 1, "99489": 2}),
        (149, {"99487": 1, "99489": 2}),
        (150, {"99487": 1, "99489": 3}),
    ],
)
def test_rule_1_cms_seed_minutes_to_lines(minutes: int, expected: dict[str, int]) -> None:
    """Rule 1: m < 60 nothing; m >= 60 -> 99487 + 99489 x floor((m - 60) / 30)."""
    record = bill(daily_logs(minutes, payer="cms"))
    assert record.qualifying_minutes == minutes
    assert lines_of(record) == expected
    assert record.billable is bool(expected)


def test_rule_1_cms_under_60_minutes_bills_nothing() -> None:
    """Rule 1: under 60 minutes nothing is billed (59 is not rounded up)."""
    record = bill(daily_logs(59))
    assert record.lines == []
    assert not record.billable
    assert record.date_of_service is None
    assert record.minutes_to_next_threshold == 1


def test_rule_1_cms_90_minutes_adds_one_99489() -> None:
    """Rule 1 seed: 90 -> 99487 + 99489 x1."""
    assert lines_of(bill(daily_logs(90))) == {"99487": 1, "99489": 1}


def test_rule_1_no_midpoint_rounding_89_minutes_is_99487_only() -> None:
    """Rule 1: the CPT midpoint rule does not apply; 89 minutes gives no add-on unit."""
    record = bill(daily_logs(89))
    assert lines_of(record) == {"99487": 1}
    assert record.minutes_to_next_threshold == 1


def test_rule_1_cms_has_no_cap_on_99489() -> None:
    """Rule 1: no monthly cap on 99489 for Medicare: 360 min -> 99489 x10."""
    assert lines_of(bill(daily_logs(360))) == {"99487": 1, "99489": 10}


def test_rule_1_any_number_of_short_contacts_add_up() -> None:
    """Rule 1: twelve 5-minute contacts on different days add up to 60 -> 99487."""
    events = [log(f"short{d}", local(d, 9), 5) for d in range(2, 14)]
    record = bill(events)
    assert record.qualifying_minutes == 60
    assert lines_of(record) == {"99487": 1}


def test_rule_1_time_never_carries_over_between_months() -> None:
    """Rule 1: 50 minutes in March plus 50 in April bill nothing in either month."""
    harness = Harness()
    harness.feed(
        *daily_logs(50, prefix="mar", chunk=25),
        *[log(f"apr{d}", local(d, 10, month=4), 25) for d in (2, 3)],
    )
    harness.close_all(as_of=local(10, month=5))
    march, april = harness.record(month="2026-03"), harness.record(month="2026-04")
    assert (march.qualifying_minutes, april.qualifying_minutes) == (50, 50)
    assert march.lines == [] and april.lines == []


def test_rule_1_threshold_events_are_emitted_when_each_unit_is_reached() -> None:
    """Rule 1: reaching 60 emits 99487 unit 1; 90 and 120 emit 99489 units 1 and 2."""
    harness = Harness()
    harness.feed(log("a", local(3), 60))
    harness.feed(log("b", local(4), 30))
    harness.feed(log("c", local(5), 40))  # 130: unit 2 at 120, not yet unit 3 (150)
    reached = [
        (t.code, t.unit, t.threshold_minutes, t.triggering_event_id) for t in harness.thresholds()
    ]
    assert reached == [
        ("99487", 1, 60, "a"),
        ("99489", 1, 90, "b"),
        ("99489", 2, 120, "c"),
    ]
    assert all(t.kind == "reached" and not t.month_closed for t in harness.thresholds())
    assert harness.thresholds()[-1].qualifying_minutes == 130


def test_rule_1_one_log_crossing_several_thresholds_emits_each_unit() -> None:
    """Rule 1: a single 125-minute log reaches 99487, 99489 u1 and u2 at once."""
    harness = Harness()
    harness.feed(log("big", local(3), 125))
    units = [(t.code, t.unit) for t in harness.thresholds()]
    assert units == [("99487", 1), ("99489", 1), ("99489", 2)]


# ------------------------------------------------------------------ rule 3: bcbsm


def test_rule_3_bcbsm_seed_11_10_10_is_31_minutes_billable() -> None:
    """Rule 3 seed: BCBSM, one care-team member, 11 + 10 + 10 = 31 minutes -> 99487."""
    events = [
        log("b1", local(3), 11, payer="bcbsm", staff_id="rn-7"),
        log("b2", local(9), 10, payer="bcbsm", staff_id="rn-7"),
        log("b3", local(17), 10, payer="bcbsm", staff_id="rn-7"),
    ]
    record = bill(events)
    assert record.qualifying_minutes == 31
    assert lines_of(record) == {"99487": 1}


def test_rule_3_bcbsm_30_minutes_is_not_billable() -> None:
    """Rule 3: the BCBSM entry is 31 minutes; 30 bills nothing."""
    record = bill(daily_logs(30, payer="bcbsm"))
    assert record.lines == []
    assert record.minutes_to_next_threshold == 1


@pytest.mark.parametrize(
    ("minutes", "addons"),
    [(31, 0), (75, 0), (76, 1), (105, 1), (106, 2), (135, 2), (136, 3)],
)
def test_rule_3_bcbsm_addon_each_started_30_above_75(minutes: int, addons: int) -> None:
    """Rule 3 Decision: BCBSM 75 -> 99487 only, 76 -> +1, 105 -> 1, 106 -> 2, 136 -> 3."""
    expected = {"99487": 1, **({"99489": addons} if addons else {})}
    assert lines_of(bill(daily_logs(minutes, payer="bcbsm"))) == expected


# ------------------------------------------------------------------ rule 3: priority health


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        (59, {}),
        (60, {"99487": 1}),
        (90, {"99487": 1, "99489": 1}),
        (120, {"99487": 1, "99489": 2}),
        (150, {"99487": 1, "99489": 2}),
        (200, {"99487": 1, "99489": 2}),
    ],
)
def test_rule_3_priority_health_caps_99489_at_two(minutes: int, expected: dict[str, int]) -> None:
    """Rule 3: Priority Health is cms-like but capped at 2 units of 99489 (200 min -> 2)."""
    record = bill(daily_logs(minutes, payer="priority_health"))
    assert lines_of(record) == expected


def test_rule_3_priority_health_cap_stops_threshold_events_and_next_threshold() -> None:
    """Rule 3: at the Priority Health cap no 99489 unit 3 is announced, nothing is 'next'."""
    harness = Harness()
    harness.feed(*daily_logs(200, payer="priority_health"))
    harness.close_all()
    assert [(t.code, t.unit) for t in harness.thresholds()] == [
        ("99487", 1),
        ("99489", 1),
        ("99489", 2),
    ]
    assert harness.record().minutes_to_next_threshold is None


# ------------------------------------------------------------------ rule 3: medicaid


@pytest.mark.parametrize(("minutes", "addons"), [(60, 0), (89, 0), (90, 1), (150, 3)])
def test_rule_3_medicaid_thresholds_as_cms(minutes: int, addons: int) -> None:
    """Rule 3: Michigan Medicaid: >= 60 min, full 30s beyond 60, no cap."""
    expected = {"99487": 1, **({"99489": addons} if addons else {})}
    assert lines_of(bill(daily_logs(minutes, payer="medicaid"))) == expected


# ------------------------------------------------------------------ profile arithmetic


@pytest.mark.parametrize("name", ["cms", "bcbsm", "priority_health", "medicaid"])
def test_rule_1_and_3_profile_levels_match_the_rules_table_for_every_minute(name: str) -> None:
    """Rules 1 and 3: every minute count 0..400 gives the units of the rules table."""
    profile = load_profiles().get(name)
    assert profile is not None
    for minutes in range(401):
        expected = rules_lines(name, minutes)
        level = profile.level_for(minutes)
        got: dict[str, int] = {}
        if level >= 1:
            got[profile.entry_code] = 1
        if level >= 2:
            got[profile.addon_code] = level - 1
        assert got == expected, (name, minutes)


@pytest.mark.parametrize(
    ("name", "thresholds"),
    [
        ("cms", [60, 90, 120, 150]),
        ("bcbsm", [31, 76, 106, 136]),
        ("priority_health", [60, 90, 120]),
        ("medicaid", [60, 90, 120, 150]),
    ],
)
def test_rule_1_and_3_threshold_minutes_per_unit(name: str, thresholds: list[int]) -> None:
    """Rules 1 and 3: the minutes at which 99487 and each 99489 unit are met."""
    profile = load_profiles().get(name)
    assert profile is not None
    assert [profile.threshold_minutes(level) for level in range(1, len(thresholds) + 1)] == (
        thresholds
    )
    assert profile.code_unit(1) == ("99487", 1)
    assert profile.code_unit(3) == ("99489", 2)
