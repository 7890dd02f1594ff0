"""CloudEvents Kafka protocol binding (structured mode), read with the official Python SDK.

The outputs of a real month through the core are turned into the Kafka messages the worker
publishes (headers from ``kafka_headers``, key, value) and parsed by ``cloudevents`` 2.x's
Kafka binding: every attribute and the data must come back as the envelope says.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka, from_structured
from cloudevents.core.formats.json import JSONFormat

from ccm_core.binding import STRUCTURED_JSON, kafka_headers
from ccm_core.tally import Output

from .unit_helpers import CLOSE_AT, Harness, local, log, void


def month_outputs() -> list[Output]:
    harness = Harness()
    harness.feed(
        log("a", local(3), 50),
        log("b", local(4), 50),
        b"{not json",
        void("v", "a", recorded_at=local(20)),
        log("c", local(5), 60),
    )
    harness.close()
    harness.feed(log("late", local(21), 30, recorded_at=CLOSE_AT.replace(day=8)))
    return harness.outputs


def as_message(out: Output) -> KafkaMessage:
    """The message as a Kafka client hands it over: headers as bytes, key, value."""
    return KafkaMessage(
        headers=dict(kafka_headers(out)), key=out.key.encode(), value=out.to_json().encode()
    )


def test_every_output_kind_carries_the_structured_mode_content_type() -> None:
    outputs = month_outputs()
    assert {o.kind for o in outputs} == {
        "threshold",
        "billing_record",
        "rejected",
        "fhir_chargeitem",
        "status",
    }
    for out in outputs:
        headers = kafka_headers(out)
        assert headers == [("content-type", STRUCTURED_JSON.encode())]
        # structured mode: no ce_ attribute headers (they would switch readers to binary mode)
        assert not any(name.lower().startswith("ce_") for name, _ in headers)


def test_the_python_sdk_reads_every_output_as_the_envelope_says() -> None:
    for out in month_outputs():
        message = as_message(out)
        envelope: dict[str, Any] = json.loads(message.value)
        for parse in (from_kafka, from_structured):
            event = parse(message, JSONFormat())
            assert event.get_id() == envelope["id"]
            assert event.get_type() == envelope["type"]
            assert event.get_source() == "ccm-tally"
            assert event.get_subject() == envelope["subject"]
            assert event.get_specversion() == "1.0"
            assert event.get_datacontenttype() == envelope["datacontenttype"]
            moment = event.get_time()
            assert moment is not None
            assert moment == datetime.fromisoformat(envelope["time"])
            assert event.get_data() == envelope["data"]
            # the SDK maps the message key (the patient id) to the partitionkey extension
            assert event.get_extension("partitionkey") == out.key
