"""The patched faust-streaming (``ccm_worker.faust_fixes``) on the real broker.

A minimal faust app (``faust_fixes_app.py``: agent + table) reads an input topic written by an
idempotent producer and by a transactional one (one-record transactions, so commit markers sit
right behind records and at committed offsets). Through a first start, a second worker joining
(rebalance, table recovery) and a kill -9 of the first, every record must be processed (no
loss) and the group's committed offset must reach the last record of every partition (no
stall); a commit marker after the last record may stay uncommitted (see
docs/processing-guarantee.md, "faust-streaming fixes").
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 2

Offsets = dict[int, set[int]]  # partition -> offsets


class Run:
    def __init__(self, bootstrap: str, guarantee: str, tmp: Path) -> None:
        name = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.app_id = f"fixes-{name}"
        self.source = f"fixes-{name}-in"
        self.sink = f"fixes-{name}-out"
        self.env = {
            **os.environ,
            "FIXES_APP_ID": self.app_id,
            "FIXES_BOOTSTRAP": bootstrap,
            "FIXES_GUARANTEE": guarantee,
            "FIXES_PARTITIONS": str(PARTITIONS),
            "FIXES_SOURCE": self.source,
            "FIXES_SINK": self.sink,
        }
        self.produced: Offsets = defaultdict(set)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []

    async def create_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(t, PARTITIONS, 1) for t in (self.source, self.sink)]
            )
        finally:
            await admin.close()

    def start_worker(self, label: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{label}.log").open("wb")
        self.logs.append(log)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.faust_fixes_app",
                "worker",
                "-l",
                "info",
                "--without-web",
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        for log in self.logs:
            log.close()

    async def produce(self, partition: int, count: int, *, transactional: bool) -> None:
        """``count`` records to ``partition``; transactional: one transaction per record."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=True,
            acks="all",
            transactional_id=f"{self.app_id}-ehr-{uuid.uuid4().hex[:6]}" if transactional else None,
        )
        await producer.start()
        try:
            for i in range(count):
                key, value = f"p{i}".encode(), f"r{i}".encode()
                if transactional:
                    async with producer.transaction():
                        meta = await (await producer.send(self.source, value, key, partition))
                else:
                    meta = await (await producer.send(self.source, value, key, partition))
                self.produced[partition].add(meta.offset)
        finally:
            await producer.stop()

    async def processed(self) -> Offsets:
        """Every "partition:offset" the app reported on the sink (read_committed)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, isolation_level="read_committed"
        )
        await consumer.start()
        seen: Offsets = defaultdict(set)
        try:
            tps = [TopicPartition(self.sink, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for m in messages:
                        partition, offset = m.value.decode().split(":")
                        seen[int(partition)].add(int(offset))
                positions = [await consumer.position(tp) for tp in tps]
                if all(at >= ends[tp] for at, tp in zip(positions, tps, strict=True)):
                    break
        finally:
            await consumer.stop()
        return seen

    async def committed(self) -> tuple[dict[int, int], dict[int, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await admin.start()
        await consumer.start()
        try:
            tps = [TopicPartition(self.source, p) for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(tps)
            offsets = await admin.list_consumer_group_offsets(self.app_id)
            return (
                {tp.partition: offsets[tp].offset if tp in offsets else -1 for tp in tps},
                {tp.partition: ends[tp] for tp in tps},
            )
        finally:
            await consumer.stop()
            await admin.close()

    async def wait_done(self, timeout: float = 180.0) -> str:
        """Until every produced record was processed and committed; returns the last state."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            dead = [w.args for w in self.workers if w.poll() not in (None, -signal.SIGKILL)]
            assert not dead, f"a worker exited: {dead}"
            seen = await self.processed()
            try:
                committed, ends = await self.committed()
            except KafkaError as exc:  # the group coordinator is not there yet
                state = f"committed offsets not readable yet: {exc!r}"
                await asyncio.sleep(1.0)
                continue
            missing = {p: sorted(self.produced[p] - seen[p]) for p in range(PARTITIONS)}
            behind = {
                p: committed[p]
                for p in range(PARTITIONS)
                if self.produced[p] and committed[p] < max(self.produced[p]) + 1
            }
            state = f"missing={missing} committed={committed} ends={ends} behind={behind}"
            if not any(missing.values()) and not behind:
                extra = {p: sorted(seen[p] - self.produced[p]) for p in range(PARTITIONS)}
                assert not any(extra.values()), f"processed offsets never produced: {extra}"
                return state
            await asyncio.sleep(1.0)
        raise AssertionError(f"not processed and committed after {timeout}s: {state}")


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_patched_faust_loses_nothing_and_commits_past_markers(
    kafka_bootstrap: str, tmp_path: Path, guarantee: str
) -> None:
    run = Run(kafka_bootstrap, guarantee, tmp_path)

    async def scenario() -> list[str]:
        states = []
        await run.create_topics()
        await run.produce(0, 15, transactional=True)  # commit markers behind every record
        await run.produce(1, 30, transactional=False)
        first = run.start_worker("a")
        states.append(await run.wait_done())
        run.start_worker("b")  # a rebalance (and table recovery) on both workers
        await run.produce(0, 20, transactional=False)
        await run.produce(1, 15, transactional=True)
        states.append(await run.wait_done())
        first.send_signal(signal.SIGKILL)  # b takes the whole group over
        await run.produce(0, 10, transactional=True)
        await run.produce(1, 10, transactional=False)
        states.append(await run.wait_done())
        return states

    try:
        states = asyncio.run(scenario())
    except BaseException:
        for log in sorted(tmp_path.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"--- {log.name}\n" + "\n".join(tail))
        raise
    finally:
        run.stop()
    print("\n".join(states))
