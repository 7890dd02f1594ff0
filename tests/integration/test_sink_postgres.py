"""``ccm-tally sink postgres`` against a real PostgreSQL server and a real broker.

The billing records come from the core (a simulated month, closed, then late logs that re-issue
records as new revisions), produced to the billing-record topic by the test itself (the sink
needs no worker). What a billing team relies on:
- the highest revision per record id wins, with its lines and logs;
- a duplicate envelope (the worker re-publishing a batch) is ignored, an older revision
  arriving late is ignored;
- a ``kill -9`` of the sink mid-consume loses nothing and applies nothing twice: every offset
  is consumed exactly once (the audit table's primary key refuses a second time) and the
  tables end exactly as an uninterrupted run would leave them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from ccm_core.ingest import LocalTally, Source
from ccm_simulator.generator import SimulationSpec, generate
from ccm_sink.postgres import Message, apply_batch, create_schema
from tests.integration.harness import Stack
from tests.unit.unit_helpers import CLOSE_AT, Harness, local, log, void

pytestmark = pytest.mark.integration

SINK = "test-sink"


def records_of(harness: Harness) -> list[bytes]:
    return [o.to_json().encode() for o in harness.outputs if o.kind == "billing_record"]


def test_highest_revision_wins_duplicates_and_stale_revisions_are_ignored(
    postgres_dsn: str,
) -> None:
    harness = Harness()
    harness.feed(log("a", local(3), 50), log("b", local(4), 40, role="lpn", staff_id="lpn-1"))
    harness.feed(log("x", local(5), 20, activity="benefit_check"))
    harness.close()
    harness.feed(log("late", local(20), 30, recorded_at=CLOSE_AT.replace(day=8)))
    harness.feed(void("v", "b", recorded_at=CLOSE_AT.replace(day=9)))
    rev0, rev1, rev2 = records_of(harness)
    sent = [rev0, rev1, rev0, b"not json", rev2, rev1]  # dup of rev0, stale rev1 at the end
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        create_schema(conn)
        create_schema(conn)  # idempotent
        messages = [Message("records", 0, offset, value) for offset, value in enumerate(sent)]
        first = apply_batch(conn, SINK, messages[:3])
        second = apply_batch(conn, SINK, messages[3:])
        assert (first.applied, first.duplicate) == (2, 1)
        assert (second.applied, second.invalid, second.duplicate) == (1, 1, 1)
        again = apply_batch(conn, SINK, messages)  # redelivered: below the stored offset
        assert (again.consumed, again.skipped) == (0, len(messages))

        final = json.loads(rev2)["data"]
        row = conn.execute(
            "SELECT revision, envelope_id, billable, qualifying_minutes, date_of_service, "
            "record FROM ccm_billing_records"
        ).fetchall()
        assert len(row) == 1
        revision, envelope_id, billable, minutes, dos, record = row[0]
        assert (revision, envelope_id) == (2, json.loads(rev2)["id"])
        assert (billable, minutes, str(dos)) == (
            final["billable"],
            final["qualifying_minutes"],
            final["date_of_service"],
        )
        assert record == final
        lines = conn.execute("SELECT code, units FROM ccm_billing_lines ORDER BY code").fetchall()
        assert lines == [(line["code"], line["units"]) for line in final["lines"]]
        logs = conn.execute(
            "SELECT event_id, status, contributing, excluded_by, voided_by "
            "FROM ccm_billing_logs ORDER BY start_at"
        ).fetchall()
        assert [(e, s, c) for e, s, c, _, _ in logs] == [
            ("a", "counted", True),
            ("b", "voided", False),
            ("x", "excluded", False),
            ("late", "counted", True),
        ]
        assert logs[1][4] == "v" and logs[2][3] is not None
        outcomes = conn.execute(
            'SELECT "offset", outcome FROM ccm_sink_messages ORDER BY "offset"'
        ).fetchall()
        assert [o for _, o in outcomes] == [
            "applied",
            "applied",
            "duplicate",
            "invalid",
            "applied",
            "duplicate",
        ]
        [(next_offset,)] = conn.execute("SELECT next_offset FROM ccm_sink_offsets").fetchall()
        assert next_offset == len(sent)


def _stream_of_records(patients: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of billing records as the worker would publish them: a month's records,
    then re-issued revisions from late logs, with some envelopes published twice."""
    spec = SimulationSpec(
        patients=patients,
        staff=12,
        start_month="2026-03",
        months=1,
        seed=seed,
        duplicates=0.02,
        voids=0.05,
        late=0.05,
        malformed=0.0,
    )
    events = [e.value for e in generate(spec)]
    tally = LocalTally()
    cut = int(len(events) * 0.8)
    outputs = []
    for i, raw in enumerate(events[:cut]):
        outputs += tally.feed(raw, Source("sim", 0, i)).outputs
    outputs += tally.close_all(datetime(2026, 4, 7, tzinfo=UTC))
    for i, raw in enumerate(events[cut:], start=cut):
        outputs += tally.feed(raw, Source("sim", 0, i)).outputs
    records = [
        (o.key.encode(), o.to_json().encode()) for o in outputs if o.kind == "billing_record"
    ]
    rng = random.Random(seed)
    stream: list[tuple[bytes, bytes]] = []
    for item in records:
        stream.append(item)
        if rng.random() < 0.05:  # a batch re-published after a worker crash
            stream.append(item)
    return stream


async def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _sink_cmd(dsn: str, bootstrap: str, topic: str, *extra: str) -> list[str]:
    script = Path(sys.executable).parent / "ccm-tally"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]
    return [
        *cli,
        "sink",
        "postgres",
        "--dsn",
        dsn,
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--name",
        SINK,
        "--batch",
        "20",
        *extra,
    ]


def _consumed(dsn: str) -> int:
    try:
        with psycopg.connect(dsn) as conn:
            [(count,)] = conn.execute("SELECT count(*) FROM ccm_sink_messages").fetchall()
            return int(count)
    except psycopg.errors.UndefinedTable:
        return 0


def test_kill_9_mid_consume_loses_nothing_and_applies_nothing_twice(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    stack = Stack(kafka_bootstrap, partitions=3)
    stack.create_topics()
    topic = stack.settings.topics.billing_record
    stream = _stream_of_records(patients=1200, seed=11)
    asyncio.run(_produce(kafka_bootstrap, topic, stream))
    total = len(stream)
    env = {**os.environ, "CCM_LOG_LEVEL": "WARNING"}

    stderr = (tmp_path / "sink-1.log").open("wb")
    first = subprocess.Popen(
        _sink_cmd(postgres_dsn, kafka_bootstrap, topic), stderr=stderr, env=env
    )
    try:
        deadline = time.monotonic() + 180
        while _consumed(postgres_dsn) < total // 4:
            assert first.poll() is None, (tmp_path / "sink-1.log").read_text()
            assert time.monotonic() < deadline, "the sink made no progress"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        stderr.close()
    at_kill = _consumed(postgres_dsn)
    assert 0 < at_kill < total, "the kill must land mid-consume"

    second = subprocess.run(
        _sink_cmd(postgres_dsn, kafka_bootstrap, topic, "--stop-at-end"),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert second.returncode == 0, second.stderr

    with psycopg.connect(postgres_dsn) as conn:
        # every offset of every partition consumed exactly once (PK: never twice)
        rows = conn.execute(
            'SELECT partition, "offset", envelope_id, outcome FROM ccm_sink_messages'
        ).fetchall()
        assert len(rows) == total
        by_partition: dict[int, list[int]] = {}
        for partition, offset, _, _ in rows:
            by_partition.setdefault(partition, []).append(offset)
        for offsets in by_partition.values():
            assert sorted(offsets) == list(range(len(offsets)))
        # each distinct envelope applied or found stale once; every re-sent copy a duplicate
        outcomes = Counter(outcome for *_, outcome in rows)
        distinct = {json.loads(v)["id"] for _, v in stream}
        assert outcomes["duplicate"] == total - len(distinct)
        assert outcomes["applied"] + outcomes["stale"] == len(distinct)
        assert outcomes["invalid"] == 0
        # the tables are exactly the highest revision of every record
        latest: dict[str, dict[str, Any]] = {}
        for _, value in stream:
            data = json.loads(value)["data"]
            seen = latest.get(data["record_id"])
            if seen is None or data["revision"] > seen["revision"]:
                latest[data["record_id"]] = data
        assert any(r["revision"] > 0 for r in latest.values()), "revisions must be exercised"
        stored = {
            record_id: (revision, record)
            for record_id, revision, record in conn.execute(
                "SELECT record_id, revision, record FROM ccm_billing_records"
            ).fetchall()
        }
        assert stored.keys() == latest.keys()
        for record_id, data in latest.items():
            assert stored[record_id] == (data["revision"], data)
        lines = Counter(
            (r, c, u)
            for r, c, u in conn.execute(
                "SELECT record_id, code, units FROM ccm_billing_lines"
            ).fetchall()
        )
        assert lines == Counter(
            (rid, line["code"], line["units"]) for rid, d in latest.items() for line in d["lines"]
        )
        [(log_rows,)] = conn.execute("SELECT count(*) FROM ccm_billing_logs").fetchall()
        assert log_rows == sum(len(d["logs"]) for d in latest.values())
    # the restarted sink consumed exactly what the killed one had not committed
    assert f"sink postgres: {total - at_kill} messages" in second.stderr, second.stderr
