"""The faust-streaming fixes (``ccm_worker.faust_fixes``), on faust's and mode's own objects.

No broker: a real ``faust.App`` builds its real aiokafka ``Consumer`` and ``Recovery`` without
connecting; only the calls that would reach the broker (the fetch, the seek, the committed
offsets) are replaced, on the instance, by records of what was asked.

Every test runs with all fixes applied, except those named in ``CCM_FAUST_FIXES_OFF``
(comma-separated): ``CCM_FAUST_FIXES_OFF=commit_offset pytest tests/unit/test_faust_fixes.py``
shows which tests fail without that fix. ``test_unpatched_*`` tests pin the bug itself in the
pinned faust (they run with every fix off), so a faust that no longer has it is noticed.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import faust
import pytest
from faust.transport.consumer import Fetcher
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from mode.utils.queues import FlowControlEvent

from ccm_worker import faust_fixes
from ccm_worker.faust_fixes import FIXES, ORIGINALS, PINNED, offset_marks

T = TypeVar("T")
TOPIC = "ccm.timelog.v1"
TP0 = TP(TOPIC, 0)
OFF = {name.strip() for name in os.environ.get("CCM_FAUST_FIXES_OFF", "").split(",") if name}


@pytest.fixture(autouse=True)
def fixes() -> Iterator[None]:
    unknown = OFF - set(FIXES)
    assert not unknown, f"CCM_FAUST_FIXES_OFF names unknown fixes {unknown}"
    with faust_fixes.fixes_only(*(set(FIXES) - OFF)):
        yield


def run(make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await make()

    return asyncio.run(main())


def new_app() -> faust.App:
    return faust.App("fixes-test", broker="kafka://127.0.0.1:1", store="memory://")


def new_consumer(app: faust.App) -> Any:
    consumer = app.consumer
    # What the conductor does when an agent subscribes to TOPIC: acks are tracked for it.
    app.topics._acking_topics.add(TOPIC)  # type: ignore[attr-defined]
    return consumer


def message(offset: int, generation: int = 0, tp: TP = TP0) -> ConsumerMessage:
    return ConsumerMessage(
        tp.topic, tp.partition, offset, 0.0, 0, None, b"p1", b"{}", None, tp=tp,
        generation_id=generation,
    )  # fmt: skip


def ack(consumer: Any, *offsets: int) -> None:
    """A stream finished these records (the last reference to each message is released)."""
    for offset in offsets:
        msg = message(offset, generation=consumer.app.consumer_generation_id)
        msg.incref()
        msg.ack(consumer)


def commit_all(consumer: Any) -> int | None:
    """Commit as faust's commit timer would, until nothing more is committable."""
    last = None
    while (offset := consumer._new_offset(TP0)) is not None:
        consumer._committed_offset[TP0] = last = offset
    return last


def committed_at(consumer: Any, offset: int | None) -> None:
    """What ``perform_seek`` leaves behind when the group's committed offset is ``offset``."""
    consumer._committed_offset[TP0] = offset if offset else None
    consumer._read_offset[TP0] = offset
    offset_marks(consumer).restart(TP0, offset)


async def drain_batch(
    consumer: Any, batch: Callable[[], AsyncIterator[tuple[TP, ConsumerMessage]]]
) -> tuple[list[tuple[TP, int]], list[tuple[TP, int]]]:
    """Run faust's fetch loop over one fetch (``batch``: faust's ``getmany`` generator, whose
    code before its first ``yield`` is the time the fetch is under way). Returns what was
    handed to the streams and the seeks that reached aiokafka."""
    app = consumer.app
    fetcher = Fetcher(app)
    handed: list[tuple[TP, int]] = []
    seeks: list[tuple[TP, int]] = []
    calls = 0

    async def getmany(timeout: float) -> AsyncIterator[tuple[TP, ConsumerMessage]]:
        nonlocal calls
        calls += 1
        if calls > 1:
            fetcher._stopped.set()
            return
        async for item in batch():
            yield item

    async def deliver(msg: ConsumerMessage) -> None:
        handed.append((msg.tp, msg.offset))
        await asyncio.sleep(0)

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    consumer.getmany = getmany
    consumer.callback = deliver
    consumer._seek = seek
    consumer.assignment = lambda: {TP0, TP1}
    await asyncio.wait_for(consumer._drain_messages(fetcher), timeout=30)
    return handed, seeks


TP1 = TP(TOPIC, 1)


async def drain(consumer: Any, offsets: list[int]) -> list[int]:
    """Run faust's fetch loop over one fetched batch of records with these offsets; return
    the offsets it handed to the streams."""

    async def batch() -> AsyncIterator[tuple[TP, ConsumerMessage]]:
        for offset in offsets:
            yield TP0, message(offset, generation=consumer.app.consumer_generation_id)

    handed, _ = await drain_batch(consumer, batch)
    return [offset for _, offset in handed]


# --- version guard ---------------------------------------------------------------------------
def test_the_installed_versions_are_the_pinned_ones() -> None:
    faust_fixes.check_versions()  # the import already did; this states it


@pytest.mark.parametrize("dist", sorted(PINNED))
def test_refuses_any_other_version(monkeypatch: pytest.MonkeyPatch, dist: str) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "9.9.9" if name == dist else real(name)
    )
    with pytest.raises(RuntimeError, match=f"{dist} 9.9.9"):
        faust_fixes.check_versions()


def test_refuses_a_missing_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    def version(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(RuntimeError, match="not installed"):
        faust_fixes.check_versions()


def test_refuses_to_import_with_another_version(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "0.16.0" if name == "faust-streaming" else real(name),
    )
    resume_before = FlowControlEvent.__dict__["resume"]
    spec = importlib.util.spec_from_file_location(
        "faust_fixes_fresh_copy", Path(faust_fixes.__file__)
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(RuntimeError, match="refuses to load"):
        spec.loader.exec_module(module)
    assert FlowControlEvent.__dict__["resume"] is resume_before  # nothing was patched


# --- the switches themselves -----------------------------------------------------------------
def test_apply_is_idempotent_and_revert_restores_the_originals() -> None:
    with faust_fixes.fixes_only():
        for (owner, name), original in ORIGINALS.items():
            assert owner.__dict__[name] is original
        faust_fixes.apply()
        faust_fixes.apply()
        assert faust_fixes.applied() == set(FIXES)
        for patches in FIXES.values():
            for owner, name, replacement in patches:
                assert owner.__dict__[name] is replacement
        faust_fixes.revert(["flow_resume"])
        assert FlowControlEvent.__dict__["resume"] is ORIGINALS[FlowControlEvent, "resume"]
        with pytest.raises(ValueError, match="unknown"):
            faust_fixes.apply(["no_such_fix"])


# --- flow_resume: the second resume of a recovery must not clear fetched records -------------
async def recovery_resumes(fetched: list[int]) -> list[int]:
    """faust's recovery order on the app's own flow control and an agent's stream buffer:
    resume (recovery starts), records fetched after the seek are queued, resume again."""
    app = new_app()
    buffer = app.FlowControlQueue(maxsize=100, clear_on_resume=True)  # as Stream/Agent use it
    app.flow_control.resume()  # _restart_recovery: the flow starts (it was suspended)
    for offset in fetched:
        await buffer.put(offset)
    app.flow_control.resume()  # on_recovery_completed: the flow is already active
    return [buffer.get_nowait() for _ in range(buffer.qsize())]


def test_a_resume_while_active_keeps_the_queued_records() -> None:
    assert run(lambda: recovery_resumes([96, 97, 98])) == [96, 97, 98]


def test_a_real_resume_still_clears_the_buffers() -> None:
    async def scenario() -> list[int]:
        app = new_app()
        buffer = app.FlowControlQueue(maxsize=100, clear_on_resume=True)
        app.flow_control.resume()
        await buffer.put(1)
        app.flow_control.suspend()  # a rebalance: what is queued is fetched again later
        app.flow_control.resume()
        return [buffer.get_nowait() for _ in range(buffer.qsize())]

    assert run(scenario) == []


def test_unpatched_mode_clears_on_every_resume() -> None:
    with faust_fixes.fixes_only():
        assert run(lambda: recovery_resumes([96, 97, 98])) == []


# --- commit_offset ---------------------------------------------------------------------------
def test_no_commit_past_an_unacked_record_at_the_committed_offset() -> None:
    async def scenario() -> list[int | None]:
        consumer = new_consumer(new_app())
        committed_at(consumer, 96)  # 96 is the NEXT offset to read
        ack(consumer, 97, 98)  # 96 was fetched and lost on the way
        first = consumer._new_offset(TP0)
        ack(consumer, 96)
        return [first, consumer._new_offset(TP0)]

    assert run(scenario) == [None, 99]


def test_unpatched_faust_commits_over_one_lost_head_record() -> None:
    with faust_fixes.fixes_only():

        async def scenario() -> int | None:
            consumer = new_consumer(new_app())
            consumer._committed_offset[TP0] = 96
            ack(consumer, 97, 98)
            return consumer._new_offset(TP0)  # type: ignore[no-any-return]

        assert run(scenario) == 99  # the loss in faust-notes.md: committed=96, acked=[97, 98]


def test_without_a_committed_offset_the_first_record_read_is_the_head() -> None:
    async def scenario() -> tuple[list[int], int | None, int | None]:
        consumer = new_consumer(new_app())  # a new group: no committed offset
        handed = await drain(consumer, [0, 1, 2])
        ack(consumer, 1, 2)  # record 0 never finished
        blocked = consumer._new_offset(TP0)
        ack(consumer, 0)
        return handed, blocked, consumer._new_offset(TP0)

    assert run(scenario) == ([0, 1, 2], None, 3)


def test_a_gap_never_covers_the_record_that_arrived_after_it() -> None:
    # 11 and 12 are transaction markers; 13 arrives after them and is still in a stream.
    async def scenario() -> int | None:
        consumer = new_consumer(new_app())
        committed_at(consumer, 10)
        await drain(consumer, [10, 13, 14])
        ack(consumer, 10, 14)
        return consumer._new_offset(TP0)  # type: ignore[no-any-return]

    assert run(scenario) == 13


def test_markers_at_the_head_do_not_stall_commits() -> None:
    # A guard for the fix itself: requiring the record AT the committed offset to be acked
    # must not stall transactional input, where that offset can be a marker.
    # Transactional input: committed 10 is a commit marker, 11..12 are records.
    # Record 0 is a one-record transaction: its marker is offset 1.
    async def scenario() -> tuple[int | None, int | None]:
        consumer = new_consumer(new_app())
        committed_at(consumer, 10)
        await drain(consumer, [11, 12])
        ack(consumer, 11, 12)
        fresh = new_consumer(new_app())
        await drain(fresh, [0, 2, 3])
        ack(fresh, 0, 2, 3)
        return commit_all(consumer), commit_all(fresh)

    assert run(scenario) == (13, 4)


def test_gap_offsets_already_acked_do_not_make_commits_crawl() -> None:
    async def scenario() -> int | None:
        consumer = new_consumer(new_app())
        committed_at(consumer, 0)
        ack(consumer, *range(10))
        consumer._gap[TP0].addi(3, 6)  # a gap over offsets that were acked as well
        return consumer._new_offset(TP0)  # type: ignore[no-any-return]

    assert run(scenario) == 10


def group_commits(
    monkeypatch: pytest.MonkeyPatch, consumer: Any, **offsets: int | None
) -> list[dict[TP, int]]:
    """The group's committed offsets for perform_seek (by partition: ``p0=…``), and the seeks
    it makes (returned list of ``{tp: offset}``), as the broker would answer and apply them."""
    committed = {TP(TOPIC, int(name[1:])): offset for name, offset in offsets.items()}
    seeks: list[dict[TP, int]] = []

    async def fetch_committed(c: Any) -> dict[TP, int | None]:
        assert c is consumer
        return dict(committed)

    async def seek_wait(targets: dict[TP, int]) -> None:
        seeks.append(dict(targets))

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 2)  # retention deleted offsets 0 and 1

    monkeypatch.setattr(faust_fixes, "committed_offsets", fetch_committed)
    consumer.seek_wait = seek_wait
    consumer.earliest_offsets = earliest_offsets
    consumer.assignment = lambda: set(committed)
    return seeks


def test_perform_seek_goes_back_to_the_head_when_nothing_is_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> list[dict[TP, int]]:
        consumer = new_consumer(new_app())
        await drain(consumer, [5, 6])  # read from 5 (reset policy), nothing committed yet
        seeks = group_commits(monkeypatch, consumer, p0=None, p1=0, p2=None)
        await consumer.perform_seek()
        return seeks

    # TP0 back to 5, its head; p1 to its committed 0 (aiokafka's own seek_to_committed only
    # seeks above 0); p2, never read (as far as the streams know) and never committed, to its
    # earliest offset: a fetch whose records faust dropped may have moved its position on.
    assert run(scenario) == [{TP0: 5, TP(TOPIC, 1): 0, TP(TOPIC, 2): 2}]


def test_records_fetched_before_a_seek_are_not_handed_over_after_it() -> None:
    """The monitor reads a partition again from its committed offset 5 while a batch fetched
    earlier (8, 9, 10) is being handed over: 9 and 10 must not arrive as if read from 5 (they
    would prove a false gap 5..8, which the next commit passes over)."""

    async def scenario() -> tuple[list[tuple[TP, int]], list[tuple[TP, int]], int | None]:
        app = new_app()
        consumer = new_consumer(app)
        committed_at(consumer, 5)

        async def batch() -> AsyncIterator[tuple[TP, ConsumerMessage]]:
            gen = app.consumer_generation_id
            yield TP0, message(8, gen)
            await consumer.seek(TP0, 5)  # while 8 is handed over
            for offset in (9, 10):
                yield TP0, message(offset, gen)
            yield TP1, message(3, gen, tp=TP1)  # another partition is not affected

        handed, seeks = await drain_batch(consumer, batch)
        ack(consumer, 8)
        return handed, seeks, consumer._new_offset(TP0)

    handed, seeks, commit = run(scenario)
    assert handed == [(TP0, 8), (TP1, 3)]
    assert seeks == [(TP0, 5)]  # the monitor's; aiokafka fetches from 5 again by itself
    assert commit is None  # 5, 6, 7 were never processed: nothing to commit past them


def test_a_seek_while_the_fetch_is_under_way_is_made_again() -> None:
    """A seek that runs while aiokafka is returning a fetch can be undone by it (the fetch
    sets the position after its records): the records are not handed over and the partition
    is sought again to the same offset."""

    async def scenario() -> tuple[list[tuple[TP, int]], list[tuple[TP, int]]]:
        app = new_app()
        consumer = new_consumer(app)
        committed_at(consumer, 5)

        async def batch() -> AsyncIterator[tuple[TP, ConsumerMessage]]:
            await consumer.seek(TP0, 5)  # during the fetch, before it returns
            gen = app.consumer_generation_id
            for offset in (8, 9):
                yield TP0, message(offset, gen)
            yield TP1, message(3, gen, tp=TP1)

        return await drain_batch(consumer, batch)

    handed, seeks = run(scenario)
    assert handed == [(TP1, 3)]
    assert seeks == [(TP0, 5), (TP0, 5)]


def test_changelog_records_fetched_before_a_recovery_seek_are_not_handed_over() -> None:
    """The recovery seeks changelog partitions with ``seek_wait``; records of a fetch made
    before it would reach the recovery above the new start and make it skip the re-fetched
    ones as already seen."""
    changelog = TP("fixes-test-ledgers-changelog", 0)

    async def scenario() -> list[tuple[TP, int]]:
        app = new_app()
        consumer = new_consumer(app)

        async def thread_seek_wait(partitions: Any) -> None:
            pass

        consumer._thread.seek_wait = thread_seek_wait

        async def batch() -> AsyncIterator[tuple[TP, ConsumerMessage]]:
            gen = app.consumer_generation_id
            yield changelog, message(30, gen, tp=changelog)
            await consumer.seek_wait({changelog: 0})  # a new recovery reads it from 0
            yield changelog, message(31, gen, tp=changelog)

        handed, _ = await drain_batch(consumer, batch)
        return handed

    assert run(scenario) == [(changelog, 30)]


def test_records_fetched_after_a_seek_are_handed_over() -> None:
    async def scenario() -> list[tuple[TP, int]]:
        app = new_app()
        consumer = new_consumer(app)
        committed_at(consumer, 5)

        async def seek(tp: TP, offset: int) -> None:
            pass

        consumer._seek = seek
        await consumer.seek(TP0, 5)  # before the fetch started
        gen = app.consumer_generation_id

        async def batch() -> AsyncIterator[tuple[TP, ConsumerMessage]]:
            for offset in (5, 6):
                yield TP0, message(offset, gen)

        handed, _ = await drain_batch(consumer, batch)
        return handed

    assert run(scenario) == [(TP0, 5), (TP0, 6)]


# --- stale_ack ---------------------------------------------------------------------------------
def test_a_message_from_an_earlier_generation_is_never_recorded_as_acked() -> None:
    async def scenario() -> tuple[list[int], bool]:
        app = new_app()
        consumer = new_consumer(app)
        app.consumer_generation_id = 7
        committed_at(consumer, 40)
        stale = message(40, generation=6)  # fetched before the rebalance, skipped by a stream
        consumer.track_message(stale)
        stale.incref()
        stale.ack(consumer)
        ack(consumer, 41)
        return list(consumer._acked[TP0]), stale in consumer.unacked

    # 40 is not acked (the new generation delivers it again), and wait_empty does not wait for it
    assert run(scenario) == ([41], False)


# --- recovery_seek -----------------------------------------------------------------------------
def test_input_partitions_are_sought_while_still_paused() -> None:
    async def scenario() -> tuple[bool, bool]:
        app = new_app()
        consumer = new_consumer(app)
        recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
        fetcher: Any = app._fetcher
        active_at_seek: list[bool] = []
        consumer.pause_partitions({TP0})  # _on_partitions_assigned pauses every partition

        def assignment() -> set[TP]:
            return {TP0}

        async def perform_seek() -> None:
            active_at_seek.append(TP0 in consumer._get_active_partitions())

        async def fetcher_started() -> bool:
            return True

        consumer.assignment = assignment
        consumer.perform_seek = perform_seek
        fetcher.maybe_start = fetcher_started
        await recovery.on_recovery_completed(app.consumer_generation_id)
        return active_at_seek[0], TP0 in consumer._get_active_partitions()

    # paused during the seek (nothing fetched before it can reach a stream), resumed after
    assert run(scenario) == (False, True)
