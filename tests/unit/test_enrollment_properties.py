"""Property-based tests of the enrollment gates and the single-biller rule (hypothesis).

Each example is one patient's March 2026 at one or two practices: time logs, consent events,
attestations and other codes, fed in a drawn order through the decode -> apply path. The gate
is recomputed here from the generated events, independently of the engine (an oracle written
from rules 7 and 8), and compared with the final records.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccm_core.contracts import BillingRecord
from tests.unit.enrollment_helpers import (
    GATED,
    attestation,
    code_billed,
    consent,
    withdrawal,
)
from tests.unit.unit_helpers import PRACTICE, Harness, comparable, local, log

OTHER = "prac-2"
PRACTICES = [PRACTICE, OTHER]
EXCLUDING = ["99490", "99439", "G0556", "G0557", "G0558"]
NOT_AGAIN = ["99491", "99424", "99484", "99495"]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def month_of_two_practices(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    payer = draw(st.sampled_from(["cms", "bcbsm"]))
    events: list[dict[str, Any]] = []
    for p, practice in enumerate(PRACTICES):
        if draw(st.integers(0, 3)) > 0:  # mostly enrolled: consent in January, eligible
            events.append(consent(f"e{p}", date(2026, 1, 5), practice_id=practice))
            events.append(attestation(f"e{p}-att", practice_id=practice))
        for i in range(draw(st.integers(0, 5))):
            day = draw(st.integers(2, 27))
            minutes = draw(st.integers(10, 50))
            start = local(day, 8) + timedelta(minutes=draw(st.integers(0, 120)))
            events.append(log(f"l{p}{i}", start, minutes, payer=payer, practice_id=practice))
        for i in range(draw(st.integers(0, 1))):
            dated = date(2026, draw(st.integers(1, 4)), draw(st.integers(1, 28)))
            maker = consent if draw(st.booleans()) else withdrawal
            recorded = local(1, 9) + timedelta(hours=draw(st.integers(0, 2000)))
            events.append(maker(f"c{p}{i}", dated, practice_id=practice, recorded_at=recorded))
        if draw(st.integers(0, 3)) == 0:
            events.append(
                attestation(
                    f"a{p}",
                    conditions=draw(st.integers(1, 3)),
                    care_plan=draw(st.sampled_from(["revised", "unchanged"])),
                    practice_id=practice,
                )
            )
    log_ids = [e["event_id"] for e in events if e["event_type"] == "time_logged"]
    if draw(st.integers(0, 3)) == 0:
        code = draw(st.sampled_from(EXCLUDING + NOT_AGAIN))
        billed = draw(st.lists(st.sampled_from(log_ids), max_size=2)) if log_ids else []
        events.append(code_billed("code", code, log_ids=billed if code in NOT_AGAIN else []))
    return payer, events


def final(events: list[dict[str, Any]]) -> dict[str, BillingRecord]:
    harness = Harness(GATED)
    harness.feed(*events)
    harness.close_all()
    return {r.practice_id: r for r in harness.records()}


def consent_in_force(events: list[dict[str, Any]], practice: str, on: date) -> bool:
    """Oracle: the latest consent event of the practice dated on or before ``on``."""
    dated = [
        (e.get("consent_date") or e["withdrawn_date"], e["recorded_at"], e["event_type"], e)
        for e in events
        if e["event_type"] in ("consent_recorded", "consent_withdrawn")
        and e["practice_id"] == practice
        and (e.get("consent_date") or e["withdrawn_date"]) <= on.isoformat()
    ]
    if not dated:
        return False
    # same order as documented: date, recorded_at, a withdrawal after a consent, event id
    latest = max(
        dated,
        key=lambda d: (
            d[0],
            local(1).fromisoformat(d[1]).timestamp(),
            d[2] == "consent_withdrawn",
            d[3]["event_id"],
        ),
    )
    return bool(latest[2] == "consent_recorded")


def attested_eligible(events: list[dict[str, Any]], practice: str) -> bool:
    found = [
        e
        for e in events
        if e["event_type"] == "eligibility_attested" and e["practice_id"] == practice
    ]
    if not found:
        return False
    latest = max(found, key=lambda e: (e["recorded_at"], e["event_id"]))
    return bool(latest["chronic_conditions"] >= 2 and latest["care_plan"] == "revised")


@FAST
@given(month=month_of_two_practices())
def test_property_a_record_never_bills_a_month_its_gate_blocks(
    month: tuple[str, list[dict[str, Any]]],
) -> None:
    payer, events = month
    records = final(events)
    excluded = any(e["event_type"] == "code_billed" and e["code"] in EXCLUDING for e in events)
    billable = [r for r in records.values() if r.billable]
    for record in billable:
        assert record.date_of_service is not None
        assert consent_in_force(events, record.practice_id, record.date_of_service)
        assert attested_eligible(events, record.practice_id)
        assert not excluded
        assert record.lines and not record.held_lines
    for record in records.values():
        if not record.billable:
            assert record.lines == []
        if record.hold_reasons:
            assert not record.billable
    if payer == "cms":  # single biller: never two billable practices in the month
        assert len(billable) <= 1


@FAST
@given(month=month_of_two_practices(), data=st.data())
def test_property_order_of_enrollment_and_time_log_events_does_not_change_the_record(
    month: tuple[str, list[dict[str, Any]]], data: st.DataObject
) -> None:
    _, events = month
    shuffled = data.draw(st.permutations(events))
    first, second = final(events), final(list(shuffled))
    assert {k: comparable(r) for k, r in first.items()} == {
        k: comparable(r) for k, r in second.items()
    }
