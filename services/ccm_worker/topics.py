"""Explicit topic creation: every topic co-partitioned on patient id; the changelog and the
status feed compacted."""

from __future__ import annotations

from ccm_core.asyncapi import MONTH_CLOSE_RETENTION_MS, STATUS_SEGMENT_MS
from ccm_core.settings import Settings
from ccm_localkafka.broker import create_topics_sync

from .app import changelog_topic_name
from .kafka_security import aiokafka_kwargs


def topic_plan(settings: Settings) -> tuple[dict[str, int], set[str]]:
    """{topic: partitions} and the compacted ones. Every topic is co-partitioned on patient id."""
    t = settings.topics
    n = settings.partitions
    plan = {
        t.timelog: n,
        t.month_close: n,
        t.enrollment: n,
        t.threshold: n,
        t.billing_record: n,
        t.dlq: n,
        t.fhir_chargeitem: n,
        t.tally_status: n,
        changelog_topic_name(settings): n,
    }
    return plan, {changelog_topic_name(settings), t.tally_status}


def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; return the names created now."""
    plan, compacted = topic_plan(settings)
    # the control topic gets a timer tick per partition a minute: keep a week of it
    week = str(MONTH_CLOSE_RETENTION_MS)  # also in docs/asyncapi.yaml
    # the changelog gets one record per changed patient per batch; only closed segments are
    # compacted, so roll them often enough that recovery reads little beyond the live ledgers
    changelog = {
        "segment.bytes": str(64 * 1024 * 1024),
        "segment.ms": str(6 * 3600 * 1000),
        "min.cleanable.dirty.ratio": "0.2",
    }
    # the status feed: a record per changed patient-month per batch, read from the beginning
    # by every console replica; compact it as eagerly as the changelog
    status = {"segment.ms": str(STATUS_SEGMENT_MS), "min.cleanable.dirty.ratio": "0.2"}
    configs = {
        settings.topics.month_close: {"retention.ms": week},
        changelog_topic_name(settings): changelog,
        settings.topics.tally_status: status,
    }
    return create_topics_sync(
        settings.kafka_bootstrap_servers,
        plan,
        compacted,
        replication_factor=settings.replication_factor,
        configs=configs,
        client_options=aiokafka_kwargs(settings),
    )
