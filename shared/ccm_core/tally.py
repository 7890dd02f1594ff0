"""The tally of one patient: its patient-months, the thresholds they reach, their records.

Pure and synchronous: no I/O, no clock, no Kafka. Time comes in on the events (``recorded_at``)
and on close commands (``as_of``). The streaming worker keeps one :class:`PatientLedger` per
patient id in its changelog-backed table and calls :class:`TallyEngine` for each input.

A ledger is mutated in place (a stream applies millions of events; copying state per event
would cost more than the rule itself) and every call returns the outputs it caused.

Rules implemented here (section numbers of ``domain-rules.md``):
- 1  thresholds and add-on units from the payer profile (data), revoked when voids drop a total;
- 2  overlapping intervals count once, across staff (union of intervals, exact to the second);
- 3  exclusions by role, licensure and activity, each naming the rule that excluded the log;
- 4  the practice's local calendar month; a log crossing local midnight belongs to its start;
- 5  identical redelivery counted once, an id reused with other content rejected, voids before
     or after their log, plausibility bound, timely filing;
- 6  month-close record with revisions for late logs and voids.
"""

from __future__ import annotations

import hashlib
import sys
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, TypeVar, overload

import orjson

from .config import CoreConfig, PracticeSettings
from .contracts import (
    ENVELOPES,
    EXCLUDING_CODES,
    OUTPUT_TYPES,
    TIME_NOT_COUNTED_AGAIN_CODES,
    Activity,
    BillingLine,
    BillingRecord,
    CodeBilled,
    ConsentRecorded,
    ConsentStatus,
    ConsentWithdrawn,
    EligibilityAttested,
    EligibilityStatus,
    Enrollment,
    EnrollmentEvent,
    HoldReason,
    LogLine,
    MonthCloseCommand,
    MonthSummary,
    OtherCodeLine,
    OtherPractice,
    Outcome,
    OutputEnvelope,
    Reason,
    RejectedInput,
    RejectedLine,
    Role,
    TallyStatus,
    ThresholdEvent,
    TimeLogged,
    TimeLogVoided,
    VoidReason,
)
from .fhir import charge_item_envelopes
from .months import (
    add_months,
    close_deadline,
    last_day,
    local_date,
    local_month_of_epoch,
    parse_month,
)
from .profiles import PayerProfile

MonthKey = tuple[str, str]
"""(practice_id, service_month)"""

CloseTrigger = Literal["timer", "command", "late_event", "replay"]
OutputKind = Literal["threshold", "billing_record", "rejected", "fhir_chargeitem", "status"]


def stable_id(*parts: object) -> str:
    """A deterministic id: the same parts always give the same 32 hex characters."""
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def epoch(moment: datetime) -> int:
    """Whole seconds since the epoch (floor)."""
    return int(moment.timestamp() // 1)


def fingerprint(event: TimeLogged | TimeLogVoided | EnrollmentEvent) -> str:
    """Content hash: same id + same fingerprint = identical redelivery."""
    return hashlib.blake2b(event.model_dump_json().encode(), digest_size=8).hexdigest()


@overload
def shared(text: str) -> str: ...
@overload
def shared(text: None) -> None: ...
def shared(text: str | None) -> str | None:
    """One copy of strings that repeat across logs (staff, credentials, rules): memory."""
    return None if text is None else sys.intern(text)


FINGERPRINT_NOTE_BITS = 33
"""Low bits of :func:`extra_fingerprint`: 0 (no note) or the note's CRC-32 plus one."""


def extra_fingerprint(recorded_at: int, note: str | None) -> int:
    """What a log's content holds beyond its :class:`LogEntry` fields: time recorded and note,
    packed in one int (recorded_at seconds above a CRC-32 of the note). A Python int has no
    width: any ``recorded_at`` packs and unpacks exactly (the ledger codec stores the two
    parts separately, as JSON integers are only safe up to 64 bits)."""
    crc = 0 if note is None else zlib.crc32(note.encode("utf-8", "surrogatepass")) + 1
    return (recorded_at << FINGERPRINT_NOTE_BITS) | crc


def same_log(entry: LogEntry, event: TimeLogged, tally: MonthTally) -> bool:
    """Is ``event`` an identical redelivery of the stored log (same content, field by field)?"""
    start = int(event.start.timestamp())
    end = int(event.computed_end.timestamp())
    return (
        entry.start == start
        and entry.end == end
        and entry.fingerprint == extra_fingerprint(int(event.recorded_at.timestamp()), event.note)
        and tally.practice_id == event.practice_id
        and tally.payer == event.payer
        and entry.staff_id == event.staff_id
        and entry.staff_name == event.staff_name
        and entry.role is event.role
        and entry.credentials == event.credentials
        and entry.licensed == event.licensed
        and entry.activity is event.activity
        and entry.agency_contacted == event.agency_contacted
    )


@dataclass(slots=True)
class LogEntry:
    """One accepted ``time_logged`` of a patient-month."""

    event_id: str
    fingerprint: int  # extra_fingerprint: recorded_at and note, not kept as fields
    start: int  # epoch seconds
    end: int
    staff_id: str
    staff_name: str | None
    role: Role
    credentials: str | None
    licensed: bool
    activity: Activity
    agency_contacted: str | None
    excluded_by: str | None = None
    voided_by: str | None = None
    void_reason: VoidReason | None = None

    @property
    def counted(self) -> bool:
        return self.excluded_by is None and self.voided_by is None

    @property
    def status(self) -> Literal["counted", "excluded", "voided"]:
        if self.voided_by is not None:
            return "voided"
        return "excluded" if self.excluded_by is not None else "counted"


@dataclass(slots=True)
class VoidEntry:
    """One accepted ``time_log_voided`` (pending in the ledger until its log is seen)."""

    event_id: str
    fingerprint: str  # content hash of the void event
    practice_id: str
    voided_event_id: str
    reason: VoidReason
    recorded_at: int


@dataclass(slots=True)
class MonthTally:
    """One patient's tally for one practice and local calendar month."""

    practice_id: str
    service_month: str
    payer: str
    profile_version: str
    time_zone: str
    payer_fixed: bool = True  # False while only rejected logs opened the month
    logs: dict[str, LogEntry] = field(default_factory=dict)
    starts: list[int] = field(default_factory=list)  # counted intervals, sorted (start, end)
    ends: list[int] = field(default_factory=list)
    reach: int = 0  # latest end of the counted intervals
    qualifying_seconds: int = 0
    level: int = 0  # thresholds currently reached (0 none, 1 entry code, 1+n add-ons)
    reached: dict[int, int] = field(default_factory=dict)  # level -> times reached
    revoked: dict[int, int] = field(default_factory=dict)  # level -> times revoked
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # id, reason, message
    revision: int = -1  # -1 while open; revision of the last record issued once closed
    record_digest: str = ""  # content digest of the last record issued

    @property
    def closed(self) -> bool:
        return self.revision >= 0

    @property
    def qualifying_minutes(self) -> int:
        return self.qualifying_seconds // 60

    @property
    def intervals(self) -> list[tuple[int, int]]:
        """Counted intervals as (start, end) pairs, sorted."""
        return list(zip(self.starts, self.ends, strict=True))

    def add_interval(self, start: int, end: int) -> None:
        """Insert a counted interval and update the union length.

        Logs mostly arrive in service order: an interval sorting after every counted one only
        extends the union past its current reach (O(1)); any other is inserted and the union
        recomputed. Two int lists rather than a list of tuples: 48 bytes less per log.
        """
        starts, ends = self.starts, self.ends
        if not starts or (start, end) >= (starts[-1], ends[-1]):
            reach = self.reach if starts else start
            starts.append(start)
            ends.append(end)
            if end > reach:
                self.qualifying_seconds += end - max(start, reach)
                self.reach = end
        else:
            i = bisect_right(self.intervals, (start, end))
            starts.insert(i, start)
            ends.insert(i, end)
            self.reach = max(self.reach, end)
            self.qualifying_seconds = union_seconds(self.intervals)

    def recount(self) -> None:
        pairs = sorted((e.start, e.end) for e in self.logs.values() if e.counted)
        self.starts = [p[0] for p in pairs]
        self.ends = [p[1] for p in pairs]
        self.reach = max(self.ends, default=0)
        self.qualifying_seconds = union_seconds(pairs)


def union_seconds(intervals: list[tuple[int, int]]) -> int:
    """Length of the union of sorted half-open intervals: overlapping time counts once."""
    return sum(end - start for start, end in merged(intervals))


def merged(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted half-open intervals merged where they overlap or touch."""
    out: list[tuple[int, int]] = []
    for start, end in intervals:
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


NO_ARCHIVE: Mapping[MonthKey, int] = MappingProxyType({})


@dataclass(slots=True)
class EnrollmentEntry:
    """One accepted enrollment event (consent, eligibility, other code billed)."""

    event_id: str
    fingerprint: str  # content hash of the event
    kind: str  # the event_type
    practice_id: str
    day: str | None = None  # consent / withdrawal date, ISO (consent events)
    month: str | None = None  # service month (attestations, codes billed)
    eligible: bool | None = None  # attestations: all criteria met
    code: str | None = None  # codes billed
    log_ids: tuple[str, ...] = ()  # codes billed: time logs never counted again
    recorded_at: int = 0

    def consent_key(self) -> tuple[str, int, bool, str]:
        """Order of consent events: effective date, then recorded, a withdrawal after a consent
        recorded at the same moment, then event id: the last one is in force."""
        return self.day or "", self.recorded_at, self.kind == "consent_withdrawn", self.event_id


NO_ENROLLMENT: Mapping[str, EnrollmentEntry] = MappingProxyType({})


@dataclass(slots=True)
class PatientLedger:
    """All the state of one patient: the table value of the streaming worker."""

    patient_id: str
    partition: int = -1  # input partition of the patient, set by the stream shell (-1: none)
    months: dict[MonthKey, MonthTally] = field(default_factory=dict)
    voids: dict[str, VoidEntry] = field(default_factory=dict)  # void event id -> void
    pending: dict[str, str] = field(default_factory=dict)  # voided log id -> void event id
    # months archived after their filing window (see TallyEngine.prune) -> last revision issued;
    # most ledgers have none: they share one empty read-only mapping (64 bytes saved each)
    archived: Mapping[MonthKey, int] = field(default_factory=lambda: NO_ARCHIVE)
    # enrollment events (ccm.enrollment.v1) by event id; shared empty mapping until the first
    enrollment: Mapping[str, EnrollmentEntry] = field(default_factory=lambda: NO_ENROLLMENT)

    def month_of_log(self, event_id: str) -> MonthKey | None:
        """The patient-month holding a log id (a patient has few months: a scan is cheap and
        saves an index entry per log)."""
        for key, month in self.months.items():
            if event_id in month.logs:
                return key
        return None


class _Own(NamedTuple):
    """A month judged on its own: level, dates, the enrollment facts and its own holds."""

    level: int
    dos: date | None
    checked_on: date
    consent: Literal["active", "withdrawn", "none"]
    consent_id: str | None
    eligibility: Literal["eligible", "not_eligible", "not_attested"]
    attestation_id: str | None
    requirements: list[Literal["consent", "eligibility"]]
    codes: list[EnrollmentEntry]
    holds: list[HoldReason]
    feed: bool


@dataclass(frozen=True, slots=True)
class Standing:
    """A month's billing standing as things stand: level, date of service and holds."""

    level: int
    date_of_service: date | None
    holds: list[HoldReason]
    enrollment: Enrollment | None  # None when assessed without detail
    single_biller: bool
    billing_practice_id: str | None
    others: list[OtherPractice]

    @property
    def billable(self) -> bool:
        return self.level >= 1 and not self.holds


class Output:
    """One message to publish: which stream, its key and its envelope.

    The key is the patient id, except for ``status`` outputs (``patient/practice/month``, the
    compaction key of the status topic). A status output is built lazily: the engine emits
    one per changed patient-month per input, the worker keeps only the last one per key of a
    batch (:func:`coalesce_status`), and only those are ever turned into pydantic models.
    """

    __slots__ = ("_build", "_envelope", "_json", "key", "kind")

    def __init__(
        self,
        kind: OutputKind,
        key: str,
        envelope: OutputEnvelope | None = None,
        build: Callable[[], OutputEnvelope] | None = None,
        json: Callable[[], str] | None = None,
    ) -> None:
        if (envelope is None) == (build is None):
            raise ValueError("give an envelope or a function that builds it")
        self.kind = kind
        self.key = key
        self._envelope = envelope
        self._build = build
        self._json = json  # the same JSON as the envelope's, without building the models

    @property
    def envelope(self) -> OutputEnvelope:
        if self._envelope is None:
            assert self._build is not None
            self._envelope = self._build()
            self._build = None
        return self._envelope

    def to_json(self) -> str:
        if self._envelope is None and self._json is not None:
            return self._json()
        return self.envelope.model_dump_json()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Output):
            return NotImplemented
        return (self.kind, self.key, self.envelope) == (other.kind, other.key, other.envelope)

    __hash__ = None  # type: ignore[assignment]  # mutable cache: not hashable, like before

    def __repr__(self) -> str:
        return f"Output(kind={self.kind!r}, key={self.key!r}, envelope={self.envelope!r})"


def status_key(patient_id: str, practice_id: str, service_month: str) -> str:
    """The status topic's key (its compaction key): one status per patient-month."""
    return f"{patient_id}/{practice_id}/{service_month}"


T = TypeVar("T")


def coalesce_status_by(items: Iterable[T], output_of: Callable[[T], Output]) -> list[T]:
    """:func:`coalesce_status` for items that carry an output (e.g. ``(partition, output)``)."""
    kept: list[T] = []
    seen: set[str] = set()
    for item in reversed(list(items)):
        out = output_of(item)
        if out.kind == "status":
            if out.key in seen:
                continue
            seen.add(out.key)
        kept.append(item)
    kept.reverse()
    return kept


def coalesce_status(outputs: Sequence[Output]) -> list[Output]:
    """Only the last status output of each key, in its place; every other output as it is.

    The engine emits a status per changed patient-month per input; a batch of inputs publishes
    only each patient-month's last one (the status topic is compacted: earlier ones would be
    superseded anyway). The worker calls this once per batch, before publishing.
    """
    return coalesce_status_by(outputs, _identity)


def _identity(out: Output) -> Output:
    return out


@dataclass(slots=True)
class Result:
    outcome: Outcome
    outputs: list[Output]
    reason: Reason | None = None
    message: str = ""
    detail: str = ""  # e.g. the exclusion rule; safe to log (no free text)
    month: MonthKey | None = None


def envelope(
    data: ThresholdEvent | BillingRecord | RejectedInput | TallyStatus,
    event_id: str,
    subject: str,
    time: datetime,
) -> OutputEnvelope:
    """Wrap ``data`` (already validated) in its CloudEvents envelope."""
    cls: Any = ENVELOPES[type(data)]  # validating is faster than model_construct here
    made: OutputEnvelope = cls(
        id=event_id, type=OUTPUT_TYPES[type(data)], subject=subject, time=time, data=data
    )
    return made


class TallyEngine:
    """Applies input events and close commands to ledgers, per the configured rules."""

    def __init__(self, config: CoreConfig | None = None) -> None:
        self.config = config or CoreConfig()

    # ---------------------------------------------------------------- inputs

    def apply(
        self, ledger: PatientLedger, event: TimeLogged | TimeLogVoided | EnrollmentEvent
    ) -> Result:
        """Apply one validated input event to its patient's ledger (mutated in place)."""
        if event.patient_id != ledger.patient_id:
            return self._reject(
                Reason.KEY_MISMATCH, "event patient_id differs from the ledger it was routed to"
            )
        if isinstance(event, TimeLogged):
            result = self._apply_log(ledger, event)
        elif isinstance(event, TimeLogVoided):
            result = self._apply_void(ledger, event)
        else:
            return self._apply_enrollment(ledger, event)
        key = result.month
        if key is not None and (
            result.outputs or result.outcome in _STATUS_OUTCOMES
        ):  # the month changed: its status too
            tally = ledger.months.get(key)
            if (
                tally is not None
                and tally.payer_fixed
                and self.config.profiles.get(tally.payer) is not None
            ):
                result.outputs.append(
                    self.status(ledger.patient_id, tally, event.event_id, event.recorded_at)
                )
        return result

    def _apply_log(self, ledger: PatientLedger, event: TimeLogged) -> Result:
        eid = event.event_id
        known = ledger.month_of_log(eid)
        if known is not None:
            tally = ledger.months[known]
            if same_log(tally.logs[eid], event, tally):
                return Result(Outcome.DUPLICATE, [], month=known)
            return self._reject_in_month(
                ledger,
                known,
                eid,
                Reason.EVENT_ID_CONFLICT,
                "event_id was already used for a log with different content",
                event.recorded_at,
            )
        if eid in ledger.voids:
            return self._reject(
                Reason.EVENT_ID_CONFLICT, "event_id was already used by a void", eid
            )
        if eid in ledger.enrollment:
            return self._reject(
                Reason.EVENT_ID_CONFLICT, "event_id was already used by an enrollment event", eid
            )

        profile = self.config.profiles.get(event.payer)
        if profile is None:
            message = (
                f"payer profile '{event.payer}' is not configured "
                f"(known: {', '.join(self.config.profiles.names())})"
            )
            practice = self.config.practice(event.practice_id)
            if practice is not None:  # rules 6: listed on the month's record when it exists
                at_month: MonthKey = (
                    event.practice_id,
                    local_month_of_epoch(int(event.start.timestamp()), practice.time_zone),
                )
                if at_month in ledger.months:
                    return self._reject_in_month(
                        ledger,
                        at_month,
                        eid,
                        Reason.UNKNOWN_PAYER_PROFILE,
                        message,
                        event.recorded_at,
                    )
            return self._reject(Reason.UNKNOWN_PAYER_PROFILE, message, eid)
        practice = self.config.practice(event.practice_id)
        if practice is None:
            return self._reject(Reason.UNKNOWN_PRACTICE, "practice_id is not configured", eid)
        start = int(event.start.timestamp())
        end = start + event.minutes * 60 if event.minutes else int(event.computed_end.timestamp())
        recorded = int(event.recorded_at.timestamp())
        key: MonthKey = (event.practice_id, local_month_of_epoch(start, practice.time_zone))

        if key in ledger.archived:
            return self._reject(
                Reason.MONTH_ARCHIVED,
                "the patient-month was closed and archived after its timely-filing window",
                eid,
            )
        problem = self._hygiene(practice, start, end, recorded)
        if problem is not None:
            reason, message = problem
            if reason is Reason.PAST_TIMELY_FILING:  # do not open ancient months
                return self._reject(reason, message, eid)
            opened = self._month(ledger, key, event.payer, profile, practice)
            if not opened.logs:  # a rejected log lists itself but does not decide the payer
                opened.payer_fixed = False
            return self._reject_in_month(ledger, key, eid, reason, message, event.recorded_at)

        tally = self._month(ledger, key, event.payer, profile, practice)
        if not tally.payer_fixed:  # the first accepted log decides the month's payer
            tally.payer, tally.profile_version = event.payer, profile.version
            tally.payer_fixed = True
        if tally.payer != event.payer:
            return self._reject_in_month(
                ledger,
                key,
                eid,
                Reason.PAYER_CONFLICT,
                f"the patient-month is billed under '{tally.payer}', the log says '{event.payer}'",
                event.recorded_at,
            )

        entry = LogEntry(
            event_id=eid,
            fingerprint=extra_fingerprint(recorded, event.note),
            start=start,
            end=end,
            staff_id=shared(event.staff_id),
            staff_name=shared(event.staff_name),
            role=event.role,
            credentials=shared(event.credentials),
            licensed=event.licensed,
            activity=event.activity,
            agency_contacted=shared(event.agency_contacted),
            excluded_by=shared(
                profile.exclusion_rule(event.role, event.licensed, event.activity)
                or self._billed_rule(ledger, eid)
            ),
        )
        tally.logs[eid] = entry
        outputs: list[Output] = []
        void_id = ledger.pending.pop(eid, None)
        if void_id is not None and ledger.voids[void_id].practice_id != event.practice_id:
            # the early void named another practice: as if it came after the log, it is
            # rejected (listed on the record) and the log stands
            line = (void_id, Reason.PRACTICE_MISMATCH.value, _OTHER_PRACTICE)
            tally.rejected.append(line)
            void_id = None
        if void_id is not None:  # the void came first: the log arrives cancelled
            void = ledger.voids[void_id]
            entry.voided_by, entry.void_reason = void.event_id, void.reason
            outcome, detail = Outcome.VOIDED, f"voided_by:{void_id}"
        elif entry.excluded_by is not None:
            outcome, detail = Outcome.EXCLUDED, entry.excluded_by
        else:
            outcome, detail = Outcome.COUNTED, ""
            tally.add_interval(start, end)
            outputs += self._thresholds(ledger, tally, profile, eid, event.recorded_at)
        outputs += self._reissue_related(ledger, key, event.recorded_at)
        return Result(outcome, outputs, detail=detail, month=key)

    def _apply_void(self, ledger: PatientLedger, event: TimeLogVoided) -> Result:
        fp = fingerprint(event)
        eid = event.event_id
        seen = ledger.voids.get(eid)
        if seen is not None:
            if seen.fingerprint == fp:
                return Result(
                    Outcome.DUPLICATE, [], month=ledger.month_of_log(seen.voided_event_id)
                )
            return self._reject(
                Reason.EVENT_ID_CONFLICT,
                "event_id was already used for a void with different content",
                eid,
            )
        if ledger.month_of_log(eid) is not None:
            return self._reject(Reason.EVENT_ID_CONFLICT, "event_id was already used by a log", eid)
        if eid in ledger.enrollment:
            return self._reject(
                Reason.EVENT_ID_CONFLICT, "event_id was already used by an enrollment event", eid
            )
        target = event.voided_event_id
        if target in ledger.voids:
            return self._reject(
                Reason.INVALID_FIELD, "voided_event_id names a void, not a log", eid
            )
        key = ledger.month_of_log(target)
        void = VoidEntry(
            event_id=eid,
            fingerprint=fp,
            practice_id=event.practice_id,
            voided_event_id=target,
            reason=event.reason,
            recorded_at=epoch(event.recorded_at),
        )
        if key is None:  # the log has not arrived (yet): it arrives cancelled
            if target in ledger.pending:
                ledger.voids[eid] = void
                return Result(Outcome.DUPLICATE, [], detail="log already has a pending void")
            ledger.voids[eid] = void
            ledger.pending[target] = eid
            return Result(Outcome.VOIDED, [], detail="pending:log not seen yet")
        if key[0] != event.practice_id:
            return self._reject_in_month(
                ledger,
                key,
                eid,
                Reason.PRACTICE_MISMATCH,
                _OTHER_PRACTICE,
                event.recorded_at,
            )
        tally = ledger.months[key]
        entry = tally.logs[target]
        ledger.voids[eid] = void
        if entry.voided_by is not None:
            return Result(Outcome.DUPLICATE, [], detail="log already voided", month=key)
        was_counted = entry.counted
        entry.voided_by, entry.void_reason = eid, event.reason
        outputs: list[Output] = []
        if was_counted:
            tally.recount()
            profile = self._profile_of(tally)
            outputs += self._thresholds(ledger, tally, profile, eid, event.recorded_at)
        outputs += self._reissue_related(ledger, key, event.recorded_at)
        return Result(Outcome.VOIDED, outputs, detail=f"voided:{target}", month=key)

    @staticmethod
    def _hygiene(
        practice: PracticeSettings, start: int, end: int, recorded: int
    ) -> tuple[Reason, str] | None:
        if end - start > practice.max_log_minutes * 60:
            return (
                Reason.DURATION_EXCEEDS_BOUND,
                f"a single log may not exceed {practice.max_log_minutes} minutes",
            )
        # timely filing: calendar months in the practice's zone, computed only near the bound
        if recorded - start > (practice.timely_filing_months * 28 - 2) * 86400:
            tz = practice.time_zone
            months = practice.timely_filing_months
            if local_date(recorded, tz) > add_months(local_date(start, tz), months):
                return (
                    Reason.PAST_TIMELY_FILING,
                    f"recorded more than {months} months after the service",
                )
        if recorded + practice.clock_skew_minutes * 60 < end:
            return (Reason.RECORDED_BEFORE_SERVICE, "recorded_at is before the end of the work")
        return None

    # ---------------------------------------------------------------- enrollment (rules 7, 8)

    @staticmethod
    def _billed_rule(ledger: PatientLedger, event_id: str) -> str | None:
        """``billed_under:<code>`` when the log's time was billed under another code."""
        found = min(
            (
                (e.event_id, e.code)
                for e in ledger.enrollment.values()
                if e.code in TIME_NOT_COUNTED_AGAIN_CODES and event_id in e.log_ids
            ),
            default=None,
        )
        return None if found is None else f"billed_under:{found[1]}"

    def _apply_enrollment(self, ledger: PatientLedger, event: EnrollmentEvent) -> Result:
        """Store a consent, eligibility or other-code event; re-issue closed months it changes.

        The enrollment state is a set of events evaluated when a record or threshold event is
        made, so the order in which enrollment and time-log events arrive does not change the
        final record."""
        eid = event.event_id
        fp = fingerprint(event)
        seen = ledger.enrollment.get(eid)
        if seen is not None:
            if seen.fingerprint == fp:
                return Result(Outcome.DUPLICATE, [])
            return self._reject(
                Reason.EVENT_ID_CONFLICT,
                "event_id was already used for an enrollment event with different content",
                eid,
            )
        if ledger.month_of_log(eid) is not None or eid in ledger.voids:
            return self._reject(
                Reason.EVENT_ID_CONFLICT, "event_id was already used by a log or void", eid
            )
        entry = EnrollmentEntry(
            event_id=eid,
            fingerprint=fp,
            kind=event.event_type,
            practice_id=event.practice_id,
            recorded_at=epoch(event.recorded_at),
        )
        if isinstance(event, ConsentRecorded):
            entry.day = event.consent_date.isoformat()
        elif isinstance(event, ConsentWithdrawn):
            entry.day = event.withdrawn_date.isoformat()
        elif isinstance(event, EligibilityAttested):
            entry.month, entry.eligible = event.service_month, event.eligible
        else:
            assert isinstance(event, CodeBilled)
            entry.month, entry.code = event.service_month, event.code
            entry.log_ids = tuple(sorted(set(event.time_log_ids)))
        if not isinstance(ledger.enrollment, dict):
            ledger.enrollment = {}
        ledger.enrollment[eid] = entry
        at = event.recorded_at
        outputs: list[Output] = []
        if entry.code in TIME_NOT_COUNTED_AGAIN_CODES:
            for log_id in entry.log_ids:
                key = ledger.month_of_log(log_id)
                if key is None:
                    continue  # the log comes later: it arrives excluded
                tally = ledger.months[key]
                log_entry = tally.logs[log_id]
                was_counted = log_entry.counted
                if log_entry.excluded_by is not None and not log_entry.excluded_by.startswith(
                    "billed_under:"
                ):
                    continue  # a profile rule excludes it already, and names itself
                # the code of the lowest event id names the rule, whatever the arrival order
                log_entry.excluded_by = shared(self._billed_rule(ledger, log_id))
                if was_counted and log_entry.voided_by is None:
                    tally.recount()
                    outputs += self._thresholds(ledger, tally, self._profile_of(tally), eid, at)
                    if tally.payer_fixed:  # the month's minutes changed: its status too
                        outputs.append(self.status(ledger.patient_id, tally, eid, at))
        for tally in ledger.months.values():
            if tally.closed:
                outputs += self._issue(ledger, tally, at, "late_event")
        return Result(Outcome.RECORDED, outputs, detail=event.event_type)

    def _reissue_related(self, ledger: PatientLedger, key: MonthKey, at: datetime) -> list[Output]:
        """Re-issue the changed month if closed, and the closed records of other practices of
        the same patient and month (their single-biller standing may have changed)."""
        outputs: list[Output] = []
        for other_key, tally in ledger.months.items():
            if tally.closed and other_key[1] == key[1]:
                outputs += self._issue(ledger, tally, at, "late_event")
        return outputs

    def _consent(
        self, ledger: PatientLedger, practice_id: str, on: date
    ) -> tuple[Literal["active", "withdrawn", "none"], str | None]:
        day = on.isoformat()
        latest: EnrollmentEntry | None = None
        for e in ledger.enrollment.values():
            if (
                e.kind in ("consent_recorded", "consent_withdrawn")
                and e.practice_id == practice_id
                and (e.day or "") <= day
                and (latest is None or e.consent_key() > latest.consent_key())
            ):
                latest = e
        if latest is None:
            return "none", None
        status: Literal["active", "withdrawn"] = (
            "active" if latest.kind == "consent_recorded" else "withdrawn"
        )
        return status, latest.event_id

    @staticmethod
    def _eligibility(
        ledger: PatientLedger, practice_id: str, month: str
    ) -> tuple[Literal["eligible", "not_eligible", "not_attested"], str | None]:
        latest: EnrollmentEntry | None = None
        for e in ledger.enrollment.values():
            if (
                e.kind == "eligibility_attested"
                and e.practice_id == practice_id
                and e.month == month
                and (
                    latest is None
                    or (e.recorded_at, e.event_id) > (latest.recorded_at, latest.event_id)
                )
            ):
                latest = e
        if latest is None:
            return "not_attested", None
        return ("eligible" if latest.eligible else "not_eligible"), latest.event_id

    def _own_standing(self, ledger: PatientLedger, tally: MonthTally) -> _Own:
        """Level, date of service, and what holds the month by its own enrollment data."""
        profile = self._profile_of(tally)
        practice = self.config.practice(tally.practice_id) or self.config.default_practice
        level = profile.level_for(tally.qualifying_minutes)
        dos: date | None = None
        if level >= 1:
            dos = (
                last_day(tally.service_month)
                if practice.date_of_service_policy == "last_day_of_month"
                else self._threshold_met_date(tally, profile)
            )
        checked_on = dos or last_day(tally.service_month)
        requirements = sorted(profile.enrollment_requirements) if practice.enrollment_feed else []
        consent: Literal["active", "withdrawn", "none"] = "none"
        eligibility: Literal["eligible", "not_eligible", "not_attested"] = "not_attested"
        consent_id = attestation_id = None
        codes: list[EnrollmentEntry] = []
        if ledger.enrollment:  # most ledgers of a practice without a feed have none
            consent, consent_id = self._consent(ledger, tally.practice_id, checked_on)
            eligibility, attestation_id = self._eligibility(
                ledger, tally.practice_id, tally.service_month
            )
            codes = sorted(
                (
                    e
                    for e in ledger.enrollment.values()
                    if e.code and e.month == tally.service_month
                ),
                key=lambda e: e.event_id,
            )
        holds: list[HoldReason] = []
        if "consent" in requirements and consent != "active":
            holds.append(HoldReason.NO_CONSENT)
        if "eligibility" in requirements and eligibility == "not_attested":
            holds.append(HoldReason.NOT_ATTESTED)
        if "eligibility" in requirements and eligibility == "not_eligible":
            holds.append(HoldReason.NOT_ELIGIBLE)
        if any(e.code in EXCLUDING_CODES for e in codes):
            holds.append(HoldReason.EXCLUDING_CODE_BILLED)
        return _Own(
            level,
            dos,
            checked_on,
            consent,
            consent_id,
            eligibility,
            attestation_id,
            requirements,
            codes,
            holds,
            practice.enrollment_feed,
        )

    @staticmethod
    def _enrollment(own: _Own) -> Enrollment:
        return Enrollment(
            feed=own.feed,
            requirements=own.requirements,
            consent=ConsentStatus(
                status=own.consent, checked_on=own.checked_on, event_id=own.consent_id
            ),
            eligibility=EligibilityStatus(status=own.eligibility, event_id=own.attestation_id),
            other_codes=[
                OtherCodeLine(
                    event_id=e.event_id,
                    code=e.code or "",
                    practice_id=e.practice_id,
                    effect="excludes_month" if e.code in EXCLUDING_CODES else "time_not_counted",
                    time_log_ids=list(e.log_ids),
                )
                for e in own.codes
            ],
        )

    def assess(self, ledger: PatientLedger, tally: MonthTally, detail: bool = True) -> Standing:
        """Whether a month is billable as things stand, and what holds it (rules 7 and 8).

        ``detail=False`` (threshold events) skips the enrollment and other-practice details a
        record carries."""
        own = self._own_standing(ledger, tally)
        level, dos, holds = own.level, own.dos, own.holds
        profile = self._profile_of(tally)
        others: list[OtherPractice] = []
        candidates: list[tuple[bool, int, str]] = []  # (no consent, threshold met, practice)
        if level >= 1 and not holds:
            met = self._threshold_met_epoch(tally, profile)
            candidates.append((own.consent != "active", met, tally.practice_id))
        for key, other in ledger.months.items():
            if key[1] != tally.service_month or other is tally:
                continue
            o_own = self._own_standing(ledger, other)
            o_level = o_own.level
            if o_level >= 1 and not o_own.holds:
                met = self._threshold_met_epoch(other, self._profile_of(other))
                candidates.append((o_own.consent != "active", met, key[0]))
            if not detail:
                continue
            others.append(
                OtherPractice(
                    practice_id=key[0],
                    qualifying_minutes=other.qualifying_minutes,
                    reached_entry=o_level >= 1,
                    billable=False,  # set below
                )
            )
        chosen = min(candidates)[2] if candidates else None
        eligible = {c[2] for c in candidates}
        if profile.single_biller:
            if level >= 1 and not holds and chosen != tally.practice_id:
                holds = [*holds, HoldReason.OTHER_PRACTICE_BILLS]
            others = [o.model_copy(update={"billable": o.practice_id == chosen}) for o in others]
        else:
            chosen = None
            others = [o.model_copy(update={"billable": o.practice_id in eligible}) for o in others]
        return Standing(
            level=level,
            date_of_service=dos,
            holds=holds,
            enrollment=self._enrollment(own) if detail else None,
            single_biller=profile.single_biller,
            billing_practice_id=chosen,
            others=sorted(others, key=lambda o: o.practice_id),
        )

    @staticmethod
    def _threshold_met_epoch(tally: MonthTally, profile: PayerProfile) -> int:
        """The instant (service time) the month's union of intervals reached entry minutes."""
        need = profile.entry_minutes * 60
        done = 0
        for start, end in merged(tally.intervals):
            if done + (end - start) >= need:
                return start + (need - done)
            done += end - start
        return sys.maxsize

    # ---------------------------------------------------------------- unreadable logs (rule 6)

    def list_unreadable(
        self,
        ledger: PatientLedger,
        practice_id: str,
        start: datetime,
        payer: str | None,
        event_id: str,
        reason: Reason,
        message: str,
        at: datetime,
    ) -> list[Output]:
        """List a log that failed validation on its month's record (rules 6), when its patient,
        practice and start are readable: the month must be open already, or the payer named
        must be a configured profile (a record needs one). A closed month is re-issued."""
        practice = self.config.practice(practice_id)
        if practice is None:
            return []
        key: MonthKey = (practice_id, local_month_of_epoch(epoch(start), practice.time_zone))
        if key in ledger.archived:
            return []
        if key not in ledger.months:
            profile = self.config.profiles.get(payer) if payer else None
            if profile is None or payer is None:
                return []
            opened = self._month(ledger, key, payer, profile, practice)
            opened.payer_fixed = False
        return self._reject_in_month(ledger, key, event_id, reason, message, at).outputs

    # ---------------------------------------------------------------- months and thresholds

    def _profile_of(self, tally: MonthTally) -> PayerProfile:
        profile = self.config.profiles.get(tally.payer)
        if profile is None:  # a profile removed from configuration after the month opened
            raise LookupError(f"payer profile {tally.payer!r} is no longer configured")
        return profile

    @staticmethod
    def _month(
        ledger: PatientLedger,
        key: MonthKey,
        payer: str,
        profile: PayerProfile,
        practice: PracticeSettings,
    ) -> MonthTally:
        tally = ledger.months.get(key)
        if tally is None:
            tally = MonthTally(
                practice_id=key[0],
                service_month=key[1],
                payer=payer,
                profile_version=profile.version,
                time_zone=practice.time_zone,
            )
            ledger.months[key] = tally
        return tally

    def _thresholds(
        self,
        ledger: PatientLedger,
        tally: MonthTally,
        profile: PayerProfile,
        trigger: str,
        at: datetime,
    ) -> list[Output]:
        """Threshold events for a change of level: reached upwards, revoked downwards."""
        patient_id = ledger.patient_id
        new = profile.level_for(tally.qualifying_minutes)
        old = tally.level
        if new == old:
            return []
        tally.level = new
        standing = self.assess(ledger, tally, detail=False)
        if new > old:
            changes = [("reached", lvl) for lvl in range(old + 1, new + 1)]
        else:
            changes = [("revoked", lvl) for lvl in range(old, new, -1)]
        outputs = []
        for kind, lvl in changes:
            counter = tally.reached if kind == "reached" else tally.revoked
            counter[lvl] = occurrence = counter.get(lvl, 0) + 1
            code, unit = profile.code_unit(lvl)
            data = ThresholdEvent(
                kind="reached" if kind == "reached" else "revoked",
                patient_id=patient_id,
                practice_id=tally.practice_id,
                service_month=tally.service_month,
                payer=tally.payer,
                profile_version=tally.profile_version,
                code=code,
                unit=unit,
                threshold_minutes=profile.threshold_minutes(lvl),
                qualifying_minutes=tally.qualifying_minutes,
                triggering_event_id=trigger,
                occurrence=occurrence,
                month_closed=tally.closed,
                billable=standing.billable,
                hold_reasons=standing.holds,
            )
            oid = stable_id(
                "threshold",
                patient_id,
                tally.practice_id,
                tally.service_month,
                code,
                unit,
                kind,
                occurrence,
            )
            subject = f"{patient_id}/{tally.practice_id}/{tally.service_month}"
            outputs.append(Output("threshold", patient_id, envelope(data, oid, subject, at)))
        return outputs

    # ---------------------------------------------------------------- close and records

    def close(
        self,
        ledger: PatientLedger,
        command: MonthCloseCommand,
        trigger: CloseTrigger = "command",
    ) -> list[Output]:
        """Close the months a command names; months already closed are left as they are."""
        outputs: list[Output] = []
        for key, tally in ledger.months.items():
            if tally.closed or not self._targets(command, key, tally):
                continue
            outputs += self._issue(ledger, tally, command.as_of, trigger)
            outputs.append(self._close_status(ledger.patient_id, tally, command.as_of, trigger))
        return outputs

    def _targets(self, command: MonthCloseCommand, key: MonthKey, tally: MonthTally) -> bool:
        if command.mode == "month":
            return key == (command.practice_id, command.service_month)
        practice = self.config.practice(key[0]) or self.config.default_practice
        deadline = close_deadline(tally.service_month, tally.time_zone, practice.close_grace_days)
        return deadline <= command.as_of

    def close_all(self, ledger: PatientLedger, as_of: datetime) -> list[Output]:
        """Close every open month of the ledger (replay's end of input)."""
        outputs: list[Output] = []
        for tally in ledger.months.values():
            if not tally.closed:
                outputs += self._issue(ledger, tally, as_of, "replay")
                outputs.append(self._close_status(ledger.patient_id, tally, as_of, "replay"))
        return outputs

    def retention_deadline(self, tally: MonthTally) -> datetime:
        """When a closed month may be archived: the close deadline of the month
        ``timely_filing_months`` later. By then no log of the month can be filed in time, so
        nothing can change its record any more."""
        practice = self.config.practice(tally.practice_id) or self.config.default_practice
        year, month = parse_month(tally.service_month)
        later = add_months(date(year, month, 1), practice.timely_filing_months)
        return close_deadline(
            f"{later.year:04d}-{later.month:02d}", tally.time_zone, practice.close_grace_days
        )

    def prune(self, ledger: PatientLedger, as_of: datetime) -> int:
        """Archive the closed months whose retention deadline has passed: the month's logs,
        intervals and the voids of its logs are dropped, and a marker (the month and its last
        revision) is kept so that a log for it is rejected (``month_archived``) instead of
        opening the month again. Returns the number of months archived."""
        archived = 0
        for key, tally in list(ledger.months.items()):
            if not tally.closed or self.retention_deadline(tally) > as_of:
                continue
            logs = tally.logs
            for void_id, void in list(ledger.voids.items()):
                if void.voided_event_id in logs:
                    del ledger.voids[void_id]
            ledger.archived = {**ledger.archived, key: tally.revision}
            del ledger.months[key]
            archived += 1
        return archived

    # ---------------------------------------------------------------- status feed

    def status(self, patient_id: str, tally: MonthTally, trigger: str, at: datetime) -> Output:
        """The month's current status as a (lazily built) ``status`` output.

        The values are taken now (the ledger changes in place afterwards); the pydantic models
        are built only if the output is published. The id is deterministic: the month, the
        input (or close) that caused the status and the state it shows.
        """
        snapshot = (
            patient_id,
            tally.practice_id,
            tally.service_month,
            tally.time_zone,
            tally.payer,
            tally.profile_version,
            tally.qualifying_seconds,
            tally.level,
            len(tally.logs),
            tally.revision,
            trigger,
            at,
        )
        key = f"{patient_id}/{tally.practice_id}/{tally.service_month}"  # status_key
        profile = self._profile_of(tally)
        return Output(
            "status",
            key,
            build=partial(_status_envelope, profile, snapshot),
            json=partial(_status_json, profile, snapshot),
        )

    def _close_status(
        self, patient_id: str, tally: MonthTally, at: datetime, trigger: CloseTrigger
    ) -> Output:
        return self.status(patient_id, tally, f"close:{trigger}:{at.isoformat()}", at)

    def _reissue(self, ledger: PatientLedger, tally: MonthTally, at: datetime) -> list[Output]:
        """A closed month that changed is re-issued as a new revision."""
        if not tally.closed:
            return []
        return self._issue(ledger, tally, at, "late_event")

    def _issue(
        self, ledger: PatientLedger, tally: MonthTally, at: datetime, trigger: CloseTrigger
    ) -> list[Output]:
        patient_id = ledger.patient_id
        # The digest covers the content only: a re-issue happens when the content changed.
        draft = BillingRecord.model_validate(
            {
                **self.record_body(patient_id, tally, ledger),
                "revision": 0,
                "close_trigger": "replay",
                "closed_at": _EPOCH,
            }
        )
        digest = hashlib.blake2b(draft.model_dump_json().encode(), digest_size=16).hexdigest()
        if tally.closed and digest == tally.record_digest:
            return []
        tally.revision += 1
        tally.record_digest = digest
        record = draft.model_copy(
            update={"revision": tally.revision, "close_trigger": trigger, "closed_at": at}
        )
        oid = stable_id("record", record.record_id, tally.revision)
        subject = f"{patient_id}/{tally.practice_id}/{tally.service_month}"
        outputs = [Output("billing_record", patient_id, envelope(record, oid, subject, at))]
        # the same revision as FHIR ChargeItems, one per line; a re-issue supersedes the
        # profile's codes it no longer bills (ccm_core.fhir explains why all of them)
        profile = self._profile_of(tally)
        superseded = (profile.entry_code, profile.addon_code) if record.revision > 0 else ()
        outputs += [
            Output("fhir_chargeitem", patient_id, item)
            for item in charge_item_envelopes(record, subject, superseded)
        ]
        return outputs

    def record_body(
        self, patient_id: str, tally: MonthTally, ledger: PatientLedger | None = None
    ) -> dict[str, object]:
        """Everything a billing record says about a month, except revision and close data.

        ``ledger`` (the patient's) brings the enrollment events and the other practices of the
        month; without it the record is judged on the month alone."""
        profile = self._profile_of(tally)
        practice = self.config.practice(tally.practice_id) or self.config.default_practice
        standing = self.assess(ledger or PatientLedger(patient_id, months={}), tally)
        level = standing.level
        lines = []
        if level >= 1:
            lines.append(BillingLine(code=profile.entry_code, units=1))
        if level >= 2:
            lines.append(BillingLine(code=profile.addon_code, units=level - 1))
        policy = practice.date_of_service_policy
        dos = standing.date_of_service
        counted = [e for e in tally.logs.values() if e.counted]
        counted_minutes = sum(e.end - e.start for e in counted) // 60
        by_rule_seconds: dict[str, int] = {}
        for e in tally.logs.values():
            if e.excluded_by is not None and e.voided_by is None:
                by_rule_seconds[e.excluded_by] = (
                    by_rule_seconds.get(e.excluded_by, 0) + e.end - e.start
                )
        by_rule = {rule: secs // 60 for rule, secs in by_rule_seconds.items()}
        max_level = profile.max_level()
        to_next = (
            None
            if max_level is not None and level >= max_level
            else profile.threshold_minutes(level + 1) - tally.qualifying_minutes
        )
        return {
            "record_id": stable_id("record", patient_id, tally.practice_id, tally.service_month),
            "patient_id": patient_id,
            "practice_id": tally.practice_id,
            "service_month": tally.service_month,
            "time_zone": tally.time_zone,
            "payer": tally.payer,
            "profile_version": tally.profile_version,
            "billable": standing.billable,
            "lines": lines if standing.billable else [],
            "held_lines": [] if standing.billable else lines,
            "hold_reasons": standing.holds,
            "enrollment": standing.enrollment,
            "single_biller": standing.single_biller,
            "billing_practice_id": standing.billing_practice_id,
            "other_practices": standing.others,
            "date_of_service": dos,
            "date_of_service_policy": policy,
            "qualifying_minutes": tally.qualifying_minutes,
            "qualifying_seconds": tally.qualifying_seconds,
            "counted_log_minutes": counted_minutes,
            "overlap_minutes": max(0, counted_minutes - tally.qualifying_minutes),
            "excluded_minutes": sum(by_rule_seconds.values()) // 60,
            "excluded_minutes_by_rule": dict(sorted(by_rule.items())),
            "minutes_to_next_threshold": to_next,
            "contributing_event_ids": sorted(e.event_id for e in counted),
            "logs": [_log_line(e) for e in sorted(tally.logs.values(), key=_log_order)],
            "rejected": [
                RejectedLine(event_id=i, reason=Reason(r), message=m)
                for i, r, m in sorted(tally.rejected)
            ],
        }

    def summaries(self, ledger: PatientLedger) -> list[MonthSummary]:
        """The current tally of each of the patient's months (look-up endpoint)."""
        out = []
        for tally in ledger.months.values():
            profile = self._profile_of(tally)
            level = tally.level
            lines = []
            if level >= 1:
                lines.append(BillingLine(code=profile.entry_code, units=1))
            if level >= 2:
                lines.append(BillingLine(code=profile.addon_code, units=level - 1))
            max_level = profile.max_level()
            at_cap = max_level is not None and level >= max_level
            code, unit = profile.code_unit(level + 1)
            out.append(
                MonthSummary(
                    patient_id=ledger.patient_id,
                    practice_id=tally.practice_id,
                    service_month=tally.service_month,
                    payer=tally.payer,
                    qualifying_minutes=tally.qualifying_minutes,
                    codes_reached=lines,
                    next_threshold=None if at_cap else f"{code} unit {unit}",
                    minutes_to_next_threshold=None
                    if at_cap
                    else profile.threshold_minutes(level + 1) - tally.qualifying_minutes,
                    logs=len(tally.logs),
                    billable=(standing := self.assess(ledger, tally, detail=False)).billable,
                    hold_reasons=standing.holds,
                    closed=tally.closed,
                    revision=tally.revision if tally.closed else None,
                )
            )
        return sorted(out, key=lambda m: (m.service_month, m.practice_id))

    @staticmethod
    def _threshold_met_date(tally: MonthTally, profile: PayerProfile) -> date:
        """Local date on which the service time reached the entry threshold."""
        need = profile.entry_minutes * 60
        done = 0
        for start, end in merged(tally.intervals):
            if done + (end - start) >= need:
                # a log crossing local midnight at month end stays in its start month
                met = local_date(start + (need - done), tally.time_zone)
                return min(met, last_day(tally.service_month))
            done += end - start
        return last_day(tally.service_month)

    # ---------------------------------------------------------------- rejections

    @staticmethod
    def _reject(reason: Reason, message: str, event_id: str = "") -> Result:
        return Result(Outcome.REJECTED, [], reason=reason, message=message, detail=event_id)

    def _reject_in_month(
        self,
        ledger: PatientLedger,
        key: MonthKey,
        event_id: str,
        reason: Reason,
        message: str,
        at: datetime,
    ) -> Result:
        """A rejection that belongs to a known patient-month is also listed on its record."""
        tally = ledger.months[key]
        line = (event_id, reason.value, message)
        outputs: list[Output] = []
        if line not in tally.rejected:
            tally.rejected.append(line)
            outputs = self._reissue(ledger, tally, at)
        result = self._reject(reason, message, event_id)
        return Result(result.outcome, outputs, reason, message, event_id, key)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATUS_OUTCOMES = frozenset({Outcome.COUNTED, Outcome.EXCLUDED, Outcome.VOIDED})
_OTHER_PRACTICE = "the voided log belongs to another practice"


def _log_order(entry: LogEntry) -> tuple[int, int, str]:
    return entry.start, entry.end, entry.event_id


def _log_line(e: LogEntry) -> LogLine:
    return LogLine(
        event_id=e.event_id,
        staff_id=e.staff_id,
        staff_name=e.staff_name,
        role=e.role,
        credentials=e.credentials,
        licensed=e.licensed,
        activity=e.activity,
        start=datetime.fromtimestamp(e.start, UTC),
        end=datetime.fromtimestamp(e.end, UTC),
        minutes=(e.end - e.start) // 60,
        agency_contacted=e.agency_contacted,
        status=e.status,
        excluded_by=e.excluded_by,
        voided_by=e.voided_by,
        void_reason=e.void_reason,
    )


StatusSnapshot = tuple[str, str, str, str, str, str, int, int, int, int, str, datetime]
"""What a status says, copied out of a :class:`MonthTally` when it is emitted (a tuple: the
engine emits one per changed month per input, most are never published)."""


def _status_parts(
    profile: PayerProfile, snapshot: StatusSnapshot
) -> tuple[dict[str, Any], str, str, datetime]:
    """The status data (as plain JSON-able values, in the model's field order), its id, its
    subject and its time."""
    (
        patient_id,
        practice_id,
        service_month,
        time_zone,
        payer,
        profile_version,
        qualifying_seconds,
        level,
        logs,
        revision,
        trigger,
        at,
    ) = snapshot
    minutes = qualifying_seconds // 60
    lines = []
    if level >= 1:
        lines.append({"code": profile.entry_code, "units": 1})
    if level >= 2:
        lines.append({"code": profile.addon_code, "units": level - 1})
    max_level = profile.max_level()
    shown = max(level + 2, 2)
    if max_level is not None:
        shown = min(shown, max_level)
    thresholds: list[dict[str, Any]] = []
    for lvl in range(1, shown + 1):
        code, unit = profile.code_unit(lvl)
        thresholds.append(
            {
                "code": code,
                "unit": unit,
                "minutes": profile.threshold_minutes(lvl),
                "reached": lvl <= level,
            }
        )
    at_cap = max_level is not None and level >= max_level
    following = None if at_cap else thresholds[level]
    closed = revision >= 0
    data = {
        "patient_id": patient_id,
        "practice_id": practice_id,
        "service_month": service_month,
        "time_zone": time_zone,
        "payer": payer,
        "profile_version": profile_version,
        "qualifying_minutes": minutes,
        "codes_reached": lines,
        "thresholds": thresholds,
        "next_threshold": following,
        "minutes_to_next_threshold": None if following is None else following["minutes"] - minutes,
        "logs": logs,
        "closed": closed,
        "revision": revision if closed else None,
        "billable": None,
    }
    oid = stable_id(
        "status",
        patient_id,
        practice_id,
        service_month,
        trigger,
        qualifying_seconds,
        level,
        logs,
        revision,
    )
    return data, oid, f"{patient_id}/{practice_id}/{service_month}", at


def _status_envelope(profile: PayerProfile, snapshot: StatusSnapshot) -> OutputEnvelope:
    data, oid, subject, at = _status_parts(profile, snapshot)
    return envelope(TallyStatus.model_validate(data), oid, subject, at)


_STATUS_TYPE = OUTPUT_TYPES[TallyStatus]


def _status_json(profile: PayerProfile, snapshot: StatusSnapshot) -> str:
    """The status envelope's JSON without building its pydantic models (the worker publishes
    a status per changed patient-month per batch: the models cost most of it). The same
    bytes as ``model_dump_json`` of :func:`_status_envelope` (a unit test compares them)."""
    data, oid, subject, at = _status_parts(profile, snapshot)
    body = {
        "specversion": "1.0",
        "id": oid,
        "source": "ccm-tally",
        "type": _STATUS_TYPE,
        "subject": subject,
        "time": at,
        "datacontenttype": "application/json",
        "data": data,
    }
    return orjson.dumps(body, option=orjson.OPT_UTC_Z).decode()
