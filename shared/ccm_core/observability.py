"""Metric definitions (prometheus-client) and structured logging (structlog).

Metric names follow Prometheus conventions: base units (seconds), ``_total`` counters, and no
patient id or other PHI as a label. Log events carry ids and outcomes, never note text.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, get_args

import structlog
from prometheus_client import Counter, Gauge, Histogram

from .contracts import Outcome, Reason
from .profiles import ProfileSet, load_profiles
from .tally import CloseTrigger

EVENTS = Counter(
    "ccm_events_total",
    "Input events by outcome (counted, excluded, duplicate, voided, rejected).",
    ["outcome"],
)
REJECTIONS = Counter("ccm_rejections_total", "Rejected input events by reason code.", ["reason"])
THRESHOLDS = Counter(
    "ccm_thresholds_total", "Threshold events published, by CPT code and kind.", ["code", "kind"]
)
RECORDS = Counter(
    "ccm_billing_records_total",
    "Billing records published, by trigger (timer, command, late_event).",
    ["trigger"],
)
RECORD_LINES = Counter(
    "ccm_billing_units_total", "Units on published billing records, by CPT code.", ["code"]
)
PROCESSING = Histogram(
    "ccm_event_processing_seconds",
    "Time to apply one batch of input events and publish its outputs, per event.",
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
END_TO_END = Histogram(
    "ccm_event_age_seconds",
    "Age of an input event (Kafka timestamp to outputs published).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SIZE = Histogram(
    "ccm_batch_events",
    "Input events per processed batch.",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
MONTH_CLOSE = Histogram(
    "ccm_month_close_duration_seconds",
    "Time to close the due months of one partition and publish their records.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
PATIENT_MONTHS = Gauge(
    "ccm_patient_months",
    "Patient-months in this worker's table by state: open, closed, archived (a marker only).",
    ["state"],
)
PATIENTS = Gauge("ccm_patients", "Patient ledgers held by this worker (active partitions).")
CONSUMER_LAG = Gauge(
    "ccm_consumer_lag_messages", "Messages not yet processed, by input partition.", ["partition"]
)
REROUTED = Counter(
    "ccm_rerouted_records_total",
    "Input records that arrived off their patient's partition (a producer with another "
    "partitioner) and were forwarded there.",
    ["topic"],
)
ASSIGNED_PARTITIONS = Gauge("ccm_assigned_partitions", "Input partitions assigned to this worker.")


MONTH_STATES = ("open", "closed", "archived")
THRESHOLD_KINDS = ("reached", "revoked")


def profile_codes(profiles: ProfileSet) -> set[str]:
    """Every CPT code the configured payer profiles can bill."""
    codes: set[str] = set()
    for name in profiles.names():
        profile = profiles.get(name)
        if profile is not None:
            codes |= {profile.entry_code, profile.addon_code}
    return codes


def initialize_labels(codes: Iterable[str] = ()) -> None:
    """Create every labelled series whose label values are known in advance, at zero, so a
    dashboard panel or an alert's ``rate()`` has a series before the first event of its kind
    (``ccm_rejections_total{reason="month_archived"}`` is 0, not absent). Idempotent.

    Done at import for the built-in payer profiles' codes; a worker that loads extra profiles
    calls it again with ``profile_codes(config.profiles)``. ``ccm_consumer_lag_messages`` is the
    one exception: its ``partition`` label exists only for partitions the worker is assigned.
    """
    for outcome in Outcome:
        EVENTS.labels(outcome.value)
    for reason in Reason:
        REJECTIONS.labels(reason.value)
    for trigger in get_args(CloseTrigger):
        RECORDS.labels(trigger)
    for state in MONTH_STATES:
        PATIENT_MONTHS.labels(state)
    for code in sorted(codes):
        RECORD_LINES.labels(code)
        for kind in THRESHOLD_KINDS:
            THRESHOLDS.labels(code, kind)


initialize_labels(profile_codes(load_profiles()))


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """structlog to stderr, JSON lines by default; stdlib logging (aiokafka, aiohttp) joined in."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
