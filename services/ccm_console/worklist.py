"""The worklist's pure parts: rows from status records, days left, urgency order, filters.

No I/O and no clock: the time comes in as ``now``. The console's web layer (``web.py``) only
reads the view, calls :func:`worklist` and renders.

Urgency (issue 10): fewest minutes to the next threshold *relative to days left in the
practice's local month*, i.e. the minutes per remaining day it takes to reach the next code.
A patient 5 minutes short with 3 days left (1.7 min/day) comes before one 40 minutes short
with 10 days left (4 min/day). Rows that no time can change come last: a month that is over
but not yet closed, then a month at the payer's cap, then closed months.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from fractions import Fraction

from pydantic import BaseModel, ConfigDict, Field

from ccm_core.contracts import BillingLine, StatusThreshold, TallyStatus
from ccm_core.months import last_day, local_month, month_end, parse_month, zone


class WorklistRow(BaseModel):
    """One patient-month as the worklist shows it (``GET /api/worklist`` rows)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient_id: str
    practice_id: str
    service_month: str
    payer: str
    qualifying_minutes: int
    codes_reached: list[BillingLine]
    thresholds: list[StatusThreshold]
    next_threshold: StatusThreshold | None
    minutes_to_next_threshold: int | None
    days_left: int = Field(description="Local calendar days left in the month, today included.")
    minutes_per_day: float | None = Field(
        description="minutes_to_next_threshold / days_left: the urgency (lower first); None "
        "when nothing is left to reach or no day is left."
    )
    closed: bool
    billable: bool | None
    logs: int
    updated_at: datetime

    @property
    def scale_minutes(self) -> int:
        """The progress bar's full width, in minutes: the last threshold shown (or more)."""
        top = max((t.minutes for t in self.thresholds), default=60)
        return max(top, self.qualifying_minutes)


class Worklist(BaseModel):
    """The answer of ``GET /api/worklist``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    practice_id: str
    service_month: str
    time_zone: str | None = Field(description="The practice's zone (from its status records).")
    days_left: int | None
    as_of: datetime
    payers: list[str] = Field(description="Payers of the practice-month (the payer filter).")
    rows: list[WorklistRow]


def days_left(service_month: str, time_zone: str, now: datetime) -> int:
    """Local calendar days left in ``service_month`` at ``now``, today included: the whole
    month before it starts, 0 once it is over (in the practice's zone)."""
    if now >= month_end(service_month, time_zone):
        return 0
    today = now.astimezone(zone(time_zone)).date()
    year, month = parse_month(service_month)
    end = last_day(service_month)
    if (today.year, today.month) < (year, month):
        return end.day
    return (end - today).days + 1


def current_month(time_zone: str, now: datetime) -> str:
    """The practice's local calendar month at ``now``."""
    return local_month(now, time_zone)


def row_of(status: TallyStatus, updated_at: datetime, now: datetime) -> WorklistRow:
    left = days_left(status.service_month, status.time_zone, now)
    to_go = status.minutes_to_next_threshold
    per_day = None
    if to_go is not None and left > 0 and not status.closed:
        per_day = round(to_go / left, 2)
    return WorklistRow(
        patient_id=status.patient_id,
        practice_id=status.practice_id,
        service_month=status.service_month,
        payer=status.payer,
        qualifying_minutes=status.qualifying_minutes,
        codes_reached=status.codes_reached,
        thresholds=status.thresholds,
        next_threshold=status.next_threshold,
        minutes_to_next_threshold=to_go,
        days_left=left,
        minutes_per_day=per_day,
        closed=status.closed,
        billable=status.billable,
        logs=status.logs,
        updated_at=updated_at,
    )


def urgency(row: WorklistRow) -> tuple[int, Fraction, int, str]:
    """Sort key, most urgent first: exact minutes per day left (no float ties), then fewer
    minutes to go, then patient id (a stable order for equal urgency)."""
    to_go = row.minutes_to_next_threshold
    if row.closed:
        return (3, Fraction(0), 0, row.patient_id)
    if to_go is None:  # at the payer's cap: nothing left to reach
        return (2, Fraction(0), 0, row.patient_id)
    if row.days_left == 0:  # month over, not closed yet: late logs may still come
        return (1, Fraction(to_go), to_go, row.patient_id)
    return (0, Fraction(to_go, row.days_left), to_go, row.patient_id)


def worklist(
    statuses: Iterable[tuple[TallyStatus, datetime]],
    practice_id: str,
    service_month: str,
    now: datetime,
    *,
    payer: str | None = None,
    near: int | None = None,
    search: str | None = None,
) -> Worklist:
    """The practice-month's rows, filtered and sorted by urgency.

    ``payer``: only that payer's patients. ``near``: only open months at most ``near`` minutes
    from their next threshold. ``search``: patient ids containing it (case-insensitive).
    """
    mine = [
        (s, at)
        for s, at in statuses
        if s.practice_id == practice_id and s.service_month == service_month
    ]
    payers = sorted({s.payer for s, _ in mine})
    zones = {s.time_zone for s, _ in mine}
    tz = min(zones) if zones else None
    needle = (search or "").strip().lower()
    rows = []
    for status, at in mine:
        if payer and status.payer != payer:
            continue
        if needle and needle not in status.patient_id.lower():
            continue
        to_go = status.minutes_to_next_threshold
        if near is not None and (status.closed or to_go is None or to_go > near):
            continue
        rows.append(row_of(status, at, now))
    rows.sort(key=urgency)
    return Worklist(
        practice_id=practice_id,
        service_month=service_month,
        time_zone=tz,
        days_left=None if tz is None else days_left(service_month, tz, now),
        as_of=now,
        payers=payers,
        rows=rows,
    )
