"""The recovery fixes of ``ccm_worker.faust_fixes`` that exactly_once needs, on faust's objects.

``recovery_end``: a recovery starts with its end signal cleared (a recovery that started while
the previous one's end signal was still set ended at once, having read nothing).
``lso_highwaters`` has a broker test (tests/integration/test_faust_txn_fixes.py): the bug is in
what a real read_committed consumer answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

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
