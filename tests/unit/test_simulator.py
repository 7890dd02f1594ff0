"""The EHR simulator: deterministic, valid where meant to be, broken where meant to be, realistic.

No Kafka here: the producer is exercised against a fake with aiokafka's batch API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from ccm_core.contracts import (
    INPUT_ADAPTER,
    NEVER_LICENSED_ROLES,
    BillingRecord,
    Outcome,
    TimeLogged,
    TimeLogVoided,
)
from ccm_core.ingest import LocalTally, Processed, Source, decode
from ccm_core.months import close_deadline, local_month, month_end
from ccm_simulator import generator as gen
from ccm_simulator.__main__ import add_simulator_args, run_simulator
from ccm_simulator.generator import (
    EVENT_KINDS,
    MALFORMED_VARIANTS,
    SimEvent,
    SimulationSpec,
    generate,
)
from ccm_simulator.producer import ProduceStats, TokenBucket, produce

TZ = "America/Detroit"
SPEC = SimulationSpec(
    patients=600,
    staff=40,
    months=2,
    start_month="2026-03",  # crosses the DST change in March
    seed=11,
    duplicates=0.05,
    voids=0.06,
    late=0.08,
    malformed=0.05,
    midnight=0.05,
)
AS_OF = datetime(2026, 12, 31, tzinfo=UTC)


@dataclass
class Fed:
    events: list[SimEvent]
    processed: list[Processed]
    records: list[BillingRecord]


@pytest.fixture(scope="module")
def events() -> list[SimEvent]:
    return list(generate(SPEC))


@pytest.fixture(scope="module")
def fed(events: list[SimEvent]) -> Fed:
    tally = LocalTally()
    processed = [tally.feed(e.value, Source("sim", 0, i)) for i, e in enumerate(events)]
    records = [
        o.envelope.data
        for o in tally.close_all(AS_OF)
        if isinstance(o.envelope.data, BillingRecord)
    ]
    return Fed(events, processed, records)


def _valid(events: list[SimEvent]) -> Iterator[tuple[SimEvent, TimeLogged | TimeLogVoided]]:
    for e in events:
        if e.kind not in ("malformed", "enrollment"):  # enrollment: own topic and tests
            yield e, INPUT_ADAPTER.validate_json(e.value)


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_events_byte_for_byte() -> None:
    spec = SPEC.model_copy(update={"patients": 150})
    first, second = list(generate(spec)), list(generate(spec))
    assert first == second
    other = list(generate(spec.model_copy(update={"seed": 12})))
    assert [e.value for e in other] != [e.value for e in first]


def test_events_come_in_arrival_order(events: list[SimEvent]) -> None:
    arrivals = [e.at for e in events]
    assert arrivals == sorted(arrivals)
    assert set(Counter(e.kind for e in events)) == set(EVENT_KINDS)


def test_generator_is_lazy_and_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> NoClock:
            raise AssertionError("the generator read the clock")

    monkeypatch.setattr(gen, "datetime", NoClock)
    stream = generate(SPEC.model_copy(update={"patients": 20}))
    assert next(iter(stream)).kind in EVENT_KINDS


# ------------------------------------------------------------------------------ validity


def test_valid_payloads_validate_and_are_keyed_by_patient(events: list[SimEvent]) -> None:
    checked = 0
    for e, model in _valid(events):
        assert e.key == model.patient_id
        assert model.practice_id in SPEC.practices
        if isinstance(model, TimeLogged):
            assert model.payer in SPEC.payer_mix
            assert not (model.licensed and model.role in NEVER_LICENSED_ROLES)
            assert 5 <= (model.computed_end - model.start).total_seconds() / 60 <= 70
            assert model.recorded_at >= model.computed_end
            if e.kind != "duplicate":
                assert int(model.recorded_at.timestamp()) == e.at
        checked += 1
    assert checked > 5000


def test_malformed_payloads_are_rejected_with_the_intended_reason(fed: Fed) -> None:
    seen: Counter[str] = Counter()
    for e, p in zip(fed.events, fed.processed, strict=True):
        if e.kind != "malformed":
            continue
        seen[e.detail] += 1
        reason, stage = MALFORMED_VARIANTS[e.detail]
        assert e.reason is reason
        decoded = decode(e.value)
        if stage == "decode":
            assert decoded.reason is reason, e.detail
        else:
            assert decoded.event is not None, e.detail
        assert p.outcome is Outcome.REJECTED
        assert p.reason is reason, e.detail
    assert set(seen) == set(MALFORMED_VARIANTS), "every variety of bad input shows up"


def test_malformed_variants_table_and_weights_agree() -> None:
    assert set(gen._MALFORMED_WEIGHTS) == set(MALFORMED_VARIANTS)


def test_only_malformed_events_are_rejected(fed: Fed) -> None:
    outcomes: Counter[tuple[str, Outcome]] = Counter()
    for e, p in zip(fed.events, fed.processed, strict=True):
        outcomes[e.kind, p.outcome] += 1
        if e.kind != "malformed":
            assert p.outcome is not Outcome.REJECTED, (e.kind, e.detail, p.reason)
    assert outcomes["duplicate", Outcome.DUPLICATE] == sum(
        1 for e in fed.events if e.kind == "duplicate"
    )
    assert outcomes["void", Outcome.VOIDED] == sum(1 for e in fed.events if e.kind == "void")
    assert outcomes["log", Outcome.COUNTED] > outcomes["log", Outcome.EXCLUDED] > 0
    assert outcomes["late", Outcome.COUNTED] > 0


# ------------------------------------------------------------------------------ shares


def test_shares_are_roughly_respected(events: list[SimEvent]) -> None:
    kinds = Counter(e.kind for e in events)
    details = Counter((e.kind, e.detail) for e in events)
    total = len(events)
    logs = kinds["log"] + kinds["late"]
    original_logs = logs - details["log", "correction"]
    valid = total - kinds["malformed"] - kinds["duplicate"]
    assert kinds["malformed"] / total == pytest.approx(SPEC.malformed, rel=0.25)
    assert kinds["duplicate"] / valid == pytest.approx(SPEC.duplicates, rel=0.25)
    assert kinds["void"] / original_logs == pytest.approx(SPEC.voids, rel=0.25)
    assert kinds["late"] / original_logs == pytest.approx(SPEC.late, rel=0.25)
    corrections = details["void", "correction"]
    assert corrections == details["log", "correction"]
    assert corrections / kinds["void"] == pytest.approx(SPEC.corrections, rel=0.3)
    payers = Counter(
        m.payer for e, m in _valid(events) if isinstance(m, TimeLogged) and e.kind == "log"
    )
    for payer, weight in SPEC.payer_mix.items():
        assert payers[payer] / sum(payers.values()) == pytest.approx(weight, rel=0.4), payer


def test_zero_shares_give_a_clean_stream() -> None:
    spec = SPEC.model_copy(
        update={
            "patients": 200,
            "duplicates": 0,
            "voids": 0,
            "late": 0,
            "malformed": 0,
            "consent": 0,
            "attested": 0,
            "other_codes": 0,
        }
    )
    assert set(Counter(e.kind for e in generate(spec))) == {"log"}


# ------------------------------------------------------------------------------ realism


def test_billing_records_have_a_realistic_spread(fed: Fed) -> None:
    records = fed.records
    assert len(records) >= 0.8 * SPEC.patients * SPEC.months  # most patients active each month
    shape: Counter[str] = Counter()
    for r in records:
        units = {line.code: line.units for line in r.lines}
        if not r.billable:
            shape["none"] += 1
        elif "99489" not in units:
            shape["99487"] += 1
        else:
            shape["99489"] += 1
            assert units["99487"] == 1 and units["99489"] >= 1
    for part in ("none", "99487", "99489"):
        assert shape[part] >= 0.1 * len(records), shape
    minutes = [r.qualifying_minutes for r in records]
    under = sum(m < 60 for m in minutes) / len(minutes)
    middle = sum(60 <= m <= 150 for m in minutes) / len(minutes)
    tail = sum(m > 150 for m in minutes) / len(minutes)
    assert 0.3 <= under <= 0.7
    assert middle >= 0.2
    assert 0.01 <= tail <= 0.2
    assert {r.payer for r in records} == set(SPEC.payer_mix)
    assert any(r.overlap_minutes > 0 for r in records), "overlapping logs of two staff"
    assert any(r.excluded_minutes > 0 for r in records)
    assert any(any(line.status == "voided" for line in r.logs) for r in records)
    assert any(r.rejected for r in records)  # engine-stage rejections are listed on the record


def test_logs_fall_on_working_days_and_hours(events: list[SimEvent]) -> None:
    zone = ZoneInfo(TZ)
    lengths = []
    for e, m in _valid(events):
        if isinstance(m, TimeLogged) and e.kind in ("log", "late") and e.detail == "":
            local = m.start.astimezone(zone)
            assert local.weekday() < 5
            assert (7, 30) <= (local.hour, local.minute) <= (17, 29)
            lengths.append(int((m.computed_end - m.start).total_seconds() // 60))
    assert min(lengths) == 5 and max(lengths) <= 49
    assert sum(5 <= n <= 45 for n in lengths) / len(lengths) > 0.97


def test_roles_licensure_activities_and_optional_fields(events: list[SimEvent]) -> None:
    logs = [m for _, m in _valid(events) if isinstance(m, TimeLogged)]
    roles = Counter(m.role for m in logs)
    assert len(roles) >= 6
    by_staff = {(m.staff_id, m.role, m.licensed) for m in logs}
    assert len({s for s, _, _ in by_staff}) == len(by_staff), "a staff member keeps role/licence"
    activities = Counter(m.activity.value for m in logs)
    excluded = {"prior_authorization", "benefit_check", "documentation", "email", "chart_prep"}
    share = sum(activities[a] for a in excluded) / len(logs)
    assert 0.05 <= share <= 0.3
    assert excluded <= set(activities)
    for name in ("staff_name", "credentials", "agency_contacted", "note", "end", "minutes"):
        present = sum(getattr(m, name) is not None for m in logs) / len(logs)
        assert 0.05 < present < 1.0, name
    assert sum(m.start.utcoffset() == timedelta(0) for m in logs) > 0  # some EHRs send UTC


def test_midnight_crossers_belong_to_the_month_they_start_in(fed: Fed) -> None:
    zone = ZoneInfo(TZ)
    by_id = {(r.service_month, line.event_id) for r in fed.records for line in r.logs}
    crossers = 0
    for e, m in _valid(fed.events):
        if isinstance(m, TimeLogged) and e.detail == "midnight" and e.kind == "log":
            start, end = m.start.astimezone(zone), m.computed_end.astimezone(zone)
            assert start.hour == 23 and end.month != start.month
            assert (local_month(m.start, TZ), m.event_id) in by_id
            crossers += 1
    assert crossers >= 5


def test_late_logs_arrive_after_their_month_some_after_close(events: list[SimEvent]) -> None:
    before_close = after_close = 0
    for e, m in _valid(events):
        if e.kind != "late":
            continue
        assert isinstance(m, TimeLogged)
        month = local_month(m.start, TZ)
        assert m.recorded_at > month_end(month, TZ)
        assert m.recorded_at < month_end(month, TZ) + timedelta(days=60)
        if m.recorded_at > close_deadline(month, TZ, 5):
            after_close += 1
        else:
            before_close += 1
    assert before_close > 10 and after_close > 10


def test_voids_cancel_earlier_logs_and_corrections_follow(events: list[SimEvent]) -> None:
    logged: dict[str, int] = {}
    void_at: dict[str, int] = {}
    pending_corrections: dict[str, int] = {}
    for e, m in _valid(events):
        if e.kind == "duplicate":
            continue
        if isinstance(m, TimeLogVoided):
            assert m.voided_event_id in logged, "a void follows its log"
            assert e.at >= logged[m.voided_event_id]
            void_at[m.event_id] = e.at
            if m.reason.value == "correction":
                pending_corrections[m.patient_id] = e.at
        else:
            logged[m.event_id] = e.at
            if e.detail == "correction":
                assert m.patient_id in pending_corrections
                assert 0 < e.at - pending_corrections[m.patient_id] <= 120
    assert void_at


def test_duplicates_repeat_earlier_payloads_exactly(events: list[SimEvent]) -> None:
    seen: set[bytes] = set()
    duplicates = 0
    for e in events:
        if e.kind == "duplicate":
            assert e.value in seen
            duplicates += 1
        else:
            assert e.value not in seen
            seen.add(e.value)
    assert duplicates > 0


def test_utc_practices_still_tally_in_local_months() -> None:
    spec = SimulationSpec(patients=100, months=1, utc_practices=1.0, seed=3, malformed=0)
    events = list(generate(spec))
    starts = [m.start for _, m in _valid(events) if isinstance(m, TimeLogged)]
    assert all(s.utcoffset() == timedelta(0) for s in starts)
    tally = LocalTally()
    for i, e in enumerate(events):
        assert tally.feed(e.value, Source("sim", 0, i)).outcome is not Outcome.REJECTED
    records = [o.envelope.data for o in tally.close_all(AS_OF)]
    months = {r.service_month for r in records if isinstance(r, BillingRecord)}
    assert months == {"2026-01"}


# ------------------------------------------------------------------------------ spec


@pytest.mark.parametrize(
    "change",
    [
        {"duplicates": 1.5},
        {"voids": -0.1},
        {"malformed": 1.0},
        {"start_month": "2026-13"},
        {"time_zone": "Mars/Olympus"},
        {"practices": ("a", "a")},
        {"practices": ("has space",)},
        {"payer_mix": {}},
        {"payer_mix": {"CMS": 1.0}},
        {"patients": 0},
    ],
)
def test_spec_rejects_nonsense(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SimulationSpec.model_validate({**SimulationSpec().model_dump(), **change})


def test_spec_month_list_and_zones() -> None:
    spec = SimulationSpec(start_month="2026-11", months=3, practice_time_zones={"x": "UTC"})
    assert spec.month_list() == ["2026-11", "2026-12", "2027-01"]
    assert spec.zone_of("x") == "UTC" and spec.zone_of("y") == TZ


def test_fewer_staff_than_practices_still_works() -> None:
    spec = SimulationSpec(patients=30, staff=1, practices=("a", "b", "c"), malformed=0)
    for _, m in _valid(list(generate(spec))):
        assert m.practice_id in ("a", "b", "c")


# ------------------------------------------------------------------------------ producer


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.items: list[tuple[bytes, bytes]] = []
        self.capacity = capacity
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: float | None) -> object | None:
        if self.closed or len(self.items) >= self.capacity or len(value) > 10_000:
            return None
        self.items.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    def __init__(self, fail_partition: int | None = None, **config: Any) -> None:
        self.config = config
        self.fail_partition = fail_partition
        self.sent: list[tuple[str, int, FakeBatch]] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(50)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        assert batch.closed
        self.sent.append((topic, partition, batch))
        future = asyncio.get_running_loop().create_future()
        if partition == self.fail_partition:
            future.set_exception(RuntimeError("broker said no"))
        else:
            future.set_result(None)
        return future


def _run_produce(
    events: list[SimEvent], rate: float | None = None, fail_partition: int | None = None
) -> tuple[ProduceStats, FakeProducer, list[ProduceStats]]:
    made: list[FakeProducer] = []
    reports: list[ProduceStats] = []

    def factory(**config: Any) -> FakeProducer:
        made.append(FakeProducer(fail_partition, **config))
        return made[0]

    stats = asyncio.run(
        produce(
            "fake:9092",
            "ccm.timelog.v1",
            events,
            rate,
            lambda s: reports.append(ProduceStats(**vars(s))),
            progress_every=500,
            producer_factory=factory,
        )
    )
    return stats, made[0], reports


def test_produce_batches_by_key_partition_and_counts(events: list[SimEvent]) -> None:
    sample = events[:2000]
    stats, producer, reports = _run_produce(sample)
    assert producer.started and producer.stopped
    assert producer.config["acks"] == "all" and producer.config["enable_idempotence"] is True
    assert stats.sent == stats.submitted == len(sample) and stats.failed == 0
    assert stats.bytes == sum(len(e.value) for e in sample)
    assert len(reports) == 5 and reports[-1].sent == len(sample)
    partition = DefaultPartitioner()
    delivered = []
    for topic, part, batch in producer.sent:
        assert topic == "ccm.timelog.v1"
        for key, value in batch.items:
            assert part == partition(key, [0, 1, 2, 3], [0, 1, 2, 3])
            delivered.append((key, value))
    assert sorted(delivered) == sorted((e.key.encode(), e.value) for e in sample)
    for key in {k for k, _ in delivered}:  # per key, arrival order is kept
        mine = [v for k, v in delivered if k == key]
        assert mine == [e.value for e in sample if e.key.encode() == key]


def test_produce_counts_failures_without_raising(events: list[SimEvent]) -> None:
    sample = events[:1000]
    stats, _, _ = _run_produce(sample, fail_partition=2)
    assert stats.failed > 0 and stats.sent > 0
    assert stats.sent + stats.failed == len(sample)
    assert stats.errors == ["RuntimeError: broker said no"]


def test_produce_refuses_a_message_bigger_than_a_batch() -> None:
    big = SimEvent("p1", b"x" * 20_000, "malformed", 0)
    small = SimEvent("p1", b"{}", "malformed", 1)
    stats, _, _ = _run_produce([small, big, small])
    assert (stats.sent, stats.failed) == (2, 1)


def test_produce_respects_the_rate(events: list[SimEvent]) -> None:
    sample = events[:600]
    stats, _, _ = _run_produce(sample, rate=3000.0)
    # 600 events at 3000/s with a 150-event burst: at least 0.15 s
    assert stats.elapsed >= 0.14
    assert stats.sent == len(sample)


def test_token_bucket_waits_for_tokens() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10.0, capacity=2, clock=lambda: now[0], sleep=sleep)

    async def take(n: int) -> None:
        for _ in range(n):
            await bucket.take()

    asyncio.run(take(12))
    assert now[0] == pytest.approx(1.0)  # 2 from the burst, 10 more at 10/s
    assert not bucket.try_take()
    now[0] += 0.1
    assert bucket.try_take()
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)


# ------------------------------------------------------------------------------ command line


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_simulator_args(parser)
    return parser.parse_args(argv)


def test_cli_writes_jsonl_that_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim.jsonl"
    argv = ["--patients", "80", "--months", "2", "--seed", "5", "--malformed", "0.05"]
    assert run_simulator(_parse([*argv, "--out", str(out)])) == 0
    summary = capsys.readouterr().err.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("simulate: ")
    lines = out.read_bytes().splitlines()
    expected = list(generate(SimulationSpec(patients=80, months=2, seed=5, malformed=0.05)))
    assert lines == [e.value for e in expected]
    assert f"{len(lines)} events" in summary[0]
    tally = LocalTally()
    with out.open("rb") as src:
        outputs = list(tally.feed_lines(src, name=str(out)))
    assert tally.outcomes[Outcome.REJECTED] == sum(e.kind == "malformed" for e in expected)
    assert any(o.kind == "threshold" for o in outputs)


def test_cli_options_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(
        ["--practices", "2", "--payer-mix", "cms=3,bcbsm=1", "--rate", "500", "--late", "0.1"]
    )
    assert args.practices == ("practice-001", "practice-002")
    assert args.payer_mix == {"cms": 3.0, "bcbsm": 1.0}
    assert args.rate == 500.0 and args.late == 0.1
    assert args.topic == "ccm.timelog.v1"
    assert _parse(["--practices", "north,south"]).practices == ("north", "south")
    for bad in (["--late", "1.5"], ["--rate", "0"], ["--patients", "0"]):
        with pytest.raises(SystemExit):
            _parse(bad)
    capsys.readouterr()
    assert run_simulator(_parse(["--start-month", "2026-13", "--out", "-"])) == 2
    assert "start_month" in capsys.readouterr().err


def test_cli_limit(tmp_path: Path) -> None:
    out = tmp_path / "few.jsonl"
    assert run_simulator(_parse(["--patients", "50", "--limit", "7", "--out", str(out)])) == 0
    assert len(out.read_bytes().splitlines()) == 7


def test_payloads_are_single_lines(events: list[SimEvent]) -> None:
    for e in events:
        assert b"\n" not in e.value and b"\r" not in e.value and e.value.strip()
        if e.kind != "malformed":
            json.loads(e.value)
