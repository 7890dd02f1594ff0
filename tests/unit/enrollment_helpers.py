"""Builders of enrollment-feed events (``ccm.enrollment.v1``) for the unit tests."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from ccm_core.config import CoreConfig, PracticeSettings
from tests.unit.unit_helpers import MARCH, PATIENT, PRACTICE, local

# gates on (the shipped default) for PRACTICE and any other practice
GATED = CoreConfig()
NO_FEED = CoreConfig(default_practice=PracticeSettings(enrollment_feed=False))
THRESHOLD_MET_GATED = CoreConfig(
    default_practice=PracticeSettings(date_of_service_policy="threshold_met")
)


def consent(
    event_id: str,
    on: date = date(2026, 1, 15),
    *,
    practice_id: str = PRACTICE,
    patient_id: str = PATIENT,
    recorded_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "event_type": "consent_recorded",
        "event_id": event_id,
        "patient_id": patient_id,
        "practice_id": practice_id,
        "consent_date": on.isoformat(),
        "recorded_at": (recorded_at or local(1, 9)).isoformat(),
    }


def withdrawal(
    event_id: str,
    on: date,
    *,
    practice_id: str = PRACTICE,
    patient_id: str = PATIENT,
    recorded_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "event_type": "consent_withdrawn",
        "event_id": event_id,
        "patient_id": patient_id,
        "practice_id": practice_id,
        "withdrawn_date": on.isoformat(),
        "recorded_at": (recorded_at or local(28, 9)).isoformat(),
    }


def attestation(
    event_id: str,
    month: str = MARCH,
    *,
    conditions: int = 3,
    care_plan: str = "revised",
    decision_making: str = "moderate",
    practice_id: str = PRACTICE,
    patient_id: str = PATIENT,
    recorded_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "event_type": "eligibility_attested",
        "event_id": event_id,
        "patient_id": patient_id,
        "practice_id": practice_id,
        "service_month": month,
        "chronic_conditions": conditions,
        "care_plan": care_plan,
        "medical_decision_making": decision_making,
        "recorded_at": (recorded_at or local(3, 9)).isoformat(),
    }


def code_billed(
    event_id: str,
    code: str,
    month: str = MARCH,
    *,
    log_ids: list[str] | None = None,
    practice_id: str = "other-practice",
    patient_id: str = PATIENT,
    recorded_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "event_type": "code_billed",
        "event_id": event_id,
        "patient_id": patient_id,
        "practice_id": practice_id,
        "service_month": month,
        "code": code,
        "time_log_ids": log_ids or [],
        "recorded_at": (recorded_at or local(31, 9)).isoformat(),
    }


def enrolled(practice_id: str = PRACTICE, month: str = MARCH) -> list[dict[str, Any]]:
    """Consent and an eligible attestation: what a gated practice needs to bill."""
    return [
        consent(f"consent-{practice_id}", practice_id=practice_id),
        attestation(f"attest-{practice_id}-{month}", month, practice_id=practice_id),
    ]
