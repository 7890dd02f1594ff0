"""The demo's billing summary counts held months apart from the ones short of entry time."""

from __future__ import annotations

import json
from pathlib import Path

from ccm_core.ingest import LocalTally
from ccm_worker.demo import summarize

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compliance-month.jsonl"


def test_demo_summary_shows_held_months_and_their_reasons() -> None:
    tally = LocalTally()
    outputs: dict[str, list[dict[str, object]]] = {"threshold": [], "billing_record": [], "dlq": []}
    names = {"threshold": "threshold", "billing_record": "billing_record", "rejected": "dlq"}
    with EXAMPLE.open("rb") as lines:
        for o in tally.feed_lines(lines):
            if o.kind in names:  # the status feed is not part of the billing summary
                outputs[names[o.kind]].append(json.loads(o.to_json()))
    text = summarize(outputs, "http://metrics")
    rows = {line[:31].strip(): line[31:].strip() for line in text.splitlines() if line[:2] == "  "}
    # 7 patient-months; latest revisions: 5 billable, P-TWO-01 at lakeside (other practice
    # bills) and P-EXCL-01 (99490 billed) held, none short of the entry time
    assert rows["billable (99487 reached)"] == "5"
    assert rows["held (time reached, gated)"] == "2"
    assert rows["other_practice_bills"] == "1"
    assert rows["excluding_code_billed"] == "1"
    assert rows["not billable (< entry time)"] == "0"
