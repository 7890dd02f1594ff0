"""Calendar-month and time-zone arithmetic (pure; time always comes in as an argument)."""

from __future__ import annotations

import calendar
from bisect import bisect_right
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


@lru_cache(maxsize=1024)
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


@lru_cache(maxsize=4096)
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


class MonthIndex:
    """Epoch seconds -> local ``YYYY-MM``, by bisecting cached month starts (the hot path).

    Month starts (local midnight on the 1st, in UTC epoch seconds) are computed with zoneinfo
    the first time a month is seen, so DST and offset changes are exactly those of zoneinfo.
    """

    def __init__(self, tz: str) -> None:
        self.tz = tz
        self.starts: list[int] = []  # sorted epoch seconds of the cached months' starts
        self.ends: list[int] = []  # ends[i]: start of the month after names[i]
        self.names: list[str] = []

    def _start_of(self, month: str) -> int:
        year, mon = parse_month(month)
        return int(datetime.combine(date(year, mon, 1), time(0), zone(self.tz)).timestamp())

    def month_of(self, epoch_seconds: int) -> str:
        i = bisect_right(self.starts, epoch_seconds) - 1
        if i >= 0 and epoch_seconds < self.ends[i]:
            return self.names[i]
        month = f"{datetime.fromtimestamp(epoch_seconds, zone(self.tz)):%Y-%m}"
        start, end = self._start_of(month), self._start_of(next_month(month))
        j = bisect_right(self.starts, start)
        self.starts.insert(j, start)
        self.ends.insert(j, end)
        self.names.insert(j, month)
        return month


_INDEXES: dict[str, MonthIndex] = {}


def local_month_of_epoch(epoch_seconds: int, tz: str) -> str:
    """``local_month`` for an epoch-seconds instant, cached per time zone."""
    index = _INDEXES.get(tz)
    if index is None:
        index = _INDEXES[tz] = MonthIndex(tz)
    return index.month_of(epoch_seconds)
