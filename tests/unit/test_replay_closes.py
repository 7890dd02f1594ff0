"""Replay reads month-close commands (the control topic's schema) in file order and applies them
where they stand, as the stream does: same records, same revisions."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from ccm_core.contracts import BillingRecord, MonthCloseCommand, Reason, RejectedInput
from ccm_core.ingest import LocalTally, Source, apply_close, decode_close
from ccm_core.tally import TallyEngine
from tests.unit.unit_helpers import (
    CLOSE_AT,
    MARCH,
    PRACTICE,
    TIME_ONLY,
    Harness,
    comparable,
    encode,
    local,
    log,
    void,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "compliance-month.jsonl"


def close_line(mode: str = "month", as_of: Any = CLOSE_AT, **extra: Any) -> dict[str, Any]:
    command: dict[str, Any] = {
        "command_type": "month_close",
        "command_id": f"close-{mode}-{as_of.isoformat()}",
        "mode": mode,
        "as_of": as_of.isoformat(),
    }
    if mode == "month":
        command.update(practice_id=PRACTICE, service_month=MARCH)
    command.update(extra)
    return command


def replay(lines: list[dict[str, Any] | bytes]) -> list[Any]:
    tally = LocalTally(TallyEngine(TIME_ONLY))
    return list(tally.feed_lines([encode(x) for x in lines], name="file"))


def records(outputs: list[Any]) -> list[BillingRecord]:
    return [o.envelope.data for o in outputs if o.kind == "billing_record"]


def test_replay_applies_a_close_line_where_it_stands_and_late_lines_reissue() -> None:
    late = CLOSE_AT + timedelta(days=1)
    outputs = replay(
        [
            log("a", local(10), 60),
            close_line(),
            log("b", local(20), 30, recorded_at=late),
            void("v", "a", recorded_at=late + timedelta(hours=1)),
        ]
    )
    got = [(r.revision, r.close_trigger, r.qualifying_minutes) for r in records(outputs)]
    assert got == [(0, "command", 60), (1, "late_event", 90), (2, "late_event", 30)]


def test_replay_close_lines_give_the_records_of_the_same_sequence_applied_directly() -> None:
    """The replay file and the engine driven command by command (as the stream's control
    topic does) give identical records and revisions."""
    late = CLOSE_AT + timedelta(days=3)
    events = [log("a", local(10), 45), log("b", local(12), 20)]
    after = [log("c", local(25), 40, recorded_at=late)]
    outputs = replay([*events, close_line("due"), *after])

    direct = Harness()
    direct.feed(*events)
    command = MonthCloseCommand.model_validate(close_line("due"))
    found, changed = apply_close(direct.engine, direct.local.ledgers.values(), command)
    direct.outputs += found
    direct.feed(*after)
    assert [r.close_trigger for r in records(found)] == ["timer"]
    assert changed == list(direct.local.ledgers.values())
    assert [comparable(r) for r in records(outputs)] == [comparable(r) for r in direct.records()]
    assert [o.envelope.id for o in outputs] == [o.envelope.id for o in direct.outputs]


def test_replay_due_close_only_closes_months_past_their_grace_period() -> None:
    early = CLOSE_AT.replace(day=3)  # before March's deadline (5 days after month end)
    outputs = replay([log("a", local(10), 60), close_line("due", early)])
    assert records(outputs) == []
    outputs = replay([log("a", local(10), 60), close_line("due", CLOSE_AT)])
    assert [r.service_month for r in records(outputs)] == [MARCH]


def test_replay_invalid_close_line_is_dead_lettered_like_the_worker_does() -> None:
    bad = close_line("month")
    del bad["practice_id"]
    outputs = replay([log("a", local(10), 60), bad])
    [dead] = [o.envelope.data for o in outputs if o.kind == "rejected"]
    assert isinstance(dead, RejectedInput)
    assert dead.reason is Reason.MISSING_FIELD and dead.source_offset == 2
    command, out = decode_close(encode(bad), Source("file", None, 2), CLOSE_AT)
    assert command is None and out is not None
    assert isinstance(out.envelope.data, RejectedInput) and out.envelope.data.reason is dead.reason


def test_replay_cli_reproduces_the_compliance_example() -> None:
    """The example file: a close command, a due close, then a late consent and a late log."""
    script = Path(sys.executable).parent / "ccm-tally"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]
    result = subprocess.run(
        [*cli, "replay", str(EXAMPLE)], capture_output=True, text=True, check=True, timeout=60
    )
    envelopes = [json.loads(line) for line in result.stdout.splitlines()]
    recs = [e["data"] for e in envelopes if e["type"].endswith("billing-record.v1")]
    got = [
        (r["patient_id"], r["practice_id"], r["revision"], r["close_trigger"], r["billable"])
        for r in recs
    ]
    assert got == [
        ("P-ENR-01", "lakeside-im", 0, "command", True),
        ("P-NOCONS-01", "lakeside-im", 0, "command", False),
        ("P-TWO-01", "lakeside-im", 0, "command", False),
        ("P-BCBSM-02", "lakeside-im", 0, "command", True),
        ("P-EXCL-01", "lakeside-im", 0, "command", False),
        ("P-TWO-01", "riverside-cardio", 0, "timer", True),
        ("P-BCBSM-02", "riverside-cardio", 0, "timer", True),
        ("P-NOCONS-01", "lakeside-im", 1, "late_event", True),
        ("P-ENR-01", "lakeside-im", 1, "late_event", True),
    ]
    holds = {(r["patient_id"], r["practice_id"]): r["hold_reasons"] for r in recs}
    assert holds[("P-TWO-01", "lakeside-im")] == ["other_practice_bills"]
    assert holds[("P-EXCL-01", "lakeside-im")] == ["excluding_code_billed"]
    enr = [r for r in recs if r["patient_id"] == "P-ENR-01"]
    assert [r["rejected"][0]["reason"] for r in enr] == ["non_positive_minutes"] * 2
    assert [r["qualifying_minutes"] for r in enr] == [70, 100]
    assert "recorded 15" in result.stderr and "9 billing records" in result.stderr
