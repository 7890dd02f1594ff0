"""Fixes for faust-streaming 0.15.3 / mode-streaming 0.7.1 / aiokafka 0.14.0 (exactly these).

The faust app calls :func:`apply` once, before ``faust.App`` is built. Importing this module
refuses (``RuntimeError``) any other installed version of the three: every fix below replaces
a method whose body was read in exactly those versions, and a silent mismatch would either
undo a fix or break faust. ``../shared/faust-notes.md`` has the measurements behind them.

Each fix replaces the smallest method that carries the bug; the originals stay in
:data:`ORIGINALS` so tests can compare, and :func:`fixes_only` runs code with a chosen subset.

``flow_resume`` -- ``mode.utils.queues.FlowControlEvent.resume``
    A resume while the flow is already active does nothing; the queues registered with
    ``clear_on_resume`` (the agents' stream buffers) are cleared only when the flow really
    was suspended. Recovery resumes the flow once when it starts reading changelogs (or at
    once when there are none), then resumes the input partitions, seeks, and resumes the flow
    again (ordering from faust-streaming PR #241, v0.7.7): that second resume threw away the
    records fetched after the seek, and the fetch position was already past them.
    Upstream: #596 (recovery race leaves gaps in acked offsets), PR #241.

``commit_offset`` -- ``faust.transport.consumer.Consumer._new_offset``, ``_drain_messages``,
``perform_seek``, ``seek`` and ``ThreadDelegateConsumer.seek_wait``
    The committed offset is the NEXT offset to read (Kafka's convention). faust compared it as
    the last processed one (``min(acked) - committed > 1``), so one record missing at the head
    was committed over (loss) and two or more blocked that partition's commits forever
    (stall). Now a commit advances from the committed offset only over offsets that are acked
    or that the fetch proved hold no record (a gap); never past an unacked head. The gap
    bookkeeping is corrected with it: a gap is recorded from the offset the fetch was expected
    to return next up to, but excluding, the record that arrived (faust included that record,
    so it counted as acked before it was processed, and never recorded a gap at the head or
    after offset 0); gap offsets are merged into the acked offsets without duplicates (faust's
    duplicates made commits crawl one offset per commit); a record the drain loop could not
    hand over because the flow was suspended is not marked as read. When a partition has no
    committed offset yet, the head is the first offset this consumer read from it after the
    last seek (faust committed the first acked run wherever it began), and a later seek goes
    back to that head; a committed offset of 0 is sought to (aiokafka only seeks to offsets
    above 0). A record fetched before a seek of its partition (``seek``, ``seek_wait``,
    ``perform_seek``) is never handed over after it: faust's fetch loop hands a fetched batch
    over one record at a time, with awaits in between, so records from the old position
    arrived after a seek and either proved a false gap from the new position (committed over:
    loss) or set the read offset past the re-fetched records (dropped: loss), for input and
    changelog partitions alike. A seek that ran while the fetch itself was under way is made
    again, as aiokafka's fetch (in the consumer's thread) can set the position after its
    records over it. ``perform_seek`` reads the committed offsets first and seeks in the
    consumer's thread; a partition with neither a committed offset nor a head (nothing read
    yet) is sought to its earliest offset (the reset policy) instead of being left where it
    is: faust's ``getmany`` drops a fetched batch when the flow stops or the generation
    changes mid-batch, and the records of a partition paused meanwhile, after aiokafka moved
    the position past them; faust's own ``perform_seek`` (``seek_to_committed``) then left
    such a partition past records nobody processed. Upstream: #606 (wrong offset committed
    with gaps, from PR #378/#380, v0.9.0), #596; same class as #216 / PR #217.

``recovery_seek`` -- ``faust.tables.recovery.Recovery.on_recovery_completed``
    Seek the input partitions to their committed offsets while they are still paused, and
    resume them only after the seek. faust resumed them first, so the running fetcher could
    hand records fetched before the seek to the streams after it: those records set read
    offsets past the re-fetched ones (which were then dropped as already read) or recorded
    fake gaps (which were then committed over). The flow is deliberately not stopped here:
    stopping it would cut a standby changelog batch in the middle. Upstream: #596, PR #241.

``stale_ack`` -- ``faust.transport.consumer.Consumer.ack``
    A message fetched in an earlier consumer generation is never recorded as acked. faust's
    stream skips such a message without processing it, then acks it; the new generation's
    commit could then pass an offset that was never processed. Ignoring the ack costs at most
    a re-delivery (the new generation seeks back to the committed offset and fetches it
    again). Upstream: the generation check added to ``Stream`` in faust-streaming; same class
    as #216 / PR #217.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

PINNED: Mapping[str, str] = {
    "faust-streaming": "0.15.3",
    "mode-streaming": "0.7.1",
    "aiokafka": "0.14.0",
}


def check_versions(version_of: Callable[[str], str] | None = None) -> None:
    """Raise ``RuntimeError`` unless the installed versions are exactly :data:`PINNED`."""
    lookup = version_of or importlib.metadata.version
    wrong = []
    for dist, wanted in PINNED.items():
        try:
            found = lookup(dist)
        except importlib.metadata.PackageNotFoundError:
            found = "not installed"
        if found != wanted:
            wrong.append(f"{dist} {found} (these fixes are written for {wanted})")
    if wrong:
        raise RuntimeError(
            "ccm_worker.faust_fixes refuses to load: " + "; ".join(wrong) + ". Re-read the "
            "patched methods in the new versions and update this module before changing pins."
        )


check_versions()

# The guard above must run before faust, mode or aiokafka are imported.
from faust.tables.recovery import Recovery  # noqa: E402
from faust.transport.consumer import (  # noqa: E402
    CONSUMER_FETCHING,
    Consumer,
    ThreadDelegateConsumer,
    ensure_TP,
)
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread  # noqa: E402
from faust.types import TP  # noqa: E402
from faust.types.tuples import ack_lock  # noqa: E402
from mode.utils.futures import notify  # noqa: E402
from mode.utils.queues import FlowControlEvent  # noqa: E402


# ---------------------------------------------------------------------------------------------
# flow_resume
def _resume(self: FlowControlEvent) -> None:
    """Resume production into the managed queues; clear them only on a real resume."""
    if self.is_active():
        return
    self._suspend.clear()
    self._resume.set()
    self.clear()


# ---------------------------------------------------------------------------------------------
# commit_offset
@dataclass
class OffsetMarks:
    """Per-consumer bookkeeping the commit fix adds to faust's (one per Consumer object).

    ``head[tp]``: where this consumer's responsibility for ``tp`` starts when the group has no
    committed offset for it: the first offset read after the last seek.
    ``expect[tp]``: the offset the fetch should return next for an acked topic; a record
    arriving above it proves the offsets in between hold no record (transaction markers,
    aborted or compacted records, retention).
    ``seeks`` counts seeks; ``sought[tp]`` is ``(seeks, offset)`` of ``tp``'s last seek: the
    fetch loop tells by it a record fetched before a seek from one fetched after.
    ``fetches_started`` / ``fetches_finished``: the number of the last fetch the loop started,
    and of the last one whose records it has all handed over (or faust dropped): once a fetch
    started after some moment has finished, nothing fetched before that moment is in transit.
    """

    head: dict[TP, int] = field(default_factory=dict)
    expect: dict[TP, int] = field(default_factory=dict)
    seeks: int = 0
    sought: dict[TP, tuple[int, int]] = field(default_factory=dict)
    fetches_started: int = 0
    fetches_finished: int = 0

    def restart(self, tp: TP, offset: int | None) -> None:
        """The fetch position of ``tp`` is now ``offset`` (``None``: unknown, reset policy)."""
        if offset is None:
            self.head.pop(tp, None)
            self.expect.pop(tp, None)
        else:
            self.head[tp] = offset
            self.expect[tp] = offset

    def seeking(self, tp: TP, offset: int) -> None:
        """``tp`` is being sought to ``offset``: records fetched before are stale from now."""
        self.seeks += 1
        self.sought[tp] = (self.seeks, offset)

    def arriving(self, tp: TP, offset: int, gaps: Any) -> None:
        """Record the gap (if any) in front of a record about to be handed to the streams."""
        expected = self.expect.get(tp)
        if expected is None:
            self.head.setdefault(tp, offset)
        elif offset > expected:
            gaps.addi(expected, offset)  # [expected, offset): the record itself is not a gap
        if expected is None or offset > expected:
            self.expect[tp] = offset

    def delivered(self, tp: TP, offset: int) -> None:
        self.expect[tp] = max(self.expect.get(tp, offset), offset + 1)


def offset_marks(consumer: Any) -> OffsetMarks:
    marks = consumer.__dict__.get("_ccm_offset_marks")
    if marks is None:
        marks = consumer.__dict__["_ccm_offset_marks"] = OffsetMarks()
    return marks  # type: ignore[no-any-return]


def _new_offset(self: Consumer, tp: TP) -> int | None:
    """The offset to commit for ``tp``: the end of the run of acked-or-gap offsets that starts
    AT the committed offset (the next offset to read), or ``None`` when that head is open."""
    acked = self._acked[tp]
    if not acked:
        return None
    committed = self._committed_offset[tp]
    head = committed if committed is not None else offset_marks(self).head.get(tp)
    if head is None:
        return None
    index = self._acked_index[tp]
    gaps = self._gap[tp]  # an intervaltree.IntervalTree of offsets known to hold no record
    end = head
    while True:
        if end in index:
            end += 1
            continue
        covering = gaps.at(end) if gaps else ()
        if not covering:
            break
        end = max(interval.end for interval in covering)
    if end == head:
        return None
    acked[:] = [offset for offset in acked if offset >= end]
    index.difference_update([offset for offset in index if offset < end])
    if gaps:
        gaps.chop(0, end)
    return end


async def committed_offsets(consumer: Consumer) -> dict[TP, int | None]:
    """The group's committed offset of every assigned partition (``None``: none yet)."""
    thread: Any = consumer._thread  # type: ignore[attr-defined]
    client = thread._ensure_consumer()
    committed: dict[TP, int | None] = {}
    for raw_tp in consumer.assignment():
        offset = await thread.call_thread(client.committed, raw_tp)
        committed[ensure_TP(raw_tp)] = offset if offset is not None and offset >= 0 else None
    return committed


async def _perform_seek(self: Consumer) -> None:
    """Seek every assigned partition to its committed offset and restart the bookkeeping.

    The committed offsets are read first and the seeks made in one step in the consumer's
    thread (``seek_wait``), so exactly the partitions really sought are marked as such: a
    record the fetch loop then receives from before the seek is not handed over.
    """
    marks = offset_marks(self)
    committed = await committed_offsets(self)
    acks_enabled_for = self.app.topics.acks_enabled_for
    starts: dict[TP, int | None] = {}
    for tp, offset in committed.items():
        # No committed offset: go back to where this consumer started reading an input
        # partition, if it did (nothing before that head was ours; everything from it must be
        # delivered). Changelog partitions are the recovery's to seek.
        head = marks.head.get(tp) if acks_enabled_for(tp.topic) else None
        starts[tp] = offset if offset is not None else head
    # Nothing committed and nothing read: the reset policy's start. Not leaving the position
    # where it is: records fetched but dropped on their way (faust's getmany drops a fetched
    # batch when the flow stops or the generation changes, and those of a paused partition)
    # left it past records nobody read (seen: a month-close command fetched, never processed).
    fresh = [tp for tp, start in starts.items() if start is None and acks_enabled_for(tp.topic)]
    if fresh and self.app.conf.consumer_auto_offset_reset == "earliest":
        earliest = await self.earliest_offsets(*fresh)
        for tp in fresh:
            first = earliest.get(tp)
            if first is not None and first >= 0:
                starts[tp] = first
    targets = {tp: start for tp, start in starts.items() if start is not None}
    if targets:
        await self.seek_wait(targets)  # marks them as sought (see _seek_wait)
    for tp, begin in starts.items():
        self._read_offset[tp] = begin
        self._gap.pop(tp, None)
        marks.restart(tp, begin)
    self._committed_offset.update(
        {tp: offset if offset else None for tp, offset in committed.items() if offset is not None}
    )


async def _seek(self: Consumer, partition: TP, offset: int) -> None:
    tp = ensure_TP(partition)
    marks = offset_marks(self)
    marks.seeking(tp, offset)  # before the seek: a record fetched after it is never "stale"
    await ORIGINALS[Consumer, "seek"](self, partition, offset)
    self._gap.pop(tp, None)
    marks.restart(tp, offset)


async def _seek_wait(self: Any, partitions: Mapping[TP, int]) -> None:
    """faust's ``seek_wait`` (the recovery's seeks of changelog partitions, and ours in
    ``perform_seek``), with the partitions marked as sought before the seek."""
    marks = offset_marks(self)
    for tp, offset in partitions.items():
        marks.seeking(ensure_TP(tp), offset)
    await ORIGINALS[ThreadDelegateConsumer, "seek_wait"](self, partitions)


async def _drain_messages(self: Consumer, fetcher: Any) -> None:
    """faust's fetch loop with the read-offset and gap bookkeeping corrected (see module doc)."""
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    read_offset = self._read_offset
    gaps = self._gap
    marks = offset_marks(self)
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            seeks_before = marks.seeks
            marks.fetches_started += 1
            fetch = marks.fetches_started
            batch = getmany(timeout=1.0)
            await self.sleep(0)  # getmany can return at once, again and again
            if not self.should_stop:
                seeks_at_return: int | None = None
                reseek: dict[TP, int] = {}  # partition -> number of its seek
                finished = True
                async for tp, message in batch:
                    if seeks_at_return is None:  # no await since the fetch returned
                        seeks_at_return = marks.seeks
                    if marks.seeks != seeks_before:
                        sought = marks.sought.get(tp)
                        if sought is not None and sought[0] > seeks_before:
                            # Fetched before a seek of its partition, or while it ran: not
                            # handed over. A seek while the fetch was under way may also have
                            # been undone by it (aiokafka's fetch sets the position after the
                            # records it returns), so that partition is sought again.
                            if sought[0] <= seeks_at_return:
                                reseek[tp] = sought[0]
                            continue
                    since_yield += 1
                    if since_yield > 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    last_read = read_offset[tp]
                    if last_read is not None and offset < last_read:
                        self.log.dev("DROPPED MESSAGE ROFF %r", offset)
                        continue
                    acked_topic = acks_enabled_for(message.topic)
                    if acked_topic:
                        marks.arriving(tp, offset, gaps[tp])
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    handover = callback(message)
                    waited = await self.wait_first(handover, self.suspend_flow.wait())
                    if handover not in waited.done:
                        finished = False
                        break  # flow suspended: not handed over, it is fetched again
                    read_offset[tp] = offset
                    if acked_topic:
                        marks.delivered(tp, offset)
                if finished:
                    marks.fetches_finished = fetch
                if reseek:
                    assigned = self.assignment()
                    for tp, number in reseek.items():
                        seek_no, offset = marks.sought[tp]
                        if seek_no == number and tp in assigned:  # not sought since
                            self.log.info("Seek %r to %r again (fetched during a seek)", tp, offset)
                            await self.seek(tp, offset)
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


# ---------------------------------------------------------------------------------------------
# recovery_seek
async def _on_recovery_completed(self: Recovery, generation_id: int = 0) -> None:
    """faust's end of recovery with the input partitions sought BEFORE they are resumed."""
    app: Any = self.app
    consumer = app.consumer
    self.log.info("Restore complete!")
    await app.on_rebalance_complete.send()
    self._set_recovery_ended()
    table_callbacks = [
        asyncio.ensure_future(
            table.on_recovery_completed(
                self.actives_for_table[table], self.standbys_for_table[table]
            )
        )
        for table in self.tables.values()
    ]
    if table_callbacks:
        await asyncio.wait(table_callbacks)
    assignment = consumer.assignment()
    if app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again (generation %r)", generation_id)
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets (still paused).")
        await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    self.completed.set()
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


# ---------------------------------------------------------------------------------------------
# stale_ack
def _ack(self: Consumer, message: Any) -> bool:
    """Ack ``message``, unless it was fetched in another consumer generation."""
    if message.generation_id == self.app.consumer_generation_id:
        return bool(ORIGINALS[Consumer, "ack"](self, message))
    with ack_lock:
        message.acked = True
        self._unacked_messages.discard(message)
        notify(self._waiting_for_ack)
    return False


# ---------------------------------------------------------------------------------------------
# recovery_end
def _set_recovery_started(self: Recovery) -> None:
    """Start a recovery with its end signal cleared.

    ``signal_recovery_end`` is set when a recovery has read everything, and cleared only at
    the top of the next iteration of ``_slurp_changelogs``, which may sit for up to 5 s in a
    wait for a changelog record. A rebalance in that window started the next recovery with
    the signal still set: it ended at once, having read nothing of its new partitions (seen:
    two partitions of 600 changelog records "recovered" in 19 ms, their ledgers missing).
    """
    self.signal_recovery_end.clear()
    ORIGINALS[Recovery, "_set_recovery_started"](self)


# ---------------------------------------------------------------------------------------------
# lso_highwaters
async def _highwaters(self: AIOKafkaConsumerThread, partitions: list[TP]) -> Mapping[TP, int]:
    """End offsets from the broker, for every partition asked, in both isolation levels.

    With transactions faust took the consumer's cached ``last_stable_offset(tp)``, which is
    ``None`` for a partition this consumer has not fetched since its assignment: recovery then
    read the changelog's highwater as -1 and crashed on its own consistency check ("persisted
    offset 418 > highwater -1"), or took a partition as empty. A ListOffsets request made by a
    ``read_committed`` consumer returns the last stable offset itself, so one broker query
    serves both levels.
    """
    consumer = self._ensure_consumer()
    ends = await consumer.end_offsets(list(partitions))
    return {TP(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}


# ---------------------------------------------------------------------------------------------
FIXES: Mapping[str, tuple[tuple[type, str, Any], ...]] = {
    "flow_resume": ((FlowControlEvent, "resume", _resume),),
    "commit_offset": (
        (Consumer, "_new_offset", _new_offset),
        (Consumer, "_drain_messages", _drain_messages),
        (Consumer, "perform_seek", _perform_seek),
        (Consumer, "seek", _seek),
        (ThreadDelegateConsumer, "seek_wait", _seek_wait),
    ),
    "recovery_seek": ((Recovery, "on_recovery_completed", _on_recovery_completed),),
    "stale_ack": ((Consumer, "ack", _ack),),
    "recovery_end": ((Recovery, "_set_recovery_started", _set_recovery_started),),
    "lso_highwaters": ((AIOKafkaConsumerThread, "_highwaters", _highwaters),),
}

#: The replaced methods as faust/mode define them, keyed by (class, name).
ORIGINALS: Mapping[tuple[type, str], Any] = {
    (owner, name): owner.__dict__[name] for patches in FIXES.values() for owner, name, _ in patches
}

_applied: set[str] = set()


def _names(names: Iterable[str] | None) -> list[str]:
    chosen = list(FIXES) if names is None else list(names)
    unknown = sorted(set(chosen) - set(FIXES))
    if unknown:
        raise ValueError(f"unknown faust fix(es) {unknown}; known: {sorted(FIXES)}")
    return chosen


def apply(only: Iterable[str] | None = None) -> None:
    """Apply every fix (or only the named ones). Idempotent."""
    for name in _names(only):
        if name not in _applied:
            for owner, attr, replacement in FIXES[name]:
                setattr(owner, attr, replacement)
            _applied.add(name)


def revert(only: Iterable[str] | None = None) -> None:
    """Put faust's original methods back (all, or the named fixes)."""
    for name in _names(only):
        if name in _applied:
            for owner, attr, _ in FIXES[name]:
                setattr(owner, attr, ORIGINALS[owner, attr])
            _applied.discard(name)


def applied() -> frozenset[str]:
    return frozenset(_applied)


@contextmanager
def fixes_only(*names: str) -> Iterator[None]:
    """Run a block with exactly the named fixes applied; restore the previous state after."""
    before = applied()
    revert()
    try:
        apply(names)
        yield
    finally:
        revert()
        apply(before)


def _idle(queue: Any) -> bool:
    """The changelog queue is empty and faust's changelog loop is waiting on it: no record is
    between the queue and the recovery's offsets (``get`` has taken a record out of the queue
    some loop iterations before the loop records its offset)."""
    getters = getattr(queue, "_getters", ())
    return not queue.qsize() and any(not waiter.done() for waiter in getters)


# ---------------------------------------------------------------------------------------------
# transactional recovery end (not a method replacement: the app runs it on a short timer)
@dataclass
class RecoveryEndProbe:
    """Ends a table recovery promptly when only transaction markers are left to read.

    With ``processing_guarantee="exactly_once"`` every changelog write is transactional, so
    each changelog partition ends in a commit marker: an offset that holds no record. faust's
    recovery waits until it has *applied* the offset below the last stable offset, which the
    marker never delivers; it notices only after two consecutive 5-second timeouts of its
    changelog queue (``detect_aborted_tx``), so every assignment took at least 10 s to become
    ready (measured: 12.4 s for two partitions of 500 records). The probe applies faust's own
    "aborted transactions until the highwater" conclusion as soon as it holds: the changelog
    queue is empty and every partition still "behind" has been fetched past its highwater, on
    two looks with nothing changing in between, and with a whole fetch of the fetch loop
    started after the first look and finished before the second. That last condition is what
    proves no record is in transit: aiokafka moves its position when the consumer thread takes
    records from its buffer, and they reach the changelog queue only after the thread has
    handed them to the fetch loop and the loop to the queue, one record at a time behind
    whatever input record of the same fetch waits for its stream. (The first version looked
    twice, 0.25 s apart: under load a fetch took longer than that to reach the queue, and the
    recovery ended without the newest changelog records of a kept partition, whose ledgers
    then went back to older states, and the inputs applied since were lost.)
    Upstream: the ``detect_aborted_tx`` path of ``Recovery._slurp_changelogs`` (faust-streaming
    0.15.3).
    """

    last: tuple[Any, ...] | None = None
    fetch_at_last: int = 0

    async def __call__(self, app: Any) -> bool:
        """One look; ``True`` when it ended the recovery."""
        recovery = app.tables.recovery
        if not (app.in_transaction and recovery.in_recovery):
            self.last = None
            return False
        marks = offset_marks(app.consumer)
        finished = marks.fetches_finished  # before anything below can hand records over
        queue = app.tables.changelog_queue
        highwaters, offsets = recovery.active_highwaters, recovery.active_offsets
        behind = sorted(
            (tp for tp, high in highwaters.items() if high is not None and high >= 0),
            key=lambda tp: (tp.topic, tp.partition),
        )
        behind = [
            tp for tp in behind if offsets.get(tp) is not None and offsets[tp] < highwaters[tp]
        ]
        if not behind or not _idle(queue):
            self.last = None
            return False
        positions = []
        for tp in behind:
            position = await app.consumer.position(tp)
            if position is None or position <= highwaters[tp]:
                self.last = None
                return False
            positions.append(position)
        look = (
            app.consumer_generation_id,
            tuple(behind),
            tuple(offsets[tp] for tp in behind),
            tuple(positions),
        )
        if look != self.last:
            self.last = look
            self.fetch_at_last = marks.fetches_started
            return False
        if finished <= self.fetch_at_last:
            return False  # what was fetched before the first look may still be in transit
        if not _idle(queue):  # again: the position queries above let the loops run
            return False
        self.last = None
        for tp in behind:
            offsets[tp] = highwaters[tp]
        if recovery.in_recovery and not recovery.need_recovery():
            recovery.flush_buffers()
            recovery._set_recovery_ended()
            recovery.signal_recovery_end.set()
            return True
        return False
