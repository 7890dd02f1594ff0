"""Publish simulated events to Kafka with aiokafka, optionally at a target rate.

- Idempotent producer (``enable_idempotence=True``, ``acks="all"``): a retried batch is not
  written twice by the broker.
- Keyed by the patient id, partitioned exactly like ``producer.send(key=...)`` would (aiokafka's
  ``DefaultPartitioner``: murmur2 of the key, as the Java client), so a patient's events stay on
  one partition, in order, co-partitioned with the worker's table.
- Batched: messages go into one aiokafka ``BatchBuilder`` per partition, submitted with
  ``send_batch`` when full or ``linger_ms`` old (or before the rate limiter sleeps); delivery
  futures are awaited in chunks, never one by one. This is about four times faster than
  ``send()`` per message on a local broker, which matters for a load generator.
- Rate limiting with a token bucket (``rate`` events/s; ``None`` = as fast as possible).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class Message(Protocol):
    """What :func:`produce` needs of an event (``SimEvent`` has it)."""

    @property
    def key(self) -> str: ...

    @property
    def value(self) -> bytes: ...


@dataclass
class ProduceStats:
    """What :func:`produce` did."""

    submitted: int = 0  # handed to the producer
    sent: int = 0  # acknowledged by the broker (acks=all)
    failed: int = 0  # not delivered (after the producer's own retries) or refused
    bytes: int = 0  # payload bytes acknowledged
    elapsed: float = 0.0  # seconds from the producer's start to now / the last acknowledgement
    errors: list[str] = field(default_factory=list)  # the first few distinct errors

    @property
    def rate(self) -> float:
        """Acknowledged events per second."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[ProduceStats], None]
"""Called every ``progress_every`` submitted events, and once at the end."""

ProducerFactory = Callable[..., Any]
"""Builds an object with aiokafka's producer API (``start``, ``partitions_for``,
``create_batch``, ``send_batch``, ``stop``) from keyword settings; tests inject a fake."""


_EPSILON = 1e-9


class TokenBucket:
    """Rate limiter: ``rate`` tokens per second, bursts of up to ``capacity`` tokens."""

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        # bursts of 50 ms of traffic (at least one event): smooth, yet cheap at high rates
        self.capacity = capacity if capacity is not None else max(1.0, rate * 0.05)
        self.tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def try_take(self, tokens: float = 1.0) -> bool:
        """Spend ``tokens`` if they are available now."""
        if self.tokens < tokens - _EPSILON:
            self._refill()
            if self.tokens < tokens - _EPSILON:
                return False
        self.tokens -= tokens
        return True

    async def take(self, tokens: float = 1.0) -> None:
        """Wait until ``tokens`` are available, then spend them."""
        self._refill()
        while self.tokens < tokens - _EPSILON:
            # never sleep less than 0.1 ms: a tiny deficit must not spin on float rounding
            await self._sleep(max((tokens - self.tokens) / self.rate, 1e-4))
            self._refill()
        self.tokens -= tokens


def _default_factory(**config: Any) -> Any:
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**config)


def _partitioner() -> Callable[[bytes, list[int], list[int]], int]:
    from aiokafka.partitioner import DefaultPartitioner

    partition: Callable[[bytes, list[int], list[int]], int] = DefaultPartitioner()
    return partition


@dataclass(slots=True)
class _Open:
    batch: Any  # aiokafka BatchBuilder
    count: int = 0
    size: int = 0


class _BatchSender:
    """Per-partition batches, submitted when full or stale; delivery awaited in chunks."""

    def __init__(
        self,
        producer: Any,
        topic: str,
        partitions: list[int],
        stats: ProduceStats,
        linger: float,
        settle_every: int,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.stats = stats
        self.linger = linger
        self.settle_every = settle_every
        self.partition_of: dict[bytes, int] = {}
        self.partition = _partitioner()
        self.open: dict[int, _Open] = {}
        self.oldest = 0.0  # when the oldest open batch got its first message
        self.pending: list[tuple[asyncio.Future[Any], int, int]] = []

    async def add(self, key: bytes, value: bytes) -> None:
        part = self.partition_of.get(key)
        if part is None:
            part = self.partition_of[key] = self.partition(key, self.partitions, self.partitions)
        entry = self.open.get(part)
        if entry is None:
            entry = self._new(part)
        if entry.batch.append(key=key, value=value, timestamp=None) is None:
            if entry.count:  # full: submit it and start another
                await self._submit(part)
                entry = self._new(part)
                added = entry.batch.append(key=key, value=value, timestamp=None)
            else:
                added = None
            if added is None:  # larger than a whole batch
                self.open.pop(part, None)
                _record_failure(self.stats, ValueError("message larger than max_batch_size"))
                return
        entry.count += 1
        entry.size += len(value)
        self.stats.submitted += 1
        if self.stats.submitted & 127 == 0 and time.monotonic() - self.oldest >= self.linger:
            await self.flush_open()

    def _new(self, part: int) -> _Open:
        if not self.open:
            self.oldest = time.monotonic()
        entry = self.open[part] = _Open(self.producer.create_batch())
        return entry

    async def _submit(self, part: int) -> None:
        entry = self.open.pop(part)
        entry.batch.close()
        try:
            future = await self.producer.send_batch(entry.batch, self.topic, partition=part)
        except Exception as exc:  # producer closed or failed, timeout waiting for a slot
            _record_failure(self.stats, exc, entry.count)
            return
        self.pending.append((future, entry.count, entry.size))
        if len(self.pending) >= self.settle_every:
            await self.settle()

    async def flush_open(self) -> None:
        """Submit every open batch (nothing waits in a batch while the producer idles)."""
        for part in list(self.open):
            await self._submit(part)

    async def settle(self) -> None:
        """Wait for the submitted batches to be acknowledged; count the outcome."""
        pending, self.pending = self.pending, []
        results = await asyncio.gather(*(f for f, _, _ in pending), return_exceptions=True)
        for (_, count, size), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                _record_failure(self.stats, result, count)
            else:
                self.stats.sent += count
                self.stats.bytes += size


async def produce(
    bootstrap_servers: str,
    topic: str,
    events: Iterable[Message],
    rate: float | None = None,
    progress: ProgressCallback | None = None,
    *,
    progress_every: int = 10_000,
    linger_ms: int = 5,
    max_batch_size: int = 256 * 1024,
    settle_every: int = 64,
    compression_type: str | None = None,
    client_id: str = "ccm-simulator",
    producer_factory: ProducerFactory | None = None,
    security: Mapping[str, Any] | None = None,
) -> ProduceStats:
    """Send ``events`` to ``topic`` keyed by patient id, at most ``rate`` events/s if given.

    Returns the counts and the elapsed seconds. A failed delivery is counted (with its error in
    ``errors``), not raised; failing to start the producer (no broker) raises. ``security``:
    the TLS/SASL client options (``ccm_worker.kafka_security.aiokafka_kwargs``).
    """
    factory = producer_factory or _default_factory
    producer = factory(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=max_batch_size,
        compression_type=compression_type,
        **dict(security or {}),
    )
    stats = ProduceStats()
    bucket: TokenBucket | None = None
    started = time.perf_counter()
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # release what start() opened before it failed
        raise
    try:
        found = await producer.partitions_for(topic)
        if not found:
            raise RuntimeError(f"topic {topic!r} has no partitions (does it exist?)")
        partitions = sorted(found)
        sender = _BatchSender(producer, topic, partitions, stats, linger_ms / 1000, settle_every)
        next_progress = progress_every
        for event in events:
            if bucket is None and rate is not None:  # the clock starts with the first event
                bucket = TokenBucket(rate)
            if bucket is not None and not bucket.try_take():
                await sender.flush_open()  # send what we have before waiting
                await bucket.take()
            await sender.add(event.key.encode(), event.value)
            if progress is not None and stats.submitted >= next_progress:
                next_progress += progress_every
                stats.elapsed = time.perf_counter() - started
                progress(stats)
        await sender.flush_open()
        await sender.settle()
    finally:
        await producer.stop()
    stats.elapsed = time.perf_counter() - started
    if progress is not None:
        progress(stats)
    return stats


def _record_failure(stats: ProduceStats, error: BaseException, count: int = 1) -> None:
    stats.failed += count
    message = f"{type(error).__name__}: {error}"
    if len(stats.errors) < 5 and message not in stats.errors:
        stats.errors.append(message)
