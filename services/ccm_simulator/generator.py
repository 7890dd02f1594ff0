"""A seeded, deterministic EHR simulator: months of clinical-staff time logs as wire payloads.

Pure: no clock reads, no I/O. The same :class:`SimulationSpec` (seed included) always yields the
same events, byte for byte, in the same order. Events come out in *arrival order* (the time the
EHR published them), which is what a stream processor sees on ``ccm.timelog.v1``.

What a simulated month looks like
---------------------------------
- Each patient belongs to one practice and one payer (fixed for the whole run) and has a small
  care team (a primary staff member and one or two others of the practice).
- A patient is active in a month with probability ``active``; an active patient-month gets a
  total of logged minutes drawn from a log-normal distribution (median about 60 minutes, a
  patient-level acuity factor plus monthly noise): about half under 60, most of the rest 60-150,
  a tail beyond. The total is split into logs of 5-45 minutes (rarely up to 49) on working days
  (Monday-Friday except major US holidays), starting 07:30-17:29 local time.
- Staff roles follow a realistic mix (RN, MA, LPN, care coordinator, CHW, physician, NP, PA,
  pharmacist, social worker, dietitian, CNS); ``licensed`` is consistent with the role (MA, CHW
  and care coordinator never licensed). Activities are mostly counting care coordination, with a
  share of activities some payers exclude (prior authorization, benefit check, e-mail,
  documentation, chart prep, gap reminders).
- Some patient-months get a log by a second staff member overlapping an earlier one, and a few a
  log that starts late on the month's last day and crosses local midnight.
- Logs are recorded minutes to hours (sometimes days) after the work. A share is recorded late,
  days to weeks after the month ended (some after the default 5-day close grace period).
- A share of logs is voided later (entered in error, duplicate entry, wrong patient, or a
  correction: the void is followed by a corrected new log), a share of valid events is
  redelivered byte for byte (at-least-once EHR interfaces), and a share of all events is
  malformed in one of :data:`MALFORMED_VARIANTS` (invalid JSON, missing fields, unknown
  activity or role, non-positive minutes, naive timestamps, end before start, too long ...).

Payloads are built as JSON text directly (pre-serialised fragments) rather than through pydantic,
so that the generator is fast enough to be the load generator of the benchmarks. Every payload of
kind ``log``, ``late``, ``void`` and ``duplicate`` validates with
``ccm_core.contracts.INPUT_ADAPTER``; ``malformed`` payloads carry the reason code they are meant
to be rejected with (``SimEvent.reason``) and the stage that rejects them
(:data:`MALFORMED_VARIANTS`).
"""

from __future__ import annotations

import calendar
import json
import math
import random
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import islice
from operator import itemgetter
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ccm_core.contracts import NEVER_LICENSED_ROLES, Activity, Reason, Role, VoidReason
from ccm_core.months import month_end, next_month, parse_month

EventKind = Literal["log", "late", "void", "duplicate", "malformed", "enrollment"]
"""``log``: a time log recorded on time (including corrections, overlaps, midnight crossers);
``late``: a time log recorded after its month ended; ``void``: a ``time_log_voided``;
``duplicate``: an exact redelivery of an earlier valid event; ``malformed``: a bad payload;
``enrollment``: a consent, eligibility or other-code event (topic ``ccm.enrollment.v1``)."""

EVENT_KINDS: tuple[EventKind, ...] = (
    "log",
    "late",
    "void",
    "duplicate",
    "malformed",
    "enrollment",
)

Stage = Literal["decode", "engine"]
"""Where a malformed payload is rejected: by ``ccm_core.ingest.decode`` (wire validation) or by
the tally engine (rules that need the practice settings, e.g. the plausibility bound)."""

MALFORMED_VARIANTS: dict[str, tuple[Reason, Stage]] = {
    "truncated_json": (Reason.INVALID_JSON, "decode"),
    "trailing_comma": (Reason.INVALID_JSON, "decode"),
    "latin1_bytes": (Reason.INVALID_JSON, "decode"),
    "hl7_text": (Reason.INVALID_JSON, "decode"),
    "not_an_object": (Reason.NOT_AN_OBJECT, "decode"),
    "unknown_event_type": (Reason.UNKNOWN_EVENT_TYPE, "decode"),
    "unsupported_schema_version": (Reason.UNSUPPORTED_SCHEMA_VERSION, "decode"),
    "missing_patient_id": (Reason.MISSING_FIELD, "decode"),
    "empty_patient_id": (Reason.MISSING_FIELD, "decode"),
    "missing_practice_id": (Reason.MISSING_FIELD, "decode"),
    "unknown_activity": (Reason.UNKNOWN_ACTIVITY, "decode"),
    "unknown_role": (Reason.UNKNOWN_ROLE, "decode"),
    "negative_minutes": (Reason.NON_POSITIVE_MINUTES, "decode"),
    "timestamp_without_offset": (Reason.TIMESTAMP_WITHOUT_OFFSET, "decode"),
    "end_before_start": (Reason.END_BEFORE_START, "decode"),
    "missing_duration": (Reason.MISSING_DURATION, "decode"),
    "minutes_end_mismatch": (Reason.MINUTES_END_MISMATCH, "decode"),
    "inconsistent_licensure": (Reason.INCONSISTENT_LICENSURE, "decode"),
    "note_too_long": (Reason.INVALID_FIELD, "decode"),
    "too_long": (Reason.DURATION_EXCEEDS_BOUND, "engine"),
    "unknown_payer": (Reason.UNKNOWN_PAYER_PROFILE, "engine"),
    "recorded_before_service": (Reason.RECORDED_BEFORE_SERVICE, "engine"),
}
"""Malformed variety: name -> (reason code it must be rejected with, stage that rejects it)."""

_MALFORMED_WEIGHTS: dict[str, int] = {
    "truncated_json": 3,
    "trailing_comma": 1,
    "latin1_bytes": 1,
    "hl7_text": 1,
    "not_an_object": 1,
    "unknown_event_type": 1,
    "unsupported_schema_version": 1,
    "missing_patient_id": 2,
    "empty_patient_id": 1,
    "missing_practice_id": 1,
    "unknown_activity": 2,
    "unknown_role": 1,
    "negative_minutes": 2,
    "timestamp_without_offset": 2,
    "end_before_start": 2,
    "missing_duration": 1,
    "minutes_end_mismatch": 1,
    "inconsistent_licensure": 1,
    "note_too_long": 1,
    "too_long": 2,
    "unknown_payer": 1,
    "recorded_before_service": 1,
}

DEFAULT_PAYER_MIX: dict[str, float] = {
    "cms": 0.55,
    "bcbsm": 0.2,
    "priority_health": 0.12,
    "medicaid": 0.13,
}


class SimEvent(NamedTuple):
    """One message as the EHR publishes it, plus what the simulator knows about it."""

    key: str
    """Kafka message key: the patient id (also for malformed payloads)."""
    value: bytes
    """The JSON payload, exactly as published."""
    kind: EventKind
    at: int
    """Arrival time (epoch seconds); events are yielded in this order. It is the payload's
    ``recorded_at`` except for duplicates (redelivered later) and malformed payloads."""
    detail: str = ""
    """``correction``, ``overlap``, ``midnight`` for special logs; the void reason for voids;
    the original kind for duplicates; the variant name (:data:`MALFORMED_VARIANTS`) for
    malformed payloads."""
    reason: Reason | None = None
    """For malformed payloads: the reason code they are meant to be rejected with."""


class SimulationSpec(BaseModel):
    """What to simulate. Shares are probabilities in 0..1; see each field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patients: int = Field(1000, ge=1, description="Enrolled complex-CCM patients.")
    staff: int = Field(40, ge=1, description="Clinical staff, spread over the practices.")
    practices: tuple[str, ...] = Field(
        ("practice-001", "practice-002", "practice-003"), min_length=1
    )
    time_zone: str = Field("America/Detroit", description="Time zone of every practice ...")
    practice_time_zones: dict[str, str] = Field(
        default_factory=dict, description="... except those listed here (practice id -> zone)."
    )
    start_month: str = Field("2026-01", pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    months: int = Field(1, ge=1, le=240)
    payer_mix: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PAYER_MIX))
    duplicates: float = Field(0.02, ge=0, le=1, description="Share of valid events redelivered.")
    voids: float = Field(0.03, ge=0, le=1, description="Share of logs voided later.")
    corrections: float = Field(
        0.45, ge=0, le=1, description="Share of voids that are corrections (void + new log)."
    )
    late: float = Field(0.04, ge=0, le=1, description="Share of logs recorded after month end.")
    malformed: float = Field(0.01, ge=0, le=0.9, description="Share of all events malformed.")
    active: float = Field(0.9, ge=0, le=1, description="Share of patients with time in a month.")
    overlaps: float = Field(
        0.12, ge=0, le=1, description="Share of patient-months with an overlapping second log."
    )
    midnight: float = Field(
        0.01, ge=0, le=1, description="Share of patient-months with a log crossing month end."
    )
    utc_practices: float = Field(
        0.25, ge=0, le=1, description="Share of practices (rounded) whose EHR sends `start` in UTC."
    )
    consent: float = Field(
        0.96, ge=0, le=1, description="Share of patients whose consent is recorded (enrollment)."
    )
    withdrawals: float = Field(
        0.01, ge=0, le=1, description="Share of consenting patients withdrawing in a month."
    )
    attested: float = Field(
        0.96, ge=0, le=1, description="Share of active patient-months with an attestation."
    )
    not_eligible: float = Field(
        0.04, ge=0, le=1, description="Share of attestations not meeting the criteria."
    )
    other_codes: float = Field(
        0.02, ge=0, le=1, description="Share of active patient-months with another code billed."
    )
    id_prefix: str = Field("sim", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    seed: int = 0

    @field_validator("practices")
    @classmethod
    def _practice_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("practice ids must be unique")
        for pid in value:
            if not pid or len(pid) > 128 or any(c.isspace() for c in pid):
                raise ValueError(f"invalid practice id {pid!r}")
        return value

    @field_validator("payer_mix")
    @classmethod
    def _mix(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("payer_mix needs non-negative weights with a positive sum")
        for name in value:
            if not name or not name[0].isalpha() or not name.islower() or " " in name:
                raise ValueError(f"invalid payer profile name {name!r}")
        return value

    @model_validator(mode="after")
    def _zones(self) -> SimulationSpec:
        for name in (self.time_zone, *self.practice_time_zones.values()):
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown IANA time zone {name!r}") from exc
        return self

    def zone_of(self, practice_id: str) -> str:
        return self.practice_time_zones.get(practice_id, self.time_zone)

    def month_list(self) -> list[str]:
        out = [self.start_month]
        for _ in range(self.months - 1):
            out.append(next_month(out[-1]))
        return out


def generate(spec: SimulationSpec) -> Iterator[SimEvent]:
    """The simulated events of ``spec``, in arrival order; the same for the same spec."""
    return _Simulator(spec).run()


# --------------------------------------------------------------------------------------------
# Static tables
# --------------------------------------------------------------------------------------------

_ROLE_WEIGHTS: tuple[tuple[Role, int], ...] = (
    (Role.RN, 30),
    (Role.MA, 20),
    (Role.LPN, 12),
    (Role.CARE_COORDINATOR, 8),
    (Role.CHW, 7),
    (Role.PHYSICIAN, 5),
    (Role.NP, 5),
    (Role.PA, 3),
    (Role.PHARMACIST, 3),
    (Role.SOCIAL_WORKER, 4),
    (Role.DIETITIAN, 2),
    (Role.CNS, 1),
)

_CREDENTIALS: dict[Role, tuple[str | None, ...]] = {
    Role.RN: ("RN", "RN, BSN", "RN, BSN", "RN, MSN", "RN, BSN, CCM"),
    Role.LPN: ("LPN",),
    Role.MA: ("CMA", "CMA", "RMA", "MA", None),
    Role.CHW: ("CHW", None),
    Role.CARE_COORDINATOR: (None,),
    Role.PHYSICIAN: ("MD", "MD", "DO"),
    Role.NP: ("FNP-BC", "NP-C", "APRN, FNP-C", "AGPCNP-BC"),
    Role.PA: ("PA-C",),
    Role.PHARMACIST: ("PharmD", "PharmD, BCACP", "RPh"),
    Role.SOCIAL_WORKER: ("LMSW", "LCSW", "LMSW"),
    Role.DIETITIAN: ("RDN", "RD"),
    Role.CNS: ("APRN, CNS",),
}
_UNLICENSED_SOCIAL_WORKER_CREDENTIALS: tuple[str | None, ...] = ("BSW", None)

_A = Activity
_ACTIVITIES_CLINICAL: tuple[tuple[Activity, int], ...] = (
    (_A.HOME_HEALTH_COORDINATION, 10),
    (_A.DME_COORDINATION, 6),
    (_A.SPECIALIST_COORDINATION, 10),
    (_A.COMMUNITY_AGENCY_COORDINATION, 5),
    (_A.MEDICATION_RECONCILIATION, 13),
    (_A.CARE_PLAN, 12),
    (_A.CAREGIVER_COMMUNICATION, 10),
    (_A.PATIENT_EDUCATION, 10),
    (_A.RESOURCE_RESEARCH, 4),
    (_A.FORMS_COMPLETION, 4),
    (_A.PORTAL_CONVERSATION, 6),
    (_A.PRIOR_AUTHORIZATION, 3),
    (_A.BENEFIT_CHECK, 2),
    (_A.DOCUMENTATION, 4),
    (_A.GAP_REMINDER, 1),
    (_A.CHART_PREP, 2),
    (_A.EMAIL, 3),
)
_ACTIVITIES_SUPPORT: tuple[tuple[Activity, int], ...] = (  # MA, CHW, care coordinator
    (_A.HOME_HEALTH_COORDINATION, 6),
    (_A.DME_COORDINATION, 8),
    (_A.SPECIALIST_COORDINATION, 8),
    (_A.COMMUNITY_AGENCY_COORDINATION, 12),
    (_A.CAREGIVER_COMMUNICATION, 8),
    (_A.PATIENT_EDUCATION, 4),
    (_A.RESOURCE_RESEARCH, 10),
    (_A.FORMS_COMPLETION, 10),
    (_A.PORTAL_CONVERSATION, 6),
    (_A.PRIOR_AUTHORIZATION, 6),
    (_A.BENEFIT_CHECK, 5),
    (_A.DOCUMENTATION, 3),
    (_A.GAP_REMINDER, 4),
    (_A.CHART_PREP, 3),
    (_A.EMAIL, 3),
)
_ACTIVITIES_PRACTITIONER: tuple[tuple[Activity, int], ...] = (  # physician, NP, PA, CNS
    (_A.CARE_PLAN, 30),
    (_A.MEDICATION_RECONCILIATION, 15),
    (_A.SPECIALIST_COORDINATION, 15),
    (_A.CAREGIVER_COMMUNICATION, 10),
    (_A.PORTAL_CONVERSATION, 8),
    (_A.PATIENT_EDUCATION, 6),
    (_A.DOCUMENTATION, 8),
    (_A.PRIOR_AUTHORIZATION, 4),
    (_A.CHART_PREP, 4),
)
_SUPPORT_ROLES = frozenset({Role.MA, Role.CHW, Role.CARE_COORDINATOR})
_PRACTITIONER_ROLES = frozenset({Role.PHYSICIAN, Role.NP, Role.PA, Role.CNS})
_LICENSED_ONLY_PAYERS = frozenset({"priority_health"})
_PRIMARY_ROLES = frozenset({Role.RN, Role.LPN, Role.MA, Role.CARE_COORDINATOR, Role.CHW})

_AGENCIES: dict[str, tuple[str, ...]] = {
    _A.HOME_HEALTH_COORDINATION.value: (
        "Great Lakes Home Health",
        "Huron Valley Visiting Nurses",
        "Riverside Home Care",
    ),
    _A.DME_COORDINATION.value: (
        "Lakeshore Medical Supply",
        "Mitten State DME",
        "Northpoint Oxygen & Respiratory",
    ),
    _A.SPECIALIST_COORDINATION.value: (
        "Wolverine Cardiology Associates",
        "Capitol Nephrology",
        "Lakeside Pulmonology",
        "Oakland Endocrine Clinic",
    ),
    _A.COMMUNITY_AGENCY_COORDINATION.value: (
        "Area Agency on Aging",
        "Meals on Wheels",
        "County Dial-a-Ride",
        "211 community resource line",
    ),
    _A.MEDICATION_RECONCILIATION.value: ("Corner Drug pharmacy", "Mail-order pharmacy"),
    _A.PRIOR_AUTHORIZATION.value: ("Payer utilization management",),
    _A.BENEFIT_CHECK.value: ("Payer provider services line",),
}

_NOTES: tuple[str, ...] = (
    "Reviewed care plan goals with patient",
    "Called daughter about the medication schedule",
    "Faxed order, awaiting confirmation",
    "Left voicemail, will follow up",
    "Updated medication list after discharge",
    "Scheduled transportation for cardiology visit",
    "Discussed low-sodium diet and daily weights",
    "Confirmed home health start-of-care date",
    "Patient prefers Spanish; interpreter used \u2014 call went well",
    "BP log reviewed, readings stable",
)

_VOID_REASONS: tuple[tuple[VoidReason, int], ...] = (
    (VoidReason.ENTERED_IN_ERROR, 25),
    (VoidReason.DUPLICATE_ENTRY, 15),
    (VoidReason.WRONG_PATIENT, 10),
    (VoidReason.OTHER, 5),
)

_FIRST_NAMES = (
    "Avery", "Jordan", "Morgan", "Riley", "Casey", "Taylor", "Jamie", "Quinn", "Dana", "Robin",
    "Alex", "Sam", "Leigh", "Kris", "Jesse", "Drew", "Rowan", "Parker", "Emerson", "Harper",
    "Noor", "Mei", "Tomasz", "Aaliyah", "Mateo", "Ines",
)  # fmt: skip
_LAST_NAMES = (
    "Abernathy", "Brightwater", "Castellano", "Dunmore", "Eastwick", "Fairbanks", "Greenleaf",
    "Holloway", "Ivers", "Jankowski", "Kowalczyk", "Lindqvist", "Mahoney", "Nakamura", "Okafor",
    "Pellegrino", "Quintero", "Rasmussen", "Szymanski", "Thibodeaux", "Underhill", "Vasquez",
    "Whitcomb", "Yellowhorse", "Zielinski", "O'Connell",
)  # fmt: skip

_UNKNOWN_ACTIVITIES = ("telehealth_visit", "face_to_face_visit", "Care Plan", "care-plan", "misc")
_UNKNOWN_ROLES = ("scribe", "student_nurse", "RN", "nurse", "front_desk")
_UNKNOWN_PAYERS = ("aetna", "humana_ma", "self_pay")
_LONG_NOTE = (
    "Pasted chart note: patient seen by home health, vitals stable, medication list reviewed "
    "line by line with caregiver, follow-up scheduled with cardiology and nephrology. "
)

_LOG_MEDIAN_MINUTES = math.log(66.0)  # logged minutes; qualifying ones are fewer
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_AT = itemgetter(3)
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


def _table(weights: tuple[tuple[Any, int], ...]) -> tuple[Any, ...]:
    """A lookup table: ``table[int(random() * len(table))]`` draws by weight."""
    return tuple(item for item, weight in weights for _ in range(weight))


def _length_table(size: int = 400, low: int = 5, high: int = 45, mode: int = 12) -> tuple[int, ...]:
    """Quantiles of a triangular(low, mode, high) distribution: log lengths in minutes."""
    out = []
    span, left = high - low, mode - low
    for i in range(size):
        q = (i + 0.5) / size
        if q < left / span:
            x = low + math.sqrt(q * span * left)
        else:
            x = high - math.sqrt((1 - q) * span * (high - mode))
        out.append(round(x))
    return tuple(out)


_LOG_LENGTHS = _length_table()
_MALFORMED_TABLE: tuple[str, ...] = _table(tuple(_MALFORMED_WEIGHTS.items()))


def _offset_suffix(seconds: int) -> str:
    sign = "+" if seconds >= 0 else "-"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _holiday(day: date) -> bool:
    """A US holiday most practices close on (no staff time logged, except after hours)."""
    month, dom, weekday = day.month, day.day, day.weekday()
    if (month, dom) in ((1, 1), (7, 4), (12, 25)):
        return True
    if month == 5 and weekday == 0 and dom > 24:  # Memorial Day: last Monday of May
        return True
    if month == 9 and weekday == 0 and dom <= 7:  # Labor Day: first Monday of September
        return True
    return month == 11 and weekday == 3 and 22 <= dom <= 28  # Thanksgiving


def _fragment(fields: dict[str, Any]) -> str:
    """``{"a":1,"b":2}`` without its braces, to splice into a payload."""
    return _DUMPS(fields)[1:-1]


# --------------------------------------------------------------------------------------------
# Internal model of the simulated world
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Staff:
    staff_id: str
    role: Role
    licensed: bool
    practice: int
    full: str  # pre-serialised staff fields, with name and credentials
    bare: str  # without the optional name and credentials
    activities: tuple[str, ...]


@dataclass(slots=True)
class _Patient:
    patient_id: str
    practice: int
    payer: str
    log_fields: str  # pre-serialised patient_id, practice_id, payer
    void_fields: str  # pre-serialised patient_id, practice_id
    team: tuple[_Staff, ...]
    acuity: float


class _Day(NamedTuple):
    fmt: int  # local (or UTC, for UTC practices) seconds of the day's midnight, for formatting
    epoch: int  # epoch seconds of the day's local midnight (valid from 03:00 local on)
    suffix: str  # UTC offset as written on timestamps, or "Z"


@dataclass(slots=True)
class _PracticeMonth:
    days: list[_Day]  # working days
    last: _Day  # the month's last calendar day
    end: int  # epoch seconds of the local month end


class _Template(NamedTuple):
    """A log already built, from which malformed variants are derived."""

    value: bytes
    start_fmt: int
    start_epoch: int
    suffix: str
    minutes: int
    at: int
    staff_id: str


class _Simulator:
    def __init__(self, spec: SimulationSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.rnd = self.rng.random
        self.seq = 0
        self.id_stem = f"{spec.id_prefix}-e{spec.seed}-"
        self.minute_strings: dict[int, str] = {}
        self.malformed_rate = spec.malformed / (1.0 - spec.malformed)
        self.zones = [ZoneInfo(spec.zone_of(p)) for p in spec.practices]
        nprac = len(spec.practices)
        utc = set(self.rng.sample(range(nprac), round(nprac * spec.utc_practices)))
        self.utc_style = [i in utc for i in range(nprac)]
        self.void_reasons: tuple[VoidReason, ...] = _table(_VOID_REASONS)
        self.staff = self._make_staff()
        self.by_practice: list[list[_Staff]] = [
            [s for s in self.staff if s.practice == i] for i in range(len(spec.practices))
        ]
        for i, members in enumerate(self.by_practice):
            if not members:  # fewer staff than practices: staff work at several practices
                members.append(self.staff[i % len(self.staff)])
        self.patients = self._make_patients()
        # enrollment events draw from their own generator, so that the time logs of a seed
        # stay byte for byte what they were before the enrollment feed existed
        self.enroll_rnd = random.Random(f"{spec.seed}:enrollment").random
        self.consenting: set[str] = set()
        self.enroll_seq = 0

    # ---------------------------------------------------------------- world

    def _make_staff(self) -> list[_Staff]:
        rnd = self.rnd
        roles: tuple[Role, ...] = _table(_ROLE_WEIGHTS)
        clinical = _table(_ACTIVITIES_CLINICAL)
        support = _table(_ACTIVITIES_SUPPORT)
        practitioner = _table(_ACTIVITIES_PRACTITIONER)
        out = []
        nprac = len(self.spec.practices)
        for i in range(self.spec.staff):
            role = roles[int(rnd() * len(roles))]
            if role in NEVER_LICENSED_ROLES:
                licensed = False
            elif role is Role.SOCIAL_WORKER:
                licensed = rnd() < 0.75
            else:
                licensed = True
            creds = (
                _CREDENTIALS[role] if licensed or role in NEVER_LICENSED_ROLES
                else _UNLICENSED_SOCIAL_WORKER_CREDENTIALS
            )  # fmt: skip
            credentials = creds[int(rnd() * len(creds))]
            name = (
                f"{_FIRST_NAMES[int(rnd() * len(_FIRST_NAMES))]} "
                f"{_LAST_NAMES[int(rnd() * len(_LAST_NAMES))]}"
            )
            staff_id = f"{self.spec.id_prefix}-st-{i + 1:04d}"
            full: dict[str, Any] = {"staff_id": staff_id, "staff_name": name, "role": role.value}
            if credentials is not None:
                full["credentials"] = credentials
            full["licensed"] = licensed
            bare = {"staff_id": staff_id, "role": role.value, "licensed": licensed}
            table = (
                support if role in _SUPPORT_ROLES
                else practitioner if role in _PRACTITIONER_ROLES
                else clinical
            )  # fmt: skip
            acts = tuple(a.value for a in table)
            out.append(
                _Staff(staff_id, role, licensed, i % nprac, _fragment(full), _fragment(bare), acts)
            )
        return out

    def _make_patients(self) -> list[_Patient]:
        spec, rnd = self.spec, self.rnd
        payers = list(spec.payer_mix.items())
        total = sum(w for _, w in payers)
        cumulative, acc = [], 0.0
        for name, weight in payers:
            acc += weight / total
            cumulative.append((acc, name))
        # practices differ in size: weights 1, 1.5, 2, ... cycled
        sizes = [1.0 + 0.5 * (i % 4) for i in range(len(spec.practices))]
        size_total = sum(sizes)
        primaries = [
            [s for s in members if s.role in _PRIMARY_ROLES] for members in self.by_practice
        ]
        licensed = [[s for s in members if s.licensed] for members in primaries]
        out = []
        for n in range(spec.patients):
            x, practice = rnd() * size_total, 0
            while practice < len(sizes) - 1 and x >= sizes[practice]:
                x -= sizes[practice]
                practice += 1
            y = rnd()
            payer = next((name for edge, name in cumulative if y < edge), cumulative[-1][1])
            members = self.by_practice[practice]
            # a practice puts licensed staff on patients of payers that count only their time
            preferred = primaries[practice]
            if payer in _LICENSED_ONLY_PAYERS and licensed[practice] and rnd() < 0.8:
                preferred = licensed[practice]
            primary = self._pick_primary(members, preferred)
            team = [primary]
            for _ in range(1 + int(rnd() * 2)):
                other = members[int(rnd() * len(members))]
                if other not in team:
                    team.append(other)
            pid = f"{spec.id_prefix}-pt-{n + 1:06d}"
            practice_id = spec.practices[practice]
            out.append(
                _Patient(
                    patient_id=pid,
                    practice=practice,
                    payer=payer,
                    log_fields=_fragment(
                        {"patient_id": pid, "practice_id": practice_id, "payer": payer}
                    ),
                    void_fields=_fragment({"patient_id": pid, "practice_id": practice_id}),
                    team=tuple(team),
                    acuity=self.rng.gauss(0.0, 1.0),
                )
            )
        return out

    def _pick_primary(self, members: list[_Staff], preferred: list[_Staff]) -> _Staff:
        """Primary care manager: preferably a nurse, MA, care coordinator or CHW."""
        pool = preferred or members
        return pool[int(self.rnd() * len(pool))]

    def _practice_month(self, practice: int, month: str) -> _PracticeMonth:
        zone = self.zones[practice]
        utc = self.utc_style[practice]
        year, mon = parse_month(month)
        days: list[_Day] = []
        last: _Day | None = None
        for d in range(1, calendar.monthrange(year, mon)[1] + 1):
            day = date(year, mon, d)
            naive = (day.toordinal() - _EPOCH_ORDINAL) * 86400
            offset = datetime(year, mon, d, 12, tzinfo=zone).utcoffset()
            off = int(offset.total_seconds()) if offset is not None else 0
            epoch = naive - off
            last = _Day(epoch, epoch, "Z") if utc else _Day(naive, epoch, _offset_suffix(off))
            if day.weekday() < 5 and not _holiday(day):
                days.append(last)
        assert last is not None
        end = int(month_end(month, self.spec.zone_of(self.spec.practices[practice])).timestamp())
        return _PracticeMonth(days or [last], last, end)

    # ---------------------------------------------------------------- formatting

    def _iso(self, seconds: int, suffix: str) -> str:
        minute, second = divmod(seconds, 60)
        text = self.minute_strings.get(minute)
        if text is None:
            if len(self.minute_strings) > 1_000_000:  # bound the cache on very long runs
                self.minute_strings.clear()
            day, rest = divmod(minute, 1440)
            stamp = (date(1970, 1, 1) + timedelta(days=day)).isoformat()
            text = self.minute_strings[minute] = f"{stamp}T{rest // 60:02d}:{rest % 60:02d}"
        return f"{text}:{second:02d}{suffix}"

    def _event_id(self) -> str:
        self.seq += 1
        return f"{self.id_stem}{self.seq:09d}"

    # ---------------------------------------------------------------- the run

    def run(self) -> Iterator[SimEvent]:
        spec = self.spec
        carry: list[SimEvent] = []
        for month in spec.month_list():
            contexts = [self._practice_month(i, month) for i in range(len(spec.practices))]
            batch = carry
            for patient in self.patients:
                before = len(batch)
                self._patient_month(patient, contexts[patient.practice], batch)
                self._enrollment(patient, month, contexts[patient.practice], before, batch)
            batch.sort(key=_AT)  # stable: ties keep generation order (deterministic)
            # every later month's event arrives after the earliest local month end
            watermark = min(c.end for c in contexts)
            cut = bisect_left(batch, watermark, key=_AT)
            yield from islice(batch, cut)
            carry = batch[cut:]
        yield from carry

    def _patient_month(self, p: _Patient, pm: _PracticeMonth, out: list[SimEvent]) -> None:
        spec, rnd = self.spec, self.rnd
        if rnd() >= spec.active:
            return
        first = len(out)
        total = int(
            math.exp(_LOG_MEDIAN_MINUTES + 0.45 * p.acuity + 0.4 * self.rng.gauss(0.0, 1.0))
        )
        total = min(max(total, 5), 420)
        days, team = pm.days, p.team
        nday, nteam, nlen = len(days), len(team), len(_LOG_LENGTHS)
        templates: list[_Template] = []
        remaining = total
        while remaining > 0:
            minutes = _LOG_LENGTHS[int(rnd() * nlen)]
            if remaining - minutes < 5:
                minutes = remaining
            remaining -= minutes
            staff = team[0] if rnd() < 0.65 else team[int(rnd() * nteam)]
            activity = staff.activities[int(rnd() * len(staff.activities))]
            late = rnd() < spec.late
            if late and rnd() < 0.6:  # late logs are mostly about the month's last days
                day = days[nday - 1 - int(rnd() * min(nday, 7))]
            else:
                day = days[int(rnd() * nday)]
            start_min = 450 + int(rnd() * 600)  # 07:30 .. 17:29 local
            self._log(p, pm, staff, activity, day, start_min, minutes, late, "", out, templates)

        if templates and rnd() < spec.overlaps:  # a second staff member on the same call
            base = templates[int(rnd() * len(templates))]
            members = [s for s in self.by_practice[p.practice] if s.staff_id != base.staff_id]
            members = members or self.by_practice[p.practice]
            staff = members[int(rnd() * len(members))]
            activity = staff.activities[int(rnd() * len(staff.activities))]
            day = _Day(base.start_fmt, base.start_epoch, base.suffix)
            shift = int(rnd() * max(1, base.minutes - 4))
            minutes = 5 + int(rnd() * 26)
            late = rnd() < spec.late
            self._log(p, pm, staff, activity, day, shift, minutes, late, "overlap", out, templates)

        if rnd() < spec.midnight:  # starts late on the last day, ends in the next month
            start_min = 23 * 60 + 15 + int(rnd() * 36)
            minutes = 1440 - start_min + 5 + int(rnd() * 20)
            staff = team[0]
            activity = staff.activities[int(rnd() * len(staff.activities))]
            self._log(
                p, pm, staff, activity, pm.last, start_min, minutes, False, "midnight", out,
                templates,
            )  # fmt: skip

        # malformed payloads: a share of *all* events, so rate r = m / (1 - m) per valid one
        expected = (len(out) - first) * self.malformed_rate
        count = int(expected) + (rnd() < expected - int(expected))
        for _ in range(count):
            out.append(self._malformed(p, templates[int(rnd() * len(templates))]))

    def _enrollment(
        self, p: _Patient, month: str, pm: _PracticeMonth, first: int, out: list[SimEvent]
    ) -> None:
        """The enrollment feed's events of a patient-month: consent (first month), a rare
        withdrawal, the month's eligibility attestation, a rare other code billed."""
        spec, rnd = self.spec, self.enroll_rnd
        practice_id = spec.practices[p.practice]
        head = {"patient_id": p.patient_id, "practice_id": practice_id}
        zone = self.zones[p.practice]
        month_start = pm.days[0].epoch

        def emit(event_type: str, at: int, **fields: Any) -> None:
            body = {"event_type": event_type, "schema_version": 1, "event_id": self._enroll_id()}
            body.update(head)
            body.update(fields)
            body["recorded_at"] = self._iso(at, "Z")
            out.append(SimEvent(p.patient_id, _DUMPS(body).encode(), "enrollment", at, event_type))

        if month == spec.start_month and rnd() < spec.consent:
            at = month_start - 86400 * (1 + int(rnd() * 60))
            consented = datetime.fromtimestamp(at, zone).date()
            emit("consent_recorded", at, consent_date=consented.isoformat())
            self.consenting.add(p.patient_id)
        elif p.patient_id in self.consenting and rnd() < spec.withdrawals:
            day = pm.days[int(rnd() * len(pm.days))]
            at = day.epoch + 9 * 3600 + int(rnd() * 8 * 3600)
            withdrawn = datetime.fromtimestamp(at, zone).date()
            emit("consent_withdrawn", at, withdrawn_date=withdrawn.isoformat())
            self.consenting.discard(p.patient_id)
        logs = [e for e in out[first:] if e.kind in ("log", "late") and e.detail == ""]
        if not logs:
            return  # not active this month
        if rnd() < spec.attested:
            day = pm.days[int(rnd() * len(pm.days))]
            at = day.epoch + 8 * 3600 + int(rnd() * 9 * 3600)
            eligible = rnd() >= spec.not_eligible
            emit(
                "eligibility_attested",
                at,
                service_month=month,
                chronic_conditions=2 + int(rnd() * 4) if eligible else 1,
                care_plan=("established", "revised")[int(rnd() * 2)],
                medical_decision_making=("moderate", "high")[int(rnd() * 2)],
            )
        if rnd() < spec.other_codes:
            at = pm.end + 86400 * (1 + int(rnd() * 3))
            if rnd() < 0.5:
                code = ("99490", "99439", "G0556")[int(rnd() * 3)]
                emit("code_billed", at, service_month=month, code=code, time_log_ids=[])
            else:  # TCM billed on one of the month's logs: its time is not counted again
                log = logs[int(rnd() * len(logs))]
                log_id = json.loads(log.value)["event_id"]
                emit("code_billed", at, service_month=month, code="99495", time_log_ids=[log_id])

    def _enroll_id(self) -> str:
        self.enroll_seq += 1
        return f"{self.spec.id_prefix}-en{self.spec.seed}-{self.enroll_seq:09d}"

    def _recorded_delay(self) -> int:
        rnd = self.rnd
        r = rnd()
        if r < 0.6:
            return 30 + int(rnd() * 1800)  # within half an hour
        if r < 0.87:
            return 1800 + int(rnd() * 12600)  # within four hours
        if r < 0.97:
            return 86400 * (1 + int(rnd() * 3)) + int(rnd() * 28800)  # next days
        return 86400 * (3 + int(rnd() * 8)) + int(rnd() * 28800)  # up to ten days

    def _log(
        self,
        p: _Patient,
        pm: _PracticeMonth,
        staff: _Staff,
        activity: str,
        day: _Day,
        start_min: int,
        minutes: int,
        late: bool,
        detail: str,
        out: list[SimEvent],
        templates: list[_Template],
        recorded: int | None = None,
        voidable: bool = True,
    ) -> None:
        rnd = self.rnd
        event_id = self._event_id()
        start_fmt = day.fmt + start_min * 60
        start_epoch = day.epoch + start_min * 60
        end_epoch = start_epoch + minutes * 60
        suffix = day.suffix
        if recorded is None:
            if late:  # days to weeks after the month ended; about half after a 5-day grace
                if rnd() < 0.45:
                    recorded = pm.end + 21600 + int(rnd() * (5 * 86400 - 21600))
                else:
                    recorded = pm.end + 5 * 86400 + int(rnd() * 51 * 86400)
                recorded = max(recorded, end_epoch + 60)
            else:
                recorded = end_epoch + self._recorded_delay()
        r = rnd()
        if r < 0.78:
            duration = f',"minutes":{minutes}'
        elif r < 0.95:
            duration = f',"end":"{self._iso(start_fmt + minutes * 60, suffix)}"'
        else:
            end = self._iso(start_fmt + minutes * 60, suffix)
            duration = f',"minutes":{minutes},"end":"{end}"'
        extra = ""
        agencies = _AGENCIES.get(activity)
        if agencies is not None and rnd() < 0.85:
            extra = f',"agency_contacted":"{agencies[int(rnd() * len(agencies))]}"'
        if rnd() < 0.3:
            extra += f',"note":{_DUMPS(_NOTES[int(rnd() * len(_NOTES))])}'
        fields = staff.full if rnd() < 0.92 else staff.bare
        value = (
            f'{{"event_type":"time_logged","schema_version":1,"event_id":"{event_id}",'
            f'{p.log_fields},{fields},"activity":"{activity}",'
            f'"start":"{self._iso(start_fmt, suffix)}"{duration},'
            f'"recorded_at":"{self._iso(recorded, "Z")}"{extra}}}'
        ).encode()
        kind: EventKind = "late" if late else "log"
        event = SimEvent(p.patient_id, value, kind, recorded, detail)
        out.append(event)
        self._maybe_duplicate(event, out)
        templates.append(
            _Template(value, start_fmt, start_epoch, suffix, minutes, recorded, staff.staff_id)
        )
        if voidable and rnd() < self.spec.voids:
            self._void(p, pm, staff, activity, day, start_min, minutes, event_id, recorded, out,
                       templates)  # fmt: skip

    def _void(
        self,
        p: _Patient,
        pm: _PracticeMonth,
        staff: _Staff,
        activity: str,
        day: _Day,
        start_min: int,
        minutes: int,
        voided_id: str,
        logged_at: int,
        out: list[SimEvent],
        templates: list[_Template],
    ) -> None:
        rnd = self.rnd
        r = rnd()
        if r < 0.7:
            delay = 600 + int(rnd() * 2 * 86400)
        elif r < 0.9:
            delay = 2 * 86400 + int(rnd() * 8 * 86400)
        else:
            delay = 10 * 86400 + int(rnd() * 30 * 86400)
        at = logged_at + delay
        correction = rnd() < self.spec.corrections
        if correction:
            reason = VoidReason.CORRECTION
        else:
            reason = self.void_reasons[int(rnd() * len(self.void_reasons))]
        note = ""
        if rnd() < 0.25:
            note = ',"note":"Voided per staff request"'
        value = (
            f'{{"event_type":"time_log_voided","schema_version":1,"event_id":"{self._event_id()}",'
            f'{p.void_fields},"voided_event_id":"{voided_id}","reason":"{reason.value}",'
            f'"recorded_at":"{self._iso(at, "Z")}"{note}}}'
        ).encode()
        event = SimEvent(p.patient_id, value, "void", at, reason.value)
        out.append(event)
        self._maybe_duplicate(event, out)
        if correction:  # the corrected log follows the void
            change = int(rnd() * 31) - 15 or 5
            fixed = max(5, minutes + change)
            if rnd() < 0.3:
                activity = staff.activities[int(rnd() * len(staff.activities))]
            self._log(
                p, pm, staff, activity, day, start_min, fixed, False, "correction", out,
                templates, recorded=at + 5 + int(rnd() * 115), voidable=False,
            )  # fmt: skip

    def _maybe_duplicate(self, event: SimEvent, out: list[SimEvent]) -> None:
        rnd = self.rnd
        if rnd() >= self.spec.duplicates:
            return
        r = rnd()
        if r < 0.7:
            delay = 1 + int(rnd() * 60)
        elif r < 0.95:
            delay = 60 + int(rnd() * 1800)
        else:
            delay = 3600 + int(rnd() * 5 * 3600)
        out.append(SimEvent(event.key, event.value, "duplicate", event.at + delay, event.kind))

    # ---------------------------------------------------------------- malformed payloads

    def _malformed(self, p: _Patient, base: _Template) -> SimEvent:
        rnd = self.rnd
        variant = _MALFORMED_TABLE[int(rnd() * len(_MALFORMED_TABLE))]
        reason = MALFORMED_VARIANTS[variant][0]
        at = base.at + 1 + int(rnd() * 900)
        data: dict[str, Any] = json.loads(base.value)
        data["event_id"] = self._event_id()
        value = self._mutate(variant, data, base)
        return SimEvent(p.patient_id, value, "malformed", at, variant, reason)

    def _mutate(self, variant: str, data: dict[str, Any], base: _Template) -> bytes:
        rnd = self.rnd

        def pick(options: tuple[str, ...]) -> str:
            return options[int(rnd() * len(options))]

        minutes, start_fmt, suffix = base.minutes, base.start_fmt, base.suffix
        if variant == "truncated_json":
            text = _DUMPS(data)
            return text[: 1 + int(rnd() * (len(text) - 2))].encode()
        if variant == "trailing_comma":
            return (_DUMPS(data)[:-1] + ",}").encode()
        if variant == "latin1_bytes":
            data["note"] = "R\u00fcckruf der Tochter, Medikamente gekl\u00e4rt"
            return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("latin-1")
        if variant == "hl7_text":
            return (
                f"MSH|^~\\&|EHR|{data['practice_id']}|CCM|TALLY|"
                f"{data['recorded_at'][:19].replace('-', '').replace(':', '').replace('T', '')}"
                f"||ADT^A08|{data['event_id']}|P|2.5.1"
            ).encode()
        if variant == "not_an_object":
            return _DUMPS([data]).encode()
        if variant == "unknown_event_type":
            data["event_type"] = "time_log_amended"
        elif variant == "unsupported_schema_version":
            data["schema_version"] = 2
        elif variant == "missing_patient_id":
            del data["patient_id"]
        elif variant == "empty_patient_id":
            data["patient_id"] = ""
        elif variant == "missing_practice_id":
            del data["practice_id"]
        elif variant == "unknown_activity":
            data["activity"] = pick(_UNKNOWN_ACTIVITIES)
        elif variant == "unknown_role":
            data["role"] = pick(_UNKNOWN_ROLES)
        elif variant == "negative_minutes":
            data.pop("end", None)
            data["minutes"] = -minutes if rnd() < 0.7 else 0
        elif variant == "timestamp_without_offset":
            data["start"] = self._iso(start_fmt, "")
            if "end" in data:
                data["end"] = self._iso(start_fmt + minutes * 60, "")
        elif variant == "end_before_start":
            data.pop("minutes", None)
            data["end"] = self._iso(start_fmt - minutes * 60, suffix)
        elif variant == "missing_duration":
            data.pop("minutes", None)
            data.pop("end", None)
        elif variant == "minutes_end_mismatch":
            data["minutes"] = minutes
            data["end"] = self._iso(start_fmt + (minutes + 5 + int(rnd() * 20)) * 60, suffix)
        elif variant == "inconsistent_licensure":
            data["role"] = Role.MA.value
            data["licensed"] = True
        elif variant == "note_too_long":
            size = 4001 + int(rnd() * 3000)
            data["note"] = (_LONG_NOTE * (size // len(_LONG_NOTE) + 1))[:size]
        elif variant == "too_long":
            data.pop("end", None)
            data["minutes"] = 481 + int(rnd() * 600)
        elif variant == "unknown_payer":
            data["payer"] = pick(_UNKNOWN_PAYERS)
        elif variant == "recorded_before_service":
            data.pop("end", None)
            data["minutes"] = max(minutes, 20)
            data["recorded_at"] = self._iso(base.start_epoch + 60, "Z")
        else:  # pragma: no cover - the table and this switch are kept in step by a test
            raise AssertionError(variant)
        return _DUMPS(data).encode()
