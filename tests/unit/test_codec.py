"""Ledger serialisation (the changelog value): a round trip must not change behaviour."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ccm_core import codec
from ccm_core.contracts import INPUT_ADAPTER, MonthCloseCommand, Outcome
from ccm_core.tally import Output, PatientLedger, TallyEngine
from tests.unit.unit_helpers import CLOSE_AT, PATIENT, local, log, void

BEFORE: list[dict[str, Any]] = [
    log("a", local(10), 40, staff_name="Jane Doe", credentials="RN, BSN"),
    log("b", local(10, 10, 20), 30, role="ma", staff_id="ma-1"),  # overlaps a
    log("pa", local(11), 20, activity="prior_authorization"),  # excluded
    log("c", local(12), 25),
    void("v1", "c", recorded_at=local(13)),  # void after its log
    void("v2", "d", recorded_at=local(13, 11)),  # void before its log (pending)
    log("long", local(14, 6), 500),  # rejected, listed on the month
    log("apr", local(2, month=4), 15, recorded_at=local(2, 12, month=4)),  # another month
]
CLOSE_MARCH = MonthCloseCommand(
    command_id="c1", practice_id="prac-1", service_month="2026-03", as_of=CLOSE_AT
)
AFTER: list[dict[str, Any]] = [
    log("d", local(15), 30, recorded_at=CLOSE_AT + timedelta(hours=1)),  # arrives voided
    log("e", local(16), 35, recorded_at=CLOSE_AT + timedelta(hours=2)),  # late: revision 1
    log("a", local(10), 40, staff_name="Jane Doe", credentials="RN, BSN"),  # duplicate
    log("c", local(12), 99, recorded_at=CLOSE_AT + timedelta(hours=3)),  # id conflict
    void("v3", "e", recorded_at=CLOSE_AT + timedelta(hours=4)),  # late void: revision 2
    void("v1", "c", recorded_at=local(13)),  # duplicate void
    log("f", local(3, month=4), 50, recorded_at=local(3, 12, month=4)),  # April reaches 60
]


def _apply(engine: TallyEngine, ledger: PatientLedger, events: list[dict[str, Any]]) -> list[str]:
    out: list[Output] = []
    for raw in events:
        event = INPUT_ADAPTER.validate_python(raw)
        out += engine.apply(ledger, event).outputs
    return [o.to_json() for o in out]


def _ledger_before() -> tuple[TallyEngine, PatientLedger]:
    engine = TallyEngine()
    ledger = PatientLedger(PATIENT)
    _apply(engine, ledger, BEFORE)
    engine.close(ledger, CLOSE_MARCH)
    return engine, ledger


def test_codec_round_trip_preserves_behaviour() -> None:
    """Codec: applying more events after dumps/loads gives the same outputs as without."""
    engine, original = _ledger_before()
    restored = codec.loads(codec.dumps(original))
    expected = _apply(engine, original, AFTER)
    got = _apply(engine, restored, AFTER)
    assert got == expected
    assert len(expected) >= 4  # the continuation really exercised the engine
    final = engine.close_all(original, CLOSE_AT + timedelta(days=40))
    final_restored = engine.close_all(restored, CLOSE_AT + timedelta(days=40))
    assert [o.to_json() for o in final] == [o.to_json() for o in final_restored]
    assert codec.dumps(original) == codec.dumps(restored)


def test_codec_round_trip_is_stable() -> None:
    """Codec: dumps(loads(dumps(x))) == dumps(x), and the bytes are plain JSON."""
    _, ledger = _ledger_before()
    raw = codec.dumps(ledger)
    assert codec.dumps(codec.loads(raw)) == raw
    assert json.loads(raw)["v"] == codec.LAYOUT_VERSION


def test_codec_restores_pending_voids_and_derived_index() -> None:
    """Codec: a void that came before its log is still pending after a round trip."""
    _, ledger = _ledger_before()
    restored = codec.loads(codec.dumps(ledger))
    assert restored.pending == {"d": "v2"}
    for month in ledger.months.values():
        for event_id in month.logs:
            assert restored.month_of_log(event_id) == ledger.month_of_log(event_id)
    for key, month in ledger.months.items():
        assert restored.months[key].intervals == month.intervals
        assert restored.months[key].qualifying_seconds == month.qualifying_seconds


def test_codec_refuses_unknown_layout() -> None:
    """Codec: a reader refuses a layout version it does not know rather than guessing."""
    _, ledger = _ledger_before()
    data = json.loads(codec.dumps(ledger))
    data["v"] = 999
    with pytest.raises(ValueError, match="layout"):
        codec.loads(json.dumps(data).encode())


# A ledger of BEFORE (log "a" with a note) as the layout-2 codec wrote it, before layout 3.
LAYOUT_2 = Path(__file__).parent / "data" / "ledger-layout2.json"


def _before_with_note() -> list[dict[str, Any]]:
    return [{**e, "note": "call back Tuesday"} if e["event_id"] == "a" else e for e in BEFORE]


def test_codec_loads_layout_2_written_by_the_previous_version() -> None:
    """Codec: a changelog written with layout 2 (packed 64-bit fingerprint) still loads into
    the same ledger the current code builds, and redeliveries are still recognised."""
    old = codec.loads(LAYOUT_2.read_bytes())
    assert json.loads(LAYOUT_2.read_bytes())["v"] == 2
    engine = TallyEngine()
    fresh = PatientLedger(PATIENT)
    _apply(engine, fresh, _before_with_note())
    assert codec.dumps(old) == codec.dumps(fresh)
    for raw in _before_with_note():
        event = INPUT_ADAPTER.validate_python(raw)
        outcome = engine.apply(old, event).outcome
        assert outcome in (Outcome.DUPLICATE, Outcome.REJECTED), raw["event_id"]


@pytest.mark.parametrize(
    "recorded", ["2038-01-19T03:14:08Z", "2062-05-01T00:00:00Z", "2099-12-31T23:59:59-14:00"]
)
def test_codec_writes_64_bit_integers_whatever_the_year(recorded: str) -> None:
    """Codec: from 2038-01-19T03:14:08Z on, layout 2's packed fingerprint exceeded 64 bits
    (orjson refused it and the worker could not persist the ledger). Layout 3 writes only
    integers within 64 bits, and the round trip is exact."""
    moment = datetime.fromisoformat(recorded)
    engine, ledger = TallyEngine(), PatientLedger(PATIENT)
    event = log("late", moment - timedelta(hours=2), 30, recorded_at=moment, note="n")
    _apply(engine, ledger, [event])
    raw = codec.dumps(ledger)
    ints: list[int] = []

    def walk(value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            ints.append(value)
        elif isinstance(value, list | dict):
            for item in value.values() if isinstance(value, dict) else value:
                walk(item)

    walk(json.loads(raw))
    assert ints and all(-(2**63) <= i < 2**63 for i in ints)
    restored = codec.loads(raw)
    assert codec.dumps(restored) == raw
    assert engine.apply(restored, INPUT_ADAPTER.validate_python(event)).outcome is Outcome.DUPLICATE
