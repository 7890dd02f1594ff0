"""The reliability suite's oracle (tests/reliability/oracle.py) without a broker: each figure
counts exactly the damage it names, and is 0 for a stream that agrees with replay."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from ccm_core.contracts import MonthCloseCommand
from ccm_core.ingest import LocalTally, Source
from ccm_simulator.generator import SimulationSpec, generate
from tests.reliability.oracle import Expected, Figures, compare, output_name, replay, rounds
from tests.unit.unit_helpers import encode, local, log

FINAL = MonthCloseCommand.model_validate(
    {
        "command_type": "month_close",
        "command_id": "final",
        "mode": "due",
        "as_of": datetime(2026, 9, 1, tzinfo=UTC).isoformat(),
    }
)
BAD = b'{"event_type": "time_logged", oops'


def inputs(*minutes: int, patient: str = "pat-1") -> list[bytes]:
    """One log a day of the given minutes (no overlaps), for ``patient``."""
    return [
        encode(log(f"{patient}-{i}", local(2 + i), m, patient_id=patient))
        for i, m in enumerate(minutes)
    ]


def stream_of(expected: Expected) -> dict[str, list[dict[str, Any]]]:
    return copy.deepcopy(expected.outputs)


def figures(stream: dict[str, list[dict[str, Any]]], want: Expected, **kw: Any) -> Figures:
    return compare(Figures("test"), stream, want, **kw)


def test_a_stream_equal_to_replay_has_every_figure_zero() -> None:
    events = [*inputs(40, 30), *inputs(20, patient="pat-2"), BAD]
    want = replay(events, FINAL)
    tally = {pid: {"months": months} for pid, months in want.summaries.items()}
    got = figures(stream_of(want), want, tally=tally)
    assert got.failing() == {}
    assert (got.dead_letters_expected, got.dead_letters_out, got.tally_checked) == (1, 1, 2)


def test_a_lost_log_is_minutes_lost_a_missing_threshold_and_a_wrong_record() -> None:
    want = replay(inputs(40, 30), FINAL)
    lossy = replay(inputs(40), FINAL)  # the 30-minute log never counted
    got = figures(stream_of(lossy), want)
    assert (got.minutes_lost, got.minutes_twice) == (30, 0)
    assert (got.thresholds_missing, got.thresholds_extra) == (1, 0)  # 99487 at 60
    assert got.records_differ == 1


def test_a_log_counted_twice_is_minutes_twice_and_an_extra_threshold() -> None:
    want = replay(inputs(40), FINAL)
    doubled = replay(inputs(40, 40), FINAL)  # as if the same work had been counted again
    got = figures(stream_of(doubled), want)
    assert (got.minutes_lost, got.minutes_twice) == (0, 40)
    assert (got.thresholds_missing, got.thresholds_extra) == (0, 1)


def test_republished_outputs_count_only_when_their_content_differs() -> None:
    want = replay(inputs(40, 30), FINAL)
    stream = stream_of(want)
    stream["threshold"].append(copy.deepcopy(stream["threshold"][0]))  # at-least-once resend
    stream["dlq"] += copy.deepcopy(stream["dlq"])
    assert figures(stream, want).failing() == {}
    changed = copy.deepcopy(stream["threshold"][0])
    changed["data"]["qualifying_minutes"] += 1
    stream["threshold"].append(changed)
    assert figures(stream, want).duplicate_ids_different_content == 1


def test_a_record_split_between_two_owners_differs_even_if_one_half_is_right() -> None:
    want = replay(inputs(40, 30), FINAL)
    stream = stream_of(want)
    [record] = stream["billing_record"]
    half = copy.deepcopy(record)
    half["id"] = "another-envelope"
    half["data"]["qualifying_minutes"] = 40
    stream["billing_record"].append(half)
    got = figures(stream, want)
    assert got.records_differ == 1
    assert got.minutes_lost == 0  # the larger half carries the minutes; the record differs


def test_dead_letters_missing_or_extra() -> None:
    want = replay([*inputs(40), BAD, b"\xff"], FINAL)
    stream = stream_of(want)
    dropped = stream["dlq"].pop()
    got = figures(stream, want)
    assert (got.dead_letters_expected, got.dead_letters_out, got.dead_letters_differ) == (2, 1, 1)
    extra = copy.deepcopy(dropped)
    stream["dlq"] += [dropped, {**extra, "id": "other", "data": {**extra["data"], "reason": "x"}}]
    assert figures(stream, want).dead_letters_differ == 1


def test_a_stale_final_status_counts() -> None:
    want = replay(inputs(40, 30), FINAL)
    stream = stream_of(want)
    assert figures(stream, want).status_differ == 0
    stale = copy.deepcopy(stream["status"][0])  # the first status (40 minutes) published last
    stream["status"].append(stale)
    assert figures(stream, want).status_differ == 1


def test_stale_or_missing_tally_answers_count() -> None:
    want = replay([*inputs(40, 30), *inputs(20, patient="pat-2")], FINAL)
    tally: dict[str, Any] = {pid: {"months": m} for pid, m in want.summaries.items()}
    stale = copy.deepcopy(tally["pat-1"])
    stale["months"][0]["qualifying_minutes"] = 40
    got = figures(stream_of(want), want, tally={**tally, "pat-1": stale})
    assert (got.tally_checked, got.tally_differ) == (2, 1)
    assert figures(stream_of(want), want, tally={**tally, "pat-2": None}).tally_differ == 1


def test_a_month_closed_mid_stream_agrees_with_replay_closing_at_the_end() -> None:
    """The kill scenario closes March while input flows; each partition meets that close at
    its own point. The oracle closes only at the end: this is why that is the same result."""
    spec = SimulationSpec(patients=120, staff=8, start_month="2026-03", months=2, seed=5)
    events = list(generate(spec))
    mid = MonthCloseCommand.model_validate(
        {
            "command_type": "month_close",
            "command_id": "mid",
            "mode": "due",
            "as_of": datetime(2026, 4, 6, 12, tzinfo=UTC).isoformat(),
        }
    )
    tally = LocalTally()
    stream: dict[str, list[dict[str, Any]]] = defaultdict(list)
    closed_mid = False
    for i, e in enumerate(events):
        outs = []
        if not closed_mid and e.at >= mid.as_of.timestamp():
            outs += tally.close(mid)
            closed_mid = True
        outs += tally.feed(e.value, Source("t", 0, i)).outputs
        for o in outs:
            stream[output_name(o.kind)].append(json.loads(o.to_json()))
    for o in tally.close(FINAL):
        stream[output_name(o.kind)].append(json.loads(o.to_json()))
    want = replay([e.value for e in events], FINAL)
    assert closed_mid
    revisions = [r["data"]["revision"] for r in stream["billing_record"]]
    assert max(revisions) >= 1, "late logs re-issued some March records after the mid close"
    assert figures(stream, want).failing() == {}


def test_rounds_keep_each_patients_order_and_hold_one_event_per_patient() -> None:
    events = [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"a", b"3"), (b"b", b"2"), (b"c", b"1")]
    got = rounds(events)
    assert got == [[0, 1, 5], [2, 4], [3]]
    for r in got:
        assert len({events[i][0] for i in r}) == len(r)
