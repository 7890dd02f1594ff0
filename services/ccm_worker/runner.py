"""Run the worker process: create topics, start the worker, run until stopped."""

from __future__ import annotations

import asyncio

from ccm_core.observability import configure_logging, get_logger
from ccm_core.settings import Settings

from .app import TallyWorker
from .topics import ensure_topics


def run_worker(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_json)
    log = get_logger("ccm.worker")
    created = ensure_topics(settings)
    log.info(
        "worker_starting",
        bootstrap=settings.kafka_bootstrap_servers,
        partitions=settings.partitions,
        topics_created=created,
        web=f"http://{settings.web_host}:{settings.web_port}",
        processing_guarantee=settings.processing_guarantee,
    )
    return asyncio.run(TallyWorker(settings).run())
