"""The recovery fixes of ``ccm_worker.faust_fixes`` that exactly_once needs, on faust's objects.

``recovery_end``: a recovery starts with its end signal cleared (a recovery that started while
the previous one's end signal was still set ended at once, having read nothing).
``lso_highwaters`` has a broker test (tests/integration/test_faust_txn_fixes.py): the bug is in
what a real read_committed consumer answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import faust
import pytest

from ccm_worker import faust_fixes


@pytest.fixture
def app() -> Iterator[faust.App]:
    yield faust.App("recovery-fixes-test", broker="kafka://127.0.0.1:1", store="memory://")


def started_with_stale_end_signal(app: faust.App) -> bool:
    """A recovery ended (signal set); the next one starts before faust's changelog loop got
    round to clearing it: is the new recovery's end signal still set?"""

    async def main() -> bool:
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        recovery.signal_recovery_end.set()  # the previous recovery is over
        recovery._set_recovery_started()  # a rebalance starts the next one
        return bool(recovery.signal_recovery_end.is_set())

    return asyncio.run(main())


def test_a_new_recovery_does_not_inherit_the_previous_end_signal(app: faust.App) -> None:
    with faust_fixes.fixes_only(*faust_fixes.FIXES):
        assert not started_with_stale_end_signal(app)


def test_unpatched_faust_starts_a_recovery_already_ended(app: faust.App) -> None:
    # pins the bug in the pinned faust: without the fix the new recovery is "done" at once
    with faust_fixes.fixes_only(*(set(faust_fixes.FIXES) - {"recovery_end"})):
        assert started_with_stale_end_signal(app)


# --- RecoveryEndProbe ----------------------------------------------------------------------------
CHANGELOG = faust.types.TP("probe-test-ledgers-changelog", 0)


def probe_looks(fetch_in_transit: bool, slurp_waiting: bool = True) -> list[bool]:
    """A transactional recovery of one changelog partition whose last records (offsets 8, 9) are
    followed by a commit marker at 10 (highwater 10): the recovery applied up to 7 and aiokafka
    has fetched past the highwater. Three looks of the probe; before the second, the fetch loop
    starts a fetch, and it finishes it (hands its records over) before the third unless
    ``fetch_in_transit``."""

    async def main() -> list[bool]:
        app = faust.App(
            "probe-test", broker="kafka://127.0.0.1:1", store="memory://",
            processing_guarantee="exactly_once",
        )  # fmt: skip
        app.in_worker = True  # what `faust worker` sets: transactions are on
        recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
        consumer: Any = app.consumer
        recovery.in_recovery = True
        recovery.active_highwaters[CHANGELOG] = 10
        recovery.active_offsets[CHANGELOG] = 7
        queue = app.tables.changelog_queue  # type: ignore[attr-defined]
        slurp = asyncio.ensure_future(queue.get()) if slurp_waiting else None
        await asyncio.sleep(0)  # faust's changelog loop waits on the queue

        async def position(tp: Any) -> int:
            return 11

        consumer.position = position
        marks = faust_fixes.offset_marks(consumer)
        probe = faust_fixes.RecoveryEndProbe()
        looks = [await probe(app)]
        marks.fetches_started += 1  # the fetch loop's next fetch starts after the first look
        looks.append(await probe(app))
        if not fetch_in_transit:
            marks.fetches_finished = marks.fetches_started
        looks.append(await probe(app))
        if slurp is not None:
            slurp.cancel()
        ended = recovery.signal_recovery_end.is_set()
        assert ended == looks[-1] and recovery.in_recovery == (not ended)
        return looks

    with faust_fixes.fixes_only(*faust_fixes.FIXES):
        return asyncio.run(main())


def test_the_probe_ends_a_recovery_left_with_only_a_commit_marker() -> None:
    assert probe_looks(fetch_in_transit=False) == [False, False, True]


def test_the_probe_waits_while_a_fetch_from_before_its_first_look_is_in_transit() -> None:
    # the records 8 and 9 may be between aiokafka (position already 11) and the queue
    assert probe_looks(fetch_in_transit=True) == [False, False, False]


def test_the_probe_waits_while_the_changelog_loop_holds_a_record() -> None:
    # the loop took a record out of the queue and has not yet recorded its offset
    assert probe_looks(fetch_in_transit=False, slurp_waiting=False) == [False, False, False]
