"""Calendar-month and time-zone arithmetic (pure; time always comes in as an argument)."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_month(moment: datetime, tz: str) -> str:
    """``YYYY-MM`` of ``moment`` in the practice's local time zone (rules file, section 4)."""
    local = moment.astimezone(zone(tz))
    return f"{local.year:04d}-{local.month:02d}"


def parse_month(month: str) -> tuple[int, int]:
    year, mon = month.split("-")
    return int(year), int(mon)


def last_day(month: str) -> date:
    year, mon = parse_month(month)
    return date(year, mon, calendar.monthrange(year, mon)[1])


def next_month(month: str) -> str:
    year, mon = parse_month(month)
    return f"{year + (mon == 12):04d}-{mon % 12 + 1:02d}"


def month_end(month: str, tz: str) -> datetime:
    """The instant the local month ends (local midnight starting the next month), in UTC."""
    year, mon = parse_month(next_month(month))
    return datetime.combine(date(year, mon, 1), time(0), zone(tz)).astimezone(UTC)


def close_deadline(month: str, tz: str, grace_days: int) -> datetime:
    """When the timer closes a month: local month end plus the grace period."""
    return month_end(month, tz) + timedelta(days=grace_days)


def add_months(day: date, months: int) -> date:
    """Same day ``months`` later, clamped to the month's last day (31 Jan + 1 -> 28/29 Feb)."""
    index = day.year * 12 + day.month - 1 + months
    year, mon = divmod(index, 12)
    mon += 1
    return date(year, mon, min(day.day, calendar.monthrange(year, mon)[1]))


def local_date(epoch_seconds: int, tz: str) -> date:
    return datetime.fromtimestamp(epoch_seconds, zone(tz)).date()
