"""Wire contracts: every message ccm-tally reads or writes, as versioned pydantic v2 models.

Inputs (topic ``ccm.timelog.v1``): :class:`TimeLogged`, :class:`TimeLogVoided`.
Control (topic ``ccm.month-close.v1``): :class:`MonthCloseCommand`.
Outputs: :class:`ThresholdEvent` (``ccm.threshold.v1``), :class:`BillingRecord`
(``ccm.billing-record.v1``), :class:`RejectedInput` (``ccm.timelog.dlq.v1``),
:class:`TallyStatus` (``ccm.tally-status.v1``, compacted), each wrapped in a CloudEvents-style
:class:`Envelope` whose ``id`` is deterministic.

Validation failures carry a *reason code* (:class:`Reason`) so that a rejected input can be
routed, counted and explained. Custom validators raise ``PydanticCustomError`` whose error type
*is* the reason code; :func:`reason_from_validation_error` maps pydantic's own error types.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SerializeAsAny,
    Strict,
    StrictBool,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

SCHEMA_VERSION = 1

# --------------------------------------------------------------------------------------------
# Strict scalar types of the inputs. Each one is checked with exactly the rule its JSON Schema
# states (``WithJsonSchema``), so that the service accepts what the published
# schema accepts and nothing else (tests/unit/test_schema_oracle.py checks it with the
# independent ``jsonschema`` validator). Patterns are written for every regex dialect a schema
# consumer may use (ECMA 262, Python ``re``): ASCII classes only, ``[0-9]`` rather than ``\d``
# (Unicode digits elsewhere), and ``"not": {"pattern": "\\n"}`` beside each anchored pattern,
# because ``$`` in Python's ``re`` (which ``jsonschema`` uses) also matches before a final
# newline. The patterns run in pydantic-core (Rust regex, where ``$`` is the end of the text),
# not in Python: validation stays off the interpreter on the hot path.
# --------------------------------------------------------------------------------------------

_NO_NEWLINE: dict[str, Any] = {"pattern": r"\n"}

ID_PATTERN = r"[!-~]{1,128}"
"""Ids: 1-128 printable ASCII characters, no space (like FHIR ids: opaque, safe in any log)."""


Identifier = Annotated[
    str,
    Strict(),
    StringConstraints(pattern=f"^{ID_PATTERN}$"),  # checked by pydantic-core (Rust regex)
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "pattern": f"^{ID_PATTERN}$",
            "not": _NO_NEWLINE,
        }
    ),
]
"""An opaque id (event, patient, practice, staff): 1-128 printable ASCII characters, no space
(no control character, no NUL, nothing outside ASCII)."""

MIN_YEAR, MAX_YEAR = 2000, 2099
"""Timestamps are accepted from 2000-01-01 to 2099-12-31 (the year as written, before the
offset is applied): anything else is a typo or a broken clock, not a care-management log."""

_DAY = (
    r"(?:20[0-9]{2}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    r"|20(?:0[048]|[2468][048]|[13579][26])-02-29)"
)
TIMESTAMP_PATTERN = (
    _DAY + r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])"
)
"""RFC 3339 date-time with seconds and a UTC offset (``Z`` or ``±hh:mm`` up to 14 hours),
optional fraction of 1-6 digits, a real calendar date in 2000-2099."""


def _in_range(value: datetime) -> datetime:
    """An aware datetime given by a Python caller: the same rules as the wire's text."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise PydanticCustomError("timestamp_without_offset", "must carry a UTC offset")
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise PydanticCustomError(
            "timestamp_out_of_range", f"must lie in the years {MIN_YEAR}-{MAX_YEAR}"
        )
    return value


class _Rfc3339:
    """The wire form of a timestamp: the text must match ``TIMESTAMP_PATTERN``, then it is
    parsed; both steps run in pydantic-core (no Python call per field on the hot path).
    Python callers may also give an aware ``datetime``."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        wire = core_schema.chain_schema(
            [
                core_schema.str_schema(pattern=f"^{TIMESTAMP_PATTERN}$", strict=True),
                core_schema.datetime_schema(tz_constraint="aware"),
            ]
        )
        python = core_schema.union_schema(
            [
                core_schema.no_info_after_validator_function(
                    _in_range, core_schema.datetime_schema(strict=True)
                ),
                wire,
            ],
            mode="left_to_right",
        )
        return core_schema.json_or_python_schema(json_schema=wire, python_schema=python)


Timestamp = Annotated[
    datetime,
    _Rfc3339(),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": f"^{TIMESTAMP_PATTERN}$",
            "not": _NO_NEWLINE,
        }
    ),
]
"""An instant with its UTC offset, years 2000-2099 (see ``TIMESTAMP_PATTERN``)."""

DATE_PATTERN = _DAY
"""A calendar date ``YYYY-MM-DD`` (RFC 3339 full-date), a real date in 2000-2099."""


def _day_in_range(value: date) -> date:
    """A ``date`` given by a Python caller: the same rule as the wire's text (not a datetime)."""
    if isinstance(value, datetime):
        raise PydanticCustomError("invalid_field", "must be a date, not a date-time")
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise PydanticCustomError(
            "timestamp_out_of_range", f"must lie in the years {MIN_YEAR}-{MAX_YEAR}"
        )
    return value


class _Rfc3339Date:
    """The wire form of a date: the text must match ``DATE_PATTERN`` (no coercion: a number or
    a date-time is not a date), then it is parsed, both in pydantic-core. Python callers may
    also give a ``date``."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        wire = core_schema.chain_schema(
            [
                core_schema.str_schema(pattern=f"^{DATE_PATTERN}$", strict=True),
                core_schema.date_schema(),
            ]
        )
        python = core_schema.union_schema(
            [
                core_schema.no_info_after_validator_function(
                    _day_in_range, core_schema.date_schema(strict=True)
                ),
                wire,
            ],
            mode="left_to_right",
        )
        return core_schema.json_or_python_schema(json_schema=wire, python_schema=python)


Day = Annotated[
    date,
    _Rfc3339Date(),
    WithJsonSchema(
        {"type": "string", "format": "date", "pattern": f"^{DATE_PATTERN}$", "not": _NO_NEWLINE}
    ),
]
"""A local calendar date, ``YYYY-MM-DD``, years 2000-2099 (see ``DATE_PATTERN``)."""

MAX_MINUTES = 1440
"""No single log lasts more than a day (a practice's own bound, ``max_log_minutes``, is lower:
480 by default). Beyond it ``minutes`` is rejected as ``duration_exceeds_bound``."""


def _json_integer(value: object) -> object:
    """JSON has one number type: 30 and 30.0 are the same integer (as JSON Schema says), but
    ``true`` or ``"30"`` are not numbers. Integral floats become ints; the rest is left to the
    strict validator, which rejects it."""
    if isinstance(value, bool):
        raise PydanticCustomError("invalid_field", "must be a number, not true or false")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _minutes(value: object) -> object:
    """``minutes``, in one Python call (the hot path): a JSON integer (30.0 is 30), in range.
    Anything else is left to the strict int validator, which rejects it."""
    value = _json_integer(value)
    if isinstance(value, int):
        if value <= 0:
            raise PydanticCustomError("non_positive_minutes", "must be greater than 0")
        if value > MAX_MINUTES:
            raise PydanticCustomError(
                "duration_exceeds_bound", f"a single log may not exceed {MAX_MINUTES} minutes"
            )
    return value


Minutes = Annotated[
    int,
    Strict(),
    BeforeValidator(_minutes),
    WithJsonSchema({"type": "integer", "exclusiveMinimum": 0, "maximum": MAX_MINUTES}),
]

ConditionCount = Annotated[
    int,
    Strict(),
    BeforeValidator(_json_integer),
    Field(ge=0, le=100),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 100}),
]
"""A count of chronic conditions (an attestation): a JSON integer 0-100, not true or "2"."""


def _schema_version(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("unsupported_schema_version", "schema_version must be 1")
    return _json_integer(value)


SchemaVersion = Annotated[
    Literal[1],
    BeforeValidator(_schema_version),
    WithJsonSchema({"type": "integer", "const": 1}),
]

PAYER_PATTERN = r"[a-z][a-z0-9_]{0,63}"


Payer = Annotated[
    str,
    Strict(),
    StringConstraints(pattern=f"^{PAYER_PATTERN}$"),
    WithJsonSchema(
        {"type": "string", "maxLength": 64, "pattern": f"^{PAYER_PATTERN}$", "not": _NO_NEWLINE}
    ),
]

SERVICE_MONTH_PATTERN = r"20[0-9]{2}-(?:0[1-9]|1[0-2])"


ServiceMonth = Annotated[
    str,
    Strict(),
    StringConstraints(pattern=f"^{SERVICE_MONTH_PATTERN}$"),
    WithJsonSchema({"type": "string", "pattern": f"^{SERVICE_MONTH_PATTERN}$", "not": _NO_NEWLINE}),
]
"""A calendar month, ``YYYY-MM`` (years 2000-2099), in the practice's local time zone."""


FreeText = Annotated[str, Strict(), StringConstraints(max_length=4000)]
StaffName = Annotated[str, Strict(), StringConstraints(max_length=200)]
Credentials = Annotated[str, Strict(), StringConstraints(max_length=64)]
RequestedBy = Annotated[str, Strict(), StringConstraints(max_length=128)]


class Role(StrEnum):
    """Who did the work. Licensure is carried separately, on the log (``licensed``)."""

    PHYSICIAN = "physician"
    NP = "np"  # nurse practitioner
    PA = "pa"  # physician assistant
    CNS = "cns"  # clinical nurse specialist
    RN = "rn"
    LPN = "lpn"
    MA = "ma"  # medical assistant
    CHW = "chw"  # community health worker
    PHARMACIST = "pharmacist"
    SOCIAL_WORKER = "social_worker"
    DIETITIAN = "dietitian"
    CARE_COORDINATOR = "care_coordinator"


NEVER_LICENSED_ROLES: frozenset[Role] = frozenset({Role.MA, Role.CHW, Role.CARE_COORDINATOR})
"""Roles that hold no state licence; a log claiming ``licensed: true`` for them is contradictory."""


class Activity(StrEnum):
    """The nature of the work (rules file, section 2 and 3). Payer profiles say which count."""

    # care coordination that counts under every profile
    HOME_HEALTH_COORDINATION = "home_health_coordination"
    DME_COORDINATION = "dme_coordination"
    SPECIALIST_COORDINATION = "specialist_coordination"
    COMMUNITY_AGENCY_COORDINATION = "community_agency_coordination"
    MEDICATION_RECONCILIATION = "medication_reconciliation"
    CARE_PLAN = "care_plan"
    CAREGIVER_COMMUNICATION = "caregiver_communication"
    PATIENT_EDUCATION = "patient_education"
    RESOURCE_RESEARCH = "resource_research"
    FORMS_COMPLETION = "forms_completion"
    PORTAL_CONVERSATION = "portal_conversation"
    # activities some or all payers do not count
    PRIOR_AUTHORIZATION = "prior_authorization"
    BENEFIT_CHECK = "benefit_check"
    DOCUMENTATION = "documentation"
    GAP_REMINDER = "gap_reminder"
    CHART_PREP = "chart_prep"
    EMAIL = "email"


class Reason(StrEnum):
    """Why an input was rejected (dead-lettered). Stable codes: consumers may switch on them."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_ACTIVITY = "unknown_activity"
    UNKNOWN_ROLE = "unknown_role"
    TIMESTAMP_WITHOUT_OFFSET = "timestamp_without_offset"
    NON_POSITIVE_MINUTES = "non_positive_minutes"
    MISSING_DURATION = "missing_duration"
    END_BEFORE_START = "end_before_start"
    MINUTES_END_MISMATCH = "minutes_end_mismatch"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"  # outside the years 2000-2099
    PAYLOAD_TOO_LARGE = "payload_too_large"  # more bytes than the service reads
    INCONSISTENT_LICENSURE = "inconsistent_licensure"
    DURATION_EXCEEDS_BOUND = "duration_exceeds_bound"
    PAST_TIMELY_FILING = "past_timely_filing"
    RECORDED_BEFORE_SERVICE = "recorded_before_service"
    UNKNOWN_PAYER_PROFILE = "unknown_payer_profile"
    UNKNOWN_PRACTICE = "unknown_practice"
    EVENT_ID_CONFLICT = "event_id_conflict"
    PAYER_CONFLICT = "payer_conflict"
    PRACTICE_MISMATCH = "practice_mismatch"
    KEY_MISMATCH = "key_mismatch"
    MONTH_ARCHIVED = "month_archived"  # the patient-month was archived after its filing window
    INTERNAL_ERROR = "internal_error"  # the service failed on this input: kept, to replay


class Outcome(StrEnum):
    """What became of one input event. Every input ends as exactly one of these."""

    COUNTED = "counted"
    EXCLUDED = "excluded"
    DUPLICATE = "duplicate"
    VOIDED = "voided"
    REJECTED = "rejected"
    RECORDED = "recorded"  # an enrollment event (consent, eligibility, other code) was stored


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


def _require_event_type(schema: dict[str, Any]) -> None:
    """The input topic's union is discriminated by ``event_type``: it is required on the wire
    (the model's default only serves Python callers)."""
    schema["required"] = ["event_type", *schema.get("required", [])]


class _Input(_Wire):
    """Inputs: every field is of a strict type (no coercion: ``"30"`` is not 30, ``1`` is not
    a date, ``"true"`` is not true); enums and literals take exactly their values."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _time_logged_schema(schema: dict[str, Any]) -> None:
    _require_event_type(schema)
    # the rules the model validator states, where JSON Schema can state them
    schema["anyOf"] = [  # missing_duration: give minutes or end
        {"required": ["minutes"], "properties": {"minutes": {"type": "integer"}}},
        {"required": ["end"], "properties": {"end": {"type": "string"}}},
    ]
    schema["not"] = {  # inconsistent_licensure
        "required": ["role", "licensed"],
        "properties": {
            "role": {"enum": sorted(r.value for r in NEVER_LICENSED_ROLES)},
            "licensed": {"const": True},
        },
    }


class TimeLogged(_Input):
    """A clinical-staff member spent time on a patient's care coordination.

    Beyond this schema the service checks two rules JSON Schema cannot state: ``end`` must be
    after ``start`` (``end_before_start``) and, when both are given, ``start + minutes`` must
    equal ``end`` (``minutes_end_mismatch``).
    """

    model_config = ConfigDict(json_schema_extra=_time_logged_schema)

    event_type: Literal["time_logged"] = "time_logged"
    schema_version: SchemaVersion = 1
    event_id: Identifier = Field(
        description="Idempotency key; unique per log, the same on redelivery."
    )
    patient_id: Identifier
    practice_id: Identifier
    payer: Payer = Field(
        description="Payer profile of the patient: cms, bcbsm, priority_health, medicaid, or any "
        "profile added as data.",
    )
    staff_id: Identifier
    staff_name: StaffName | None = Field(
        default=None, description="Care-team member's name, for the claim's documentation."
    )
    role: Role
    credentials: Credentials | None = Field(
        default=None, description="e.g. 'RN, BSN'; carried to the billing record."
    )
    licensed: StrictBool
    activity: Activity
    start: Timestamp = Field(description="Start of the work, RFC 3339 with a UTC offset.")
    minutes: Minutes | None = Field(default=None, description="Duration; or give `end`.")
    end: Timestamp | None = Field(default=None, description="End of the work; or `minutes`.")
    recorded_at: Timestamp = Field(description="When the EHR recorded the log.")
    agency_contacted: FreeText | None = Field(
        default=None, description="Provider or agency contacted. Free text: never logged."
    )
    note: FreeText | None = Field(default=None, description="Free text: never logged.")

    @model_validator(mode="after")
    def _duration(self) -> Self:
        if self.minutes is None and self.end is None:
            raise PydanticCustomError(Reason.MISSING_DURATION.value, "give `minutes` or `end`")
        if self.end is not None:
            if self.end <= self.start:
                raise PydanticCustomError(
                    Reason.END_BEFORE_START.value, "`end` must be after `start`"
                )
            if self.minutes is not None and self.end != self.computed_end:
                raise PydanticCustomError(
                    Reason.MINUTES_END_MISMATCH.value,
                    "`minutes` and `end` disagree; give one of them",
                )
        if self.licensed and self.role in NEVER_LICENSED_ROLES:
            raise PydanticCustomError(
                Reason.INCONSISTENT_LICENSURE.value,
                "role {role} is never licensed but the log says licensed=true",
                {"role": self.role.value},
            )
        return self

    @property
    def computed_end(self) -> datetime:
        if self.minutes is not None:
            return self.start + timedelta(minutes=self.minutes)
        assert self.end is not None
        return self.end


class VoidReason(StrEnum):
    ENTERED_IN_ERROR = "entered_in_error"
    CORRECTION = "correction"
    DUPLICATE_ENTRY = "duplicate_entry"
    WRONG_PATIENT = "wrong_patient"
    OTHER = "other"


class TimeLogVoided(_Input):
    """Cancels an earlier log. A correction is a void plus a new log."""

    model_config = ConfigDict(json_schema_extra=_require_event_type)

    event_type: Literal["time_log_voided"] = "time_log_voided"
    schema_version: SchemaVersion = 1
    event_id: Identifier
    patient_id: Identifier
    practice_id: Identifier
    voided_event_id: Identifier = Field(description="event_id of the time_logged it cancels.")
    reason: VoidReason
    recorded_at: Timestamp
    note: FreeText | None = Field(default=None, description="Free text: never logged.")


InputEvent = Annotated[TimeLogged | TimeLogVoided, Field(discriminator="event_type")]
INPUT_ADAPTER: TypeAdapter[TimeLogged | TimeLogVoided] = TypeAdapter(InputEvent)


# --------------------------------------------------------------------------------------------
# Enrollment feed (topic ``ccm.enrollment.v1``, keyed by patient id): rules file section 7
# --------------------------------------------------------------------------------------------

EXCLUDING_CODES: frozenset[str] = frozenset({"99490", "99439", "G0556", "G0557", "G0558"})
"""Billed for the patient and month by anyone, these exclude 99487/99489 that month."""

TIME_NOT_COUNTED_AGAIN_CODES: frozenset[str] = frozenset(
    {"99491", "99437", "99424", "99425", "99426", "99427", "99484", "99492", "99493", "99494"}
    | {"99495", "99496"}
)
"""Time billed under these codes is never counted again toward 99487/99489."""

OtherCode = Literal[
    "99490",
    "99439",
    "G0556",
    "G0557",
    "G0558",
    "99491",
    "99437",
    "99424",
    "99425",
    "99426",
    "99427",
    "99484",
    "99492",
    "99493",
    "99494",
    "99495",
    "99496",
]


class ConsentRecorded(_Input):
    """The patient consented to complex CCM by this practice, effective ``consent_date``."""

    model_config = ConfigDict(json_schema_extra=_require_event_type)

    event_type: Literal["consent_recorded"] = "consent_recorded"
    schema_version: SchemaVersion = 1
    event_id: Identifier
    patient_id: Identifier
    practice_id: Identifier
    consent_date: Day = Field(description="Local date from which the consent holds.")
    recorded_at: Timestamp


class ConsentWithdrawn(_Input):
    """The patient withdrew consent from this practice, effective ``withdrawn_date``."""

    model_config = ConfigDict(json_schema_extra=_require_event_type)

    event_type: Literal["consent_withdrawn"] = "consent_withdrawn"
    schema_version: SchemaVersion = 1
    event_id: Identifier
    patient_id: Identifier
    practice_id: Identifier
    withdrawn_date: Day = Field(description="Local date from which there is no consent.")
    recorded_at: Timestamp


class EligibilityAttested(_Input):
    """The practice attests complex-CCM eligibility for one month. The latest attestation of a
    practice and month (by ``recorded_at``, then ``event_id``) is the one that holds."""

    model_config = ConfigDict(json_schema_extra=_require_event_type)

    event_type: Literal["eligibility_attested"] = "eligibility_attested"
    schema_version: SchemaVersion = 1
    event_id: Identifier
    patient_id: Identifier
    practice_id: Identifier
    service_month: ServiceMonth
    chronic_conditions: ConditionCount = Field(
        description="Chronic conditions expected to last 12 months or until death; needs 2+."
    )
    care_plan: Literal["established", "revised", "unchanged", "none"] = Field(
        description="Comprehensive care plan in the month: established or revised qualifies."
    )
    medical_decision_making: Literal["straightforward", "low", "moderate", "high"] = Field(
        description="Complexity of medical decision making: moderate or high qualifies."
    )
    recorded_at: Timestamp

    @property
    def eligible(self) -> bool:
        return (
            self.chronic_conditions >= 2
            and self.care_plan in ("established", "revised")
            and self.medical_decision_making in ("moderate", "high")
        )


class CodeBilled(_Input):
    """Another care-management code was billed for the patient and month, by any practice.

    99490/99439 and APCM G0556-G0558 exclude 99487/99489 that month. Time billed under
    99491/99437, PCM 99424-99427, BHI 99484/99492-99494 or TCM 99495-99496 is never counted
    again: the time logs it used (``time_log_ids``) are excluded from the tally.
    """

    model_config = ConfigDict(json_schema_extra=_require_event_type)

    event_type: Literal["code_billed"] = "code_billed"
    schema_version: SchemaVersion = 1
    event_id: Identifier
    patient_id: Identifier
    practice_id: Identifier = Field(description="The practice that billed the code.")
    service_month: ServiceMonth
    code: OtherCode
    time_log_ids: Annotated[list[Identifier], Field(max_length=500)] = Field(
        default_factory=list,
        description="event_ids of the time logs billed under the code (never counted again).",
    )
    recorded_at: Timestamp


EnrollmentEvent = ConsentRecorded | ConsentWithdrawn | EligibilityAttested | CodeBilled
ENROLLMENT_ADAPTER: TypeAdapter[EnrollmentEvent] = TypeAdapter(
    Annotated[EnrollmentEvent, Field(discriminator="event_type")]
)

AnyInput = TimeLogged | TimeLogVoided | EnrollmentEvent
ANY_INPUT_ADAPTER: TypeAdapter[AnyInput] = TypeAdapter(
    Annotated[AnyInput, Field(discriminator="event_type")]
)
"""Every input event the core applies (time-log topic and enrollment topic)."""


def _month_close_schema(schema: dict[str, Any]) -> None:
    schema["if"] = {"properties": {"mode": {"const": "month"}}}  # also when mode is absent
    schema["then"] = {
        "required": ["practice_id", "service_month"],
        "properties": {"practice_id": {"type": "string"}, "service_month": {"type": "string"}},
    }


class MonthCloseCommand(_Input):
    """Ops or the worker's own timer asks to close months.

    ``mode="month"`` closes one practice's month now (``practice_id`` and ``service_month``
    required). ``mode="due"`` closes every open month whose close deadline (local month end
    plus the practice's grace period) is at or before ``as_of``; the worker's timer sends it.
    """

    model_config = ConfigDict(json_schema_extra=_month_close_schema)

    command_type: Literal["month_close"] = "month_close"
    schema_version: SchemaVersion = 1
    command_id: Identifier
    mode: Literal["month", "due"] = "month"
    practice_id: Identifier | None = None
    service_month: ServiceMonth | None = None
    as_of: Timestamp = Field(description="The close time written to the records.")
    requested_by: RequestedBy | None = None

    @model_validator(mode="after")
    def _target(self) -> Self:
        if self.mode == "month" and (self.practice_id is None or self.service_month is None):
            raise PydanticCustomError(
                Reason.MISSING_FIELD.value,
                "mode=month needs practice_id and service_month",
            )
        return self


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


class HoldReason(StrEnum):
    """Why a month whose time reaches the entry threshold is not billable (held)."""

    NO_CONSENT = "no_consent"  # no consent of the practice in force on the date of service
    NOT_ATTESTED = "not_attested"  # no eligibility attestation for the month
    NOT_ELIGIBLE = "not_eligible"  # the latest attestation does not meet the criteria
    EXCLUDING_CODE_BILLED = "excluding_code_billed"  # 99490/99439/G0556-G0558 that month
    OTHER_PRACTICE_BILLS = "other_practice_bills"  # single-biller profile: another practice


class ThresholdEvent(_Wire):
    """A billing threshold was reached, or revoked because voids dropped the total below it."""

    kind: Literal["reached", "revoked"]
    patient_id: str
    practice_id: str
    service_month: str
    payer: str
    profile_version: str
    code: str = Field(description="CPT code: 99487 or 99489.")
    unit: int = Field(description="1 for 99487; 1, 2, 3 ... for the 99489 add-on units.")
    threshold_minutes: int = Field(description="Qualifying minutes at which this unit is met.")
    qualifying_minutes: int = Field(description="The month's qualifying minutes after the event.")
    triggering_event_id: str = Field(description="The log (or void) that crossed the threshold.")
    occurrence: int = Field(description="1 the first time this unit is reached/revoked, then 2 …")
    month_closed: bool = Field(description="True when the month had already closed (late event).")
    billable: bool = Field(
        default=True,
        description="Whether the month is billable as things stand (time reached and no hold).",
    )
    hold_reasons: list[HoldReason] = Field(
        default_factory=list, description="What holds the month as things stand, if anything."
    )


class BillingLine(_Wire):
    code: str
    units: int


class LogLine(_Wire):
    """One log of the month, as the claim's documentation needs it (no free-text note)."""

    event_id: str
    staff_id: str
    staff_name: str | None
    role: Role
    credentials: str | None
    licensed: StrictBool
    activity: Activity
    start: datetime
    end: datetime
    minutes: int
    agency_contacted: str | None
    status: Literal["counted", "excluded", "voided"]
    excluded_by: str | None = Field(default=None, description="Rule that excluded it.")
    voided_by: str | None = Field(default=None, description="event_id of the void.")
    void_reason: VoidReason | None = None


class RejectedLine(_Wire):
    event_id: str
    reason: Reason
    message: str


class ConsentStatus(_Wire):
    status: Literal["active", "withdrawn", "none"] = Field(
        description="The practice's consent in force on `checked_on`."
    )
    checked_on: date = Field(description="Date of service, or the month's last day.")
    event_id: str | None = Field(default=None, description="The consent event in force.")


class EligibilityStatus(_Wire):
    status: Literal["eligible", "not_eligible", "not_attested"]
    event_id: str | None = Field(default=None, description="The attestation that holds.")


class OtherCodeLine(_Wire):
    event_id: str
    code: str
    practice_id: str = Field(description="The practice that billed it.")
    effect: Literal["excludes_month", "time_not_counted"]
    time_log_ids: list[str]


class Enrollment(_Wire):
    """What the enrollment feed says about the month, and which requirements were applied."""

    feed: bool = Field(
        description="False: the practice sends no enrollment events and switched the consent "
        "and eligibility gates off (they are reported, not applied)."
    )
    requirements: list[Literal["consent", "eligibility"]] = Field(
        description="Requirements applied to this record (profile data, off without a feed)."
    )
    consent: ConsentStatus
    eligibility: EligibilityStatus
    other_codes: list[OtherCodeLine] = Field(description="Codes billed for the month by anyone.")


class OtherPractice(_Wire):
    """Another practice that logged time for the same patient and month (never pooled)."""

    practice_id: str
    qualifying_minutes: int
    reached_entry: bool
    billable: bool


class BillingRecord(_Wire):
    """Month-close billing record of one patient, practice and local calendar month."""

    record_id: str = Field(description="Same for every revision of this patient-month.")
    revision: int = Field(description="0 for the first close, then 1, 2 … for re-issues.")
    patient_id: str
    practice_id: str
    service_month: str
    time_zone: str
    payer: str
    profile_version: str
    billable: bool
    lines: list[BillingLine]
    date_of_service: date | None
    date_of_service_policy: Literal["last_day_of_month", "threshold_met"]
    qualifying_minutes: int = Field(description="Union of counted intervals, whole minutes.")
    qualifying_seconds: int
    counted_log_minutes: int = Field(description="Sum of counted logs, before overlap removal.")
    overlap_minutes: int = Field(description="counted_log_minutes - qualifying_minutes.")
    excluded_minutes: int
    excluded_minutes_by_rule: dict[str, int]
    minutes_to_next_threshold: int | None
    contributing_event_ids: list[str] = Field(description="Counted logs, the audit trail.")
    logs: list[LogLine]
    rejected: list[RejectedLine]
    held_lines: list[BillingLine] = Field(
        default_factory=list,
        description="Lines the time supports but a hold stops (billable is false); "
        "`lines` is empty then.",
    )
    hold_reasons: list[HoldReason] = Field(default_factory=list)
    enrollment: Enrollment | None = Field(
        default=None, description="Consent, eligibility and other codes of the month."
    )
    single_biller: bool = Field(
        default=False,
        description="The payer profile lets only one practice bill the patient-month.",
    )
    billing_practice_id: str | None = Field(
        default=None,
        description="Under a single-biller profile, the practice that may bill the month: "
        "the one holding consent, else the first to reach the entry threshold (service "
        "time), else the lowest practice id; None when no practice may.",
    )
    other_practices: list[OtherPractice] = Field(default_factory=list)
    close_trigger: Literal["timer", "command", "late_event", "replay"]
    closed_at: datetime


class MonthSummary(_Wire):
    """A patient-month's current tally, as the worker's look-up endpoint returns it."""

    patient_id: str
    practice_id: str
    service_month: str
    payer: str
    qualifying_minutes: int
    codes_reached: list[BillingLine]
    next_threshold: str | None = Field(description="e.g. '99489 unit 2'; None at the cap.")
    minutes_to_next_threshold: int | None
    logs: int
    billable: bool = Field(default=False, description="Billable as things stand.")
    hold_reasons: list[HoldReason] = Field(default_factory=list)
    closed: bool
    revision: int | None


class StatusThreshold(_Wire):
    """One billing threshold of a patient-month's payer: what a progress bar marks."""

    code: str = Field(description="CPT code: the entry code (99487) or the add-on (99489).")
    unit: int = Field(description="1 for the entry code; 1, 2 ... for add-on units.")
    minutes: int = Field(description="Qualifying minutes at which this unit is met.")
    reached: bool


class TallyStatus(_Wire):
    """The current state of one patient-month, re-published whenever it changes.

    Topic ``ccm.tally-status.v1`` is compacted on the key ``patient/practice/month``: a reader
    from the beginning ends with the latest status of every patient-month (the worklist).
    """

    patient_id: str
    practice_id: str
    service_month: str
    time_zone: str = Field(description="IANA zone of the practice's local calendar month.")
    payer: str
    profile_version: str
    qualifying_minutes: int = Field(description="Union of counted intervals, whole minutes.")
    codes_reached: list[BillingLine]
    thresholds: list[StatusThreshold] = Field(
        description="The payer's entry threshold, the add-on thresholds reached and the next "
        "two not reached (fewer at the payer's cap)."
    )
    next_threshold: StatusThreshold | None = Field(description="None at the payer's cap.")
    minutes_to_next_threshold: int | None = Field(description="None at the payer's cap.")
    logs: int = Field(description="Logs of the month (counted, excluded and voided).")
    closed: bool = Field(description="True once the month-close record was issued.")
    revision: int | None = Field(description="Revision of the last record; None while open.")
    billable: bool | None = Field(
        default=None,
        description="Whether the month may be billed (compliance checks); None: not assessed.",
    )


class RejectedInput(_Wire):
    """A dead-lettered input: why, where it came from, and the original (its first
    ``DEAD_LETTER_PREFIX_BYTES`` bytes; the whole payload stays readable on the source
    topic-partition at the source offset while the topic retains it)."""

    reason: Reason
    message: str = Field(description="Human-readable; never quotes free text from the input.")
    event_id: str | None = Field(default=None, description="If the input had a readable one.")
    patient_id: str | None = None
    original: str = Field(
        description="The original payload (its first 16 KiB when longer), decoded as UTF-8 "
        "with replacement."
    )
    original_base64: str | None = Field(
        default=None,
        description="The same bytes as `original`, base64, when they are not valid UTF-8.",
    )
    original_length: int = Field(description="Length of the whole original payload, in bytes.")
    original_sha256: str = Field(description="SHA-256 of the whole original payload, hex.")
    original_truncated: bool = Field(
        description="True when `original` holds only the first 16 KiB of the payload."
    )
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None


DataT = TypeVar("DataT", bound=BaseModel)


class Envelope(_Wire, Generic[DataT]):
    """CloudEvents 1.0 structured-mode envelope. ``id`` is deterministic: dedupe on it."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str = "ccm-tally"
    type: str
    subject: str
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    data: SerializeAsAny[DataT]


class FhirChargeItemEnvelope(_Wire):
    """CloudEvents 1.0 structured-mode envelope of one FHIR R4 ``ChargeItem`` (topic
    ``ccm.fhir-chargeitem.v1``): one per line of a billing record's revision. ``data`` is the
    resource as FHIR JSON, built and validated with ``fhir.resources`` (``ccm_core.fhir``); its
    full schema is the FHIR specification's (http://hl7.org/fhir/R4/chargeitem.html)."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str = "ccm-tally"
    type: Literal["org.ccmtally.fhir-chargeitem.v1"] = "org.ccmtally.fhir-chargeitem.v1"
    subject: str
    time: datetime
    datacontenttype: Literal["application/fhir+json"] = "application/fhir+json"
    dataschema: Literal["http://hl7.org/fhir/R4/chargeitem.html"] = (
        "http://hl7.org/fhir/R4/chargeitem.html"
    )
    data: dict[str, Any] = Field(
        description="FHIR R4 ChargeItem resource (JSON), resourceType 'ChargeItem'.",
        json_schema_extra={
            "required": ["resourceType", "id", "status", "code", "subject"],
            "properties": {"resourceType": {"const": "ChargeItem"}},
        },
    )


ThresholdEnvelope = Envelope[ThresholdEvent]
BillingRecordEnvelope = Envelope[BillingRecord]
RejectedInputEnvelope = Envelope[RejectedInput]
TallyStatusEnvelope = Envelope[TallyStatus]
OutputEnvelope = (
    ThresholdEnvelope
    | BillingRecordEnvelope
    | RejectedInputEnvelope
    | TallyStatusEnvelope
    | FhirChargeItemEnvelope
)

ENVELOPES: dict[type[BaseModel], type[OutputEnvelope]] = {
    ThresholdEvent: ThresholdEnvelope,
    BillingRecord: BillingRecordEnvelope,
    RejectedInput: RejectedInputEnvelope,
    TallyStatus: TallyStatusEnvelope,
}

OUTPUT_TYPES: dict[type[BaseModel], str] = {
    ThresholdEvent: "org.ccmtally.threshold.v1",
    BillingRecord: "org.ccmtally.billing-record.v1",
    RejectedInput: "org.ccmtally.rejected-input.v1",
    TallyStatus: "org.ccmtally.tally-status.v1",
}


# --------------------------------------------------------------------------------------------
# Validation errors -> reason codes
# --------------------------------------------------------------------------------------------

_FIELD_REASONS = {"activity": Reason.UNKNOWN_ACTIVITY, "role": Reason.UNKNOWN_ROLE}
_REASON_VALUES = {r.value for r in Reason}
_FIELD_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def _field_name(part: object) -> str:
    """A location part fit for a message: an unknown key of the input may be anything (free
    text, a name, megabytes), so only plain names are quoted."""
    text = str(part)
    return text if _FIELD_NAME.fullmatch(text) else "<field>"


_PATTERN_MESSAGES = {
    f"^{ID_PATTERN}$": "must be 1-128 printable ASCII characters without spaces",
    f"^{TIMESTAMP_PATTERN}$": "must be an RFC 3339 date-time, YYYY-MM-DDThh:mm:ss[.ffffff] "
    "and Z or ±hh:mm, in the years 2000-2099",
    f"^{PAYER_PATTERN}$": "must be a profile name: a-z, 0-9 and _, starting with a letter",
    f"^{SERVICE_MONTH_PATTERN}$": "must be a month YYYY-MM in 2000-2099",
}


def _pattern_reason(pattern: str, value: object) -> tuple[Reason, str]:
    """Why a text did not match its pattern (the value decides the code; it is not quoted)."""
    message = _PATTERN_MESSAGES.get(pattern, "is not in the expected form")
    text = value if isinstance(value, str) else ""
    if pattern == f"^{ID_PATTERN}$" and not text.strip():
        return Reason.MISSING_FIELD, "must not be empty or blank"
    if pattern == f"^{TIMESTAMP_PATTERN}$":
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return Reason.INVALID_FIELD, message
        if parsed.tzinfo is None:
            return Reason.TIMESTAMP_WITHOUT_OFFSET, "must carry a UTC offset"
        if not MIN_YEAR <= parsed.year <= MAX_YEAR:
            return Reason.TIMESTAMP_OUT_OF_RANGE, f"must lie in the years {MIN_YEAR}-{MAX_YEAR}"
    return Reason.INVALID_FIELD, message


def reason_from_validation_error(err: ValidationError) -> tuple[Reason, str]:
    """The reason code and a message naming the field, never echoing input values."""
    first: Any = err.errors(include_url=False)[0]  # the input decides, it is never quoted
    etype: str = first["type"]
    loc = [_field_name(p) for p in first["loc"] if p not in ("time_logged", "time_log_voided")]
    field = ".".join(loc) or "payload"
    msg = str(first["msg"])
    if etype == "string_pattern_mismatch":
        pattern = str(first.get("ctx", {}).get("pattern", ""))
        reason, text = _pattern_reason(pattern, first.get("input"))
        return reason, f"field '{field}': {text}"
    if loc and loc[-1] == "schema_version":
        return Reason.UNSUPPORTED_SCHEMA_VERSION, "schema_version must be 1"
    if etype == "extra_forbidden":
        return Reason.INVALID_FIELD, f"field '{field}' is not part of the schema"
    if etype in _REASON_VALUES:
        return Reason(etype), f"field '{field}': {msg}" if loc else msg
    if etype == "json_invalid":
        return Reason.INVALID_JSON, "payload is not valid JSON"
    if etype in ("model_type", "model_attributes_type", "dict_type"):
        return Reason.NOT_AN_OBJECT, "payload is not a JSON object"
    if etype == "union_tag_not_found":
        return Reason.MISSING_FIELD, "field 'event_type' is required"
    if etype == "union_tag_invalid":
        return Reason.UNKNOWN_EVENT_TYPE, "event_type must be 'time_logged' or 'time_log_voided'"
    if etype == "missing":
        return Reason.MISSING_FIELD, f"field '{field}' is required"
    if etype == "string_too_short" and loc:
        return Reason.MISSING_FIELD, f"field '{field}' is empty"
    if etype == "timezone_aware":
        return Reason.TIMESTAMP_WITHOUT_OFFSET, f"field '{field}' must carry a UTC offset"
    if loc and loc[-1] in _FIELD_REASONS and etype == "enum":
        return _FIELD_REASONS[loc[-1]], f"field '{field}': {msg}"
    if loc and loc[-1] == "minutes" and etype == "greater_than":
        return Reason.NON_POSITIVE_MINUTES, "field 'minutes' must be greater than 0"
    return Reason.INVALID_FIELD, f"field '{field}': {msg}"
