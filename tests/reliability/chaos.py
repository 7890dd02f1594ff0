"""Broker-side tools of the reliability suite: steady input, offsets, mixed producers.

Engine-agnostic: they only touch the topics and the worker group's committed offsets (the
same group id the worker commits under, ``Settings.app_id``), never the worker's internals.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from ccm_core.settings import Settings
from ccm_worker.kafka_security import client_kwargs

Offsets = dict[TopicPartition, int]


def input_partitions(settings: Settings) -> list[TopicPartition]:
    topics = (settings.topics.timelog, settings.topics.month_close)
    return [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]


REPARTITION_SUFFIX = "-repartition"
"""Internal topics the worker group re-reads its own input from (faust's ``group_by`` names
them ``<app id>-<name>-repartition``): counted as input, since a record committed on the
input topic but still waiting there is not processed yet."""


async def _positions(settings: Settings) -> tuple[Offsets, Offsets]:
    """(end offsets, committed offsets of the worker group) of every input partition: the
    input topics, and any repartition topic the group commits offsets for."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings), request_timeout_ms=10000)
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=10000)
    await consumer.start()
    try:
        await admin.start()
        try:
            group = await admin.list_consumer_group_offsets(settings.app_id)
            tps = input_partitions(settings)
            tps += [tp for tp in group if tp.topic.endswith(REPARTITION_SUFFIX)]
            ends = await consumer.end_offsets(tps)
        finally:
            await admin.close()
    finally:
        await consumer.stop()
    committed = {}
    for tp in tps:
        meta = group.get(tp)
        committed[tp] = meta.offset if meta is not None and meta.offset >= 0 else 0
    return dict(ends), committed


async def _group(settings: Settings) -> tuple[str, int]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=10000)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([settings.app_id])
    finally:
        await admin.close()
    [group] = response.to_object()["groups"]
    return str(group["state"]), len(group["members"])


def group_state(settings: Settings) -> tuple[str, int]:
    """(state, number of members) of the worker group, as the broker's coordinator sees it:
    ("Stable", 1) once a paused member has been expelled and the rest own every partition."""
    try:
        return asyncio.run(_group(settings))
    except Exception:  # coordinator moving or unreachable: unknown for now
        return ("Unknown", -1)


def end_offsets(settings: Settings) -> Offsets:
    return asyncio.run(_positions(settings))[0]


def committed_lag(settings: Settings, target: Offsets | None = None) -> int:
    """Input messages below ``target`` (default: the current ends) not committed yet."""
    ends, committed = asyncio.run(_positions(settings))
    goal = target or ends
    return sum(max(0, goal[tp] - committed.get(tp, 0)) for tp in goal)


def lagging(settings: Settings, target: Offsets) -> dict[str, tuple[int, int]]:
    """``topic:partition -> (committed, target)`` of every input partition the group has not
    committed up to ``target`` (what a timed-out recovery was waiting for)."""
    _, committed = asyncio.run(_positions(settings))
    return {
        f"{tp.topic}:{tp.partition}": (committed.get(tp, 0), goal)
        for tp, goal in sorted(target.items())
        if committed.get(tp, 0) < goal
    }


DEAD_GRACE = 20.0
"""Seconds with no worker process alive after which waiting for progress stops (a supervisor
restarting a worker leaves a gap of a moment, not of seconds)."""


class _Hopeless:
    """True once ``anyone_alive`` has answered False for :data:`DEAD_GRACE` seconds."""

    def __init__(self, anyone_alive: Callable[[], bool] | None) -> None:
        self.anyone_alive = anyone_alive
        self.dead_since: float | None = None

    def __call__(self) -> bool:
        if self.anyone_alive is None or self.anyone_alive():
            self.dead_since = None
            return False
        now = time.monotonic()
        self.dead_since = self.dead_since or now
        return now - self.dead_since > DEAD_GRACE


def seconds_until_committed(
    settings: Settings,
    target: Offsets,
    since: float,
    timeout: float,
    anyone_alive: Callable[[], bool] | None = None,
) -> float | None:
    """Poll until the group has committed every input up to ``target``; the seconds from the
    monotonic time ``since``, or None if it did not within ``timeout`` (or every worker
    process stayed dead for :data:`DEAD_GRACE` seconds)."""
    deadline = time.monotonic() + timeout
    hopeless = _Hopeless(anyone_alive)
    while time.monotonic() < deadline and not hopeless():
        try:
            if committed_lag(settings, target) == 0:
                return time.monotonic() - since
        except Exception:  # broker briefly unreachable, group coordinator moving: poll again
            pass
        time.sleep(0.25)
    return None


def wait_all_committed(
    settings: Settings, timeout: float, anyone_alive: Callable[[], bool] | None = None
) -> int:
    """Wait (bounded) until every input is committed; the inputs still unprocessed (0 = ok)."""
    deadline = time.monotonic() + timeout
    hopeless = _Hopeless(anyone_alive)
    while time.monotonic() < deadline and not hopeless():
        try:
            if committed_lag(settings) == 0:
                return 0
        except Exception:
            pass
        time.sleep(0.5)
    return committed_lag(settings)


class Feeder(threading.Thread):
    """Steady input: produces ``events`` (key, value) in order, ``chunk`` at a time, at about
    ``rate`` events per second, with the default (murmur2) partitioner, as the EHR does;
    ``first`` events (if any) go out at once as a backlog before the steady part.

    Setting :attr:`hold` makes it stop after the chunk in flight, close its producer and set
    :attr:`holding` (e.g. while the broker is down); clearing it resumes with a new producer.
    :attr:`sent` counts acknowledged events; :attr:`error` holds what stopped it, if anything."""

    def __init__(
        self,
        settings: Settings,
        events: Sequence[tuple[bytes, bytes]],
        rate: float,
        chunk: int = 50,
        first: int = 0,
    ) -> None:
        super().__init__(daemon=True, name="feeder")
        self.settings, self.topic, self.events = settings, settings.topics.timelog, events
        self.rate, self.chunk, self.first = rate, chunk, first
        self.sent = 0
        self.error: BaseException | None = None
        self.hold = threading.Event()
        self.holding = threading.Event()
        self._push = 0  # events to send at once, ahead of the steady pace
        self._pushed = 0

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc

    def burst(self, n: int) -> int:
        """Send the next ``n`` events at once (ahead of the pace); returns the count the
        feeder will have sent once the burst is acknowledged."""
        self._push = n
        return min(len(self.events), self.sent + n)

    def _producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **client_kwargs(self.settings), acks="all", enable_idempotence=True, linger_ms=5
        )

    async def _run(self) -> None:
        producer = self._producer()
        await producer.start()
        try:
            started = time.monotonic()
            while self.sent < len(self.events):
                pushed, self._push = self._push, 0
                size = pushed or (self.first if self.sent == 0 and self.first else self.chunk)
                part = self.events[self.sent : self.sent + size]
                futures = [await producer.send(self.topic, v, key=k) for k, v in part]
                await asyncio.gather(*futures)
                self.sent += len(part)
                self._pushed += len(part) if pushed else 0
                due = started + max(0, self.sent - self.first - self._pushed) / self.rate
                while time.monotonic() < due and not self.hold.is_set() and not self._push:
                    await asyncio.sleep(min(0.05, max(0.0, due - time.monotonic())))
                if self.hold.is_set():  # e.g. the broker goes down: a new producer after it
                    held = time.monotonic()
                    await producer.stop()
                    self.holding.set()
                    while self.hold.is_set():
                        await asyncio.sleep(0.05)
                    self.holding.clear()
                    started += time.monotonic() - held
                    producer = self._producer()
                    await producer.start()
        finally:
            await producer.stop()


def target_after(settings: Settings, snapshot: Offsets, timeout: float = 5.0) -> Offsets:
    """End offsets once input has arrived on every time-log partition after ``snapshot``
    (bounded by ``timeout``; the latest ends then). A recovery timed to these offsets includes
    processing input that came *after* the disruption on every partition: the killed or
    paused worker's partitions too, which a group that had committed everything before the
    disruption would otherwise not need."""
    deadline = time.monotonic() + timeout
    timelog = [tp for tp in snapshot if tp.topic == settings.topics.timelog]
    while True:
        ends = end_offsets(settings)
        if all(ends[tp] > snapshot[tp] for tp in timelog) or time.monotonic() > deadline:
            return ends
        time.sleep(0.1)


# ---------------------------------------------------------------- mixed producer partitioners

Partitioner = Literal["murmur2", "librdkafka", "random", "explicit"]
PARTITIONERS: tuple[Partitioner, ...] = ("murmur2", "librdkafka", "random", "explicit")


def home_partition(key: bytes, partitions: int) -> int:
    """Where Kafka's default partitioner (Java clients, aiokafka) puts ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class MixedProducers:
    """Producers of one topic with different partitioners, as different EHR interfaces:

    - ``murmur2``: aiokafka with its default partitioner (as Java clients);
    - ``librdkafka``: a real librdkafka client (``confluent_kafka.Producer``) with its default
      partitioner, ``consistent_random`` (CRC32 of the key);
    - ``random``: a random partition per message;
    - ``explicit``: the partition the sender chose (here: fixed per practice, as an interface
      engine that pins one site to one partition).

    :meth:`send` produces a list of (partitioner, key, value) and returns each message's
    partition as the broker acknowledged it. The librdkafka client connects in plaintext (the
    suite's own broker); the aiokafka ones with the settings' TLS/SASL options."""

    settings: Settings
    seed: int = 0

    def __post_init__(self) -> None:
        import confluent_kafka  # test dependency (pyproject [dev])

        self.topic, self.partitions = self.settings.topics.timelog, self.settings.partitions
        self._rng = random.Random(self.seed)
        self._rdkafka = confluent_kafka.Producer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap_servers,
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )

    def close(self) -> None:
        self._rdkafka.flush(30)

    def explicit_partition(self, value: bytes) -> int:
        practice = _practice_of(value)
        return home_partition(b"site:" + practice.encode(), self.partitions)

    def send(self, batch: Sequence[tuple[Partitioner, bytes, bytes]]) -> list[int]:
        placed: list[int] = [-1] * len(batch)
        errors: list[str] = []

        def report(index: int) -> Callable[[Any, Any], None]:
            def delivered(err: Any, msg: Any) -> None:
                if err is not None:
                    errors.append(str(err))
                else:
                    placed[index] = int(msg.partition())

            return delivered

        aio: list[tuple[int, bytes, bytes, int | None]] = []
        for i, (how, key, value) in enumerate(batch):
            if how == "librdkafka":
                self._rdkafka.produce(self.topic, value, key, on_delivery=report(i))
            elif how == "murmur2":
                aio.append((i, key, value, None))
            elif how == "random":
                aio.append((i, key, value, self._rng.randrange(self.partitions)))
            else:
                aio.append((i, key, value, self.explicit_partition(value)))
        for i, partition in asyncio.run(self._send_aio(aio)):
            placed[i] = partition
        remaining = self._rdkafka.flush(60)
        if errors or remaining or -1 in placed:
            raise RuntimeError(f"produce failed: {errors[:3]}, {remaining} not delivered")
        return placed

    async def _send_aio(
        self, items: Sequence[tuple[int, bytes, bytes, int | None]]
    ) -> list[tuple[int, int]]:
        producer = AIOKafkaProducer(
            **client_kwargs(self.settings), acks="all", enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        try:
            futures = [
                (i, await producer.send(self.topic, v, key=k, partition=p)) for i, k, v, p in items
            ]
            return [(i, (await f).partition) for i, f in futures]
        finally:
            await producer.stop()


def _practice_of(value: bytes) -> str:
    """The practice id of a payload (malformed ones may have none: a fixed fallback)."""
    import json

    try:
        practice = json.loads(value).get("practice_id")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return "unknown"
    return practice if isinstance(practice, str) else "unknown"
