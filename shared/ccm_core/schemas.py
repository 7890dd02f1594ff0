"""JSON Schema of every wire format, generated from the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from .contracts import (
    ENROLLMENT_ADAPTER,
    INPUT_ADAPTER,
    BillingRecord,
    CodeBilled,
    ConsentRecorded,
    ConsentWithdrawn,
    EligibilityAttested,
    Envelope,
    FhirChargeItemEnvelope,
    MonthCloseCommand,
    RejectedInput,
    TallyStatus,
    ThresholdEvent,
    TimeLogged,
    TimeLogVoided,
)

_MODELS: dict[str, type[BaseModel]] = {
    "time_logged.v1": TimeLogged,
    "time_log_voided.v1": TimeLogVoided,
    "month_close_command.v1": MonthCloseCommand,
    "consent_recorded.v1": ConsentRecorded,
    "consent_withdrawn.v1": ConsentWithdrawn,
    "eligibility_attested.v1": EligibilityAttested,
    "code_billed.v1": CodeBilled,
    "threshold.v1": Envelope[ThresholdEvent],
    "billing_record.v1": Envelope[BillingRecord],
    "rejected_input.v1": Envelope[RejectedInput],
    "fhir_chargeitem.v1": FhirChargeItemEnvelope,
    "tally_status.v1": Envelope[TallyStatus],
}


def all_schemas() -> dict[str, dict[str, Any]]:
    """``{name: JSON Schema}``; ``timelog_input.v1`` and ``enrollment_input.v1`` are the input
    topics' unions."""
    out: dict[str, dict[str, Any]] = {
        name: model.model_json_schema() for name, model in _MODELS.items()
    }
    union: TypeAdapter[Any] = INPUT_ADAPTER
    out["timelog_input.v1"] = union.json_schema()
    enrollment: TypeAdapter[Any] = ENROLLMENT_ADAPTER
    out["enrollment_input.v1"] = enrollment.json_schema()
    for name, schema in out.items():
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://ccm-tally.example/schemas/{name}.json"
    return dict(sorted(out.items()))
