"""The streaming worker through a real Kafka broker, compared with the broker-free core.

Each test runs real ``ccm-tally worker`` processes (aiokafka consumer group) against the session's
broker and checks what a billing consumer relies on: the stream agrees with ``replay`` exactly,
survives restarts, crashes and rebalances without losing or double-counting a minute, and sends
bad input to the dead-letter topic without blocking the patient's later events.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from ccm_core.contracts import MonthCloseCommand
from ccm_core.ingest import LocalTally, Source
from ccm_simulator.generator import SimulationSpec, generate
from ccm_worker.routing import partition_of
from tests.integration.harness import (
    Stack,
    WorkerProcess,
    collect,
    final_records,
    produce,
    produce_enrollment,
    send_close,
    wait_processed,
)
from tests.unit.enrollment_helpers import attestation, consent
from tests.unit.unit_helpers import encode, local
from tests.unit.unit_helpers import log as time_log

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 5, 1, tzinfo=UTC)  # after March's close deadline (month end + 5 days)
CLOSE_ALL_DUE = {
    "command_type": "month_close",
    "command_id": "close-due-test",
    "mode": "due",
    "as_of": AS_OF.isoformat(),
}


def enrolled(patient: str, month: str = "2026-03", year: int = 2026) -> list[dict[str, Any]]:
    """Consent (1 January) and an eligible attestation: the month may bill (rule 7 gates)."""
    recorded = local(1, 9, month=1, year=year)
    return [
        consent(f"{patient}-consent", date(year, 1, 1), patient_id=patient, recorded_at=recorded),
        attestation(f"{patient}-att", month, patient_id=patient, recorded_at=recorded),
    ]


def simulated(patients: int = 120, seed: int = 7) -> list[tuple[bytes, bytes]]:
    spec = SimulationSpec(
        patients=patients,
        staff=12,
        start_month="2026-03",
        months=1,
        seed=seed,
        duplicates=0.05,
        voids=0.05,
        late=0.05,
        malformed=0.02,
    )
    return [(e.key.encode(), e.value) for e in generate(spec)]


def replayed(events: list[tuple[bytes, bytes]]) -> dict[str, list[dict[str, Any]]]:
    """What the core alone says about the same events, closed by the same command."""
    tally = LocalTally()
    out: dict[str, list[dict[str, Any]]] = {
        "threshold": [],
        "billing_record": [],
        "dlq": [],
        "fhir_chargeitem": [],
        "status": [],
    }
    names = {
        "threshold": "threshold",
        "billing_record": "billing_record",
        "rejected": "dlq",
        "fhir_chargeitem": "fhir_chargeitem",
        "status": "status",
    }
    for offset, (_, value) in enumerate(events):
        for o in tally.feed(value, Source("replay", 0, offset)).outputs:
            out[names[o.kind]].append(json.loads(o.to_json()))
    for o in tally.close(MonthCloseCommand.model_validate(CLOSE_ALL_DUE)):
        out[names[o.kind]].append(json.loads(o.to_json()))
    return out


def final_statuses(statuses: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a reader of the compacted status topic ends with: the last status per
    patient-month (the topic's key), as the console's worklist keeps it."""
    latest: dict[str, dict[str, Any]] = {}
    for env in statuses:
        latest[env["subject"]] = env["data"]
    return latest


def events_seen(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ccm_events_total{")
    )


def gauge(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


def dead_letters(dlq: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """Dead letters as a consumer sees them after deduplicating on the envelope id."""
    unique = {d["id"]: d["data"] for d in dlq}
    return Counter((d["reason"], d["original"]) for d in unique.values())


def assert_agrees_with_replay(
    stream: dict[str, list[dict[str, Any]]], core: dict[str, list[dict[str, Any]]]
) -> None:
    # thresholds: the same deterministic ids, each published once
    stream_ids = Counter(e["id"] for e in stream["threshold"])
    assert set(stream_ids) == {e["id"] for e in core["threshold"]}
    # records: same patient-months with the same content
    assert final_records(stream["billing_record"]) == final_records(core["billing_record"])
    # dead letters: the same payloads for the same reasons
    assert dead_letters(stream["dlq"]) == dead_letters(core["dlq"])
    # status feed: every patient-month ends with the same status (the worker may publish only
    # the last of a batch, so the earlier ones are not compared)
    assert final_statuses(stream["status"]) == final_statuses(core["status"])


def test_month_through_stream_matches_replay(kafka_bootstrap: str, tmp_path: Path) -> None:
    events = simulated()
    stack = Stack(kafka_bootstrap)
    stack.create_topics()
    worker = WorkerProcess(stack, tmp_path).start()
    try:
        produce(stack, events)
        wait_processed(stack)
        send_close(stack, CLOSE_ALL_DUE)
        wait_processed(stack)
        stream = collect(stack)
        metrics = worker.metrics()
    finally:
        worker.stop()
    core = replayed(events)
    assert core["billing_record"], "the simulated month must produce records"
    assert_agrees_with_replay(stream, core)
    # nothing published twice in an uneventful run, ids included
    for kind in ("threshold", "billing_record", "dlq"):
        ids = [e["id"] for e in stream[kind]]
        assert len(ids) == len(set(ids)), kind
    # records on the stream are exactly the replay's, revision 0 ids included
    assert {e["id"] for e in stream["billing_record"]} == {e["id"] for e in core["billing_record"]}
    # and so are their FHIR ChargeItems, published with no wiring beyond Topics.output_topic
    assert core["fhir_chargeitem"], "billable records must give ChargeItems"
    assert sorted(map(json.dumps, stream["fhir_chargeitem"])) == sorted(
        map(json.dumps, core["fhir_chargeitem"])
    )
    # every input is accounted for in the metrics
    assert events_seen(metrics) == len(events)
    assert "patient_id" not in metrics  # no PHI as a label
    assert worker.errors() == []


def test_restart_recovers_table_without_duplicates(kafka_bootstrap: str, tmp_path: Path) -> None:
    events = simulated(seed=11)
    half = len(events) // 2
    stack = Stack(kafka_bootstrap)
    stack.create_topics()
    first = WorkerProcess(stack, tmp_path, "first").start()
    try:
        produce(stack, events[:half])
        wait_processed(stack)
    finally:
        first.stop()  # graceful: offsets committed, changelog flushed
    second = WorkerProcess(stack, tmp_path, "second").start()
    try:
        produce(stack, events[half:])
        wait_processed(stack)
        send_close(stack, CLOSE_ALL_DUE)
        wait_processed(stack)
        stream = collect(stack)
    finally:
        second.stop()
    assert_agrees_with_replay(stream, replayed(events))
    ids = [e["id"] for e in stream["threshold"]]
    assert len(ids) == len(set(ids)), "a restart must not republish thresholds"
    assert first.errors() == [] and second.errors() == []


def crash_mid_stream_and_finish(
    stack: Stack, tmp: Path, events: list[tuple[bytes, bytes]], data_dir: Path | None = None
) -> tuple[dict[str, list[dict[str, Any]]], WorkerProcess]:
    """kill -9 a worker while it works through ``events``; a second worker (on the same data
    directory) finishes them and closes every due month. Returns the outputs and the second
    worker (stopped)."""
    first = WorkerProcess(stack, tmp, "crash", data_dir=data_dir).start()
    try:
        produce(stack, events)
        # kill -9 while the worker is still working through the backlog
        deadline = time.monotonic() + 60
        done = 0.0
        while done == 0 and time.monotonic() < deadline:
            done = events_seen(first.metrics())
            time.sleep(0.02)
        first.kill()
    finally:
        first.kill()
    assert 0 < done < len(events), "the crash must come mid-stream"
    second = WorkerProcess(stack, tmp, "after", data_dir=data_dir).start()
    try:
        wait_processed(stack)
        send_close(stack, CLOSE_ALL_DUE)
        wait_processed(stack)
        stream = collect(stack)
    finally:
        second.stop()
    return stream, second


def test_crash_mid_stream_loses_nothing_and_counts_nothing_twice(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = simulated(patients=1500, seed=23)
    stack = Stack(kafka_bootstrap)
    stack.create_topics()
    stream, _ = crash_mid_stream_and_finish(stack, tmp_path, events)
    # Same ids and the same final records as the core: nothing lost, no minute counted twice.
    # At-least-once may re-publish an output after a crash, always with the same id.
    assert_agrees_with_replay(stream, replayed(events))


def test_two_workers_share_partitions_with_same_result(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = simulated(seed=5)
    half = len(events) // 2
    stack = Stack(kafka_bootstrap, partitions=4)
    stack.create_topics()
    a = WorkerProcess(stack, tmp_path, "a").start()
    b: WorkerProcess | None = None
    try:
        produce(stack, events[:half])
        wait_processed(stack)
        b = WorkerProcess(stack, tmp_path, "b").start()  # rebalance: b takes partitions from a
        produce(stack, events[half:])
        wait_processed(stack)
        send_close(stack, CLOSE_ALL_DUE)
        wait_processed(stack)
        stream = collect(stack)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the gauge is refreshed every few seconds
            assigned = sorted(gauge(w.metrics(), "ccm_assigned_partitions") for w in (a, b))
            if assigned == [2.0, 2.0]:
                break
            time.sleep(0.5)
        seen = [events_seen(w.metrics()) for w in (a, b)]
    finally:
        if b is not None:
            b.stop()
        a.stop()
    assert_agrees_with_replay(stream, replayed(events))
    assert assigned == [2.0, 2.0], "the four partitions are split between the workers"
    assert all(n > 0 for n in seen), f"both workers processed input: {seen}"


def test_malformed_event_goes_to_dlq_and_does_not_block_patient(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    def log(i: int, day: int) -> bytes:
        event = time_log(f"m-{i}", local(day), 30, patient_id="pat-dlq", recorded_at=local(31, 12))
        return encode(event)

    bad = [b'{"event_type": "time_logged", "patient_id": "pat-dlq", oops', b"\xff\xfe"]
    events = [
        (b"pat-dlq", log(1, 10)),
        (b"pat-dlq", bad[0]),
        (b"pat-dlq", bad[1]),
        (b"pat-dlq", log(2, 11)),
        (None, log(3, 12)),  # unkeyed: would split the patient's state across partitions
    ]
    stack = Stack(kafka_bootstrap, partitions=2)
    stack.create_topics()
    worker = WorkerProcess(stack, tmp_path).start()
    try:
        produce(stack, events)
        wait_processed(stack)
        stream = collect(stack)
        tally = worker.get("/tally/pat-dlq")
    finally:
        worker.stop()
    reasons = sorted(d["data"]["reason"] for d in stream["dlq"])
    assert reasons == ["invalid_json", "invalid_json", "key_mismatch"]
    for d in stream["dlq"]:
        assert d["data"]["source_topic"] == stack.topics.timelog
    bad_offsets = [
        d["data"]["source_offset"] for d in stream["dlq"] if d["data"]["reason"] == "invalid_json"
    ]
    assert sorted(bad_offsets) == [1, 2]
    assert any(d["data"]["original_base64"] == "//4=" for d in stream["dlq"])
    # the log after the bad ones still counted: 60 minutes reach 99487
    [reached] = stream["threshold"]
    assert (reached["data"]["code"], reached["data"]["triggering_event_id"]) == ("99487", "m-2")
    assert tally["months"][0]["qualifying_minutes"] == 60


def test_timer_closes_due_months_and_late_log_reissues_record(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """No close command: the worker's timer closes March (long past month end + grace) by
    itself; a late log for the closed month then re-issues the record as revision 1."""

    def log(event_id: str, day: int, minutes: int) -> bytes:
        recorded = local(20, 12, month=4)
        return encode(
            time_log(event_id, local(day), minutes, patient_id="pat-timer", recorded_at=recorded)
        )

    stack = Stack(kafka_bootstrap, partitions=2, close_tick_seconds=1.0)
    stack.create_topics()
    worker = WorkerProcess(stack, tmp_path).start()
    try:
        produce_enrollment(stack, [(b"pat-timer", encode(e)) for e in enrolled("pat-timer")])
        wait_processed(stack)
        produce(stack, [(b"pat-timer", log("t-1", 10, 45)), (b"pat-timer", log("t-2", 11, 20))])
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while not records and time.monotonic() < deadline:
            time.sleep(1)
            records = collect(stack)["billing_record"]
        assert [r["data"]["revision"] for r in records] == [0]
        first = records[0]["data"]
        assert first["close_trigger"] == "timer"
        assert first["lines"] == [{"code": "99487", "units": 1}]
        assert first["qualifying_minutes"] == 65

        produce(stack, [(b"pat-timer", log("t-late", 12, 30))])  # 95 minutes: + 99489
        deadline = time.monotonic() + 60
        while len(records) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            records = collect(stack)["billing_record"]
    finally:
        worker.stop()
    assert [r["data"]["revision"] for r in records] == [0, 1]
    late = records[1]["data"]
    assert late["record_id"] == first["record_id"]
    assert late["close_trigger"] == "late_event"
    assert late["lines"] == [{"code": "99487", "units": 1}, {"code": "99489", "units": 1}]
    assert records[0]["id"] != records[1]["id"]


def test_scale_up_and_down_under_load_loses_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    """While time logs keep arriving, a second worker joins and then the first leaves (a
    rolling update): two rebalances mid-stream, and the result is still exactly the core's."""
    events = simulated(patients=1500, seed=31)
    stack = Stack(kafka_bootstrap)
    stack.create_topics()

    rebalanced = threading.Event()
    head = len(events) * 9 // 10
    flowing: list[bool] = []

    def feed() -> None:
        # steady input (50 logs every 0.15 s) until both rebalances are over; the last tenth
        # goes at once after that, so the rebalances always come while input arrives, however
        # slow the machine is to start a worker
        i = 0
        while i < head and not rebalanced.is_set():
            produce(stack, events[i : i + 50])
            i += 50
            time.sleep(0.15)
        flowing.append(i < head)
        produce(stack, events[i:])

    feeder = threading.Thread(target=feed)
    a = WorkerProcess(stack, tmp_path, "a").start()
    b: WorkerProcess | None = None
    try:
        feeder.start()
        deadline = time.monotonic() + 60
        while events_seen(a.metrics()) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        b = WorkerProcess(stack, tmp_path, "b").start()  # joins mid-stream
        seen_a = events_seen(a.metrics())
        a.stop()  # leaves mid-stream: b takes every partition
        rebalanced.set()
        feeder.join()
        input_still_flowing = flowing == [True]
        wait_processed(stack)
        send_close(stack, CLOSE_ALL_DUE)
        wait_processed(stack)
        stream = collect(stack)
        seen_b = events_seen(b.metrics())
    finally:
        rebalanced.set()
        feeder.join()
        if b is not None:
            b.stop()
        a.stop()
    assert input_still_flowing, "both rebalances must happen while input arrives"
    assert seen_a > 0 and seen_b > 0, "both workers processed input"
    assert_agrees_with_replay(stream, replayed(events))
    assert a.errors() == [] and b.errors() == []


def test_tally_lookup_is_answered_by_any_worker(kafka_bootstrap: str, tmp_path: Path) -> None:
    """``/tally/{patient}`` on either worker gives the patient's tally: the worker that does
    not own the patient's partition forwards the look-up to the one that does."""

    def log(patient: str, minutes: int) -> tuple[bytes, bytes]:
        event = time_log(
            f"{patient}-1", local(10), minutes, patient_id=patient, recorded_at=local(10, 12)
        )
        return patient.encode(), encode(event)

    patients = {f"pat-route-{i}": 55 + i for i in range(8)}
    stack = Stack(kafka_bootstrap, partitions=4)
    stack.create_topics()
    a = WorkerProcess(stack, tmp_path, "a").start()
    b = WorkerProcess(stack, tmp_path, "b").start()
    try:
        produce(stack, [log(p, m) for p, m in patients.items()])
        wait_processed(stack)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            owned = [w.get("/readyz") for w in (a, b)]
            if all(o and len(o["partitions"]) == 2 for o in owned):
                break
            time.sleep(0.2)
        answers = {p: (a.get(f"/tally/{p}"), b.get(f"/tally/{p}")) for p in patients}
        unknown = (a.get("/tally/pat-nobody"), b.get("/tally/pat-nobody"))
    finally:
        b.stop()
        a.stop()
    for patient, minutes in patients.items():
        from_a, from_b = answers[patient]
        assert from_a is not None and from_a == from_b, patient
        [month] = from_a["months"]
        assert month["qualifying_minutes"] == minutes
        reached = [line["code"] for line in month["codes_reached"]]
        assert reached == (["99487"] if minutes >= 60 else [])
    assert unknown == (None, None)  # 404 on both
    # both workers own some of these patients, so each answered some look-ups by forwarding
    homes = {partition_of(p, stack.partitions) for p in patients}
    assert all(o and homes & set(o["partitions"]) for o in owned), (homes, owned)


def test_timer_archives_months_past_their_filing_window(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The timer closes March 2024 and, its 12-month filing window long over, archives it: the
    logs leave the table and its changelog, a marker stays. A log for that month is then
    dead-lettered (``month_archived``), also by a fresh worker that recovered the marker."""

    def log(event_id: str, day: int, minutes: int) -> tuple[bytes, bytes]:
        start, recorded = local(day, year=2024), local(29, 12, year=2024)
        event = time_log(event_id, start, minutes, patient_id="pat-old", recorded_at=recorded)
        return b"pat-old", encode(event)

    def dlq_reasons() -> list[str]:
        return [d["data"]["reason"] for d in collect(stack)["dlq"]]

    stack = Stack(kafka_bootstrap, partitions=2, close_tick_seconds=1.0)
    stack.create_topics()
    first = WorkerProcess(stack, tmp_path, "first").start()
    try:
        produce_enrollment(
            stack, [(b"pat-old", encode(e)) for e in enrolled("pat-old", "2024-03", 2024)]
        )
        wait_processed(stack)
        produce(stack, [log("o-1", 10, 45), log("o-2", 11, 20)])
        deadline = time.monotonic() + 60
        archived = None
        while archived != 1.0 and time.monotonic() < deadline:
            time.sleep(0.5)
            archived = first.metric("ccm_patient_months", state="archived")
        produce(stack, [log("o-late", 12, 30)])
        wait_processed(stack)
        reasons_first = dlq_reasons()
    finally:
        first.stop()
    second = WorkerProcess(stack, tmp_path, "second").start()
    try:
        produce(stack, [log("o-later", 13, 30)])
        wait_processed(stack)
        stream = collect(stack)
    finally:
        second.stop()
    assert archived == 1.0
    [record] = [r["data"] for r in stream["billing_record"]]
    assert (record["service_month"], record["revision"], record["close_trigger"]) == (
        "2024-03",
        0,
        "timer",
    )
    assert record["lines"] == [{"code": "99487", "units": 1}]
    assert reasons_first == ["month_archived"]
    assert [d["data"]["reason"] for d in stream["dlq"]] == ["month_archived"] * 2
    assert first.errors() == [] and second.errors() == []


def test_input_from_a_transactional_producer_is_drained_without_a_stall(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """An EHR that writes its logs in Kafka transactions ends each partition with a commit
    marker, an offset without a record that the group never commits past: the input still
    counts as processed, and the stall watchdog does not take it for a stall."""
    events = simulated(patients=60, seed=41)
    stack = Stack(kafka_bootstrap, partitions=2, stall_exit_seconds=6.0)
    stack.create_topics()

    async def produce_in_transactions() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=stack.bootstrap, transactional_id=f"ehr-{stack.name}"
        )
        await producer.start()
        try:
            for i in range(0, len(events), 100):
                async with producer.transaction():
                    for key, value in events[i : i + 100]:
                        await producer.send(stack.topics.timelog, value, key=key)
        finally:
            await producer.stop()

    worker = WorkerProcess(stack, tmp_path, "txn").start()
    try:
        import asyncio

        asyncio.run(produce_in_transactions())
        wait_processed(stack)
        time.sleep(3 * stack.stall_exit_seconds)  # room for the watchdog to misfire
        assert worker.restarts == 0, f"worker exited {worker.exit_codes}:\n{worker.tail()}"
        send_close(stack, CLOSE_ALL_DUE)
        wait_processed(stack)
        stream = collect(stack)
    finally:
        worker.stop()
    assert_agrees_with_replay(stream, replayed(events))
