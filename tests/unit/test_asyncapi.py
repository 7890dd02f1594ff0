"""The AsyncAPI 3.0 document: every topic, derived from the code, and the committed copy current.

Its validity against the AsyncAPI specification is checked by the official CLI in CI
(``make asyncapi-check``); here: it describes every ``Topics`` field, its payload schemas
accept what ccm-tally really reads and writes, and ``docs/asyncapi.yaml`` is what the code
generates now.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from ccm_cli.main import asyncapi_yaml
from ccm_core import asyncapi
from ccm_core.settings import Settings, Topics

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sample-month.jsonl"


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(asyncapi_yaml())
    return loaded


def validator(doc: dict[str, Any], message: str) -> Draft202012Validator:
    """A validator of one message's payload; its refs resolve inside the document."""
    payload = doc["components"]["messages"][message]["payload"]
    return Draft202012Validator({**payload, "components": doc["components"]})


def test_committed_document_is_current() -> None:
    assert (REPO / "docs" / "asyncapi.yaml").read_text(encoding="utf-8") == asyncapi_yaml(), (
        "docs/asyncapi.yaml is stale: run make schemas"
    )


def test_every_topic_is_a_channel_with_its_direction_and_bindings() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    topics, settings = Topics(), Settings()
    addresses = {c["address"]: c for c in doc["channels"].values()}
    assert set(addresses) == {getattr(topics, f) for f in Topics.model_fields}
    for field, spec in asyncapi.CHANNELS.items():
        channel = addresses[getattr(topics, field)]
        kafka = channel["bindings"]["kafka"]
        assert kafka["partitions"] == settings.partitions
        assert kafka["replicas"] == settings.replication_factor
        policy = ["compact"] if spec.compacted else ["delete"]
        assert kafka["topicConfiguration"]["cleanup.policy"] == policy
        [operation] = [
            op
            for op in doc["operations"].values()
            if op["channel"]["$ref"].split("/")[-1] in doc["channels"]
            and doc["channels"][op["channel"]["$ref"].split("/")[-1]] is channel
        ]
        assert operation["action"] == spec.direction
        for ref in channel["messages"].values():
            message = doc["components"]["messages"][ref["$ref"].split("/")[-1]]
            assert message["bindings"]["kafka"]["key"]["type"] == "string"
            if spec.direction == "send":  # outputs: structured-mode CloudEvents
                header = message["headers"]["properties"]["content-type"]
                assert header["const"] == "application/cloudevents+json"
    close = addresses[topics.month_close]["bindings"]["kafka"]["topicConfiguration"]
    assert close["retention.ms"] == 7 * 24 * 3600 * 1000


def test_payload_schemas_accept_real_inputs_and_outputs() -> None:
    doc = document()
    by_type = {
        "time_logged": "timeLogged",
        "time_log_voided": "timeLogVoided",
        "org.ccmtally.threshold.v1": "threshold",
        "org.ccmtally.billing-record.v1": "billingRecord",
        "org.ccmtally.rejected-input.v1": "rejectedInput",
        "org.ccmtally.fhir-chargeitem.v1": "fhirChargeItem",
        "org.ccmtally.tally-status.v1": "tallyStatus",
    }
    seen = set()
    for line in SAMPLE.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        kind = by_type.get(str(event.get("event_type"))) if isinstance(event, dict) else None
        if kind and not list(validator(doc, kind).iter_errors(event)):
            seen.add(kind)
    script = Path(sys.executable).parent / "ccm-tally"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]
    replay = subprocess.run(
        [*cli, "replay", str(SAMPLE), "--status"], capture_output=True, text=True, check=True
    )
    for line in replay.stdout.splitlines():
        envelope = json.loads(line)
        kind = by_type[envelope["type"]]
        errors = [e.message for e in validator(doc, kind).iter_errors(envelope)]
        assert errors == [], (kind, errors)
        seen.add(kind)
    assert seen == set(by_type.values())


def test_the_schemas_are_not_vacuous() -> None:
    doc = document()
    record = validator(doc, "billingRecord")
    assert list(record.iter_errors({"specversion": "1.0"}))
    assert list(validator(doc, "timeLogged").iter_errors({"event_type": "time_logged"}))


def test_a_topic_without_a_description_stops_the_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new ``Topics`` field must get a ``CHANNELS`` entry: the document never silently
    leaves a topic out."""
    monkeypatch.delitem(asyncapi.CHANNELS, "fhir_chargeitem")
    with pytest.raises(LookupError, match="fhir_chargeitem"):
        asyncapi.build()
