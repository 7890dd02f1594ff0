"""The service accepts exactly what its published JSON Schema accepts.

The oracle is an independent validator, the ``jsonschema`` package (Draft 2020-12), run on the
exported schemas over a corpus of hostile and valid payloads: hand-written cases, and payloads
hypothesis derives from valid events by replacing, adding or removing fields. The service
decodes time logs, voids and the enrollment feed's events with one union, so its verdict is
compared with "valid under ``timelog_input.v1`` or under ``enrollment_input.v1``". The documented
exceptions, and only those, are asserted as such:

- JSON that is not I-JSON (RFC 7493): a lone surrogate escape is not a Unicode character, so the
  service's parser refuses the text (``invalid_json``) before any schema applies;
- two cross-field rules JSON Schema cannot state: ``end`` after ``start``
  (``end_before_start``) and ``start + minutes == end`` (``minutes_end_mismatch``).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from ccm_core.contracts import (
    TIMESTAMP_PATTERN,
    MonthCloseCommand,
    Reason,
)
from ccm_core.ingest import decode
from ccm_core.schemas import all_schemas
from tests.unit.enrollment_helpers import attestation, code_billed, consent, withdrawal
from tests.unit.hostile import HOSTILE_PAYLOADS, base_log
from tests.unit.unit_helpers import local, void

SCHEMAS = all_schemas()
INPUT_SCHEMA = Draft202012Validator(SCHEMAS["timelog_input.v1"])
ENROLLMENT_SCHEMA = Draft202012Validator(SCHEMAS["enrollment_input.v1"])
CLOSE_SCHEMA = Draft202012Validator(SCHEMAS["month_close_command.v1"])
SEMANTIC_ONLY = {Reason.END_BEFORE_START, Reason.MINUTES_END_MISMATCH}


def has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    return False


def schema_valid(payload: Any) -> bool:
    """Valid under one of the two published input schemas (the service's one union)."""
    return bool(INPUT_SCHEMA.is_valid(payload) or ENROLLMENT_SCHEMA.is_valid(payload))


def assert_agree(payload: Any) -> None:
    """The service's verdict on ``payload`` is the schema's (or a documented exception)."""
    raw = json.dumps(payload).encode()  # ensure_ascii: lone surrogates become \\udXXX escapes
    decoded = decode(raw)
    if has_lone_surrogate(payload):
        assert decoded.reason is Reason.INVALID_JSON
        return
    schema_ok = schema_valid(payload)
    if decoded.reason in SEMANTIC_ONLY:
        assert schema_ok, (payload, decoded)  # structurally fine: only the semantic rule
        return
    assert (decoded.event is not None) == schema_ok, (payload, decoded.reason, decoded.message)


# ---------------------------------------------------------------- hand-written corpus

VALID = [
    base_log(),
    base_log(minutes=None, end="2026-03-10T10:30:00-04:00"),
    base_log(end="2026-03-10T10:30:00-04:00"),  # both, agreeing
    base_log(minutes=30.0),  # the JSON number 30
    base_log(schema_version=1),
    base_log(start="2028-02-29T10:00:00.123456+14:00", recorded_at="2028-03-01T00:00:00Z"),
    base_log(start="2000-02-29T00:00:00Z", recorded_at="2000-02-29T01:00:00-00:00"),
    base_log(event_id="!~" * 64, patient_id="a", staff_id="x#%&'()*+,-./:;<=>?@[]^_`{|}"),
    base_log(note="ünïcödé 😀 \n\t free text", agency_contacted="A" * 4000),
    base_log(role="ma", licensed=False),
    void("v-1", "e-1"),
    {**void("v-2", "e-1"), "note": None, "schema_version": 1},
    consent("c-1"),
    {**consent("c-2"), "consent_date": "2000-02-29", "schema_version": 1.0},
    withdrawal("w-1", date(2026, 3, 20)),
    attestation("a-1"),
    attestation("a-2", conditions=0, care_plan="none", decision_making="straightforward"),
    {**attestation("a-3"), "chronic_conditions": 2.0},  # the JSON number 2
    code_billed("b-1", "99490"),
    code_billed("b-2", "99491", log_ids=["e-1", "e-2"]),
]

ENROLLMENT_FIELD_VALUES: dict[str, list[tuple[dict[str, Any], list[Any]]]] = {
    "consent_date": [
        (
            consent("c-9"),
            [
                "2026-02-29",
                "1999-12-31",
                "2100-01-01",
                "2026-3-1",
                "20260301",
                "2026-03-01T00:00:00Z",
                "2026-03-01\n",
                "\uff12\uff10\uff12\uff16-03-01",
                20260301,
                1,
                True,
                None,
            ],
        )
    ],
    "withdrawn_date": [(withdrawal("w-9", date(2026, 3, 20)), ["2026-04-31", "", 0])],
    "chronic_conditions": [(attestation("a-9"), [True, "2", -1, 101, 100, 2.5, 1e30, None, [2]])],
    "care_plan": [(attestation("a-9"), ["Revised", "", None, 1])],
    "service_month": [(attestation("a-9"), ["2026-3", "1999-12", "2026-13", "2026-03\n", 202603])],
    "code": [(code_billed("b-9", "99490"), ["99487", "99490 ", 99490, None, "g0556"])],
    "time_log_ids": [
        (code_billed("b-9", "99491"), [["a b"], [""], ["x" * 129], [1], "e-1", None, ["e"] * 501])
    ],
    "recorded_at": [
        (consent("c-9"), ["2026-03-01T09:00:00", "9999-12-31T23:00:00Z", 1]),
        (code_billed("b-9", "99490"), ["1901-12-13T20:45:51Z", "2026-03-01"]),
    ],
    "patient_id": [(withdrawal("w-9", date(2026, 3, 20)), ["", "a\n", "\x00", "é", 5])],
    "event_type": [(consent("c-9"), ["Consent_Recorded", None])],
    "schema_version": [(attestation("a-9"), [True, 2, "1"])],
}

FIELD_VALUES: dict[str, list[Any]] = {
    "event_id": ["", " ", "a b", "a\n", "\n", "é", "x" * 129, "\x00", "a\u2028", 5, None],
    "payer": ["CMS", "cms\n", "9cms", "c" * 65, "c" * 64, "cms ", "", None, 1],
    "minutes": [0, -1, 1, 1440, 1441, 30.5, 1e30, 1e308, True, "30", None, [], {}],
    "licensed": [1, 0, "true", None, "false"],
    "schema_version": [True, 1.0, 2, "1", None, 1.5],
    "role": ["RN", "janitor", "", None, 1],
    "activity": ["golf", "Care_Plan", None],
    "event_type": ["time_fished", None, 1, "TIME_LOGGED"],
    "staff_name": ["n" * 200, "n" * 201, None, 3],
    "credentials": ["c" * 64, "c" * 65],
    "note": ["n" * 4000, "n" * 4001, False],
    "start": [
        1,
        None,
        "2026-03-10T10:00:00",
        "2026-03-10T10:00:00z",
        "2026-03-10t10:00:00Z",
        "2026-03-10 10:00:00Z",
        "2026-03-10T10:00Z",
        "2026-03-10T10:00:00.1234567Z",
        "2026-03-10T10:00:00+15:00",
        "2026-03-10T10:00:00+0400",
        "2026-03-10T24:00:00Z",
        "2026-03-10T10:00:60Z",
        "2026-02-29T10:00:00Z",
        "2026-04-31T10:00:00Z",
        "2100-02-29T10:00:00Z",
        "1999-12-31T23:59:59Z",
        "2100-01-01T00:00:00Z",
        "0001-01-01T00:00:00-05:00",
        "9999-12-31T23:00:00Z",
        "\uff12\uff10\uff12\uff16-03-10T10:00:00Z",  # full-width digits
        "2026-03-10T10:00:00Z\n",
        "2026-03-10",
    ],
}


def corpus() -> list[Any]:
    payloads: list[Any] = [*VALID, None, [], "x", 1, {}, {"event_type": "time_logged"}]
    for field, values in FIELD_VALUES.items():
        for value in values:
            payloads.append({**base_log(), field: value})
        payloads.append({k: v for k, v in base_log().items() if k != field})
    payloads.append({**base_log(), "surprise": 1})
    payloads.append({**base_log(), "minutes": None})  # missing_duration
    payloads.append({k: v for k, v in base_log().items() if k != "minutes"})
    payloads.append(base_log(role="chw", licensed=True))  # inconsistent_licensure
    payloads.append(base_log(minutes=20, end="2026-03-10T10:30:00-04:00"))  # mismatch
    payloads.append(base_log(minutes=None, end="2026-03-10T09:30:00-04:00"))  # end before
    payloads.append({**void("v-3", "e-1"), "recorded_at": "2026-03-25T12:00:00"})
    payloads.append({**void("v-3", "e-1"), "minutes": 3})
    payloads.append({**base_log(), "event_id": "\ud800"})
    for field, cases in ENROLLMENT_FIELD_VALUES.items():
        for base, values in cases:
            for value in values:
                payloads.append({**base, field: value})
            payloads.append({k: v for k, v in base.items() if k != field})
    payloads.append({**consent("c-8"), "surprise": 1})
    payloads.append({**consent("c-8"), "practice_id": "\ud800"})
    return payloads


@pytest.mark.parametrize("payload", corpus(), ids=lambda p: json.dumps(p)[:60])
def test_schema_oracle_agrees_on_the_corpus(payload: Any) -> None:
    """Every payload of the corpus: the jsonschema validator and the service agree."""
    assert_agree(payload)


def test_schema_oracle_corpus_is_not_one_sided() -> None:
    """The corpus holds payloads both accept and many both reject (the test can fail)."""
    verdicts = [schema_valid(p) for p in corpus()]
    assert sum(verdicts) >= len(VALID) and verdicts.count(False) > 120
    for payload in VALID:
        assert decode(json.dumps(payload).encode()).event is not None, payload


@pytest.mark.parametrize(("name", "raw"), HOSTILE_PAYLOADS, ids=[n for n, _ in HOSTILE_PAYLOADS])
def test_schema_oracle_rejects_every_hostile_payload_the_service_rejects(
    name: str, raw: bytes
) -> None:
    """The hostile list: the service rejects each one, and so does the schema wherever the
    payload is JSON at all (Python's parser, as jsonschema users would read it)."""
    assert decode(raw).event is None
    try:
        payload = json.loads(raw, parse_constant=lambda _: float("nan"))
    except (ValueError, RecursionError):
        return  # not JSON: no schema applies
    if not has_lone_surrogate(payload):
        assert not schema_valid(payload), name


# ---------------------------------------------------------------- hypothesis: mutated events

_offsets = st.integers(min_value=-24 * 60 + 1, max_value=24 * 60 - 1).map(
    lambda m: timezone(timedelta(minutes=m))
)
_instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets
)


def _variants(moment: datetime) -> list[str]:
    text = moment.isoformat()
    return [text, text.replace("T", " "), text.replace("+00:00", "Z"), text[:16], text[:19]]


timestamps = st.one_of(
    st.from_regex(TIMESTAMP_PATTERN, fullmatch=True),
    _instants.flatmap(lambda m: st.sampled_from(_variants(m))),
    st.datetimes(min_value=datetime(1999, 12, 30), max_value=datetime(2100, 1, 2))
    .map(lambda d: d.replace(tzinfo=UTC).isoformat())
    .flatmap(lambda t: st.sampled_from([t, t.replace("+00:00", "Z")])),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=140),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=140),
    st.sampled_from(["rn", "ma", "care_plan", "cms", "time_logged", "2026-03", "entered_in_error"]),
    timestamps,
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner)
)
FIELDS = [*base_log().keys(), "end", "note", "agency_contacted", "voided_event_id", "reason"]
FIELDS += [
    "consent_date",
    "withdrawn_date",
    "service_month",
    "chronic_conditions",
    "care_plan",
    "medical_decision_making",
    "code",
    "time_log_ids",
]
bases = st.sampled_from(
    [
        base_log(),
        base_log(minutes=None, end="2026-03-10T10:30:00-04:00"),
        base_log(end="2026-03-10T10:30:00-04:00"),
        void("v-1", "e-1"),
        consent("c-1"),
        withdrawal("w-1", date(2026, 3, 20)),
        attestation("a-1"),
        code_billed("b-1", "99491", log_ids=["e-1"]),
    ]
)
mutation = st.tuples(st.sampled_from([*FIELDS, "extra"]), st.one_of(st.just(...), values))


def mutate(base: dict[str, Any], changes: list[tuple[str, Any]]) -> dict[str, Any]:
    event = dict(base)
    for field, value in changes:
        if value is ...:
            event.pop(field, None)
        else:
            event[field] = value
    return event


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bases, st.lists(mutation, min_size=1, max_size=3))
def test_schema_oracle_agrees_on_mutated_events(
    base: dict[str, Any], changes: list[tuple[str, Any]]
) -> None:
    """Valid events with one to three fields replaced, added or removed: same verdict."""
    assert_agree(mutate(base, changes))


@settings(max_examples=150, deadline=None)
@given(timestamps)
def test_schema_oracle_agrees_on_timestamps(text: str) -> None:
    """Timestamps across the years 1-9999, every offset, and near-miss spellings."""
    assert_agree({**base_log(), "recorded_at": text})
    assert_agree({**base_log(), "start": text, "minutes": 1, "recorded_at": text})


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "practice_id",
                    "service_month",
                    "mode",
                    "as_of",
                    "command_id",
                    "requested_by",
                    "schema_version",
                ]
            ),
            st.one_of(st.just(...), values, timestamps),
        ),
        max_size=3,
    )
)
def test_schema_oracle_agrees_on_month_close_commands(changes: list[tuple[str, Any]]) -> None:
    """Month-close commands: MonthCloseCommand and its schema agree."""
    base = {
        "command_type": "month_close",
        "command_id": "close-1",
        "mode": "month",
        "practice_id": "prac-1",
        "service_month": "2026-03",
        "as_of": local(6, month=4).isoformat(),
    }
    payload = mutate(base, changes)
    raw = json.dumps(payload).encode()
    try:
        MonthCloseCommand.model_validate_json(raw)
        ok = True
    except ValueError:
        ok = False
    if has_lone_surrogate(payload):
        assert not ok
    else:
        assert ok == CLOSE_SCHEMA.is_valid(payload), payload
