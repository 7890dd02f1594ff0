"""``ccm-tally schema export``: the JSON Schemas of the wire formats.

The time-log formats are checked with a small validator covering the keywords pydantic emits
here (written before ``jsonschema`` was a test dependency), the enrollment feed with the
``jsonschema`` library; the sample events are also checked with the pydantic models
themselves. The small validator is tested against known-bad payloads so that it is not
vacuous. The full agreement of the schemas with the service, keyword by keyword, is checked
with the ``jsonschema`` package in test_schema_oracle.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from ccm_core.contracts import INPUT_ADAPTER, Activity, Role, TimeLogged
from ccm_core.schemas import all_schemas

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sample-month.jsonl"
EXPECTED_NAMES = {
    "billing_record.v1",
    "code_billed.v1",
    "consent_recorded.v1",
    "consent_withdrawn.v1",
    "eligibility_attested.v1",
    "enrollment_input.v1",
    "month_close_command.v1",
    "rejected_input.v1",
    "threshold.v1",
    "time_log_voided.v1",
    "time_logged.v1",
    "timelog_input.v1",
}
_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
    "null": type(None),
}


def errors(schema: dict[str, Any], value: Any, root: dict[str, Any] | None = None) -> list[str]:
    """A minimal JSON Schema (2020-12 subset) validator: the keywords pydantic emits."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return errors(root["$defs"][name], value, root)
    found: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        expected = _TYPES[kind]
        bad_bool = kind in ("integer", "number") and isinstance(value, bool)
        if not isinstance(value, expected) or bad_bool:
            return [f"{value!r} is not {kind}"]
    if "const" in schema and value != schema["const"]:
        found.append(f"{value!r} != const {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{value!r} not in enum")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            found.append(f"{value!r} too short")
        if len(value) > schema.get("maxLength", len(value)):
            found.append(f"{value!r} too long")
        fmt = schema.get("format")
        try:
            if fmt == "date-time":
                datetime.fromisoformat(value)
            elif fmt == "date":
                date.fromisoformat(value)
        except ValueError:
            found.append(f"{value!r} is not a {fmt}")
    minimum = schema.get("exclusiveMinimum")
    if isinstance(value, int) and minimum is not None and value <= minimum:
        found.append(f"{value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        found += [f"missing {k}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                found += [f"{key}: {e}" for e in errors(props[key], item, root)]
            elif extra is False:
                found.append(f"unexpected {key}")
            elif isinstance(extra, dict):
                found += [f"{key}: {e}" for e in errors(extra, item, root)]
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += [f"[{index}]: {e}" for e in errors(schema["items"], item, root)]
    if "anyOf" in schema and all(errors(s, value, root) for s in schema["anyOf"]):
        found.append(f"{value!r} matches no anyOf branch")
    if "oneOf" in schema:
        matches = sum(not errors(s, value, root) for s in schema["oneOf"])
        if matches != 1:
            found.append(f"{value!r} matches {matches} oneOf branches")
    return found


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("schemas")
    script = Path(sys.executable).parent / "ccm-tally"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]
    result = subprocess.run(
        [*cli, "schema", "export", str(out)], capture_output=True, text=True, check=True
    )
    files = sorted(out.glob("*.schema.json"))
    assert sorted(result.stdout.split()) == sorted([*map(str, files), str(out / "asyncapi.yaml")])
    return {f.name.removesuffix(".schema.json"): json.loads(f.read_text("utf-8")) for f in files}


def _sample_events() -> list[dict[str, Any]]:
    """The sample's lines that are well-formed JSON objects."""
    events = []
    for line in SAMPLE.read_text("utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def test_schema_export_writes_one_parseable_schema_per_format(
    exported: dict[str, dict[str, Any]],
) -> None:
    """Schema export: every wire format has a JSON Schema with $schema and a stable $id."""
    assert set(exported) >= EXPECTED_NAMES
    for name, schema in exported.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f"/{name}.json")
    assert exported == json.loads(json.dumps(all_schemas()))


def test_schema_time_logged_lists_required_fields_and_enums(
    exported: dict[str, dict[str, Any]],
) -> None:
    """Rule 5: the schema requires patient, practice, payer, staff, role, activity, start,
    recorded_at, and enumerates exactly the known activities and roles."""
    schema = exported["time_logged.v1"]
    assert {"event_id", "patient_id", "practice_id", "payer", "staff_id", "role"} <= set(
        schema["required"]
    )
    assert {"licensed", "activity", "start", "recorded_at"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Activity"]["enum"] == [a.value for a in Activity]
    assert schema["$defs"]["Role"]["enum"] == [r.value for r in Role]


def test_schema_sample_events_validate_with_schema_and_pydantic(
    exported: dict[str, dict[str, Any]],
) -> None:
    """The sample's well-formed events pass both the exported schema and the pydantic model;
    its invalid ones (unknown activity, zero minutes, no patient) fail both."""
    union = exported["timelog_input.v1"]
    bad_ids = {"bad-003", "bad-004", "bad-005"}  # 0 minutes, unknown activity, no patient
    for event in _sample_events():
        schema_errors = errors(union, event)
        if event.get("event_id") in bad_ids:
            assert schema_errors, event["event_id"]
            with pytest.raises(ValueError):
                INPUT_ADAPTER.validate_python(event)
        elif event.get("event_id") != "bad-002":  # a naive time is a valid date-time string
            assert schema_errors == [], (event["event_id"], schema_errors)
            INPUT_ADAPTER.validate_python(event)
    first = _sample_events()[0]
    assert TimeLogged.model_validate(first).event_id == "cms-001"
    assert errors(exported["time_logged.v1"], first) == []


def test_schema_replay_outputs_validate_against_output_schemas(
    exported: dict[str, dict[str, Any]],
) -> None:
    """Every envelope ccm-tally replay writes for the sample matches its exported schema."""
    script = Path(sys.executable).parent / "ccm-tally"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]
    result = subprocess.run(
        [*cli, "replay", "--status", str(SAMPLE)], capture_output=True, text=True, check=True
    )
    by_type = {
        "org.ccmtally.tally-status.v1": exported["tally_status.v1"],
        "org.ccmtally.threshold.v1": exported["threshold.v1"],
        "org.ccmtally.billing-record.v1": exported["billing_record.v1"],
        "org.ccmtally.rejected-input.v1": exported["rejected_input.v1"],
        "org.ccmtally.fhir-chargeitem.v1": exported["fhir_chargeitem.v1"],
    }
    seen = set()
    for line in result.stdout.splitlines():
        envelope = json.loads(line)
        seen.add(envelope["type"])
        assert errors(by_type[envelope["type"]], envelope) == []
    assert seen == set(by_type)


def test_schema_validator_is_not_vacuous(exported: dict[str, dict[str, Any]]) -> None:
    """The small validator above does reject what the schema forbids."""
    schema = exported["time_logged.v1"]
    good = _sample_events()[0]
    assert errors(schema, good) == []
    assert errors(schema, {**good, "role": "janitor"})
    assert errors(schema, {**good, "extra": 1})
    assert errors(schema, {**good, "minutes": 0})
    assert errors(schema, {k: v for k, v in good.items() if k != "practice_id"})
    assert errors(exported["time_log_voided.v1"], good)


COMPLIANCE = REPO / "examples" / "compliance-month.jsonl"


def test_schema_enrollment_feed_and_close_lines_of_the_compliance_example_validate(
    exported: dict[str, dict[str, Any]],
) -> None:
    """Rule 7: every enrollment event of the example matches ``enrollment_input.v1`` (checked
    with the jsonschema library), every close line ``month_close_command.v1``; an excluding
    code outside the list, a bad month and an unknown event type do not."""
    enrollment = Draft202012Validator(exported["enrollment_input.v1"])
    close = Draft202012Validator(exported["month_close_command.v1"])
    kinds = set()
    for line in COMPLIANCE.read_text("utf-8").splitlines():
        item = json.loads(line)
        if "command_type" in item:
            assert list(close.iter_errors(item)) == []
        elif item["event_type"] not in ("time_logged", "time_log_voided"):
            kinds.add(item["event_type"])
            assert list(enrollment.iter_errors(item)) == [], item["event_id"]
            billed = item["event_type"] == "code_billed"
            assert not enrollment.is_valid({**item, "code": "99487"}) or not billed
    assert kinds == {"consent_recorded", "eligibility_attested", "code_billed"}
    attest = {
        "event_type": "eligibility_attested",
        "event_id": "x",
        "patient_id": "p",
        "practice_id": "q",
        "service_month": "2026-13",
        "chronic_conditions": 2,
        "care_plan": "revised",
        "medical_decision_making": "high",
        "recorded_at": "2026-03-01T10:00:00Z",
    }
    assert not enrollment.is_valid(attest)
    assert enrollment.is_valid({**attest, "service_month": "2026-12"})
    assert not enrollment.is_valid({**attest, "service_month": "2026-12", "event_type": "nope"})


def test_schema_compliance_replay_outputs_validate(exported: dict[str, dict[str, Any]]) -> None:
    """The records with holds, enrollment and other practices match ``billing_record.v1``."""
    script = Path(sys.executable).parent / "ccm-tally"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]
    result = subprocess.run(
        [*cli, "replay", str(COMPLIANCE)], capture_output=True, text=True, check=True
    )
    by_type = {
        "org.ccmtally.threshold.v1": Draft202012Validator(exported["threshold.v1"]),
        "org.ccmtally.billing-record.v1": Draft202012Validator(exported["billing_record.v1"]),
        "org.ccmtally.rejected-input.v1": Draft202012Validator(exported["rejected_input.v1"]),
        "org.ccmtally.fhir-chargeitem.v1": Draft202012Validator(exported["fhir_chargeitem.v1"]),
    }
    held = 0
    for line in result.stdout.splitlines():
        envelope = json.loads(line)
        assert list(by_type[envelope["type"]].iter_errors(envelope)) == []
        if envelope["type"] == "org.ccmtally.billing-record.v1":
            held += bool(envelope["data"].get("hold_reasons"))
    assert held >= 3
