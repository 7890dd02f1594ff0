"""Retention: closed months are archived after their timely-filing window (state stays bounded)
and a log for an archived month is rejected instead of opening the month again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ccm_core import codec
from ccm_core.config import CoreConfig, PracticeSettings
from ccm_core.contracts import Outcome, Reason
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

# March 2026 (America/Detroit): filing window 12 months -> March 2027, whose close deadline is
# 1 April 2027 00:00 EDT + 5 grace days = 6 April 2027 04:00 UTC.
RETAINED_UNTIL = datetime(2027, 4, 6, 4, 0, tzinfo=UTC)


def closed_march() -> Harness:
    harness = Harness()
    harness.feed(
        log("a", local(10), 45),
        log("b", local(11), 30),
        log("c", local(12), 20),
        void("v-c", "c"),
        log("april", local(3, month=4), 30, recorded_at=local(3, 12, month=4)),
    )
    harness.close()
    return harness


def test_retention_deadline_is_the_close_deadline_of_the_month_a_filing_window_later() -> None:
    harness = closed_march()
    ledger = harness.local.ledgers[PATIENT]
    assert harness.engine.retention_deadline(ledger.months[(PRACTICE, MARCH)]) == RETAINED_UNTIL


def test_closed_month_is_archived_once_its_filing_window_and_grace_have_passed() -> None:
    harness = closed_march()
    ledger = harness.local.ledgers[PATIENT]
    engine = harness.engine
    assert engine.prune(ledger, RETAINED_UNTIL - timedelta(seconds=1)) == 0
    assert (PRACTICE, MARCH) in ledger.months
    assert engine.prune(ledger, RETAINED_UNTIL) == 1
    assert (PRACTICE, MARCH) not in ledger.months
    assert ledger.archived == {(PRACTICE, MARCH): 0}
    assert "v-c" not in ledger.voids  # the voids of its logs go with it
    # April is open (never closed): it is kept whatever its age
    assert (PRACTICE, "2026-04") in ledger.months


def test_open_month_is_never_archived() -> None:
    harness = Harness()
    harness.feed(log("a", local(10), 60))
    ledger = harness.local.ledgers[PATIENT]
    assert harness.engine.prune(ledger, RETAINED_UNTIL + timedelta(days=3650)) == 0
    assert (PRACTICE, MARCH) in ledger.months


def test_log_for_an_archived_month_is_rejected_and_changes_nothing() -> None:
    harness = closed_march()
    ledger = harness.local.ledgers[PATIENT]
    harness.engine.prune(ledger, RETAINED_UNTIL)
    # a redelivery of an original log, and a late log recorded in time but delivered now
    for event in (log("a", local(10), 45), log("new", local(20), 60, recorded_at=CLOSE_AT)):
        result = harness.feed_one(event)
        assert (result.outcome, result.reason) == (Outcome.REJECTED, Reason.MONTH_ARCHIVED)
        assert [o.kind for o in result.outputs] == ["rejected"]  # dead-lettered, nothing billed
    assert [r.revision for r in harness.records(month=MARCH)] == [0]
    assert (PRACTICE, MARCH) not in ledger.months


def test_archiving_follows_each_practices_filing_window() -> None:
    config = CoreConfig(practices={PRACTICE: PracticeSettings(timely_filing_months=6)})
    harness = Harness(config)
    harness.feed(log("a", local(10), 60))
    harness.close()
    ledger = harness.local.ledgers[PATIENT]
    # March + 6 months = September 2026, closed 6 October 2026 04:00 UTC
    assert harness.engine.prune(ledger, datetime(2026, 10, 6, 3, 59, tzinfo=UTC)) == 0
    assert harness.engine.prune(ledger, datetime(2026, 10, 6, 4, 0, tzinfo=UTC)) == 1


def test_archived_months_survive_the_changelog_codec() -> None:
    harness = closed_march()
    ledger = harness.local.ledgers[PATIENT]
    harness.engine.prune(ledger, RETAINED_UNTIL)
    restored = codec.loads(codec.dumps(ledger))
    assert restored.archived == {(PRACTICE, MARCH): 0}
    assert set(restored.months) == {(PRACTICE, "2026-04")}


def test_ledgers_written_before_archiving_existed_still_load() -> None:
    harness = closed_march()
    ledger = harness.local.ledgers[PATIENT]
    layout_1 = codec.ledger_to_dict(ledger)
    layout_1["v"] = 1
    del layout_1["ar"]
    restored = codec.ledger_from_dict(layout_1)
    assert restored.archived == {}
    assert set(restored.months) == set(ledger.months)
