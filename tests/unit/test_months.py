"""Rule 4: the practice's local calendar month; a log crossing local midnight at month end
belongs wholly to the month of its start."""

from __future__ import annotations

from datetime import UTC, date, datetime

from ccm_core.config import CoreConfig, PracticeSettings
from ccm_core.months import add_months, last_day, local_month, month_end, next_month
from tests.unit.unit_helpers import PRACTICE, Harness, lines_of, local, log


def test_rule_4_default_practice_time_zone_is_america_detroit() -> None:
    """Rule 4 Decision: the default practice time zone is America/Detroit."""
    assert PracticeSettings().time_zone == "America/Detroit"


def test_rule_4_2130_edt_31_march_is_march_time() -> None:
    """Rule 4 Decision: 21:30 EDT on 31 March = 01:30 UTC on 1 April is March time."""
    utc = datetime(2026, 4, 1, 1, 30, tzinfo=UTC)
    assert local_month(utc, "America/Detroit") == "2026-03"

    harness = Harness()
    harness.feed(log("late-evening", utc, 60))
    harness.close_all()
    [record] = harness.records()
    assert record.service_month == "2026-03"
    assert record.time_zone == "America/Detroit"
    assert lines_of(record) == {"99487": 1}
    assert record.date_of_service == date(2026, 3, 31)


def test_rule_4_new_years_eve_evening_est_is_december() -> None:
    """Rule 4: 23:30 EST on 31 December (04:30 UTC, 1 January) is December time."""
    harness = Harness()
    harness.feed(log("nye", datetime(2027, 1, 1, 4, 30, tzinfo=UTC), 20))
    harness.close_all(as_of=datetime(2027, 1, 10, tzinfo=UTC))
    assert [r.service_month for r in harness.records()] == ["2026-12"]


def test_rule_4_log_crossing_local_midnight_at_month_end_belongs_to_start_month() -> None:
    """Rule 4 Decision: 31 March 23:30 -> 1 April 00:30 local counts wholly in March."""
    harness = Harness()
    harness.feed(log("before", local(20), 30), log("cross", local(31, 23, 30), 60))
    harness.feed(log("april", local(2, 10, month=4), 10))
    harness.close_all(as_of=datetime(2026, 5, 10, tzinfo=UTC))
    march = harness.record(month="2026-03")
    april = harness.record(month="2026-04")
    assert march.qualifying_minutes == 90
    assert lines_of(march) == {"99487": 1, "99489": 1}
    assert april.qualifying_minutes == 10
    assert "cross" in march.contributing_event_ids
    assert "cross" not in april.contributing_event_ids


def test_rule_4_month_is_the_configured_practice_local_month() -> None:
    """Rule 4: the month is per practice: 06:30 UTC 1 April is 23:30 PDT 31 March in
    Los Angeles but 02:30 EDT 1 April in Detroit."""
    config = CoreConfig(practices={"west": PracticeSettings(time_zone="America/Los_Angeles")})
    harness = Harness(config)
    moment = datetime(2026, 4, 1, 6, 30, tzinfo=UTC)
    harness.feed(log("w", moment, 60, practice_id="west"), log("d", moment, 60))
    harness.close_all(as_of=datetime(2026, 5, 10, tzinfo=UTC))
    by_practice = {r.practice_id: r for r in harness.records()}
    assert by_practice["west"].service_month == "2026-03"
    assert by_practice["west"].time_zone == "America/Los_Angeles"
    assert by_practice[PRACTICE].service_month == "2026-04"


def test_rule_4_separate_months_get_separate_records() -> None:
    """Rules 1 and 4: each local month of a patient has its own record and record id."""
    harness = Harness()
    harness.feed(log("m", local(10), 60), log("a", local(10, month=4), 60))
    harness.close_all(as_of=datetime(2026, 5, 10, tzinfo=UTC))
    march, april = harness.record(month="2026-03"), harness.record(month="2026-04")
    assert march.record_id != april.record_id
    assert march.date_of_service == date(2026, 3, 31)
    assert april.date_of_service == date(2026, 4, 30)


def test_rule_4_month_arithmetic_helpers() -> None:
    """Rule 4: month helpers across year ends, leap years and DST."""
    assert next_month("2026-12") == "2027-01"
    assert last_day("2028-02") == date(2028, 2, 29)
    assert last_day("2026-02") == date(2026, 2, 28)
    # March ends at local midnight EDT (UTC-4); December ends at local midnight EST (UTC-5)
    assert month_end("2026-03", "America/Detroit") == datetime(2026, 4, 1, 4, 0, tzinfo=UTC)
    assert month_end("2026-12", "America/Detroit") == datetime(2027, 1, 1, 5, 0, tzinfo=UTC)
    # 12-month timely-filing arithmetic clamps to month ends
    assert add_months(date(2025, 3, 15), 12) == date(2026, 3, 15)
    assert add_months(date(2027, 2, 28), 12) == date(2028, 2, 28)
    assert add_months(date(2024, 2, 29), 12) == date(2025, 2, 28)
