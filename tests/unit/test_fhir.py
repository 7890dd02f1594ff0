"""FHIR R4 ChargeItems of billing records: what a FHIR billing system relies on.

Every resource is parsed back with ``fhir.resources`` (the R4-compatible R4B classes) and
checked field by field: CPT coding, units, date of service, patient, practice, identifiers,
contributing logs, and how a later revision supersedes an earlier one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.chargeitem import ChargeItem
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ccm_core.contracts import BillingRecord, FhirChargeItemEnvelope
from ccm_core.fhir import (
    CPT_SYSTEM,
    PATIENT_ID_SYSTEM,
    PRACTICE_ID_SYSTEM,
    RECORD_ID_SYSTEM,
    RECORD_REVISION_SYSTEM,
    TIME_LOG_SYSTEM,
    charge_item,
)
from ccm_core.settings import Topics

from .unit_helpers import CLOSE_AT, PATIENT, PRACTICE, Harness, local, log, void

REPO = Path(__file__).resolve().parents[2]


def items_of(harness: Harness) -> list[FhirChargeItemEnvelope]:
    out = []
    for o in harness.outputs:
        if o.kind == "fhir_chargeitem":
            assert isinstance(o.envelope, FhirChargeItemEnvelope)
            out.append(o.envelope)
    return out


def parsed(env: FhirChargeItemEnvelope) -> Any:
    """The resource parsed by fhir.resources (Any: its optional fields read without checks)."""
    return ChargeItem.model_validate(env.data)


def identifiers(item: Any) -> dict[str, str]:
    return {str(i.system): str(i.value) for i in item.identifier or []}


def test_one_charge_item_per_billing_line_with_the_record_s_facts() -> None:
    """100 minutes of CMS time: 99487 x1 and 99489 x1, each a valid R4 ChargeItem naming the
    patient, the practice (performer and enterer), the date of service, the record and its
    revision, and the counted logs as supporting information."""
    harness = Harness()
    harness.feed(
        log("a", local(3), 50),
        log("b", local(4), 50),
        log("x", local(5), 30, activity="benefit_check"),  # excluded: not supporting
    )
    harness.close()
    [record] = harness.records()
    envs = items_of(harness)
    assert [e.type for e in envs] == ["org.ccmtally.fhir-chargeitem.v1"] * 2
    assert all(e.datacontenttype == "application/fhir+json" for e in envs)
    by_code = {}
    for env in envs:
        item = parsed(env)
        [coding] = item.code.coding or []
        assert coding.system == CPT_SYSTEM
        by_code[coding.code] = item
    assert set(by_code) == {"99487", "99489"}
    assert {c: i.quantity.value for c, i in by_code.items()} == {"99487": 1, "99489": 1}
    for item in by_code.values():
        assert item.status == "billable"
        assert str(item.occurrenceDateTime) == "2026-03-31" == str(record.date_of_service)
        assert item.subject.type == "Patient"
        assert item.subject.identifier.system == PATIENT_ID_SYSTEM
        assert item.subject.identifier.value == PATIENT
        for org in (item.performer[0].actor, item.enterer, item.performingOrganization):
            assert org.type == "Organization"
            assert (org.identifier.system, org.identifier.value) == (
                PRACTICE_ID_SYSTEM,
                PRACTICE,
            )
        ids = identifiers(item)
        assert ids[RECORD_ID_SYSTEM] == record.record_id
        assert ids[RECORD_REVISION_SYSTEM] == f"{record.record_id}/0"
        logs = [r.identifier for r in item.supportingInformation or []]
        assert [(i.system, i.value) for i in logs] == [
            (TIME_LOG_SYSTEM, "a"),
            (TIME_LOG_SYSTEM, "b"),
        ]


def test_no_charge_items_for_a_month_below_the_entry_threshold() -> None:
    harness = Harness()
    harness.feed(log("a", local(3), 59))
    harness.close()
    [record] = harness.records()
    assert not record.billable
    assert items_of(harness) == []


def test_a_late_log_supersedes_with_the_same_logical_ids_and_a_new_revision() -> None:
    """Revision 1 adds 99489: the 99487 ChargeItem keeps its logical id (a FHIR PUT replaces
    it), its revision identifier and extension move to 1, and envelope ids stay unique."""
    harness = Harness()
    harness.feed(log("a", local(3), 60))
    harness.close()
    harness.feed(log("late", local(20), 30, recorded_at=CLOSE_AT + timedelta(days=1)))
    first, second = harness.records()
    assert (first.revision, second.revision) == (0, 1)
    envs = items_of(harness)
    ids = [e.id for e in envs]
    assert len(ids) == len(set(ids))
    rev0 = [parsed(e) for e in envs if e.data["extension"][0]["valueInteger"] == 0]
    rev1 = [parsed(e) for e in envs if e.data["extension"][0]["valueInteger"] == 1]
    assert [i.code.coding[0].code for i in rev0] == ["99487"]
    assert {i.code.coding[0].code: i.status for i in rev1} == {
        "99487": "billable",
        "99489": "billable",
    }
    same = next(i for i in rev1 if i.code.coding[0].code == "99487")
    assert same.id == rev0[0].id
    assert identifiers(same)[RECORD_REVISION_SYSTEM] == f"{second.record_id}/1"


def test_a_void_below_the_threshold_marks_the_earlier_charge_item_entered_in_error() -> None:
    harness = Harness()
    harness.feed(log("a", local(3), 60))
    harness.close()
    [billed] = [parsed(e) for e in items_of(harness)]
    harness.feed(void("v", "a", recorded_at=CLOSE_AT + timedelta(days=1)))
    _, revised = harness.records()
    assert not revised.billable and revised.revision == 1
    rev1 = [parsed(e) for e in items_of(harness)][1:]
    withdrawn = {i.code.coding[0].code: i for i in rev1}
    # every code of the profile is superseded: 99487 was billed, 99489 never was
    assert set(withdrawn) == {"99487", "99489"}
    assert all(i.status == "entered-in-error" for i in rev1)
    assert withdrawn["99487"].id == billed.id
    assert withdrawn["99487"].quantity.value == 0
    assert withdrawn["99487"].supportingInformation is None
    period = withdrawn["99487"].occurrencePeriod
    assert (str(period.start), str(period.end)) == ("2026-03-01", "2026-03-31")


def test_the_library_validation_the_builder_relies_on_is_not_vacuous() -> None:
    """``charge_item`` validates with fhir.resources; that validation does refuse what R4
    forbids (a missing required subject, an unknown element, an impossible date)."""
    harness = Harness()
    harness.feed(log("a", local(3), 60))
    harness.close()
    [record] = harness.records()
    good = charge_item(record, "99487", 1, "billable")
    ChargeItem.model_validate(good)
    bad_variants = [
        {k: v for k, v in good.items() if k != "subject"},
        {**good, "units": 1},
        {**good, "occurrenceDateTime": "2026-02-30"},
    ]
    for bad in bad_variants:
        with pytest.raises(ValidationError):
            ChargeItem.model_validate(bad)


def test_fhir_topic_is_an_output_topic() -> None:
    assert Topics().output_topic("fhir_chargeitem") == "ccm.fhir-chargeitem.v1"
    assert Topics.prefixed("t").output_topic("fhir_chargeitem") == "t.fhir-chargeitem"


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "ccm-tally"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]


def _write_outputs(harness: Harness, path: Path) -> None:
    path.write_text("".join(o.to_json() + "\n" for o in harness.outputs), encoding="utf-8")


def test_export_fhir_bundles_the_latest_revision_of_each_record(tmp_path: Path) -> None:
    """``ccm-tally export fhir``: a transaction Bundle (valid R4) with the latest revision's
    ChargeItems only, PUT by logical id; a code an earlier revision billed and the latest no
    longer does is sent as entered-in-error."""
    harness = Harness()
    harness.feed(log("a", local(3), 50), log("b", local(4), 50))
    harness.feed(log("c", local(3), 60, patient_id="pat-2"))
    harness.close()
    harness.feed(void("v", "b", recorded_at=CLOSE_AT + timedelta(days=1)))  # 50 min: unbilled
    records = tmp_path / "records.jsonl"
    _write_outputs(harness, records)
    done = subprocess.run(
        [*_cli(), "export", "fhir", str(records)], capture_output=True, text=True, check=True
    )
    bundle = Bundle.model_validate_json(done.stdout)
    assert bundle.type == "transaction"
    entries: list[Any] = bundle.entry or []
    got = {}
    for entry in entries:
        assert isinstance(entry.resource, ChargeItem)
        item: Any = entry.resource
        assert entry.request.method == "PUT"
        assert entry.request.url == f"ChargeItem/{item.id}"
        got[(item.subject.identifier.value, item.code.coding[0].code)] = (
            item.status,
            item.quantity.value,
            identifiers(item)[RECORD_REVISION_SYSTEM].rsplit("/", 1)[1],
        )
    assert got == {
        (PATIENT, "99487"): ("entered-in-error", 0, "1"),
        (PATIENT, "99489"): ("entered-in-error", 0, "1"),
        ("pat-2", "99487"): ("billable", 1, "0"),
    }
    assert "3 billing records (2 latest revisions) -> 3 ChargeItems" in done.stderr


def test_export_fhir_ndjson_matches_the_stream_s_resources(tmp_path: Path) -> None:
    """NDJSON export of a month closed once gives exactly the resources the stream published."""
    harness = Harness()
    harness.feed(log("a", local(3), 95))
    harness.close()
    records = tmp_path / "records.jsonl"
    _write_outputs(harness, records)
    out = tmp_path / "items.ndjson"
    subprocess.run(
        [*_cli(), "export", "fhir", str(records), "--format", "ndjson", "--out", str(out)],
        capture_output=True,
        check=True,
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [e.data for e in items_of(harness)]
    assert all(ChargeItem.model_validate(line).status == "billable" for line in lines)
    assert isinstance(harness.records()[0], BillingRecord)


@settings(max_examples=60, deadline=None)
@given(
    minutes=st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=12),
    payer=st.sampled_from(["cms", "bcbsm", "priority_health", "medicaid"]),
    voided=st.sets(st.integers(min_value=0, max_value=11), max_size=4),
    late=st.integers(min_value=0, max_value=90),
)
def test_every_resource_of_any_month_is_valid_r4_in_full(
    minutes: list[int], payer: str, voided: set[int], late: int
) -> None:
    """The stream validates once per resource shape (``ccm_core.fhir._validate``); here every
    ChargeItem of generated months, revisions included, is validated in full."""
    harness = Harness()
    harness.feed(*[log(f"e{i}", local(i + 1), m, payer=payer) for i, m in enumerate(minutes)])
    harness.close()
    after = CLOSE_AT + timedelta(days=1)
    harness.feed(*[void(f"v{i}", f"e{i}", recorded_at=after) for i in voided if i < len(minutes)])
    if late:
        harness.feed(log("late", local(25), late, payer=payer, recorded_at=after))
    for env in items_of(harness):
        item = ChargeItem.model_validate(env.data)
        assert item.status in {"billable", "entered-in-error"}
        FhirChargeItemEnvelope.model_validate_json(env.model_dump_json())


def test_held_lines_are_on_hold_charge_items_with_their_reasons() -> None:
    """The compliance example: months whose time reaches 99487 but lack consent or an
    eligibility attestation are held: their lines are ChargeItems ``on-hold`` naming the hold
    reasons, never ``billable``."""
    compliance = REPO / "examples" / "compliance-month.jsonl"
    harness = Harness()
    harness.feed(*compliance.read_bytes().splitlines())
    harness.close_all()
    held = [r for r in harness.records() if r.hold_reasons]
    assert held, "the example must hold some months"
    items = [parsed(e) for e in items_of(harness)]
    checked = 0
    for record in held:
        mine = [i for i in items if identifiers(i)[RECORD_ID_SYSTEM] == record.record_id]
        latest = max(int(identifiers(i)[RECORD_REVISION_SYSTEM].rsplit("/", 1)[1]) for i in mine)
        if latest != record.revision:
            continue  # an earlier revision of a record that changed later
        current = [i for i in mine if identifiers(i)[RECORD_REVISION_SYSTEM].endswith(f"/{latest}")]
        on_hold = {i.code.coding[0].code: i for i in current if i.status == "on-hold"}
        assert set(on_hold) == {line.code for line in record.held_lines}
        for item in on_hold.values():
            reasons = [e.valueCode for e in item.extension if e.url.endswith("/hold-reason")]
            assert reasons == [r.value for r in record.hold_reasons]
        assert not any(i.status == "billable" for i in current)
        checked += 1
    latest_held = {
        r.record_id
        for r in held
        if r.revision == max(x.revision for x in harness.records() if x.record_id == r.record_id)
    }
    assert checked == len(latest_held) > 0
