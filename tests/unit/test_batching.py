"""``take_ready``: the worker's batches, on a real faust stream over an in-memory channel.

What the agent relies on: a batch is handed out as soon as the queued input is taken (no
fixed window), never larger than ``max_``, what arrived during a batch comes as the next one,
and no event is acked by the batching (the agent acks once outputs are on the broker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from ccm_worker import faust_fixes  # noqa: F401  (the pinned faust, as the worker has it)
from ccm_worker.batching import take_ready


class Input:
    """A faust stream over an in-memory channel, as the agent's stream over its topics."""

    def __init__(self) -> None:
        self.app = faust.App("batching-test", broker="kafka://127.0.0.1:1", store="memory://")
        self.app.flow_control.resume()
        self.channel = self.app.channel()
        self.stream: Any = self.app.stream(aiter(self.channel))

    async def send(self, *values: int) -> None:
        for value in values:
            await self.channel.send(value=value)


def values(batch: list[Any]) -> list[int]:
    return [event.value for event in batch]


def collect(
    feed: Callable[[Input], Awaitable[None]],
    max_: int,
    until: int,
    during: Callable[[Input, list[Any]], Awaitable[None]] | None = None,
    linger: float = 0.0,
) -> tuple[list[list[int]], Input]:
    """Batches until one holds ``until``. ``feed`` sends before iterating; ``during`` runs
    while each batch is "processed"."""

    async def main() -> tuple[list[list[int]], Input]:
        inp = Input()
        await feed(inp)
        out: list[list[int]] = []

        async def take() -> None:
            async for batch in take_ready(inp.stream, max_, linger):
                out.append(values(batch))
                if during is not None:
                    await during(inp, batch)
                for event in batch:
                    await inp.stream.ack(event)
                if until in out[-1]:
                    return

        try:
            await asyncio.wait_for(take(), timeout=10)
        finally:
            await inp.stream.stop()
        return out, inp

    return asyncio.run(main())


def test_what_is_queued_is_one_batch() -> None:
    out, _ = collect(lambda inp: inp.send(1, 2, 3, 4, 5), max_=100, until=5)
    assert out == [[1, 2, 3, 4, 5]]


def test_a_batch_is_never_larger_than_max() -> None:
    out, _ = collect(lambda inp: inp.send(*range(1, 8)), max_=3, until=7)
    assert out == [[1, 2, 3], [4, 5, 6], [7]]


def test_an_input_alone_is_handed_out_without_waiting_for_more() -> None:
    """A quiet input: one event, nothing after it. A fixed window would hand it out late; a
    batcher that waited for more input would never hand it out (the test times out)."""
    out, _ = collect(lambda inp: inp.send(1), max_=100, until=1)
    assert out == [[1]]


def test_what_arrives_during_a_batch_is_the_next_batch() -> None:
    async def during(inp: Input, batch: list[Any]) -> None:
        if values(batch) == [1]:
            await inp.send(2, 3, 4)  # arrives while batch [1] is processed

    out, _ = collect(lambda inp: inp.send(1), max_=100, until=4, during=during)
    assert out == [[1], [2, 3, 4]]


def test_linger_waits_once_for_more_input() -> None:
    async def feed(inp: Input) -> None:
        await inp.send(1)

        async def later() -> None:
            await asyncio.sleep(0.05)
            await inp.send(2)

        asyncio.get_running_loop().create_task(later())

    out, _ = collect(feed, max_=100, until=2, linger=0.5)
    assert out == [[1, 2]]


def test_the_batching_acks_nothing_and_restores_the_stream() -> None:
    seen: list[Any] = []

    async def during(inp: Input, batch: list[Any]) -> None:
        seen.extend(batch)
        assert all(not event.message.acked for event in batch)  # not acked before the agent

    out, inp = collect(lambda inp: inp.send(1, 2), max_=100, until=2, during=during)
    assert out == [[1, 2]]
    assert all(event.message.acked for event in seen)  # by the agent (the test), once each
    assert inp.stream.enable_acks is True
    assert inp.stream._processors == []


def test_a_buffer_left_behind_by_skipped_input_is_still_handed_out() -> None:
    """A rebalance suspends the flow while events are queued behind the buffered ones: the
    stream skips those, so nothing says the buffer is ready, yet the rebalance waits for the
    buffered events to be acked. They must still come out as a batch (within 40 ms)."""

    async def feed(inp: Input) -> None:
        def rebalance_at_2(value: int) -> int:
            if value == 2:
                inp.app.flow_control.suspend()  # 3 is queued, and will be skipped
            return value

        inp.stream.add_processor(rebalance_at_2)  # runs before take_ready's own processor
        await inp.send(1, 2, 3)

    out, _ = collect(feed, max_=100, until=2)
    assert out == [[1, 2]]
