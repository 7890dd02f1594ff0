"""AsyncAPI 3.0 description of every topic, built from the code (``ccm-tally schema export``).

Channels come from :class:`~ccm_core.settings.Topics` (one per field: its address is the
configured name), message payloads from the pydantic models' JSON Schemas (their definitions
moved under ``components/schemas``), and Kafka bindings from :class:`Settings` defaults
(partitions, replicas) and the topic configuration the service creates. Operations are seen
from ccm-tally: it ``receive``s the inputs and ``send``s the outputs.

Every ``Topics`` field must have an entry in :data:`CHANNELS` (a unit test checks it), so a new
topic cannot be added without describing it here. The worker's internal ledger changelog is
not described: it is private state, not an interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .contracts import (
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
from .settings import Settings, Topics

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
MONTH_CLOSE_RETENTION_MS = 7 * 24 * 3600 * 1000  # the control topic keeps a week
STATUS_SEGMENT_MS = 6 * 3600 * 1000  # the status feed rolls (and so compacts) every 6 h


@dataclass(frozen=True)
class MessageSpec:
    name: str  # component name
    title: str
    model: type[BaseModel]
    summary: str


@dataclass(frozen=True)
class ChannelSpec:
    direction: Literal["receive", "send"]
    summary: str
    messages: tuple[MessageSpec, ...]
    compacted: bool = False
    configs: tuple[tuple[str, int | float | str], ...] = ()
    cloudevents: bool = True  # outputs: structured-mode CloudEvents (content-type header)
    key: str = "The patient id: every topic is partitioned by it."


_TIME_LOGGED = MessageSpec(
    "timeLogged", "time_logged", TimeLogged, "A staff member's time on a patient's care."
)
_TIME_LOG_VOIDED = MessageSpec(
    "timeLogVoided", "time_log_voided", TimeLogVoided, "Cancels an earlier time log."
)
_ENROLLMENT = (
    MessageSpec("consentRecorded", "consent_recorded", ConsentRecorded, "The patient consented."),
    MessageSpec(
        "consentWithdrawn", "consent_withdrawn", ConsentWithdrawn, "The patient withdrew consent."
    ),
    MessageSpec(
        "eligibilityAttested",
        "eligibility_attested",
        EligibilityAttested,
        "The practice attests complex-CCM eligibility for a month.",
    ),
    MessageSpec(
        "codeBilled",
        "code_billed",
        CodeBilled,
        "Another care-management code was billed for the patient and month.",
    ),
)
_MONTH_CLOSE = MessageSpec(
    "monthClose", "month_close", MonthCloseCommand, "Close a practice's month, or all due months."
)
_THRESHOLD = MessageSpec(
    "threshold",
    "threshold (CloudEvent)",
    Envelope[ThresholdEvent],
    "A CPT threshold reached or revoked.",
)
_RECORD = MessageSpec(
    "billingRecord",
    "billing record (CloudEvent)",
    Envelope[BillingRecord],
    "A patient-month's billing record; later revisions supersede (keep the highest).",
)
_REJECTED = MessageSpec(
    "rejectedInput",
    "rejected input (CloudEvent)",
    Envelope[RejectedInput],
    "A dead-lettered input with its reason code.",
)
_STATUS = MessageSpec(
    "tallyStatus",
    "tally status (CloudEvent)",
    Envelope[TallyStatus],
    "A patient-month's current status; the compacted topic keeps the latest per key.",
)
_FHIR = MessageSpec(
    "fhirChargeItem",
    "FHIR R4 ChargeItem (CloudEvent)",
    FhirChargeItemEnvelope,
    "One billing line of a record revision as a FHIR R4 ChargeItem.",
)

CHANNELS: dict[str, ChannelSpec] = {
    "timelog": ChannelSpec(
        "receive",
        "EHR time logs and voids (input).",
        (_TIME_LOGGED, _TIME_LOG_VOIDED),
        cloudevents=False,
    ),
    "enrollment": ChannelSpec(
        "receive",
        "The enrollment feed: consent, eligibility, other codes billed (input).",
        _ENROLLMENT,
        cloudevents=False,
    ),
    "month_close": ChannelSpec(
        "receive",
        "Close commands from ops and the worker's own timer (input).",
        (_MONTH_CLOSE,),
        configs=(("retention.ms", MONTH_CLOSE_RETENTION_MS),),
        cloudevents=False,
        key="Any: a close command is sent to every partition.",
    ),
    "threshold": ChannelSpec("send", "Thresholds reached and revoked.", (_THRESHOLD,)),
    "billing_record": ChannelSpec(
        "send", "Month-close billing records and their revisions.", (_RECORD,)
    ),
    "dlq": ChannelSpec("send", "Rejected inputs (dead letters).", (_REJECTED,)),
    "tally_status": ChannelSpec(
        "send",
        "Each patient-month's current status (the care-team worklist's feed), compacted.",
        (_STATUS,),
        compacted=True,
        configs=(("segment.ms", STATUS_SEGMENT_MS), ("min.cleanable.dirty.ratio", 0.2)),
        key="patient/practice/month: the compaction key (the partition is the patient's).",
    ),
    "fhir_chargeitem": ChannelSpec(
        "send", "FHIR R4 ChargeItems, one per billing line of each record revision.", (_FHIR,)
    ),
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _message_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """({message name: payload schema}, {definition name: schema}) with refs to components."""
    specs = {m.name: m for c in CHANNELS.values() for m in c.messages}
    keyed: list[tuple[Any, Literal["validation"]]] = [
        (spec.model, "validation") for spec in specs.values()
    ]
    refs, top = models_json_schema(keyed, ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = dict(top.get("$defs", {}))
    payloads: dict[str, Any] = {}
    for name, spec in specs.items():
        payloads[name] = refs[(spec.model, "validation")]
    return payloads, definitions


def build(settings: Settings | None = None, version: str = "0.1.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a plain dict, ready for YAML or JSON)."""
    settings = settings or Settings()
    topics = settings.topics
    missing = set(Topics.model_fields) - set(CHANNELS)
    if missing:
        raise LookupError(f"topics without an AsyncAPI description: {sorted(missing)}")
    payloads, definitions = _message_schemas()
    ce_headers = {
        "type": "object",
        "required": ["content-type"],
        "properties": {
            "content-type": {
                "type": "string",
                "const": "application/cloudevents+json",
                "description": "CloudEvents Kafka binding, structured content mode.",
            }
        },
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for field, spec in CHANNELS.items():
        address: str = getattr(topics, field)
        channel_id = _camel(field)
        config: dict[str, Any] = {
            "cleanup.policy": ["compact"] if spec.compacted else ["delete"],
        }
        config.update(dict(spec.configs))
        channels[channel_id] = {
            "address": address,
            "title": address,
            "summary": spec.summary,
            "messages": {
                m.name: {"$ref": f"#/components/messages/{m.name}"} for m in spec.messages
            },
            "bindings": {
                "kafka": {
                    "topic": address,
                    "partitions": settings.partitions,
                    "replicas": settings.replication_factor,
                    "topicConfiguration": config,
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }
        verb = "receive" if spec.direction == "receive" else "send"
        operations[f"{verb}{channel_id[0].upper()}{channel_id[1:]}"] = {
            "action": spec.direction,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": ("ccm-tally consumes: " if verb == "receive" else "ccm-tally publishes: ")
            + spec.summary,
            "messages": [
                {"$ref": f"#/channels/{channel_id}/messages/{m.name}"} for m in spec.messages
            ],
        }
        for m in spec.messages:
            message: dict[str, Any] = {
                "name": m.name,
                "title": m.title,
                "summary": m.summary,
                "contentType": "application/json",
                "payload": payloads[m.name],
                "bindings": {
                    "kafka": {
                        "key": {"type": "string", "description": spec.key},
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }
                },
            }
            if spec.cloudevents:
                message["contentType"] = "application/cloudevents+json"
                message["headers"] = ce_headers
            messages[m.name] = message
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "ccm-tally",
            "version": version,
            "description": "Complex CCM (CPT 99487/99489) time tally: topics, messages and "
            "Kafka bindings. Outputs are CloudEvents 1.0 in structured content mode; consumers "
            "dedupe on the envelope id and keep the highest revision per billing record_id. "
            "Partitions and replicas are the defaults (CCM_PARTITIONS, "
            "CCM_REPLICATION_FACTOR); topic names the defaults of CCM_TOPIC_*.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": settings.kafka_bootstrap_servers,
                "protocol": "kafka",
                "description": "The demo's local broker (ccm-tally broker).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": dict(sorted(definitions.items())),
        },
    }
