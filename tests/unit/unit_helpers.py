"""Event builders and a small harness for the core's unit tests.

Events are built as plain dicts and fed as JSON bytes through :class:`LocalTally`, the same
decode -> route -> apply path the stream and ``ccm-tally replay`` use. Times are given in the
practice's local time (America/Detroit by default) so that tests read like a clinic's calendar.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ccm_core.config import CoreConfig, PracticeSettings
from ccm_core.contracts import BillingRecord, MonthCloseCommand, ThresholdEvent
from ccm_core.ingest import LocalTally, Processed, Source
from ccm_core.tally import Output, TallyEngine

DETROIT = ZoneInfo("America/Detroit")
PATIENT = "pat-1"
PRACTICE = "prac-1"
MARCH = "2026-03"
# A close time safely after every March 2026 log the tests write.
CLOSE_AT = datetime(2026, 4, 6, 12, 0, tzinfo=UTC)
UNLICENSED = {"ma", "chw", "care_coordinator"}
# The time rules (sections 1-6) are tested at practices without an enrollment feed, so that a
# record's lines show what the time alone supports; enrollment gates (section 7) have their own
# tests with the gates on (``GATED``, the shipped default).
NO_FEED = PracticeSettings(enrollment_feed=False)
TIME_ONLY = CoreConfig(default_practice=NO_FEED)
GATED = CoreConfig()


def local(day: int, hour: int = 10, minute: int = 0, month: int = 3, year: int = 2026) -> datetime:
    """An aware local time at the default practice (America/Detroit)."""
    return datetime(year, month, day, hour, minute, tzinfo=DETROIT)


def log(
    event_id: str,
    start: datetime,
    minutes: int | None = None,
    *,
    end: datetime | None = None,
    payer: str = "cms",
    role: str = "rn",
    licensed: bool | None = None,
    activity: str = "care_plan",
    staff_id: str | None = None,
    staff_name: str | None = None,
    credentials: str | None = None,
    patient_id: str = PATIENT,
    practice_id: str = PRACTICE,
    recorded_at: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``time_logged`` event. ``licensed`` defaults to what the role implies."""
    if minutes is None and end is None:
        raise ValueError("give minutes or end")
    finish = end if end is not None else start + timedelta(minutes=minutes or 0)
    event: dict[str, Any] = {
        "event_type": "time_logged",
        "event_id": event_id,
        "patient_id": patient_id,
        "practice_id": practice_id,
        "payer": payer,
        "staff_id": staff_id or f"{role}-1",
        "role": role,
        "licensed": (role not in UNLICENSED) if licensed is None else licensed,
        "activity": activity,
        "start": start.isoformat(),
        "recorded_at": (recorded_at or finish + timedelta(hours=1)).isoformat(),
    }
    if minutes is not None:
        event["minutes"] = minutes
    if end is not None:
        event["end"] = end.isoformat()
    if staff_name is not None:
        event["staff_name"] = staff_name
    if credentials is not None:
        event["credentials"] = credentials
    event.update(extra)
    return event


def void(
    event_id: str,
    voided_event_id: str,
    *,
    recorded_at: datetime | None = None,
    reason: str = "entered_in_error",
    patient_id: str = PATIENT,
    practice_id: str = PRACTICE,
) -> dict[str, Any]:
    """A ``time_log_voided`` event cancelling ``voided_event_id``."""
    return {
        "event_type": "time_log_voided",
        "event_id": event_id,
        "patient_id": patient_id,
        "practice_id": practice_id,
        "voided_event_id": voided_event_id,
        "reason": reason,
        "recorded_at": (recorded_at or local(25, 12)).isoformat(),
    }


def encode(event: dict[str, Any] | bytes | str) -> bytes:
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode()
    return json.dumps(event).encode()


def daily_logs(
    total: int,
    *,
    prefix: str = "e",
    chunk: int = 60,
    first_day: int = 2,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """``total`` minutes as non-overlapping logs of at most ``chunk`` minutes, one per day."""
    events = []
    left, day = total, first_day
    while left > 0:
        size = min(chunk, left)
        events.append(log(f"{prefix}{day}", local(day, 10), size, **kwargs))
        left -= size
        day += 1
    return events


class Harness:
    """A LocalTally plus the outputs it produced, with look-ups by kind."""

    def __init__(self, config: CoreConfig | None = None) -> None:
        self.local = LocalTally(TallyEngine(config or TIME_ONLY))
        self.outputs: list[Output] = []
        self._offset = 0

    @property
    def engine(self) -> TallyEngine:
        return self.local.engine

    def feed(self, *events: dict[str, Any] | bytes | str) -> list[Processed]:
        results = []
        for event in events:
            self._offset += 1
            processed = self.local.feed(encode(event), Source("test", 0, self._offset))
            self.outputs += processed.outputs
            results.append(processed)
        return results

    def feed_one(self, event: dict[str, Any] | bytes | str) -> Processed:
        return self.feed(event)[0]

    def close(
        self, month: str = MARCH, practice_id: str = PRACTICE, as_of: datetime = CLOSE_AT
    ) -> list[Output]:
        command = MonthCloseCommand(
            command_id=f"close-{practice_id}-{month}-{as_of.isoformat()}",
            practice_id=practice_id,
            service_month=month,
            as_of=as_of,
        )
        out = self.local.close(command)
        self.outputs += out
        return out

    def close_all(self, as_of: datetime = CLOSE_AT) -> list[Output]:
        out = self.local.close_all(as_of)
        self.outputs += out
        return out

    def records(
        self, patient_id: str | None = None, month: str | None = None
    ) -> list[BillingRecord]:
        found = [o.envelope.data for o in self.outputs if o.kind == "billing_record"]
        return [
            r
            for r in found
            if isinstance(r, BillingRecord)
            and (patient_id is None or r.patient_id == patient_id)
            and (month is None or r.service_month == month)
        ]

    def record(self, patient_id: str = PATIENT, month: str = MARCH) -> BillingRecord:
        """The latest revision of a patient-month's record."""
        found = self.records(patient_id, month)
        assert found, f"no billing record for {patient_id} {month}"
        return max(found, key=lambda r: r.revision)

    def thresholds(self, patient_id: str | None = None) -> list[ThresholdEvent]:
        found = [o.envelope.data for o in self.outputs if o.kind == "threshold"]
        return [
            t
            for t in found
            if isinstance(t, ThresholdEvent) and (patient_id is None or t.patient_id == patient_id)
        ]


def bill(
    events: Iterable[dict[str, Any]], config: CoreConfig | None = None, month: str = MARCH
) -> BillingRecord:
    """Feed events, close the month, return its record."""
    harness = Harness(config)
    harness.feed(*events)
    harness.close_all()
    return harness.record(month=month)


def lines_of(record: BillingRecord) -> dict[str, int]:
    return {line.code: line.units for line in record.lines}


def comparable(record: BillingRecord) -> dict[str, Any]:
    """A record's content without the close metadata (when and why it was closed)."""
    return record.model_dump(mode="json", exclude={"closed_at", "close_trigger"})


# ---------------------------------------------------------------- oracles from domain-rules.md
# Written from the rules table (sections 1-3), independently of ccm_core.profiles, so that
# tests compare the engine with the rules rather than with itself.

_AS_CMS = {"prior_authorization", "benefit_check"}
RULES_EXCLUDED_ACTIVITIES = {
    "cms": _AS_CMS,
    "bcbsm": _AS_CMS | {"documentation", "gap_reminder", "chart_prep", "email"},
    "priority_health": _AS_CMS,
    "medicaid": _AS_CMS,
}


def rules_counts(payer: str, role: str, licensed: bool, activity: str) -> bool:
    """Whether a log's minutes count under ``payer`` (rules 2 and 3)."""
    if activity in RULES_EXCLUDED_ACTIVITIES[payer]:
        return False
    if payer == "priority_health" and not licensed:
        return False
    return not (payer == "medicaid" and role == "physician")


def rules_lines(payer: str, minutes: int) -> dict[str, int]:
    """The claim lines the rules file asks for ``minutes`` qualifying minutes."""
    if payer in ("cms", "medicaid", "priority_health"):
        if minutes < 60:
            return {}
        addons = (minutes - 60) // 30  # each FULL 30 beyond 60, no rounding up
        if payer == "priority_health":
            addons = min(addons, 2)
    elif payer == "bcbsm":
        if minutes < 31:
            return {}
        # Decision: first unit when > 75, then each further STARTED 30-minute block
        addons = 0 if minutes <= 75 else -(-(minutes - 75) // 30)
    else:  # pragma: no cover - the table only has four profiles
        raise AssertionError(payer)
    return {"99487": 1, **({"99489": addons} if addons else {})}
