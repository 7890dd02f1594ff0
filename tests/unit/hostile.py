"""Hostile payloads for the input topic: the poison kinds of issue 8 and the coercions the
service used to accept. Shared by the unit tests (schema oracle, fuzzing) and the
hostile-payload stream test, so that the stream is tested with the same list."""

from __future__ import annotations

import json
import random
from typing import Any

from tests.unit.unit_helpers import local, log, void

_RNG = random.Random(8)


def base_log(event_id: str = "h-1", **changes: Any) -> dict[str, Any]:
    event = log(event_id, local(10), 30, staff_name="Jane Doe", credentials="RN")
    event.update(changes)
    return event


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


def _with(**changes: Any) -> bytes:
    return _dump(base_log(**changes))


def _nested_inside_event() -> bytes:
    event = _dump(base_log())
    return event[:-1] + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"


HOSTILE_PAYLOADS: list[tuple[str, bytes]] = [
    # the five kinds that stopped a partition
    ("nested-array", b"[" * 30_000 + b"]" * 30_000),
    ("nested-in-event", _nested_inside_event()),
    ("lone-surrogate-id", b'{"event_type": "time_logged", "event_id": "\\ud800"}'),
    ("lone-surrogate-event", _with(event_id="h-s").replace(b'"h-s"', b'"h-\\udfff"')),
    ("recorded-1901", _with(recorded_at="1901-12-13T20:45:51Z")),
    ("random-300KB", _RNG.randbytes(300_000)),
    ("random-1MB", _RNG.randbytes(1_000_000)),
    ("quotes-1MB", b'{"note": "' + b'\\"' * 480_000 + b'"}'),
    # coercions that used to be accepted
    ("minutes-true", _with(minutes=True)),
    ("minutes-string", _with(minutes="30")),
    ("licensed-string", _with(licensed="true")),
    ("version-true", _with(schema_version=True)),
    ("start-number", _with(start=1)),
    ("year-1", _with(start="0001-01-01T00:00:00-05:00")),
    ("year-9999", _with(start="9999-12-31T23:00:00Z", recorded_at="9999-12-31T23:59:00Z")),
    ("minutes-1e30-end", _with(minutes=1e30, end="2026-03-10T11:00:00-04:00")),
    ("id-nul", _with(event_id="h\x00")),
    ("id-control", _with(patient_id="p\x1b[31m")),
    ("id-uffff", _with(staff_id="s\uffff")),
    ("id-too-long", _with(practice_id="p" * 129)),
    # plain garbage
    ("empty", b""),
    ("not-json", b"hello"),
    ("invalid-utf8", b'{"event_type": "time_logged", "event_id": "\xff\xfe"}'),
    ("array", b"[]"),
    ("null", b"null"),
    ("nan", b'{"event_type": "time_logged", "minutes": NaN}'),
    ("huge-int", b'{"minutes": ' + b"9" * 5000 + b"}"),
    ("unknown-type", _dump({**base_log(), "event_type": "time_log_amended"})),
    ("void-of-nothing-bad-reason", _dump({**void("v-h", "x"), "reason": "because"})),
]
"""(name, bytes): every one is rejected, whatever its patient."""
