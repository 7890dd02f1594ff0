"""FHIR R4 ``ChargeItem`` resources of a billing record: the hand-off to FHIR billing systems.

One ChargeItem per billing line (CPT code, units), built as FHIR JSON and validated with
``fhir.resources`` before it leaves the core.

FHIR version: the target is **R4 (4.0.1)**, the version US payers' and EHRs' FHIR APIs use
(the ONC/CMS interoperability rules name R4). ``fhir.resources`` 8.x ships R5 as its default
package and R4 only as ``fhir.resources.R4B`` (4.3.0); R4B changed the medication-definition
and evidence resources but left ``ChargeItem`` and every data type used here as they are in
4.0.1, so what validates against the R4B classes is valid R4 JSON. (R5's ChargeItem differs:
``performer`` and ``product`` became ``CodeableReference`` and ``enterer`` changed, which is
why the R5 default package is not used.)

How revisions supersede (the record's ``revision`` 0, 1, 2 …):
- a ChargeItem's logical ``id`` is the same for every revision of one record and code
  (``stable_id(record_id, code)``), so a FHIR server that PUTs it replaces the earlier
  version; its identifiers carry the record id, the line (record id + code) and the revision
  (``<record_id>/<revision>``), and the ``revision`` extension the number;
- a line held by the record (time enough, but no consent, no eligibility attestation, another
  code billed …: ``held_lines``, ``hold_reasons``) is a ChargeItem with ``status = on-hold``
  and the hold reasons as extensions; once released, the next revision makes it ``billable``;
- a code that a later revision no longer bills (voids dropped the total) gets a ChargeItem of
  the same id with ``status = entered-in-error`` and quantity 0. The stream does not know which
  codes an earlier revision carried (the ledger keeps only the last record's digest), so a
  revision > 0 supersedes every code of the payer profile that it does not bill: a consumer
  may receive an ``entered-in-error`` for a ChargeItem it never saw, and ignores it.

No free text: the resources carry ids, codes, counts and dates, never notes or staff names.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, Literal

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.chargeitem import ChargeItem

from .contracts import BillingRecord, FhirChargeItemEnvelope
from .months import last_day, parse_month

FHIR_VERSION = "4.0.1"
CPT_SYSTEM = "http://www.ama-assn.org/go/cpt"
_BASE = "https://ccm-tally.example/fhir"
PATIENT_ID_SYSTEM = f"{_BASE}/sid/patient-id"
PRACTICE_ID_SYSTEM = f"{_BASE}/sid/practice-id"
RECORD_ID_SYSTEM = f"{_BASE}/sid/billing-record"
RECORD_REVISION_SYSTEM = f"{_BASE}/sid/billing-record-revision"
LINE_ID_SYSTEM = f"{_BASE}/sid/billing-line"
TIME_LOG_SYSTEM = f"{_BASE}/sid/time-log"
EXT_REVISION = f"{_BASE}/StructureDefinition/billing-record-revision"
EXT_SERVICE_MONTH = f"{_BASE}/StructureDefinition/service-month"
EXT_PAYER = f"{_BASE}/StructureDefinition/payer-profile"
EXT_QUALIFYING_MINUTES = f"{_BASE}/StructureDefinition/qualifying-minutes"
UCUM = "http://unitsofmeasure.org"

EXT_HOLD_REASON = f"{_BASE}/StructureDefinition/hold-reason"

Status = Literal["billable", "on-hold", "entered-in-error"]


def charge_item_id(record_id: str, code: str) -> str:
    """The logical id of a record's ChargeItem for ``code``: the same across revisions."""
    from .tally import stable_id  # tally imports this module

    return stable_id("fhir-chargeitem", record_id, code)


def _reference(kind: str, system: str, value: str) -> dict[str, Any]:
    # a logical reference (by identifier): ccm-tally does not know the receiving server's ids
    return {"type": kind, "identifier": {"system": system, "value": value}}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def charge_item(record: BillingRecord, code: str, units: int, status: Status) -> dict[str, Any]:
    """One ChargeItem (FHIR JSON) of ``record`` for ``code``, validated with fhir.resources.

    Raises ``pydantic.ValidationError`` if the resource is not valid FHIR (a bug, not data).
    """
    practice = _reference("Organization", PRACTICE_ID_SYSTEM, record.practice_id)
    year, month = parse_month(record.service_month)
    if status == "on-hold":  # why the line may not be billed yet (consent, eligibility ...)
        resource_holds = [
            {"url": EXT_HOLD_REASON, "valueCode": reason.value} for reason in record.hold_reasons
        ]
    else:
        resource_holds = []
    if record.date_of_service is not None:
        occurrence: dict[str, Any] = {"occurrenceDateTime": record.date_of_service.isoformat()}
    else:  # not billable in this revision: the service month as a period
        first = date(year, month, 1).isoformat()
        occurrence = {
            "occurrencePeriod": {"start": first, "end": last_day(record.service_month).isoformat()}
        }
    resource: dict[str, Any] = {
        "resourceType": "ChargeItem",
        "id": charge_item_id(record.record_id, code),
        "extension": [
            {"url": EXT_REVISION, "valueInteger": record.revision},
            {"url": EXT_SERVICE_MONTH, "valueString": record.service_month},
            {"url": EXT_PAYER, "valueString": record.payer},
            {
                "url": EXT_QUALIFYING_MINUTES,
                "valueQuantity": {
                    "value": record.qualifying_minutes,
                    "unit": "min",
                    "system": UCUM,
                    "code": "min",
                },
            },
            *resource_holds,
        ],
        "identifier": [
            {"use": "official", "system": LINE_ID_SYSTEM, "value": f"{record.record_id}/{code}"},
            {"system": RECORD_ID_SYSTEM, "value": record.record_id},
            {
                "system": RECORD_REVISION_SYSTEM,
                "value": f"{record.record_id}/{record.revision}",
            },
        ],
        "status": status,
        "code": {"coding": [{"system": CPT_SYSTEM, "code": code}]},
        "subject": _reference("Patient", PATIENT_ID_SYSTEM, record.patient_id),
        **occurrence,
        "performer": [{"actor": practice}],
        "performingOrganization": practice,
        "enterer": practice,
        "enteredDate": _iso(record.closed_at),
        "quantity": {"value": units},
    }
    supporting = []
    if status != "entered-in-error":
        supporting = [
            {"identifier": {"system": TIME_LOG_SYSTEM, "value": event_id}}
            for event_id in record.contributing_event_ids
        ]
        resource["supportingInformation"] = supporting
    shape = (status, code, "occurrenceDateTime" in resource, bool(supporting), len(resource_holds))
    _validate(resource, shape)
    return resource


_VALID_SHAPES: set[tuple[str, str, bool, bool, int]] = set()


def _validate(resource: dict[str, Any], shape: tuple[str, str, bool, bool, int]) -> None:
    """Validate ``resource`` with fhir.resources, once per shape.

    fhir.resources validates ~25 nested models per ChargeItem (1 ms of CPU, more with many
    supporting logs): on every resource that made month-close several times slower (3,000
    patient-months: 0.5 s -> 3.6 s of CPU), which the stream's close cannot afford. Resources
    of one shape (status, CPT code, occurrence kind, supporting logs or not) differ only in
    values the input contracts already constrain to valid FHIR primitives: ids are 32 hex
    characters, patient/practice/log ids 1-128 characters without white space (FHIR
    ``string``), months, dates and instants come from validated dates and datetimes, counts are
    ints. So the first resource of each shape in a process is validated in full; the CPT code is
    part of the shape because it comes from payer profiles (data). ``tests/unit/test_fhir.py``
    validates every resource of generated months in full.
    """
    if shape in _VALID_SHAPES:
        return
    ChargeItem.model_validate(resource)
    _VALID_SHAPES.add(shape)


def charge_items(record: BillingRecord, superseded: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The ChargeItems of one record revision: one ``billable`` per line, one ``on-hold`` per
    held line (the time supports it but consent, eligibility or another code stops it: the
    record's ``hold_reasons`` as extensions), and one ``entered-in-error`` per code in
    ``superseded`` that this revision neither bills nor holds."""
    billed = {line.code for line in record.lines} | {line.code for line in record.held_lines}
    items = [charge_item(record, line.code, line.units, "billable") for line in record.lines]
    items += [charge_item(record, line.code, line.units, "on-hold") for line in record.held_lines]
    items += [
        charge_item(record, code, 0, "entered-in-error")
        for code in sorted(set(superseded) - billed)
    ]
    return items


def envelope_id(record: BillingRecord, code: str) -> str:
    from .tally import stable_id

    return stable_id("fhir-chargeitem", record.record_id, record.revision, code)


def charge_item_envelopes(
    record: BillingRecord, subject: str, superseded: Iterable[str] = ()
) -> list[FhirChargeItemEnvelope]:
    """Each ChargeItem of the record wrapped in its CloudEvents envelope (deterministic id)."""
    return [
        FhirChargeItemEnvelope(
            id=envelope_id(record, item["code"]["coding"][0]["code"]),
            subject=subject,
            time=record.closed_at,
            data=item,
        )
        for item in charge_items(record, superseded)
    ]


def latest_records(records: Iterable[BillingRecord]) -> list[tuple[BillingRecord, set[str]]]:
    """The highest revision of each record id, with the codes its earlier revisions billed
    and it no longer does (to supersede), in record id order."""
    latest: dict[str, BillingRecord] = {}
    codes: dict[str, set[str]] = {}
    for record in records:
        lines = [*record.lines, *record.held_lines]
        codes.setdefault(record.record_id, set()).update(line.code for line in lines)
        seen = latest.get(record.record_id)
        if seen is None or record.revision > seen.revision:
            latest[record.record_id] = record
    out = []
    for record_id in sorted(latest):
        record = latest[record_id]
        kept = {line.code for line in [*record.lines, *record.held_lines]}
        out.append((record, codes[record_id] - kept))
    return out


def transaction_bundle(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A FHIR R4 ``transaction`` Bundle that PUTs every ChargeItem by its logical id (a server
    then holds exactly the latest revision), validated with fhir.resources."""
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{_BASE}/ChargeItem/{item['id']}",
                "resource": item,
                "request": {"method": "PUT", "url": f"ChargeItem/{item['id']}"},
            }
            for item in items
        ],
    }
    Bundle.model_validate(bundle)
    return bundle
