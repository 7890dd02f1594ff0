"""``ccm-tally replay`` on examples/sample-month.jsonl, run as a real subprocess.

Every expected value below was worked out by hand from domain-rules.md (see
examples/README.md for the derivation, patient by patient).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sample-month.jsonl"
# northside-fm sends no enrollment events: its consent and eligibility gates are off
NO_FEED = ("--practices", REPO / "examples" / "sample-practices.toml")
SUMMARY_PARTS = (
    "37 events",
    "counted 20",
    "excluded 4",
    "duplicate 1",
    "voided 4",
    "rejected 8",
    "11 threshold events",
    "7 billing records",
    "8 rejected-input records",
)


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "ccm-tally"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]


def assert_summary(stderr: str) -> None:
    """The last stderr line is replay's summary, with the counts worked out by hand."""
    summary = stderr.strip().splitlines()[-1]
    assert summary.startswith("replay: ")
    for part in SUMMARY_PARTS:
        assert part in summary


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_cli(), *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture(scope="module")
def replay() -> subprocess.CompletedProcess[str]:
    return run_cli("replay", SAMPLE, *NO_FEED)


@pytest.fixture(scope="module")
def envelopes(replay: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in replay.stdout.splitlines()]


def _of_type(envelopes: list[dict[str, Any]], suffix: str) -> list[dict[str, Any]]:
    return [e["data"] for e in envelopes if e["type"].endswith(suffix)]


def _records(envelopes: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (r["patient_id"], r["service_month"]): r for r in _of_type(envelopes, "billing-record.v1")
    }


def _lines(record: dict[str, Any]) -> dict[str, int]:
    return {line["code"]: line["units"] for line in record["lines"]}


def test_replay_summary_line_is_on_stderr_only(
    replay: subprocess.CompletedProcess[str], envelopes: list[dict[str, Any]]
) -> None:
    """Replay: one summary line on stderr; stdout is only JSON envelopes."""
    assert_summary(replay.stderr)
    assert "replay:" not in replay.stdout
    # 11 threshold events, 7 records, 8 dead letters, 8 FHIR ChargeItems (one per record line)
    assert len(envelopes) == 11 + 7 + 8 + 8
    assert all(e["specversion"] == "1.0" and e["id"] for e in envelopes)
    assert len({e["id"] for e in envelopes}) == len(envelopes)


# (patient, month): (lines, qualifying minutes, date of service)
EXPECTED_RECORDS = {
    ("P-CMS-01", "2026-03"): ({"99487": 1, "99489": 1}, 90, "2026-03-31"),
    ("P-BCBSM-01", "2026-03"): ({"99487": 1}, 31, "2026-03-31"),
    ("P-PH-01", "2026-03"): ({"99487": 1, "99489": 2}, 200, "2026-03-31"),
    ("P-MCD-01", "2026-03"): ({"99487": 1}, 65, "2026-03-31"),
    ("P-VOID-01", "2026-03"): ({"99487": 1}, 65, "2026-03-31"),
    ("P-MONTH-01", "2026-03"): ({"99487": 1}, 85, "2026-03-31"),
    ("P-MONTH-01", "2026-04"): ({}, 20, None),
}


def test_replay_billing_records_follow_the_rules(envelopes: list[dict[str, Any]]) -> None:
    """Rules 1-4, 6 on the sample: lines, qualifying minutes and date of service per
    patient-month (cms overlap, BCBSM seed 31, Priority Health cap, Medicaid physician
    exclusion, voids, 21:30 EDT on 31 March and the midnight-crossing log are March)."""
    records = _records(envelopes)
    got = {
        key: (_lines(r), r["qualifying_minutes"], r["date_of_service"])
        for key, r in records.items()
    }
    assert got == EXPECTED_RECORDS
    for record in records.values():
        assert (record["revision"], record["close_trigger"]) == (0, "replay")
        assert record["practice_id"] == "northside-fm"
        assert record["time_zone"] == "America/Detroit"
        assert datetime.fromisoformat(record["closed_at"]) == datetime.fromisoformat(
            "2026-04-02T15:00:00+00:00"
        )


def test_replay_record_details_overlap_exclusions_voids_rejections(
    envelopes: list[dict[str, Any]],
) -> None:
    """Rules 2, 3, 5, 6 on the sample: audit details of the records."""
    records = _records(envelopes)
    cms = records[("P-CMS-01", "2026-03")]
    assert (cms["counted_log_minutes"], cms["overlap_minutes"]) == (110, 20)
    assert cms["excluded_minutes_by_rule"] == {"cms:excluded_activity:prior_authorization": 25}
    assert cms["contributing_event_ids"] == ["cms-001", "cms-002", "cms-003"]
    assert [(r["event_id"], r["reason"]) for r in cms["rejected"]] == [
        ("cms-003", "event_id_conflict"),
        ("cms-005", "duration_exceeds_bound"),
    ]
    jane = next(line for line in cms["logs"] if line["event_id"] == "cms-001")
    assert (jane["staff_name"], jane["credentials"], jane["minutes"]) == (
        "Jane Doe",
        "RN, BSN",
        40,
    )
    assert records[("P-BCBSM-01", "2026-03")]["excluded_minutes_by_rule"] == {
        "bcbsm:excluded_activity:email": 15
    }
    assert records[("P-PH-01", "2026-03")]["excluded_minutes_by_rule"] == {
        "priority_health:licensed_only:ma": 30
    }
    assert records[("P-PH-01", "2026-03")]["minutes_to_next_threshold"] is None
    assert records[("P-MCD-01", "2026-03")]["excluded_minutes_by_rule"] == {
        "medicaid:excluded_role:physician": 30
    }
    voids = records[("P-VOID-01", "2026-03")]
    status = {line["event_id"]: (line["status"], line["voided_by"]) for line in voids["logs"]}
    assert status == {
        "void-pt-001": ("voided", "void-x-003"),
        "void-pt-001b": ("counted", None),
        "void-pt-002": ("voided", "void-x-001"),
        "void-pt-003": ("voided", "void-x-002"),
        "void-pt-004": ("counted", None),
    }
    month = records[("P-MONTH-01", "2026-03")]
    assert month["contributing_event_ids"] == ["month-001", "month-002", "month-003"]
    for record in records.values():
        assert record["profile_version"]


def test_replay_threshold_events(envelopes: list[dict[str, Any]]) -> None:
    """Rules 1, 3, 5: thresholds reached and revoked, in input order."""
    got = [
        (t["patient_id"], t["kind"], t["code"], t["unit"], t["triggering_event_id"])
        for t in _of_type(envelopes, "threshold.v1")
    ]
    assert got == [
        ("P-CMS-01", "reached", "99487", 1, "cms-002"),
        ("P-CMS-01", "reached", "99489", 1, "cms-003"),
        ("P-BCBSM-01", "reached", "99487", 1, "bcbsm-003"),
        ("P-PH-01", "reached", "99487", 1, "ph-001"),
        ("P-PH-01", "reached", "99489", 1, "ph-002"),
        ("P-PH-01", "reached", "99489", 2, "ph-002"),
        ("P-MCD-01", "reached", "99487", 1, "mcd-003"),
        ("P-VOID-01", "reached", "99487", 1, "void-pt-002"),
        ("P-VOID-01", "revoked", "99487", 1, "void-x-001"),
        ("P-VOID-01", "reached", "99487", 1, "void-pt-004"),
        ("P-MONTH-01", "reached", "99487", 1, "month-003"),
    ]


def test_replay_malformed_lines_become_rejected_input_records(
    envelopes: list[dict[str, Any]],
) -> None:
    """Rule 5: every rejected line is kept with a clear reason code and its line number."""
    file_lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    rejected = _of_type(envelopes, "rejected-input.v1")
    got = [(r["source_offset"], r["reason"], r["event_id"]) for r in rejected]
    assert got == [
        (30, "event_id_conflict", "cms-003"),
        (31, "duration_exceeds_bound", "cms-005"),
        (32, "past_timely_filing", "cms-006"),
        (33, "invalid_json", None),
        (34, "timestamp_without_offset", "bad-002"),
        (35, "non_positive_minutes", "bad-003"),
        (36, "unknown_activity", "bad-004"),
        (37, "missing_field", "bad-005"),
    ]
    for record in rejected:
        assert record["source_topic"] == str(SAMPLE)
        assert record["original"] == file_lines[record["source_offset"] - 1]
        assert record["message"]


def test_replay_is_deterministic(replay: subprocess.CompletedProcess[str]) -> None:
    """Rule 6: the same input gives byte-identical outputs, ids included."""
    assert run_cli("replay", SAMPLE, *NO_FEED).stdout == replay.stdout


def test_replay_out_file_and_as_of(tmp_path: Path) -> None:
    """Replay --out writes the outputs to a file; --as-of sets the close time."""
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "replay", SAMPLE, *NO_FEED, "--out", out, "--as-of", "2026-04-06T12:00:00+00:00"
    )
    assert result.stdout == ""
    assert_summary(result.stderr)
    records = [
        json.loads(line)["data"]
        for line in out.read_text(encoding="utf-8").splitlines()
        if '"org.ccmtally.billing-record.v1"' in line
    ]
    assert len(records) == 7
    assert {r["closed_at"] for r in records} == {"2026-04-06T12:00:00Z"}


def test_replay_practices_file_threshold_met_date_of_service(tmp_path: Path) -> None:
    """Rule 6: with date_of_service_policy="threshold_met" (practice file), the date of
    service is the local day 99487's threshold was met."""
    practices = tmp_path / "practices.toml"
    practices.write_text('[defaults]\ndate_of_service_policy = "threshold_met"\n', "utf-8")
    result = run_cli("replay", SAMPLE, "--practices", practices)
    records = _records([json.loads(line) for line in result.stdout.splitlines()])
    dos = {key: r["date_of_service"] for key, r in records.items()}
    assert dos == {
        ("P-CMS-01", "2026-03"): "2026-03-10",  # 10:00-11:00 union on the 10th
        ("P-BCBSM-01", "2026-03"): "2026-03-16",  # 31st minute on the 16th
        ("P-PH-01", "2026-03"): "2026-03-04",
        ("P-MCD-01", "2026-03"): "2026-03-19",  # physician minutes do not count
        ("P-VOID-01", "2026-03"): "2026-03-16",  # 50 (11th) + 15 (16th): voided ones out
        ("P-MONTH-01", "2026-03"): "2026-03-31",  # 10 + 45 + 5 of the 23:40 log, on the 31st
        ("P-MONTH-01", "2026-04"): None,
    }
    assert all(r["date_of_service_policy"] == "threshold_met" for r in records.values())


def test_replay_custom_profile_file(tmp_path: Path) -> None:
    """Rule 3: a payer added as data (--profiles) is billed by replay with no code change."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        "[profiles.acme_health]\nversion = 'v7'\nentry_minutes = 20\n"
        "addon_first_minutes = 40\naddon_every_minutes = 20\n",
        "utf-8",
    )
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps(
            {
                "event_type": "time_logged",
                "event_id": "a1",
                "patient_id": "p",
                "practice_id": "x",
                "payer": "acme_health",
                "staff_id": "s",
                "role": "rn",
                "licensed": True,
                "activity": "care_plan",
                "start": "2026-03-10T10:00:00-04:00",
                "minutes": 45,
                "recorded_at": "2026-03-10T11:00:00-04:00",
            }
        )
        + "\n",
        "utf-8",
    )
    result = run_cli("replay", events, "--profiles", profiles)
    [record] = _of_type([json.loads(line) for line in result.stdout.splitlines()], "record.v1")
    assert _lines(record) == {"99487": 1, "99489": 1}
    assert record["profile_version"] == "v7"
    assert record["date_of_service"] == date(2026, 3, 31).isoformat()


def test_replay_status_flag_adds_each_patient_months_final_status(
    replay: subprocess.CompletedProcess[str],
) -> None:
    """``--status``: the other outputs are unchanged, then one status per patient-month (what
    the compacted status topic converges to), agreeing with the month's last record."""
    result = run_cli("replay", "--status", SAMPLE, *NO_FEED)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    plain = [json.loads(line) for line in replay.stdout.splitlines()]
    assert lines[: len(plain)] == plain
    statuses = lines[len(plain) :]
    assert {s["type"] for s in statuses} == {"org.ccmtally.tally-status.v1"}
    assert "7 status records" in result.stderr.strip().splitlines()[-1]
    records: dict[str, dict[str, Any]] = {}
    for env in plain:
        if env["type"] == "org.ccmtally.billing-record.v1":
            data = env["data"]
            key = f"{data['patient_id']}/{data['practice_id']}/{data['service_month']}"
            if key not in records or data["revision"] > records[key]["revision"]:
                records[key] = data
    assert sorted(s["subject"] for s in statuses) == sorted(records)
    for status in statuses:
        data, record = status["data"], records[status["subject"]]
        assert data["closed"] is True
        assert data["revision"] == record["revision"]
        assert data["qualifying_minutes"] == record["qualifying_minutes"]
        assert data["codes_reached"] == record["lines"]
        assert data["minutes_to_next_threshold"] == record["minutes_to_next_threshold"]
