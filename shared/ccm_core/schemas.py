"""JSON Schema of every wire format, generated from the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from .contracts import (
    INPUT_ADAPTER,
    BillingRecord,
    Envelope,
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
    "threshold.v1": Envelope[ThresholdEvent],
    "billing_record.v1": Envelope[BillingRecord],
    "rejected_input.v1": Envelope[RejectedInput],
    "tally_status.v1": Envelope[TallyStatus],
}


def all_schemas() -> dict[str, dict[str, Any]]:
    """``{name: JSON Schema}``; ``timelog_input.v1`` is the input topic's union."""
    out: dict[str, dict[str, Any]] = {
        name: model.model_json_schema() for name, model in _MODELS.items()
    }
    union: TypeAdapter[Any] = INPUT_ADAPTER
    out["timelog_input.v1"] = union.json_schema()
    for name, schema in out.items():
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://ccm-tally.example/schemas/{name}.json"
    return dict(sorted(out.items()))
