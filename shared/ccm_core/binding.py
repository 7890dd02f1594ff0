"""CloudEvents Kafka protocol binding of the outputs: **structured content mode**.

Every output value is already a whole CloudEvent in the JSON event format (the envelope of
``ccm_core.contracts``: ``specversion``, ``id``, ``source``, ``type``, ``subject``, ``time``,
``datacontenttype``, ``data``). The binding (CloudEvents Kafka protocol binding 1.0, section
3.2) then asks for one thing more: the Kafka header ``content-type`` set to the event format's
media type, ``application/cloudevents+json``. That is what :func:`kafka_headers` returns and
what the worker attaches to every message it publishes.

Why structured rather than binary mode (``ce_*`` headers, bare ``data`` as the value):
consumers that know nothing of CloudEvents (kcat, ksqlDB, the billing sink, plain JSON
consumers) read the whole event, id and time included, from the value alone, as they did
before; the value stays the documented, schema'd envelope (``docs/schemas/``); and the
message key stays the patient id (the binding's optional ``partitionkey`` mapping is not
used: the key is the partitioning, not an event attribute).

What the SDKs expect (docs/events.md has the same):
- JavaScript (``cloudevents`` npm, ``Kafka.toEvent``): tells the mode from the headers only:
  ``content-type`` starting with ``application/cloudevents`` is structured mode; without it
  and without ``ce_id`` it throws ``No CloudEvent detected``. Header values must be strings
  (convert kafkajs' Buffers with ``toString()``) and the value the JSON text.
- Python (``cloudevents`` 2.x, ``cloudevents.core.bindings.kafka.from_kafka`` or
  ``from_structured``): binary mode if any ``ce_`` header is present, structured otherwise;
  it reads the attributes from the value. It adds the message key as the ``partitionkey``
  extension attribute.
- Any other consumer: the value is JSON; ignore the header.
"""

from __future__ import annotations

from typing import Final

from .tally import Output

CONTENT_TYPE_HEADER: Final = "content-type"
STRUCTURED_JSON: Final = "application/cloudevents+json"
_HEADERS: Final = ((CONTENT_TYPE_HEADER, STRUCTURED_JSON.encode("ascii")),)


def kafka_headers(out: Output) -> list[tuple[str, bytes]]:
    """Kafka headers of one output message (structured mode): ``content-type``.

    The same for every output kind today: each value is a complete CloudEvent in JSON (the
    FHIR ChargeItems too: their ``datacontenttype`` is ``application/fhir+json`` inside the
    event, not the message's content type). Takes the output so that a header that depends on
    it can be added without changing the worker's call.
    """
    del out  # every kind is a structured-mode JSON CloudEvent
    return list(_HEADERS)
