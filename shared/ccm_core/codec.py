"""Compact, versioned serialisation of a :class:`PatientLedger` (the changelog value).

Positional JSON arrays rather than objects: a patient-month with twenty logs stays a few KB on
the changelog and decodes without per-field key look-ups. ``v`` guards the layout; a reader
refuses a layout it does not know rather than guessing.

Every integer written is a JSON integer within 64 bits whatever the timestamps (layout 3 stores
a log's fingerprint as its two parts: layouts 1 and 2 packed ``recorded_at << 33`` into one
integer, which no longer fits 64 bits from 2038-01-19T03:14:08Z on, nor before 1901-12-13).
"""

from __future__ import annotations

from typing import Any

import orjson

from .contracts import Activity, Role, VoidReason
from .tally import (
    FINGERPRINT_NOTE_BITS,
    EnrollmentEntry,
    LogEntry,
    MonthTally,
    PatientLedger,
    VoidEntry,
    shared,
)

# Layout 2 added archived months ("ar"). Layout 3 is one layout for two changes: a log's
# fingerprint as [recorded_at, note crc] and enrollment events ("en").
LAYOUT_VERSION = 3
KNOWN_LAYOUTS = (1, 2, LAYOUT_VERSION)  # all still load
_NOTE_MASK = (1 << FINGERPRINT_NOTE_BITS) - 1
# enum members by value: a dict look-up, not ``Enum.__call__`` (the RocksDB store decodes a
# ledger on every cache miss: the enum calls were 7 % of a worker's time)
_ROLES = {m.value: m for m in Role}
_ACTIVITIES = {m.value: m for m in Activity}
_VOID_REASONS = {m.value: m for m in VoidReason}


def _log(e: LogEntry) -> list[Any]:
    return [
        e.event_id,
        [e.fingerprint >> FINGERPRINT_NOTE_BITS, e.fingerprint & _NOTE_MASK],
        e.start,
        e.end,
        e.staff_id,
        e.staff_name,
        e.role.value,
        e.credentials,
        e.licensed,
        e.activity.value,
        e.agency_contacted,
        e.excluded_by,
        e.voided_by,
        e.void_reason.value if e.void_reason else None,
    ]


def _fingerprint(value: Any) -> int:
    """Layout 3 writes ``[recorded_at, note crc]``; layouts 1 and 2 the packed integer."""
    if isinstance(value, list):
        recorded, crc = value
        return int((recorded << FINGERPRINT_NOTE_BITS) | crc)
    return int(value)


def _unlog(a: list[Any]) -> LogEntry:
    return LogEntry(
        a[0],
        _fingerprint(a[1]),
        a[2],
        a[3],
        shared(a[4]),
        shared(a[5]),
        _ROLES.get(a[6]) or Role(a[6]),
        shared(a[7]),
        a[8],
        _ACTIVITIES.get(a[9]) or Activity(a[9]),
        shared(a[10]),
        shared(a[11]),
        a[12],
        (_VOID_REASONS.get(a[13]) or VoidReason(a[13])) if a[13] else None,
    )


def _month(m: MonthTally) -> list[Any]:
    return [
        m.practice_id,
        m.service_month,
        m.payer,
        m.profile_version,
        m.time_zone,
        [_log(e) for e in m.logs.values()],
        m.qualifying_seconds,
        m.level,
        list(m.reached.items()),
        list(m.revoked.items()),
        [list(r) for r in m.rejected],
        m.revision,
        m.record_digest,
        m.payer_fixed,
    ]


def _unmonth(a: list[Any]) -> MonthTally:
    logs = [_unlog(x) for x in a[5]]
    m = MonthTally(
        practice_id=a[0],
        service_month=a[1],
        payer=a[2],
        profile_version=a[3],
        time_zone=a[4],
        logs={e.event_id: e for e in logs},
        qualifying_seconds=a[6],
        level=a[7],
        reached={int(k): v for k, v in a[8]},
        revoked={int(k): v for k, v in a[9]},
        rejected=[(r[0], r[1], r[2]) for r in a[10]],
        revision=a[11],
        record_digest=a[12],
        payer_fixed=a[13],
    )
    m.recount()  # derived: counted intervals and their union
    return m


def ledger_to_dict(ledger: PatientLedger) -> dict[str, Any]:
    return {
        "v": LAYOUT_VERSION,
        "p": ledger.patient_id,
        "pt": ledger.partition,
        "m": [_month(m) for m in ledger.months.values()],
        "vo": [
            [
                v.event_id,
                v.fingerprint,
                v.practice_id,
                v.voided_event_id,
                v.reason.value,
                v.recorded_at,
            ]
            for v in ledger.voids.values()
        ],
        "pe": list(ledger.pending.items()),
        "ar": [
            [practice, month, revision] for (practice, month), revision in ledger.archived.items()
        ],
        "en": [
            [
                e.event_id,
                e.fingerprint,
                e.kind,
                e.practice_id,
                e.day,
                e.month,
                e.eligible,
                e.code,
                list(e.log_ids),
                e.recorded_at,
            ]
            for e in ledger.enrollment.values()
        ],
    }


def ledger_from_dict(data: dict[str, Any]) -> PatientLedger:
    if data.get("v") not in KNOWN_LAYOUTS:
        raise ValueError(f"unknown ledger layout {data.get('v')!r}")
    ledger = PatientLedger(data["p"], partition=data["pt"])
    for raw in data["m"]:
        month = _unmonth(raw)
        ledger.months[(month.practice_id, month.service_month)] = month
    ledger.voids = {
        v[0]: VoidEntry(v[0], v[1], v[2], v[3], VoidReason(v[4]), v[5]) for v in data["vo"]
    }
    ledger.pending = dict(data["pe"])
    if data.get("ar"):
        ledger.archived = {(a[0], a[1]): a[2] for a in data["ar"]}
    if data.get("en"):
        ledger.enrollment = {
            e[0]: EnrollmentEntry(e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7], tuple(e[8]), e[9])
            for e in data["en"]
        }
    return ledger


def dumps(ledger: PatientLedger) -> bytes:
    return orjson.dumps(ledger_to_dict(ledger))


def loads(raw: bytes) -> PatientLedger:
    return ledger_from_dict(orjson.loads(raw))
