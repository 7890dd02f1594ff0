"""Billing compliance through a real worker: enrollment feed, closes and late changes on the
stream give exactly the records and revisions ``ccm-tally replay`` gives on one file.

Needs a worker that consumes ``ccm.enrollment.v1`` (``Topics.enrollment``) and applies its
messages with ``ccm_core.ingest.process``, like the time logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ccm_core.ingest import LocalTally
from tests.integration.harness import (
    Stack,
    WorkerProcess,
    collect,
    produce,
    produce_enrollment,
    send_close,
    wait_processed,
)

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compliance-month.jsonl"


def phases() -> list[tuple[str, list[dict[str, Any]]]]:
    """The example file cut where the stream's order between topics is defined: enrollment
    events, then time logs, then each close command, then the late events one at a time."""
    lines = [json.loads(x) for x in EXAMPLE.read_text("utf-8").splitlines() if x.strip()]
    first_close = next(i for i, x in enumerate(lines) if "command_type" in x)
    before, after = lines[:first_close], lines[first_close:]
    closes = [x for x in after if "command_type" in x]
    late = [x for x in after if "command_type" not in x]
    enrollment = [x for x in before if x["event_type"] not in ("time_logged", "time_log_voided")]
    logs = [x for x in before if x["event_type"] in ("time_logged", "time_log_voided")]
    return [
        ("enrollment", enrollment),
        ("timelog", logs),
        *(("close", [c]) for c in closes),
        *(("enrollment" if _is_enrollment(x) else "timelog", [x]) for x in late),
    ]


def _is_enrollment(event: dict[str, Any]) -> bool:
    return event["event_type"] not in ("time_logged", "time_log_voided")


def replayed(steps: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, list[str]]:
    """The same lines in the same order through ``LocalTally.feed_lines`` (replay's path)."""
    tally = LocalTally()
    lines = [json.dumps(x).encode() for _, batch in steps for x in batch]
    out: dict[str, list[str]] = {"threshold": [], "billing_record": [], "rejected": []}
    for o in tally.feed_lines(lines, name="replay"):
        if o.kind in out:  # the status feed is compared by its own tests
            out[o.kind].append(canonical(json.loads(o.to_json())))
    return out


def canonical(envelope: dict[str, Any]) -> str:
    return json.dumps(envelope, sort_keys=True)


def test_replay_with_closes_reproduces_the_stream_revisions(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    steps = phases()
    stack = Stack(kafka_bootstrap, partitions=4)
    stack.create_topics()
    worker = WorkerProcess(stack, tmp_path).start()
    try:
        for kind, batch in steps:
            if kind == "close":
                send_close(stack, batch[0])
            else:
                messages = [(x["patient_id"].encode(), json.dumps(x).encode()) for x in batch]
                (produce_enrollment if kind == "enrollment" else produce)(stack, messages)
            wait_processed(stack)
        stream = collect(stack)
    finally:
        worker.stop()
    core = replayed(steps)
    assert len(core["billing_record"]) == 9
    # every threshold event and every record revision, byte for byte (ids, times, holds)
    assert sorted(canonical(e) for e in stream["threshold"]) == sorted(core["threshold"])
    assert sorted(canonical(e) for e in stream["billing_record"]) == sorted(core["billing_record"])
    revisions = sorted(
        (e["data"]["patient_id"], e["data"]["practice_id"], e["data"]["revision"])
        for e in stream["billing_record"]
    )
    assert ("P-NOCONS-01", "lakeside-im", 1) in revisions
    assert ("P-ENR-01", "lakeside-im", 1) in revisions
    # the rejected log is dead-lettered once, with the same reason
    assert [d["data"]["reason"] for d in stream["dlq"]] == ["non_positive_minutes"]
    assert worker.errors() == []
