"""Batches of what is ready: faust's ``Stream.take_events`` without its fixed window.

``take_events(max_, within)`` hands a batch to the agent when ``max_`` events are buffered or
when ``within`` seconds have passed since it last started waiting, and its buffer takes no
input while the agent processes a batch. So an input arriving during a batch waits for the
rest of that batch, then for the whole window, then for its own batch: at 1,000 events/s the
window (20 ms, twice) was a third of the worker's produce-to-threshold p99. A shorter window
cut batches in a backlog to a few hundred events and the throughput by a third.

:func:`take_ready` keeps take_events' machinery (a processor on the stream, faust's passive
drainer feeding it, one batch handed out at a time) and changes when a batch is handed out:
as soon as the input fetched so far is taken, i.e. the stream's channel queue is empty, or
at ``max_`` events. One event when the input is quiet; in a backlog, what the fetcher queued
while the previous batch was processed (thousands). ``linger`` (seconds, 0 by default) waits
once more for input before a batch that is not full is handed out.

Unlike take_events, the events of a batch are never acked here: the agent acks them once the
batch's outputs are on the broker (take_events also acked a batch whose processing failed).
A batch is handed out without waiting for further input, and a buffer that stops growing is
handed out within 40 ms (see :data:`STUCK_SECONDS`), so no event is held while a rebalance
waits for the streams to finish theirs (``stream_wait_empty``).

Written here rather than upstream because faust has no "take what is ready"; it uses the same
stream internals take_events uses (``add_processor``, ``_enable_passive``,
``current_event``, ``_active_agens``), read in the pinned faust-streaming 0.15.3.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from mode.utils.futures import notify

# A buffer that stopped growing without the queue running dry is handed out after this long:
# the events queued behind its last one were skipped by the stream (a rebalance suspended the
# flow, or they are from an earlier generation), so no ``add`` comes to say it is ready, and
# a rebalance waits for the buffered events to be acked (``stream_wait_empty``).
STUCK_SECONDS = 0.02


def take_ready(stream: Any, max_: int, linger: float = 0.0) -> AsyncIterator[list[Any]]:
    """Iterate over ``stream`` in batches (lists of faust events) of what is ready."""
    batches = _take_ready(stream, max_, linger)
    stream._active_agens.add(batches)  # closed by Stream.on_stop, as take_events' generators
    return batches


async def _take_ready(stream: Any, max_: int, linger: float) -> AsyncIterator[list[Any]]:
    events: list[Any] = []
    ready = asyncio.Event()  # the queue ran dry, or max_ events are buffered
    taken = asyncio.Event()  # the last batch handed out is processed
    consuming: asyncio.Future[None] | None = None
    queue = stream.channel.queue
    enable_acks = stream.enable_acks

    async def add(value: Any) -> Any:
        nonlocal consuming
        if consuming is not None:  # a batch is being processed: wait for it
            try:
                await consuming
            finally:
                consuming = None
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_ready found no current event")
        events.append(event)
        if len(events) >= max_:
            ready.set()
            taken.clear()
            await stream.wait(taken)  # never more than max_ events in a batch
        elif not queue.qsize():
            ready.set()
        return value

    stream.enable_acks = False  # the agent acks each event once its batch is processed
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))
    held = 0  # events buffered at the last look
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(ready, timeout=STUCK_SECONDS)
            if not ready.is_set() and (not events or len(events) != held):
                held = len(events)  # nothing, or still filling: look again
                continue
            if linger and len(events) < max_:
                await asyncio.sleep(linger)
            if not events:
                ready.clear()
                continue
            held = 0
            consuming = asyncio.get_running_loop().create_future()
            batch = list(events)
            events.clear()
            try:
                yield batch
            finally:
                ready.clear()
                taken.set()
                notify(consuming)
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add)
