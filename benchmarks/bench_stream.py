"""End-to-end stream throughput and latency of ONE worker through a real Kafka broker.

Throughput: a backlog of N simulated time logs (the simulator's realistic mix: logs, late logs,
voids, redeliveries, ~1% malformed) is produced to the input topic first; then
- baseline: a plain aiokafka pass-through (consume the same topic and partitions with its own
  group, produce each value to a pass-through topic on the same partition with the same key,
  acks=all, commit after every batch) is timed from partition assignment until it has
  committed everything;
- worker: a ``ccm-tally worker`` process is started and timed from /readyz (partitions assigned,
  table recovered) until the group's committed offsets reach the end of the input; every output
  is on the broker by then (the worker waits for acks before committing); the outputs are read
  back and counted against the core's own replay of the same events.
Figures: events/s of both, the ratio, the steady-state rate (10%..90% of the committed offsets)
and the time including process start-up.

Latency: after 30 s of transactions that warm the broker up (a broker that has just started
answers transactions several times slower), simulated logs of other patients are produced at a
steady rate (token bucket) to the running worker; every threshold event is matched to its
triggering event id; latency = threshold readable by a consumer - send time of the triggering
event (same host clock), and also up to the output's producer timestamp (when the worker sent
it).

    python benchmarks/bench_stream.py                       # 100,000 events, 30 s at 1,000/s
    python benchmarks/bench_stream.py --profile /tmp/w.txt  # + py-spy on the worker (throughput)
    python benchmarks/bench_stream.py --smoke               # tiny, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from ccm_localkafka import create_topics_sync
from ccm_simulator.generator import SimEvent, SimulationSpec, generate
from ccm_simulator.producer import TokenBucket

if __package__ in (None, ""):  # run as a script: make ``benchmarks.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    Deployment,
    OffsetWatch,
    Profiler,
    Worker,
    broker,
    broker_cpu,
    header,
    percentile,
    produce_all,
    read_values,
    replay,
    running,
    say,
    steady_rate,
    summarize_profile,
    verdict,
    workdir,
)

EVENTS_PER_PATIENT = 4.1  # the simulator's mix: about 4.2 events per patient for one month
WARM_UP_SECONDS = 30.0  # transactions before the latency runs (see run())


def simulated(count: int, seed: int, prefix: str) -> list[SimEvent]:
    patients = max(10, math.ceil(count / EVENTS_PER_PATIENT))
    spec = SimulationSpec(
        patients=patients,
        staff=max(10, patients // 50),
        start_month="2026-03",
        months=1,
        seed=seed,
        id_prefix=prefix,
    )
    events = list(generate(spec))
    while len(events) < count:  # a short draw: top up with another seed
        spec = spec.model_copy(update={"seed": spec.seed + 1000, "id_prefix": prefix + "x"})
        events += list(generate(spec))
    return events[:count]


# ------------------------------------------------------------------------------ baseline


async def passthrough(
    bootstrap: str, source: str, sink: str, total: int, batch: int
) -> tuple[float, float, float]:
    """Consume -> produce -> commit; return (seconds from assignment, from start, CPU s)."""
    assigned_at: list[float] = []

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            return None

        async def on_partitions_assigned(self, assigned: Any) -> None:
            if assigned and not assigned_at:
                assigned_at.append(time.monotonic())

    started = time.monotonic()
    cpu_started = time.process_time()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"passthrough-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    consumer.subscribe([source], listener=Listener())
    await producer.start()
    await consumer.start()
    done = 0
    try:
        while done < total:
            fetched = await consumer.getmany(timeout_ms=500, max_records=batch)
            pending = []
            for tp, messages in fetched.items():
                for m in messages:
                    pending.append(
                        await producer.send(sink, m.value, key=m.key, partition=tp.partition)
                    )
            if pending:
                await asyncio.gather(*pending)
                await consumer.commit()
                done += len(pending)
        finished = time.monotonic()
        cpu = time.process_time() - cpu_started
    finally:
        await consumer.stop()
        await producer.stop()
    return finished - assigned_at[0], finished - started, cpu


# ------------------------------------------------------------------------------ worker


async def worker_pass(
    dep: Deployment, tmp: Path, total: int, profile: Path | None
) -> tuple[Worker, dict[str, float], Profiler | None]:
    """Start a worker over the backlog; time it until everything is committed."""
    worker = Worker(dep, tmp).spawn()
    profiler: Profiler | None = None
    samples: list[tuple[float, int]] = []
    async with OffsetWatch(dep.bootstrap) as watch:
        ready_task = asyncio.create_task(asyncio.to_thread(worker.wait_ready, 120.0, 0.02))
        done_task = asyncio.create_task(
            watch.wait_committed(
                dep.app_id,
                dep.input_partitions(),
                total,
                samples=samples,
                alive=lambda: worker.proc is not None and worker.proc.poll() is None,
            )
        )
        ready_at = await ready_task
        cpu_ready = worker.cpu()
        if profile is not None:
            profiler = Profiler(worker.pid, profile)
            if not profiler.start():
                profiler = None
        done_at = await done_task
        cpu_done = worker.cpu()
        if profiler is not None:
            profiler.stop()
    return (
        worker,
        {
            "startup": ready_at - worker.spawned_at,
            "from_ready": done_at - ready_at,
            "from_spawn": done_at - worker.spawned_at,
            "steady": steady_rate(samples, total),
            "cpu": cpu_done - cpu_ready,
        },
        profiler,
    )


# ------------------------------------------------------------------------------ latency


async def latency(
    dep: Deployment, events: list[SimEvent], rate: float
) -> tuple[list[float], list[float], int, float]:
    """Produce ``events`` at ``rate``; match thresholds to their triggering event's send time.

    Returns (readable latencies, producer-timestamp latencies, unmatched, achieved rate).
    """
    # The benchmark's own heap (the simulated events, tens of thousands of objects) must not
    # stop its producer and reader for full garbage collections during the measurement (seen:
    # 60-160 ms each): it is frozen, as the worker freezes its ledgers.
    gc.collect()
    gc.freeze()
    ids: list[str | None] = []
    for e in events:
        try:
            ids.append(str(json.loads(e.value)["event_id"]))
        except (ValueError, KeyError, TypeError):
            ids.append(None)  # malformed on purpose
    sent: dict[str, float] = {}
    received: list[tuple[str, float, int]] = []

    consumer = AIOKafkaConsumer(  # as a billing consumer must read: committed outputs only
        bootstrap_servers=dep.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    tps = [TopicPartition(dep.topics.threshold, p) for p in range(dep.partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)  # resolve "end" now, before producing
    stop = asyncio.Event()

    async def read() -> None:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for messages in fetched.values():
                for m in messages:
                    data = json.loads(m.value)["data"]
                    received.append((data["triggering_event_id"], now, m.timestamp))

    reader = asyncio.create_task(read())
    producer = AIOKafkaProducer(
        bootstrap_servers=dep.bootstrap, acks="all", enable_idempotence=True, linger_ms=0
    )
    await producer.start()
    bucket = TokenBucket(rate)
    pending = []
    started = time.monotonic()
    try:
        for event, event_id in zip(events, ids, strict=True):
            await bucket.take()
            now = time.time()
            if event_id is not None:
                sent.setdefault(event_id, now)  # a redelivery keeps the first send time
            pending.append(
                await producer.send(dep.topics.timelog, event.value, key=event.key.encode())
            )
        await asyncio.gather(*pending)
        achieved = len(events) / (time.monotonic() - started)
        quiet_since = time.monotonic()
        seen = len(received)
        while time.monotonic() - quiet_since < 3.0:  # let the last thresholds arrive
            await asyncio.sleep(0.2)
            if len(received) != seen:
                seen, quiet_since = len(received), time.monotonic()
    finally:
        stop.set()
        await reader
        await producer.stop()
        await consumer.stop()
    readable, produced = [], []
    unmatched = 0
    for event_id, at, timestamp_ms in received:
        sent_at = sent.get(event_id)
        if sent_at is None:
            unmatched += 1
            continue
        readable.append(at - sent_at)
        produced.append(timestamp_ms / 1000 - sent_at)
    return readable, produced, unmatched, achieved


async def transaction_floor(
    bootstrap: str, partitions: int, seconds: float, prefix: str
) -> tuple[list[float], int]:
    """Kafka's own floor under the worker's latency, in this run: one transactional producer
    per partition (as the worker has, one per input partition), each cycling as fast as it can
    through what a worker batch does: begin, send 5 records, send the consumed offsets to the
    transaction, commit. Returns every cycle's seconds and the number of cycles."""
    topic, source, group = f"{prefix}.txnfloor", f"{prefix}.txnfloor.in", f"{prefix}-txnfloor"
    create_topics_sync(bootstrap, {topic: partitions, source: partitions})
    producers = [
        AIOKafkaProducer(
            bootstrap_servers=bootstrap, transactional_id=f"{group}-{p}", acks="all", linger_ms=2
        )
        for p in range(partitions)
    ]
    for producer in producers:
        await producer.start()
    cycles: list[float] = []
    deadline = time.monotonic() + seconds

    async def cycle(p: int, producer: AIOKafkaProducer) -> None:
        offset = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with producer.transaction():
                sent = [await producer.send(topic, b"x" * 300, partition=p) for _ in range(5)]
                await asyncio.gather(*sent)
                offset += 5
                await producer.send_offsets_to_transaction(
                    {TopicPartition(source, p): offset}, group
                )
            cycles.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(cycle(p, producer) for p, producer in enumerate(producers)))
    finally:
        for producer in producers:
            await producer.stop()
    return cycles, len(cycles)


# ------------------------------------------------------------------------------ main


def batches(worker: Worker) -> tuple[float, float, float]:
    """(batches, events, seconds in process_batch) so far, from the worker's metrics."""
    text = worker.metrics()

    def value(name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    return (
        value("ccm_batch_events_count"),
        value("ccm_batch_events_sum"),
        value("ccm_event_processing_seconds_sum"),
    )


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def _us(cpu: float | None, n: int) -> str:
    return "n/a" if cpu is None else f"{1e6 * cpu / n:.0f} us"


def describe_batches(before: tuple[float, float, float], after: tuple[float, float, float]) -> str:
    n, events, seconds = (a - b for a, b in zip(after, before, strict=True))
    if not n:
        return "none"
    return (
        f"{n:,.0f} batches, mean {events / n:,.0f} events and "
        f"{1000 * seconds / n:.1f} ms in process_batch per batch"
    )


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> None:
    say(f"simulating {args.events} events")
    events = simulated(args.events, args.seed, "sim")
    kinds = Counter(e.kind for e in events)
    _, want = replay(events)
    dep = Deployment(bootstrap, partitions=args.partitions)
    dep.create_topics()
    stats = await produce_all(bootstrap, dep.topics.timelog, events)
    print(
        f"backlog: {len(events):,} events ({', '.join(f'{k} {n}' for k, n in kinds.items())}) "
        f"on {dep.partitions} partitions, produced at {stats.rate:,.0f} events/s"
    )

    # The benchmark's heap (100,000 simulated events) is frozen before the pass-through runs
    # in this process: its full collections (1.7 s of them without this) slowed the baseline.
    gc.collect()
    gc.freeze()
    sink = f"{dep.name}.passthrough"
    create_topics_sync(bootstrap, {sink: dep.partitions})
    say("pass-through baseline")
    broker0 = broker_cpu()
    base_ready, base_all, base_cpu = await passthrough(
        bootstrap, dep.topics.timelog, sink, len(events), args.batch
    )
    base_rate = len(events) / base_ready
    base_broker = _delta(broker_cpu(), broker0)

    say("worker")
    broker0 = broker_cpu()
    worker, w, profiler = await worker_pass(dep, tmp, len(events), args.profile)
    worker_broker = _delta(broker_cpu(), broker0)
    try:
        after_backlog = batches(worker)
        worker_rate = len(events) / w["from_ready"]
        out = await read_values(bootstrap, dep.output_partitions())
        t = dep.topics
        got = {k: len(out[name]) for k, name in (("threshold", t.threshold), ("dlq", t.dlq))}
        print(
            f"pass-through baseline: {base_rate:>9,.0f} events/s  "
            f"({base_ready:.2f} s from assignment; {base_all:.2f} s incl. client start)"
        )
        print(
            f"worker (1 process)   : {worker_rate:>9,.0f} events/s  "
            f"({w['from_ready']:.2f} s from /readyz; start-up {w['startup']:.1f} s; "
            f"{len(events) / w['from_spawn']:,.0f} events/s incl. start-up)"
        )
        print(f"worker steady state  : {w['steady']:>9,.0f} events/s  (10%..90% committed)")
        n = len(events)
        print(
            f"CPU per event: pass-through {1e6 * base_cpu / n:.0f} us (broker "
            f"{_us(base_broker, n)}), worker {1e6 * w['cpu'] / n:.0f} us (broker "
            f"{_us(worker_broker, n)}); worker CPU {w['cpu']:.1f} s over {w['from_ready']:.1f} s"
        )
        print(f"  worker batches: {describe_batches((0, 0, 0), after_backlog)}")
        print(
            f"ratio worker/pass-through: {worker_rate / base_rate:.2f}  "
            f"[target >= 0.33 of pass-through {verdict(worker_rate >= 0.33 * base_rate)}]"
        )
        print(
            f"outputs read back: {got['threshold']:,} thresholds (replay {want['threshold']:,}), "
            f"{got['dlq']:,} dead letters (replay {want['rejected']:,})"
        )
        if profiler is not None:
            for line in summarize_profile(profiler.out, seconds=profiler.seconds):
                print(line)

        if args.latency_seconds > 0:
            count = int(args.rate * args.latency_seconds)
            # A broker that has just started answers transactions slowly until its JIT has
            # compiled their paths: the floor's p50 went 28.6, 17.1, 16.8, 9.6, 6.3, 4.8 ms in
            # consecutive 5 s windows from the start (2026-12-08). Measured on a cold broker,
            # the first latency run was p50 40 ms, p99 156 ms against 25 ms, 82 ms for the
            # same events a minute later. A production broker is warm: warm it up first.
            warm_seconds = 0.0 if args.smoke else WARM_UP_SECONDS
            if warm_seconds:
                say(f"warming the broker up: {warm_seconds:.0f} s of transactions")
                await transaction_floor(bootstrap, dep.partitions, warm_seconds, dep.name + "w")
            floor_seconds = min(10.0, args.latency_seconds)
            say(f"Kafka transaction floor: {dep.partitions} transactional producers")
            cycles, n_cycles = await transaction_floor(
                bootstrap, dep.partitions, floor_seconds, dep.name
            )
            floor = [1000 * x for x in cycles]
            print(
                f"  Kafka transaction cycle, {dep.partitions} producers side by side (begin, "
                f"5 sends, offsets, commit; no worker code), {n_cycles:,} cycles: "
                f"p50 {percentile(floor, 50):6.1f} ms  p99 {percentile(floor, 99):6.1f} ms"
            )
            say(f"latency: {count} events at {args.rate:,.0f}/s")
            lat_events = simulated(count, args.seed + 1, "lat")
            before = batches(worker)
            cpu_before, wall_before = worker.cpu(), time.monotonic()
            lat_profiler = None
            if args.profile is not None:
                lat_profiler = Profiler(worker.pid, args.profile.with_suffix(".latency.txt"))
                if not lat_profiler.start():
                    lat_profiler = None
            readable, produced, unmatched, achieved = await latency(dep, lat_events, args.rate)
            if lat_profiler is not None:
                lat_profiler.stop()
            after = batches(worker)
            busy = (worker.cpu() - cpu_before) / (time.monotonic() - wall_before)
            ms = [1000 * x for x in readable]
            ms_out = [1000 * x for x in produced]
            print(
                f"latency at {achieved:,.0f} events/s for {count / achieved:.0f} s: "
                f"{len(ms):,} thresholds matched ({unmatched} unmatched)"
            )
            print(
                f"  send -> threshold readable : p50 {percentile(ms, 50):6.1f} ms  "
                f"p99 {percentile(ms, 99):6.1f} ms  max {max(ms, default=float('nan')):6.1f} ms  "
                f"[target p99 <= 100 ms {verdict(percentile(ms, 99) <= 100)}]"
            )
            print(
                f"  send -> threshold produced : p50 {percentile(ms_out, 50):6.1f} ms  "
                f"p99 {percentile(ms_out, 99):6.1f} ms  (output's producer timestamp)"
            )
            print(
                f"  worker batches: {describe_batches(before, after)}; "
                f"worker CPU {100 * busy:.0f}% of one core"
            )
            if lat_profiler is not None:
                print("latency phase:")
                for line in summarize_profile(lat_profiler.out, seconds=lat_profiler.seconds):
                    print(line)
            say("latency again: a fresh worker and topics, no backlog before")
            fresh = Deployment(bootstrap, partitions=args.partitions)
            fresh.create_topics()
            (tmp / "fresh").mkdir(exist_ok=True)
            with running(Worker(fresh, tmp / "fresh").start()) as (fresh_worker,):
                cpu_before, wall_before = fresh_worker.cpu(), time.monotonic()
                again, produced_again, _, achieved_again = await latency(
                    fresh, lat_events, args.rate
                )
                busy = (fresh_worker.cpu() - cpu_before) / (time.monotonic() - wall_before)
            ms_again = [1000 * x for x in again]
            ms_out = [1000 * x for x in produced_again]
            print(
                f"  same events, fresh worker  : p50 {percentile(ms_again, 50):6.1f} ms  "
                f"p99 {percentile(ms_again, 99):6.1f} ms  max "
                f"{max(ms_again, default=float('nan')):6.1f} ms  ({len(ms_again):,} matched at "
                f"{achieved_again:,.0f} events/s)"
            )
            print(
                f"  fresh worker, produced     : p50 {percentile(ms_out, 50):6.1f} ms  "
                f"p99 {percentile(ms_out, 99):6.1f} ms; worker CPU {100 * busy:.0f}% of one core"
            )
        errors = worker.errors()
        if errors:
            print(f"worker log errors: {errors[:3]}")
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="backlog size (100,000)")
    parser.add_argument("--partitions", type=int, default=8, help="input partitions (8)")
    parser.add_argument("--batch", type=int, default=2000, help="pass-through batch (2000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency phase events/s")
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="0 to skip")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", type=Path, help="py-spy raw output of the worker pass")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.events, args.latency_seconds, args.rate = 2000, 3.0, 200.0
    header("bench_stream: end-to-end throughput and latency of one worker")
    with broker() as bootstrap, workdir("ccm-bench-stream-") as tmp:
        asyncio.run(run(args, bootstrap, tmp))


if __name__ == "__main__":
    main()
