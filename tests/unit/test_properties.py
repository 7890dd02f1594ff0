"""Property-based tests of the tally (hypothesis).

Each property feeds generated March 2026 logs of one patient through the full decode -> apply
path and compares the month-close record with a rule (or with another run of the engine).
Logs are packed into five mornings so that overlaps are frequent.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccm_core import codec
from ccm_core.contracts import INPUT_ADAPTER, MonthCloseCommand, TimeLogged
from ccm_core.profiles import PayerProfile, load_profiles
from ccm_core.tally import PatientLedger, TallyEngine
from tests.unit.unit_helpers import (
    CLOSE_AT,
    MARCH,
    PATIENT,
    PRACTICE,
    Harness,
    comparable,
    lines_of,
    local,
    log,
    rules_counts,
    rules_lines,
    void,
)

PAYERS = ["cms", "bcbsm", "priority_health", "medicaid"]
ROLES = [("rn", True), ("lpn", True), ("ma", False), ("chw", False), ("physician", True)]
ACTIVITIES = [
    "care_plan",
    "medication_reconciliation",
    "portal_conversation",
    "email",
    "documentation",
    "prior_authorization",
]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def log_events(
    draw: st.DrawFn, payer: str, max_logs: int = 10, seconds: bool = False
) -> list[dict[str, Any]]:
    """Logs on 2-6 March, starting 08:00-11:00 local, 1-150 minutes (or seconds-exact)."""
    count = draw(st.integers(1, max_logs))
    events = []
    for index in range(count):
        start = local(draw(st.integers(2, 6)), 8) + timedelta(minutes=draw(st.integers(0, 180)))
        role, licensed = draw(st.sampled_from(ROLES))
        common: dict[str, Any] = {
            "payer": payer,
            "role": role,
            "licensed": licensed,
            "activity": draw(st.sampled_from(ACTIVITIES)),
            "staff_id": f"{role}-{draw(st.integers(1, 2))}",
        }
        if seconds:
            if draw(st.booleans()):
                start += timedelta(seconds=draw(st.integers(0, 59)))
            length = timedelta(seconds=draw(st.integers(30, 150 * 60)))
            events.append(log(f"log-{index}", start, end=start + length, **common))
        elif draw(st.booleans()):
            events.append(log(f"log-{index}", start, draw(st.integers(1, 150)), **common))
        else:
            end = start + timedelta(minutes=draw(st.integers(1, 150)))
            events.append(log(f"log-{index}", start, end=end, **common))
    return events


@st.composite
def month_inputs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Logs of one payer, voids of some of them, and maybe an over-long (rejected) log."""
    payer = draw(st.sampled_from(PAYERS))
    events = draw(log_events(payer))
    targets = draw(st.sets(st.sampled_from([e["event_id"] for e in events])))
    events += [void(f"void-{t}", t) for t in sorted(targets)]
    if draw(st.booleans()):
        events.append(log("too-long", local(7, 6), 481 + draw(st.integers(0, 100)), payer=payer))
    return events


def final_records(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    harness = Harness()
    harness.feed(*events)
    harness.close_all()
    return {r.record_id: comparable(r) for r in harness.records()}


def _log_seconds(event: dict[str, Any]) -> int:
    parsed = TimeLogged.model_validate(event)
    return int((parsed.computed_end - parsed.start).total_seconds())


@FAST
@given(data=st.data(), events=month_inputs())
def test_property_record_does_not_depend_on_delivery_order(
    data: st.DataObject, events: list[dict[str, Any]]
) -> None:
    """Rules 2, 5, 6: the final billing record (minus closed_at/close_trigger) is the same
    for every delivery order of the logs and voids (void before or after its log)."""
    shuffled = data.draw(st.permutations(events))
    assert final_records(shuffled) == final_records(events)


@FAST
@given(data=st.data(), events=month_inputs())
def test_property_redeliveries_never_change_the_record(
    data: st.DataObject, events: list[dict[str, Any]]
) -> None:
    """Rule 5: identical redeliveries, wherever they arrive, never change the record and are
    never errors."""
    copies = data.draw(st.lists(st.sampled_from(events), min_size=1, max_size=len(events)))
    with_dupes = list(events)
    for copy in copies:
        index = data.draw(st.integers(0, len(with_dupes)))
        with_dupes.insert(index, dict(copy))
    assert final_records(with_dupes) == final_records(events)


@FAST
@given(payer=st.sampled_from(PAYERS), data=st.data())
def test_property_qualifying_minutes_between_longest_log_and_sum_of_logs(
    payer: str, data: st.DataObject
) -> None:
    """Rule 2: the union never exceeds the sum of counted logged minutes and is never less
    than the longest single counted log."""
    events = data.draw(log_events(payer))
    harness = Harness()
    harness.feed(*events)
    harness.close_all()
    record = harness.record()
    counted = [
        _log_seconds(e) // 60
        for e in events
        if rules_counts(payer, e["role"], e["licensed"], e["activity"])
    ]
    assert record.qualifying_minutes <= sum(counted)
    assert record.qualifying_minutes >= max(counted, default=0)
    assert record.counted_log_minutes == sum(counted)


@FAST
@given(payer=st.sampled_from(PAYERS), data=st.data())
def test_property_record_minutes_consistent_for_second_exact_logs(
    payer: str, data: st.DataObject
) -> None:
    """Rules 2/6: with logs timed to the second, the union stays within [longest log, sum of
    logs] in seconds, and the record never reports fewer logged minutes than qualifying
    minutes (overlap_minutes = counted_log_minutes - qualifying_minutes >= 0)."""
    events = data.draw(log_events(payer, seconds=True))
    harness = Harness()
    harness.feed(*events)
    harness.close_all()
    record = harness.record()
    counted = [
        _log_seconds(e)
        for e in events
        if rules_counts(payer, e["role"], e["licensed"], e["activity"])
    ]
    assert max(counted, default=0) <= record.qualifying_seconds <= sum(counted)
    assert record.qualifying_minutes <= record.counted_log_minutes
    assert record.overlap_minutes == record.counted_log_minutes - record.qualifying_minutes


@FAST
@given(payer=st.sampled_from(PAYERS), data=st.data())
def test_property_union_equals_brute_force_minute_set(payer: str, data: st.DataObject) -> None:
    """Rules 1-3: for minute-aligned logs, qualifying minutes equal the number of distinct
    wall-clock minutes covered by logs that count under the payer (from the rules table),
    and the claim lines are those the rules give for that many minutes."""
    events = data.draw(log_events(payer))
    covered: set[int] = set()
    for event in events:
        if rules_counts(payer, event["role"], event["licensed"], event["activity"]):
            parsed = TimeLogged.model_validate(event)
            first = int(parsed.start.timestamp()) // 60
            covered.update(range(first, first + _log_seconds(event) // 60))
    harness = Harness()
    harness.feed(*events)
    harness.close_all()
    record = harness.record()
    assert record.qualifying_minutes == len(covered)
    assert lines_of(record) == rules_lines(payer, len(covered))


@FAST
@given(payer=st.sampled_from(PAYERS), data=st.data())
def test_property_units_never_decrease_as_logs_are_added(payer: str, data: st.DataObject) -> None:
    """Rule 1: billed units are monotone non-decreasing as counted minutes are added."""
    events = data.draw(log_events(payer))
    harness = Harness()
    previous = (0, 0)
    for event in events:
        harness.feed(event)
        tally = harness.local.ledgers[PATIENT].months[(PRACTICE, MARCH)]
        body = harness.engine.record_body(PATIENT, tally)
        units = lines_of_body(body)
        assert units >= previous
        previous = units


def lines_of_body(body: dict[str, Any]) -> tuple[int, int]:
    lines = {line.code: line.units for line in body["lines"]}
    return lines.get("99487", 0), lines.get("99489", 0)


def test_property_units_monotone_in_minutes_for_every_shipped_profile() -> None:
    """Rule 1/3: for each shipped profile, units never decrease from 0 to 1000 minutes."""
    profiles = load_profiles()
    for name in profiles.names():
        profile = profiles.get(name)
        assert profile is not None
        levels = [profile.level_for(m) for m in range(1001)]
        assert levels == sorted(levels), name


@settings(max_examples=200, deadline=None)
@given(
    entry=st.integers(1, 120),
    gap=st.integers(1, 120),
    every=st.integers(1, 60),
    cap=st.none() | st.integers(0, 5),
)
def test_property_units_monotone_for_any_profile_as_data(
    entry: int, gap: int, every: int, cap: int | None
) -> None:
    """Rule 3: any profile expressible as data bills monotonically, reaches its entry code
    exactly at entry_minutes and never exceeds its cap."""
    profile = PayerProfile(
        name="generated",
        version="1",
        entry_minutes=entry,
        addon_first_minutes=entry + gap,
        addon_every_minutes=every,
        addon_max_units=cap,
    )
    levels = [profile.level_for(m) for m in range(entry + gap + 10 * every)]
    assert levels == sorted(levels)
    assert profile.level_for(entry - 1) == 0
    assert profile.level_for(entry) == 1
    if cap is not None:
        assert max(levels) <= 1 + cap
    for level in range(1, max(levels) + 1):  # thresholds agree with the levels
        assert profile.level_for(profile.threshold_minutes(level)) >= level
        assert profile.level_for(profile.threshold_minutes(level) - 1) < level


@FAST
@given(data=st.data(), events=month_inputs())
def test_property_codec_round_trip_preserves_behaviour(
    data: st.DataObject, events: list[dict[str, Any]]
) -> None:
    """Codec: serialising the ledger at any point (optionally after a close) and going on
    from the copy gives exactly the outputs of going on without the round trip."""
    split = data.draw(st.integers(0, len(events)))
    close_in_between = data.draw(st.booleans())
    engine = TallyEngine()
    ledger = PatientLedger(PATIENT)
    for raw in events[:split]:
        engine.apply(ledger, INPUT_ADAPTER.validate_python(raw))
    if close_in_between:
        command = MonthCloseCommand(
            command_id="c", practice_id=PRACTICE, service_month=MARCH, as_of=CLOSE_AT
        )
        engine.close(ledger, command)
    copy = codec.loads(codec.dumps(ledger))

    def go_on(target: PatientLedger) -> list[str]:
        out = []
        for raw in events[split:]:
            out += engine.apply(target, INPUT_ADAPTER.validate_python(raw)).outputs
        out += engine.close_all(target, CLOSE_AT + timedelta(days=1))
        return [json.dumps(json.loads(o.to_json()), sort_keys=True) for o in out]

    assert go_on(copy) == go_on(ledger)


@FAST
@given(data=st.data(), events=month_inputs())
def test_property_an_archived_month_never_changes_again(
    data: st.DataObject, events: list[dict[str, Any]]
) -> None:
    """Retention: once a closed month is archived, no input (a redelivery or any other log of
    the month) can publish a threshold or a new revision of its record."""
    harness = Harness()
    harness.feed(*events)
    harness.close()
    ledger = harness.local.ledgers[PATIENT]
    assert harness.engine.prune(ledger, CLOSE_AT + timedelta(days=366)) == 1
    again = data.draw(st.lists(st.sampled_from(events), min_size=1, max_size=len(events)))
    fresh = data.draw(log_events(events[0]["payer"], max_logs=3))
    for event in [*again, *[{**e, "event_id": "new-" + e["event_id"]} for e in fresh]]:
        outputs = harness.feed_one(event).outputs
        assert all(o.kind == "rejected" for o in outputs), event
    assert not ledger.months
