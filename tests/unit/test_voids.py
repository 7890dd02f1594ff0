"""Rule 5: voids and corrections. A void references the event id it cancels; a correction is
a void plus a new log; a void that arrives before its log cancels the log when it comes.
Rule 1: a threshold is revoked when voids drop the total below it."""

from __future__ import annotations

from ccm_core.contracts import Outcome, VoidReason
from tests.unit.unit_helpers import Harness, lines_of, local, log, void


def test_rule_5_void_after_its_log_revokes_the_threshold() -> None:
    """Rules 1/5: 40 + 20 = 60 reaches 99487; voiding the 20-minute log revokes it."""
    harness = Harness()
    harness.feed(log("a", local(10), 40), log("b", local(11), 20))
    [reached] = harness.thresholds()
    assert (reached.kind, reached.code, reached.triggering_event_id) == ("reached", "99487", "b")

    result = harness.feed_one(void("x", "b", recorded_at=local(12)))
    assert result.outcome is Outcome.VOIDED
    revoked = harness.thresholds()[-1]
    assert (revoked.kind, revoked.code, revoked.unit) == ("revoked", "99487", 1)
    assert revoked.triggering_event_id == "x"
    assert revoked.qualifying_minutes == 40

    harness.close_all()
    record = harness.record()
    assert record.qualifying_minutes == 40
    assert record.lines == [] and not record.billable
    [voided] = [line for line in record.logs if line.event_id == "b"]
    assert (voided.status, voided.voided_by, voided.void_reason) == (
        "voided",
        "x",
        VoidReason.ENTERED_IN_ERROR,
    )
    assert record.contributing_event_ids == ["a"]
    assert record.excluded_minutes == 0  # voided minutes are not "excluded" minutes


def test_rule_5_void_that_drops_only_an_addon_revokes_only_that_unit() -> None:
    """Rule 1: 95 -> void 10 -> 85: 99489 unit 1 revoked, 99487 kept."""
    harness = Harness()
    harness.feed(log("a", local(10), 60), log("b", local(11), 25), log("c", local(12), 10))
    harness.feed(void("x", "c", recorded_at=local(13)))
    revoked = [(t.code, t.unit) for t in harness.thresholds() if t.kind == "revoked"]
    assert revoked == [("99489", 1)]
    harness.close_all()
    assert lines_of(harness.record()) == {"99487": 1}


def test_rule_5_void_before_its_log_cancels_the_log_when_it_comes() -> None:
    """Rule 5: the void arrives first; the log arrives voided and never counts."""
    harness = Harness()
    early = harness.feed_one(void("x", "b", recorded_at=local(11, 12)))
    assert early.outcome is Outcome.VOIDED
    harness.feed(log("a", local(10), 40))
    late_log = harness.feed_one(log("b", local(11), 20))
    assert late_log.outcome is Outcome.VOIDED
    assert harness.thresholds() == []  # 60 was never reached
    harness.close_all()
    record = harness.record()
    assert record.qualifying_minutes == 40
    [voided] = [line for line in record.logs if line.event_id == "b"]
    assert (voided.status, voided.voided_by) == ("voided", "x")


def test_rule_5_void_before_or_after_gives_the_same_record() -> None:
    """Rule 5: the billing record does not depend on whether the void came first."""
    events = [log("a", local(10), 50), log("b", local(11), 20), log("c", local(12), 15)]
    cancel = void("x", "b", recorded_at=local(13))

    after, before = Harness(), Harness()
    after.feed(*events, cancel)
    before.feed(cancel, *events)
    after.close_all()
    before.close_all()
    assert after.record().model_dump() == before.record().model_dump()
    assert after.record().qualifying_minutes == 65


def test_rule_5_correction_is_void_plus_new_log() -> None:
    """Rule 5: a 30-minute entry corrected to 45 minutes: void + new log -> 45 counted."""
    harness = Harness()
    harness.feed(log("orig", local(10), 30), log("other", local(12), 20))
    harness.feed(
        void("fix", "orig", reason="correction", recorded_at=local(13)),
        log("orig-v2", local(10), 45, recorded_at=local(13, 11)),
    )
    harness.close_all()
    record = harness.record()
    assert record.qualifying_minutes == 65
    assert lines_of(record) == {"99487": 1}
    assert record.contributing_event_ids == ["orig-v2", "other"]
    [old] = [line for line in record.logs if line.event_id == "orig"]
    assert (old.status, old.void_reason) == ("voided", VoidReason.CORRECTION)


def test_rule_5_redelivered_void_is_a_duplicate() -> None:
    """Rule 5: an identical redelivery of a void counts once and is not an error."""
    harness = Harness()
    cancel = void("x", "a", recorded_at=local(12))
    harness.feed(log("a", local(10), 40))
    first, again = harness.feed(cancel, cancel)
    assert first.outcome is Outcome.VOIDED
    assert again.outcome is Outcome.DUPLICATE
    assert [o for o in harness.outputs if o.kind == "rejected"] == []


def test_rule_5_void_reusing_a_log_event_id_is_event_id_conflict() -> None:
    """Rule 5: an event id already used by a log cannot be reused by a void."""
    harness = Harness()
    harness.feed(log("a", local(10), 40), log("b", local(11), 40))
    clash = harness.feed_one(void("a", "b"))
    assert clash.outcome is Outcome.REJECTED
    assert clash.reason is not None and clash.reason.value == "event_id_conflict"
    harness.close_all()
    assert harness.record().qualifying_minutes == 80


def test_rule_5_voiding_an_excluded_log_changes_no_threshold() -> None:
    """Rule 5: voiding an excluded log moves it from excluded to voided; totals unchanged."""
    harness = Harness()
    harness.feed(log("a", local(10), 60), log("pa", local(11), 20, activity="prior_authorization"))
    harness.feed(void("x", "pa", recorded_at=local(12)))
    assert [t.kind for t in harness.thresholds()] == ["reached"]
    harness.close_all()
    record = harness.record()
    assert record.excluded_minutes == 0
    assert lines_of(record) == {"99487": 1}


def test_rule_1_reached_again_after_revoke_is_a_new_occurrence() -> None:
    """Rule 1: a threshold revoked then reached again is announced again, occurrence 2,
    with a different deterministic envelope id."""
    harness = Harness()
    harness.feed(log("a", local(10), 60))
    harness.feed(void("x", "a", recorded_at=local(11)))
    harness.feed(log("b", local(12), 60))
    events = [(t.kind, t.occurrence) for t in harness.thresholds()]
    assert events == [("reached", 1), ("revoked", 1), ("reached", 2)]
    ids = [o.envelope.id for o in harness.outputs if o.kind == "threshold"]
    assert len(set(ids)) == 3


def test_rule_5_void_from_another_practice_has_the_same_effect_before_or_after_its_log() -> None:
    """Rule 5: a void that arrives before its log has the effect it would have had after it.
    The engine rejects (practice_mismatch) a void naming another practice's log when the log
    is already there; the same void arriving first must not silently cancel the log."""
    counted = log("a", local(10), 60)
    foreign = void("x", "a", practice_id="other-practice", recorded_at=local(12))

    after, before = Harness(), Harness()
    after.feed(counted, foreign)
    before.feed(foreign, counted)
    after.close_all()
    before.close_all()

    def outcome(harness: Harness) -> tuple[object, ...]:
        record = harness.record()
        return (
            lines_of(record),
            record.qualifying_minutes,
            [(line.event_id, line.status) for line in record.logs],
            [(r.event_id, r.reason.value) for r in record.rejected],
        )

    assert outcome(after) == ({"99487": 1}, 60, [("a", "counted")], [("x", "practice_mismatch")])
    assert outcome(before) == outcome(after)
