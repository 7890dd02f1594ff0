"""The worker's commits are atomic with its batches (``TallyWorker._guard_commits``), on faust's
own consumer, without a broker (only the transactional commit is replaced by a record).

A commit that faust starts on its own (the commit timer, a rebalance, ``broker_commit_every``)
while a batch is in flight must wait for the batch, and then commit the offsets acked *by then*:
offsets read before the batch ended, committed in the transaction that holds the batch's
writes, would seal those writes with offsets that say the batch is still to come.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ccm_core.settings import Settings
from ccm_worker.app import TallyWorker
from tests.unit.test_faust_fixes import TOPIC, TP0, ack, committed_at


def worker(tmp_path: Path) -> tuple[TallyWorker, list[dict[Any, int]]]:
    w = TallyWorker(Settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp_path))
    committed: list[dict[Any, int]] = []

    async def record(offsets: dict[Any, int], start_new_transaction: bool = True) -> bool:
        committed.append(dict(offsets))
        return True

    w._commit_transactions = record  # type: ignore[method-assign]  # the broker's part
    consumer: Any = w.app.consumer
    w.app.topics._acking_topics.add(TOPIC)  # type: ignore[attr-defined]  # the agent's topic
    consumer.assignment = lambda: {TP0}
    consumer.in_transaction = True  # as in a faust Worker with exactly_once (app.in_worker)
    committed_at(consumer, 0)  # the position faust's seek leaves for a group without commits
    w._guard_commits()
    return w, committed


def test_a_commit_started_during_a_batch_commits_the_offsets_acked_when_the_batch_ends(
    tmp_path: Path,
) -> None:
    async def main() -> list[dict[Any, int]]:
        w, committed = worker(tmp_path)
        consumer: Any = w.app.consumer
        ack(consumer, 0, 1, 2)  # batch k: processed, acked
        async with w._batch_lock:  # batch k+1 in flight (its writes join the open transaction)
            timer_commit = asyncio.create_task(consumer.commit())
            await asyncio.sleep(0.05)
            assert not committed, "a commit must wait for the batch in flight"
            ack(consumer, 3, 4)  # batch k+1 acked, still under the lock (as the agent does)
        await timer_commit
        return committed

    assert run(main()) == [{TP0: 5}]


def test_a_partition_fetched_past_its_end_with_nothing_delivered_is_read_again_once(
    tmp_path: Path,
) -> None:
    """The monitor takes a committed offset just below the end for a drained partition (a
    transactional producer's trailing commit marker) only once the partition has been read
    again from the committed offset: a record fetched but never delivered to the agent is
    then delivered, instead of the watchdog taking the partition for drained."""

    async def main() -> tuple[list[dict[Any, int]], list[tuple[Any, int]]]:
        w, _ = worker(tmp_path)
        consumer: Any = w.app.consumer
        sought: list[tuple[Any, int]] = []
        fetched = [6]  # the fetch position: past the end

        async def position(tp: Any) -> int:
            return fetched[0]

        async def seek(tp: Any, offset: int) -> None:
            sought.append((tp, offset))

        consumer.position, consumer.seek = position, seek
        w.is_ready = lambda: True  # type: ignore[method-assign]
        consumer._committed_offset[TP0] = 5
        ends = {TP0: 6}
        seen = [await w._without_marker_tails(ends)]  # read again from 5: still waiting
        seen.append(await w._without_marker_tails(ends))  # nothing came: a marker, drained
        w._delivered[TP0] = 5  # after a delivery, drained without reading again
        consumer._committed_offset[TP0] = 7
        fetched[0] = 8
        seen.append(await w._without_marker_tails({TP0: 8}))
        return seen, sought

    seen, sought = run(main())
    assert seen == [{TP0: 6}, {TP0: 5}, {TP0: 7}]
    assert sought == [(TP0, 5)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)
