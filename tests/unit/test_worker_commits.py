"""The worker's commits are atomic with its batches (``TallyWorker._guard_commits``), on faust's
own consumer, without a broker (only the transactional commit is replaced by a record).

A commit that faust starts on its own (the commit timer, a rebalance, ``broker_commit_every``)
while a batch is in flight must wait for the batch, and then commit the offsets acked *by then*:
offsets read before the batch ended, committed in the transaction that holds the batch's
writes, would seal those writes with offsets that say the batch is still to come.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from faust.types import TP

from ccm_core.contracts import MonthCloseCommand
from ccm_core.settings import Settings
from ccm_worker.app import COLLECTOR_OFF_EVENTS, HEAP_FULL_COLLECTION_SECONDS, TallyWorker
from tests.unit.test_faust_fixes import TOPIC, TP0, ack, committed_at


def bare_worker(tmp_path: Path) -> TallyWorker:
    """The worker as built for a run, without a broker (nothing here connects)."""
    return TallyWorker(Settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp_path))


def worker(tmp_path: Path) -> tuple[TallyWorker, list[dict[Any, int]]]:
    w = bare_worker(tmp_path)
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


def test_a_partition_fetched_past_its_end_counts_as_drained_and_is_read_again_once(
    tmp_path: Path,
) -> None:
    """The monitor takes a committed offset below the end for a drained partition (a
    transactional producer's commit marker, an aborted transaction) when the fetch is past the
    end and the agent has everything it got committed; and reads such a partition again from
    that committed offset once, when two ticks saw it so: a record fetched but never
    delivered to the agent is then delivered instead of staying hidden."""

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
        seen = [await w._without_marker_tails({TP0: 6})]  # drained, maybe on its way
        seen.append(await w._without_marker_tails({TP0: 6}))  # still so: read again from 5
        seen.append(await w._without_marker_tails({TP0: 6}))  # read again already: drained
        w._delivered[TP0] = 7  # the agent got records up to 6, all committed; 7.. no record
        consumer._committed_offset[TP0] = 7
        fetched[0] = 20
        seen.append(await w._without_marker_tails({TP0: 20}))  # a new committed offset
        seen.append(await w._without_marker_tails({TP0: 20}))  # read again from 7
        seen.append(await w._without_marker_tails({TP0: 20}))
        w._delivered[TP0] = 9  # the agent got a record the group has not committed: in flight
        seen.append(await w._without_marker_tails({TP0: 20}))
        return seen, sought

    seen, sought = run(main())
    assert seen == [{TP0: 5}] * 3 + [{TP0: 7}] * 3 + [{TP0: 20}]
    assert sought == [(TP0, 5), (TP0, 7)]


def test_a_partition_whose_commits_stop_is_read_again_while_the_others_move(
    tmp_path: Path,
) -> None:
    """The stall watchdog looks at each partition: one whose committed offset stays below its
    end for half the limit is read again from it, even while other partitions commit."""
    w, _ = worker(tmp_path)
    consumer: Any = w.app.consumer
    w.is_ready = lambda: True  # type: ignore[method-assign]
    w._assigned_at = w._last_unready = 0.0  # assigned and ready long ago
    stuck, moving = TP0, TP(TOPIC, 1)
    consumer._committed_offset[stuck] = 5
    consumer._committed_offset[moving] = 100
    limit = w.settings.stall_exit_seconds
    w._last_committed[stuck] = (5, time.monotonic() - 0.6 * limit)
    w._last_committed[moving] = (90, time.monotonic() - 0.6 * limit)
    assert w._watchdog({stuck: 9, moving: 120}) == [stuck]
    w._refetched[stuck] = 5  # read again already at this offset: not twice
    assert w._watchdog({stuck: 9, moving: 130}) == []


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_recovery_probe_stops_quietly_when_the_worker_stops(tmp_path: Path) -> None:
    """A worker stopped during a recovery (scaled down, SIGTERM) must not log an error from
    the recovery probe, whose consumer thread and event loop are already gone."""
    from structlog.testing import capture_logs

    async def main() -> list[Any]:
        w, _ = worker(tmp_path)

        async def probe(app: Any) -> bool:
            cast(Any, w.app)._stopped.set()  # the worker began stopping meanwhile
            raise RuntimeError("Event loop is closed")

        w._recovery_probe = probe  # type: ignore[assignment]
        with capture_logs() as logs:
            await asyncio.wait_for(w._recovery_end(), timeout=5)
        return logs

    logs = run(main())
    assert [e for e in logs if e.get("log_level") == "error"] == []


def collector_during_sends(
    tmp_path: Path, batch: Callable[[TallyWorker], list[Any]]
) -> tuple[list[bool], bool, int]:
    """Process ``batch`` on a broker-less worker: whether the cyclic collector was on while
    its outputs were sent, whether it is on after, and how many objects are frozen after."""

    async def main() -> tuple[list[bool], bool, int]:
        w = bare_worker(tmp_path)
        during: list[bool] = []

        async def send_all(out: Any, forwards: Any) -> None:  # the broker's part
            during.append(gc.isenabled())

        w._send_all = send_all  # type: ignore[method-assign]
        gc.unfreeze()
        await w.process_batch(batch(w))
        return during, gc.isenabled(), gc.get_freeze_count()

    try:
        return asyncio.run(main())
    finally:
        gc.unfreeze()


def input_events(w: TallyWorker, count: int) -> list[Any]:
    return [
        SimpleNamespace(
            message=SimpleNamespace(
                topic=w.inputs[0], partition=0, offset=i, tp=TP(w.inputs[0], 0), key=b"p1",
                value=b"{}", timestamp=time.time(), headers=[],
            )
        )
        for i in range(count)
    ]  # fmt: skip


def test_the_collector_is_off_while_a_close_batch_is_built_and_sent_and_on_after(
    tmp_path: Path,
) -> None:
    """A close's outputs live until the batch is sent: the cyclic collector is off meanwhile
    (it walked the whole heap again and again for nothing), and on again once they are sent."""

    def close(w: TallyWorker) -> list[Any]:
        command = MonthCloseCommand(
            command_id="c1", mode="due", as_of=datetime.now(UTC), requested_by="test"
        )
        msg = SimpleNamespace(
            topic=w.control, partition=0, offset=0, tp=TP(w.control, 0), key=None,
            value=command.model_dump_json().encode(), timestamp=time.time(), headers=[],
        )  # fmt: skip
        return [SimpleNamespace(message=msg)]

    assert gc.isenabled()
    assert collector_during_sends(tmp_path, close)[:2] == ([False], True)


def test_the_collector_is_off_while_a_backlog_batch_is_built_and_sent_and_on_after(
    tmp_path: Path,
) -> None:
    backlog = collector_during_sends(tmp_path, lambda w: input_events(w, COLLECTOR_OFF_EVENTS))
    assert backlog[:2] == ([False], True)
    quiet = collector_during_sends(tmp_path, lambda w: input_events(w, 10))
    assert quiet[:2] == ([True], True)  # a batch at a quiet time keeps the collector on


def test_the_heap_is_frozen_each_monitor_tick_and_collected_in_full_every_hour(
    tmp_path: Path,
) -> None:
    """Full collections walk every ledger (the tail of the latency): the monitor freezes the
    survivors of the young generations, and once an hour collects everything in full, so
    cyclic garbage that was frozen does not stay for good."""

    class Node:
        other: Any = None

    w = bare_worker(tmp_path)
    gc.unfreeze()
    try:
        w._freeze_heap()
        assert gc.get_freeze_count() > 0
        gc.unfreeze()
        w._pause_collector()  # a close batch in flight: not now
        w._freeze_heap()
        assert gc.get_freeze_count() == 0
        w._resume_collector()

        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle, frozen while still in use
        gone = weakref.ref(a)
        gc.freeze()
        del a, b
        w._freeze_heap()  # a tick within the hour: the frozen cycle stays
        assert gone() is not None
        w._heap_collected_at -= HEAP_FULL_COLLECTION_SECONDS
        w._freeze_heap()  # the hourly full collection
        assert gone() is None
        assert gc.get_freeze_count() > 0  # and frozen again
    finally:
        gc.unfreeze()


def test_recovered_ledgers_are_frozen_out_of_the_collectors_reach(tmp_path: Path) -> None:
    """A recovery builds every ledger of its partitions before the monitor's first tick: each
    applied changelog batch is frozen at once, or the collector walks them all again and again."""
    w = bare_worker(tmp_path)
    gc.unfreeze()
    try:
        w.table.apply_changelog_batch([])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_what_a_batch_leaves_behind_is_frozen_out_of_the_collectors_reach(
    tmp_path: Path,
) -> None:
    """In a backlog the table grows by thousands of ledgers a second: each batch's survivors
    are frozen when it ends, or full collections walk them all again before the next tick."""
    assert collector_during_sends(tmp_path, lambda w: input_events(w, 1))[2] > 0


def test_a_batch_cycles_record_batches_are_sent_without_lingering() -> None:
    """aiokafka sends an open record batch only after ``linger_ms``; the worker's batches are
    complete when submitted, so each is closed: ready to send at once, never appended to."""
    from aiokafka import AIOKafkaProducer, TopicPartition

    from ccm_worker.app import _send_batches

    async def scenario() -> dict[tuple[str, int], tuple[int, float | None]]:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", linger_ms=2)
        queued = producer._message_accumulator

        class Submit:  # send_batch without a broker: the batch goes into aiokafka's queue
            create_batch = producer.create_batch

            async def send_batch(self, batch: Any, topic: str, partition: int) -> Any:
                return await queued.add_batch(batch, TopicPartition(topic, partition), 1.0)

        messages = [("out", p % 2, b"k", b"v" * 10, None) for p in range(5)]
        await _send_batches(Submit(), messages)
        lingering = {
            (tp.topic, tp.partition): (b.record_count, b.remaining_linger())
            for tp, pending in queued._batches.items()
            for b in pending
        }
        await producer.stop()
        return lingering

    assert run(scenario()) == {("out", 0): (3, None), ("out", 1): (2, None)}
