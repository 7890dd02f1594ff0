"""The status feed: each changed patient-month's current tally, and its per-batch coalescing.

A care manager's worklist is built from these outputs alone (the compacted status topic), so
the tests check what the page shows: minutes, codes reached, the next threshold and the
minutes to it, the payer's thresholds for the progress bar, closed or not.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from ccm_core.contracts import StatusThreshold, TallyStatus
from ccm_core.tally import Output, coalesce_status, coalesce_status_by, status_key
from tests.unit.unit_helpers import (
    CLOSE_AT,
    MARCH,
    PATIENT,
    PRACTICE,
    Harness,
    local,
    log,
    void,
)


def statuses(outputs: list[Output]) -> list[TallyStatus]:
    found = [o.envelope.data for o in outputs if o.kind == "status"]
    assert all(isinstance(s, TallyStatus) for s in found)
    return [s for s in found if isinstance(s, TallyStatus)]


def last_status(harness: Harness) -> TallyStatus:
    return statuses(harness.outputs)[-1]


def test_counted_log_emits_the_months_status_keyed_by_patient_practice_month() -> None:
    harness = Harness()
    [processed] = harness.feed(log("a", local(3), 45))
    [out] = [o for o in processed.outputs if o.kind == "status"]
    assert out.key == status_key(PATIENT, PRACTICE, MARCH) == f"{PATIENT}/{PRACTICE}/{MARCH}"
    status = out.envelope.data
    assert isinstance(status, TallyStatus)
    assert (status.patient_id, status.practice_id, status.service_month) == (
        PATIENT,
        PRACTICE,
        MARCH,
    )
    assert (status.payer, status.time_zone) == ("cms", "America/Detroit")
    assert status.qualifying_minutes == 45
    assert status.codes_reached == []
    assert status.next_threshold == StatusThreshold(code="99487", unit=1, minutes=60, reached=False)
    assert status.minutes_to_next_threshold == 15
    assert (status.closed, status.revision, status.billable, status.logs) == (False, None, None, 1)
    assert out.envelope.type == "org.ccmtally.tally-status.v1"


def test_status_follows_thresholds_and_shows_the_next_add_ons() -> None:
    harness = Harness()
    harness.feed(log("a", local(3), 60), log("b", local(4), 35))
    status = last_status(harness)
    assert status.qualifying_minutes == 95
    assert [(c.code, c.units) for c in status.codes_reached] == [("99487", 1), ("99489", 1)]
    assert [(t.code, t.unit, t.minutes, t.reached) for t in status.thresholds] == [
        ("99487", 1, 60, True),
        ("99489", 1, 90, True),
        ("99489", 2, 120, False),
        ("99489", 3, 150, False),
    ]
    assert status.next_threshold is not None
    assert (status.next_threshold.code, status.next_threshold.unit) == ("99489", 2)
    assert status.minutes_to_next_threshold == 25


def test_status_uses_the_payers_profile_bcbsm_entry_at_31() -> None:
    harness = Harness()
    harness.feed(log("a", local(3), 20, payer="bcbsm"))
    status = last_status(harness)
    assert status.payer == "bcbsm"
    assert status.thresholds[0].minutes == 31
    assert status.minutes_to_next_threshold == 11


def test_status_at_the_payers_cap_has_no_next_threshold() -> None:
    """Priority Health pays at most two 99489 units: at 120 minutes nothing is next."""
    harness = Harness()
    harness.feed(log("a", local(3), 60, payer="priority_health"))
    harness.feed(log("b", local(4), 60, payer="priority_health"))
    status = last_status(harness)
    assert [(c.code, c.units) for c in status.codes_reached] == [("99487", 1), ("99489", 2)]
    assert status.next_threshold is None
    assert status.minutes_to_next_threshold is None
    assert [t.minutes for t in status.thresholds] == [60, 90, 120]
    assert all(t.reached for t in status.thresholds)


def test_excluded_and_voided_logs_update_the_status_duplicates_and_rejections_do_not() -> None:
    harness = Harness()
    harness.feed(log("a", local(3), 60))
    excluded = harness.feed_one(log("x", local(4), 30, activity="benefit_check"))
    assert statuses(excluded.outputs)[-1].logs == 2
    assert statuses(excluded.outputs)[-1].qualifying_minutes == 60
    assert statuses(harness.feed_one(log("a", local(3), 60)).outputs) == []  # duplicate
    assert statuses(harness.feed_one(b"not json").outputs) == []
    voided = harness.feed_one(void("v", "a", recorded_at=local(5)))
    status = statuses(voided.outputs)[-1]
    assert (status.qualifying_minutes, status.codes_reached) == (0, [])
    assert status.minutes_to_next_threshold == 60


def test_close_and_late_log_update_closed_and_revision() -> None:
    harness = Harness()
    harness.feed(log("a", local(3), 50))
    closing = harness.close()
    status = statuses(closing)[-1]
    assert (status.closed, status.revision) == (True, 0)
    late = harness.feed_one(log("late", local(20), 15, recorded_at=CLOSE_AT + timedelta(days=1)))
    status = statuses(late.outputs)[-1]
    assert (status.closed, status.revision, status.qualifying_minutes) == (True, 1, 65)
    assert [c.code for c in status.codes_reached] == ["99487"]


def test_status_shows_the_month_when_it_was_emitted_not_later_changes() -> None:
    """Status outputs are built lazily (only the published ones are), from values copied
    when they were emitted: a later change of the ledger does not leak into an earlier one."""
    harness = Harness()
    first = harness.feed_one(log("a", local(3), 20))
    harness.feed(log("b", local(4), 50))
    [early] = statuses(first.outputs)
    assert early.qualifying_minutes == 20
    assert last_status(harness).qualifying_minutes == 70


def test_status_ids_differ_per_change_and_repeat_per_input() -> None:
    one, two = Harness(), Harness()
    for harness in (one, two):
        harness.feed(log("a", local(3), 20), log("b", local(4), 20), log("c", local(5), 20))
    ids = [o.envelope.id for o in one.outputs if o.kind == "status"]
    assert len(ids) == len(set(ids)) == 3
    assert ids == [o.envelope.id for o in two.outputs if o.kind == "status"]


def test_coalesce_keeps_the_last_status_per_key_in_its_place() -> None:
    harness = Harness()
    harness.feed(
        log("a", local(3), 40),
        log("b", local(4), 30),  # reaches 99487: a threshold output before its status
        log("c", local(3), 30, patient_id="pat-2"),
        log("d", local(5), 5),
    )
    batch = harness.outputs
    kept = coalesce_status(batch)
    assert [o.kind for o in kept] == ["threshold", "status", "status"]
    assert [o.key for o in kept if o.kind == "status"] == [
        f"pat-2/{PRACTICE}/{MARCH}",
        f"{PATIENT}/{PRACTICE}/{MARCH}",
    ]
    assert statuses(kept)[-1].qualifying_minutes == 75
    assert kept[1] is batch[3] and kept[2] is batch[-1]


def test_coalesce_by_works_on_partition_output_pairs() -> None:
    harness = Harness()
    harness.feed(log("a", local(3), 40), log("b", local(4), 30))
    pairs = [(7, o) for o in harness.outputs]
    kept = coalesce_status_by(pairs, lambda pair: pair[1])
    assert [(p, o.kind) for p, o in kept] == [(7, "threshold"), (7, "status")]


def _fake(kind: str, key: str, n: int) -> Output:
    """An output whose envelope is never built (coalescing must not need it)."""

    def build() -> TallyStatus:  # pragma: no cover - must not be called
        raise AssertionError(f"envelope of {kind} {key} {n} built")

    return Output(kind, key, build=build)  # type: ignore[arg-type]


@given(
    st.lists(
        st.tuples(st.sampled_from(["status", "threshold", "billing_record"]), st.integers(0, 4)),
        max_size=40,
    )
)
def test_coalesce_property(items: list[tuple[str, int]]) -> None:
    """Other outputs stay in order; each status key keeps exactly its last output; no
    envelope is built."""
    outputs = [_fake(kind, f"k{key}", n) for n, (kind, key) in enumerate(items)]
    kept = coalesce_status(outputs)
    assert [o for o in kept if o.kind != "status"] == [o for o in outputs if o.kind != "status"]
    last = {o.key: o for o in outputs if o.kind == "status"}
    kept_status = [o for o in kept if o.kind == "status"]
    assert len(kept_status) == len(last)
    assert all(last[o.key] is o for o in kept_status)
    # relative order of everything kept is the input's order
    positions = [next(i for i, o in enumerate(outputs) if o is k) for k in kept]
    assert positions == sorted(positions)


def test_status_topic_is_named_prefixed_and_created_compacted() -> None:
    from ccm_core.settings import Settings, Topics
    from ccm_worker.topics import topic_plan

    assert Topics().output_topic("status") == "ccm.tally-status.v1"
    assert Topics.prefixed("t1").output_topic("status") == "t1.tally-status"
    settings = Settings(topics=Topics.prefixed("t1"), partitions=3)
    plan, compacted = topic_plan(settings)
    assert plan["t1.tally-status"] == 3  # co-partitioned: a status goes to its patient's
    assert "t1.tally-status" in compacted
    assert "t1.billing-record" not in compacted


@given(
    payer=st.sampled_from(["cms", "bcbsm", "priority_health", "medicaid"]),
    chunks=st.lists(st.integers(1, 90), min_size=1, max_size=6),
    close=st.booleans(),
    offset_minutes=st.sampled_from([0, -300, -240, 330, 60]),
    micro=st.sampled_from([0, 120000, 5]),
)
def test_status_fast_json_is_the_models_json(
    payer: str, chunks: list[int], close: bool, offset_minutes: int, micro: int
) -> None:
    """``to_json`` of a status (written without building models) is byte for byte the JSON
    of its pydantic envelope, for every payer, level, cap, close state and time offset."""
    from datetime import timezone

    harness = Harness()
    tz = timezone(timedelta(minutes=offset_minutes))
    for n, size in enumerate(chunks):
        start = local(2 + n)
        recorded = (start + timedelta(minutes=size, hours=1)).astimezone(tz)
        harness.feed(log(f"e{n}", start, size, payer=payer, recorded_at=recorded))
    if close:
        harness.close(as_of=CLOSE_AT.replace(microsecond=micro).astimezone(tz))
    found = [o for o in harness.outputs if o.kind == "status"]
    assert found
    for out in found:
        fast = out.to_json()  # before the envelope is built
        assert fast == out.envelope.model_dump_json()
        assert TallyStatus.model_validate_json(fast.split('"data":', 1)[1][:-1]) == (
            out.envelope.data
        )
