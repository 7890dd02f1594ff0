"""The reliability suite: real worker processes and a real broker, under kill -9, pause,
broker restarts, any producer partitioner and rolling scaling, compared with replay.

Each scenario feeds simulated months of time logs, does its damage while they flow, closes
every month, reads every output topic with ``read_committed`` and compares with the oracle
(``tests/reliability/oracle.py``: ``ccm-tally replay`` on the same inputs). The figures are
printed at the end of the session; every data figure must be 0.

Engine-agnostic: only :class:`WorkerProcess` (spawn, SIGKILL, SIGSTOP/SIGCONT, SIGTERM), the
topics, the group's committed offsets, ``/readyz``, ``/tally`` and ``/metrics`` are used.
Sizes: ``CCM_RELIABILITY_SIZE=smoke|full`` (``conftest.py``). ``docs/reliability.md``.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from ccm_core.contracts import MonthCloseCommand
from ccm_simulator.generator import SimulationSpec, generate
from tests.integration.harness import Stack, WorkerProcess, collect, send_close
from tests.reliability.chaos import (
    PARTITIONERS,
    Feeder,
    MixedProducers,
    Partitioner,
    committed_lag,
    end_offsets,
    group_state,
    home_partition,
    lagging,
    seconds_until_committed,
    target_after,
    wait_all_committed,
)
from tests.reliability.conftest import Size
from tests.reliability.oracle import Expected, Figures, compare, replay, rounds, tally_view

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]

RECOVERY_TIMEOUT = 240.0  # seconds a recovery may take before it counts as not recovered
DRAIN_TIMEOUT = 300.0  # seconds for the group to commit every input at the end


def simulation(patients: int, months: int, seed: int) -> SimulationSpec:
    return SimulationSpec(
        patients=patients,
        staff=max(6, patients // 25),
        start_month="2026-03",
        months=months,
        seed=seed,
        duplicates=0.05,
        voids=0.05,
        late=0.05,
        malformed=0.02,
    )


def simulated(patients: int, months: int, seed: int) -> list[tuple[bytes, bytes]]:
    """Simulated EHR input (duplicates, voids, late and malformed events), in arrival order."""
    return [(e.key.encode(), e.value) for e in generate(simulation(patients, months, seed))]


def arrivals(patients: int, months: int, seed: int) -> list[int]:
    """Arrival time (epoch seconds) of each event of :func:`simulated` with the same args."""
    return [e.at for e in generate(simulation(patients, months, seed))]


def close_due(as_of: datetime, command_id: str) -> MonthCloseCommand:
    return MonthCloseCommand.model_validate(
        {
            "command_type": "month_close",
            "command_id": command_id,
            "mode": "due",
            "as_of": as_of.isoformat(),
        }
    )


FINAL_CLOSE = close_due(datetime(2026, 9, 1, tzinfo=UTC), "reliability-final-close")
"""Closes every simulated month (March and April 2026; the last late logs arrive in June)."""


def alive(w: WorkerProcess | None) -> bool:
    return w is not None and w.proc is not None and w.proc.poll() is None


def metric_sum(text: str, name: str) -> float | None:
    """Sum of every sample of ``name`` (any labels) in an exposition; None when absent."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    ]
    return sum(values) if values else None


def sent_at_least(feeder: Feeder, n: int) -> bool:
    return feeder.sent >= n


def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()


def tally_answers(
    workers: Sequence[WorkerProcess], expected: Expected
) -> dict[str, dict[str, Any] | None]:
    """Every patient's ``/tally`` from every worker; a patient whose answers disagree between
    workers keeps the first that differs from the replay (so it is counted)."""
    answers: dict[str, dict[str, Any] | None] = {}
    for pid in expected.summaries:
        seen = [w.get(f"/tally/{pid}") for w in workers]
        want = tally_view(expected.summaries[pid])
        answers[pid] = next(
            (a for a in seen if a is None or tally_view(a.get("months", [])) != want), seen[0]
        )
    return answers


def finish(
    stack: Stack,
    figures: Figures,
    inputs: Sequence[bytes],
    tally_from: Sequence[WorkerProcess] = (),
) -> Figures:
    """Drain, close every month, read every output (read_committed), compare with replay."""

    def anyone_alive() -> bool:
        return any(alive(w) for w in tally_from)

    wait_all_committed(stack.settings, DRAIN_TIMEOUT, anyone_alive)
    send_close(stack, FINAL_CLOSE.model_dump(mode="json"))
    figures.unprocessed = wait_all_committed(stack.settings, DRAIN_TIMEOUT, anyone_alive)
    stream = collect(stack)
    expected = replay(inputs, FINAL_CLOSE)
    live = [w for w in tally_from if alive(w)]
    if tally_from:
        # a worker that just rejoined may still be recovering its share of the table
        wait_for(lambda: all(w.ready() for w in live), 120, 0.5)
    tally: dict[str, Any] | None = None
    if tally_from:  # no live worker: no patient gets an answer
        tally = tally_answers(live, expected) if live else dict.fromkeys(expected.summaries)
    return compare(figures, stream, expected, tally)


def check(figures: Figures, workers: Sequence[WorkerProcess]) -> None:
    bad = figures.failing()
    logs = "\n".join(f"{w.log_path}" for w in workers)
    assert not bad, f"{figures.line()}\nworker logs:\n{logs}"


@contextmanager
def cleanup(workers: list[WorkerProcess]) -> Iterator[None]:
    try:
        yield
    finally:
        for w in workers:
            if alive(w):
                os.kill(w.pid, signal.SIGCONT)  # a paused worker must be able to stop
                w.stop(timeout=20)


# ----------------------------------------------------------------------------- scenarios


def test_random_kill_9_under_steady_input(
    kafka_bootstrap: str, tmp_path: Path, size: Size, record: Callable[[Figures], None]
) -> None:
    """``size.kills`` kill -9 at random moments while input flows, with one or two workers
    alive (the survivor takes the partitions over: rebalances), one of them right after a
    month-close command. Each recovery is timed from the kill until every input present at
    the kill, and the first that arrived after it on every partition, is committed."""
    rng = random.Random(20261201)
    events = simulated(size.kill_patients, 2, seed=41)
    at = arrivals(size.kill_patients, 2, seed=41)
    # March closes due as of April 6 (month end + 5 days grace): sent when the input reaches it
    mid_as_of = datetime(2026, 4, 6, 12, tzinfo=UTC)
    close_index = next(i for i, t in enumerate(at) if t >= mid_as_of.timestamp())
    stack = Stack(kafka_bootstrap, partitions=4)
    stack.create_topics()
    figures = Figures("kill -9", events_in=len(events))
    workers: list[WorkerProcess] = []
    slots: list[WorkerProcess | None] = [None, None]
    spawned = 0

    def spawn(slot: int) -> None:
        nonlocal spawned
        spawned += 1
        w = WorkerProcess(stack, tmp_path, f"k{spawned}")
        workers.append(w)
        slots[slot] = w
        w.spawn()

    with cleanup(workers):
        for slot in (0, 1):
            spawn(slot)
        for w in list(workers):
            w.wait_ready()
        planned = size.kills * 12.0  # seconds of input: about one kill and recovery each
        feeder = Feeder(stack.settings, events, len(events) / planned)
        feeder.start()
        close_sent = False
        timeouts = 0
        one_alive_kills = 0
        under_input = 0
        for _ in range(size.kills):
            time.sleep(rng.uniform(0.5, 3.0))
            if not close_sent and feeder.sent >= close_index:
                send_close(stack, close_due(mid_as_of, "reliability-mid-close").model_dump())
                close_sent = True
                time.sleep(rng.uniform(0.0, 0.3))  # the kill lands while the close is handled
            live = [i for i, w in enumerate(slots) if alive(w)]
            victim = rng.choice(live)
            at_kill = end_offsets(stack.settings)
            under_input += feeder.sent < len(events)
            t0 = time.monotonic()
            victim_worker = slots[victim]
            assert victim_worker is not None
            victim_worker.kill()
            slots[victim] = None
            if len(live) == 1:
                one_alive_kills += 1
            if len(live) == 2 and rng.random() < 0.5:
                pass  # the other worker alone takes every partition over
            else:
                for i in (0, 1):
                    if not alive(slots[i]):
                        spawn(i)
            target = target_after(stack.settings, at_kill)
            took = seconds_until_committed(
                stack.settings, target, t0, RECOVERY_TIMEOUT, lambda: any(map(alive, slots))
            )
            if took is None:
                timeouts += 1
                figures.notes.setdefault("lagging at each timeout", []).append(
                    lagging(stack.settings, target)
                )
            else:
                figures.recover_seconds.append(took)
        for i in (0, 1):
            if not alive(slots[i]):
                spawn(i)
        feeder.join()
        if not close_sent:
            send_close(stack, close_due(mid_as_of, "reliability-mid-close").model_dump())
        figures.notes["kills with one worker alive"] = one_alive_kills
        figures.notes["recoveries timed out"] = timeouts
        figures.notes["kills while input flowed"] = under_input
        assert feeder.error is None, feeder.error
        finish(stack, figures, [v for _, v in events], [w for w in slots if w is not None])
    record(figures)
    check(figures, workers)
    assert timeouts == 0, f"{timeouts} recoveries took over {RECOVERY_TIMEOUT}s"


def test_paused_worker_is_fenced(
    kafka_bootstrap: str, tmp_path: Path, size: Size, record: Callable[[Figures], None]
) -> None:
    """``size.pauses`` times, the two workers in turn: SIGSTOP one while a backlog reaches it,
    past the session timeout; the other takes its partitions over and drains them while input
    goes on; a second backlog arrives just before SIGCONT, so the paused worker wakes up with
    input to apply to the ledgers it held; it rejoins. No wrong record, no output id with two
    contents, and no stale ledger: ``/tally`` of every patient, from both workers, equals the
    replay's ledger."""
    events = simulated(size.pause_patients, 1, seed=43)
    stack = Stack(kafka_bootstrap, partitions=4)
    stack.create_topics()
    settings = stack.settings
    figures = Figures(f"pause (SIGSTOP/SIGCONT) x{size.pauses}", events_in=len(events))
    workers: list[WorkerProcess] = []
    with cleanup(workers):
        a = WorkerProcess(stack, tmp_path, "a")
        b = WorkerProcess(stack, tmp_path, "b")
        workers += [a, b]
        a.start()
        b.start()
        wait_for(lambda: group_state(settings) == ("Stable", 2), 60, 0.2)
        backlog = len(events) // (5 * size.pauses)  # two backlogs a pause: 40 % of the input
        pause_for = 2.5 * settings.session_timeout_seconds
        steady = len(events) - 2 * backlog * size.pauses
        rate = steady / (size.pauses * (pause_for + 20))
        feeder = Feeder(stack.settings, events, rate, 20)
        feeder.start()
        paused, took_over_all = [], True
        for cycle in range(size.pauses):
            victim, other = (a, b) if cycle % 2 == 0 else (b, a)
            wait_for(lambda: group_state(settings) == ("Stable", 2), RECOVERY_TIMEOUT, 0.2)
            at_pause = end_offsets(settings)
            until = feeder.burst(backlog)
            wait_for(partial(sent_at_least, feeder, until), 60, 0.005)
            os.kill(victim.pid, signal.SIGSTOP)  # the backlog is being fetched or applied
            paused_at = time.monotonic()
            target = target_after(settings, at_pause)
            # the victim is expelled after the session timeout; the other owns every partition
            took_over = wait_for(
                lambda: group_state(settings) == ("Stable", 1), RECOVERY_TIMEOUT, 0.2
            )
            took_over_all &= took_over
            drained = seconds_until_committed(
                settings, target, paused_at, RECOVERY_TIMEOUT, partial(alive, other)
            )
            figures.recover_seconds.append(drained if drained is not None else float("inf"))
            time.sleep(max(0.0, pause_for - (time.monotonic() - paused_at)))
            until = feeder.burst(backlog)
            wait_for(partial(sent_at_least, feeder, until), 60, 0.005)
            os.kill(victim.pid, signal.SIGCONT)
            paused.append(round(time.monotonic() - paused_at, 1))
        figures.notes["paused seconds"] = paused
        figures.notes["other worker took every partition each time"] = took_over_all
        feeder.join()
        assert feeder.error is None, feeder.error
        finish(stack, figures, [v for _, v in events], [a, b])
    record(figures)
    check(figures, workers)
    assert took_over_all, "the other worker must take every partition over"
    assert all(s != float("inf") for s in figures.recover_seconds), "a take-over never drained"


def test_broker_restart_mid_stream(
    tmp_path: Path, size: Size, record: Callable[[Figures], None]
) -> None:
    """The broker stops while input flows and comes back on the same address with its data:
    once with SIGTERM (controlled shutdown), once with SIGKILL, each ``broker_down_seconds``
    down. Workers must ride it out and resume; recovery is timed from the broker's return
    until every input present at the stop, and the first that arrived after the return on
    every partition, is committed."""
    from ccm_localkafka import LocalKafka

    events = simulated(size.broker_patients, 1, seed=47)
    kafka = LocalKafka()
    kafka.start()
    workers: list[WorkerProcess] = []
    figures = Figures("broker restart", events_in=len(events))
    try:
        stack = Stack(kafka.bootstrap_servers, partitions=4)
        stack.create_topics()
        with cleanup(workers):
            a = WorkerProcess(stack, tmp_path, "a")
            b = WorkerProcess(stack, tmp_path, "b")
            workers += [a, b]
            a.start()
            b.start()
            feeder = Feeder(stack.settings, events, len(events) / 40)
            feeder.start()

            def fed(n: float) -> Callable[[], bool]:
                return lambda: feeder.sent >= n

            lags = []
            for (kill, down), share in zip(
                ((False, size.broker_down_seconds[0]), (True, size.broker_down_seconds[1])),
                (0.3, 0.6),
                strict=True,
            ):
                wait_for(fed(share * len(events)), 120, 0.05)
                feeder.hold.set()
                wait_for(feeder.holding.is_set, 60, 0.01)
                at_stop = end_offsets(stack.settings)
                lags.append(committed_lag(stack.settings, at_stop))
                kafka.stop(kill=kill, keep_data=True)
                time.sleep(down)
                kafka.start()
                back = time.monotonic()
                feeder.hold.clear()
                target = target_after(stack.settings, at_stop, timeout=15)
                took = seconds_until_committed(
                    stack.settings, target, back, RECOVERY_TIMEOUT, lambda: any(map(alive, (a, b)))
                )
                figures.recover_seconds.append(took if took is not None else float("inf"))
            feeder.join()
            assert feeder.error is None, feeder.error
            figures.notes["down seconds (SIGTERM, SIGKILL)"] = list(size.broker_down_seconds)
            figures.notes["uncommitted inputs at each stop"] = lags
            figures.notes["worker restarts (stall exits)"] = sum(w.restarts for w in workers)
            figures.notes["workers alive at the end"] = sum(alive(w) for w in workers)
            finish(stack, figures, [v for _, v in events], [a, b])
    finally:
        kafka.stop()
    record(figures)
    check(figures, workers)
    assert all(s != float("inf") for s in figures.recover_seconds), "no recovery"


def test_mixed_producer_partitioners(
    kafka_bootstrap: str, tmp_path: Path, size: Size, record: Callable[[Figures], None]
) -> None:
    """One topic fed by aiokafka (murmur2), a real librdkafka client (CRC32
    ``consistent_random``), random partitions, explicit partitions, and per-event mixes of
    them: the results must equal replay and ``/tally`` must answer for every patient.

    Produced round by round (each patient's r-th event in round r, each round committed
    before the next), so every patient's events keep their produced order whatever partition
    they land on; replay applies them in that order."""
    rng = random.Random(7)
    events = simulated(size.partitioner_patients, 1, seed=53)
    stack = Stack(kafka_bootstrap, partitions=4)
    stack.create_topics()
    figures = Figures("mixed partitioners", events_in=len(events))
    groups: tuple[Partitioner | None, ...] = (*PARTITIONERS, None)  # None: a mix per event
    patient_group = {key: rng.choice(groups) for key, _ in events}
    workers: list[WorkerProcess] = []
    producers = MixedProducers(stack.settings, seed=3)
    misplaced = 0
    used: dict[str, int] = dict.fromkeys(PARTITIONERS, 0)
    order: list[bytes] = []
    with cleanup(workers):
        a = WorkerProcess(stack, tmp_path, "a")
        b = WorkerProcess(stack, tmp_path, "b")
        workers += [a, b]
        a.start()
        b.start()
        unprocessed_rounds = 0
        for indexes in rounds(events):
            batch: list[tuple[Partitioner, bytes, bytes]] = []
            for i in indexes:
                key, value = events[i]
                chosen = patient_group[key]
                how = chosen if chosen is not None else rng.choice(PARTITIONERS)
                used[how] += 1
                batch.append((how, key, value))
                order.append(value)
            placed = producers.send(batch)
            misplaced += sum(
                1
                for (_, key, _), p in zip(batch, placed, strict=True)
                if p != home_partition(key, stack.partitions)
            )
            if wait_all_committed(stack.settings, 60, lambda: alive(a) or alive(b)) != 0:
                unprocessed_rounds += 1
        producers.close()
        rerouted = [metric_sum(w.metrics(), "ccm_rerouted_records_total") for w in (a, b)]
        figures.notes["sent per partitioner"] = used
        figures.notes["inputs off their key's murmur2 partition"] = misplaced
        figures.notes["ccm_rerouted_records_total"] = (
            "absent" if all(r is None for r in rerouted) else sum(r or 0 for r in rerouted)
        )
        figures.notes["rounds not drained in 60 s"] = unprocessed_rounds
        finish(stack, figures, order, [a, b])
    record(figures)
    check(figures, workers)
    assert misplaced > 0, "the mix must put records off their key's murmur2 partition"


def test_rolling_scale_up_and_down(
    kafka_bootstrap: str, tmp_path: Path, size: Size, record: Callable[[Figures], None]
) -> None:
    """Workers join one by one and leave one by one (SIGTERM, oldest first, as a rolling
    update) while input flows; each step is timed until every input present at the step,
    and the first that arrived after it on every partition, is committed."""
    events = simulated(size.scale_patients, 1, seed=59)
    stack = Stack(kafka_bootstrap, partitions=4)
    stack.create_topics()
    figures = Figures("rolling scale " + "->".join(map(str, (1, *size.scale_steps))))
    figures.events_in = len(events)
    workers: list[WorkerProcess] = []
    running: list[WorkerProcess] = []
    with cleanup(workers):
        first = WorkerProcess(stack, tmp_path, "s0").start()
        workers.append(first)
        running.append(first)
        planned = 12.0 * len(size.scale_steps) + 6
        feeder = Feeder(stack.settings, events, len(events) / planned)
        feeder.start()
        time.sleep(3)
        for step, count in enumerate(size.scale_steps, start=1):
            before = end_offsets(stack.settings)
            t0 = time.monotonic()
            while len(running) < count:
                w = WorkerProcess(stack, tmp_path, f"s{step}")
                w.spawn()
                workers.append(w)
                running.append(w)
            while len(running) > count:
                running.pop(0).stop()
            target = target_after(stack.settings, before)
            took = seconds_until_committed(
                stack.settings, target, t0, RECOVERY_TIMEOUT, lambda: any(map(alive, running))
            )
            figures.recover_seconds.append(took if took is not None else float("inf"))
            time.sleep(2)
        figures.notes["input still flowing at the last step"] = feeder.is_alive()
        feeder.join()
        assert feeder.error is None, feeder.error
        finish(stack, figures, [v for _, v in events], running)
    record(figures)
    check(figures, workers)
    assert all(s != float("inf") for s in figures.recover_seconds), "a step never recovered"
