"""Run the worker process: wait for the broker, create topics, build the faust app, run."""

from __future__ import annotations

import sys
import time

from ccm_core.observability import configure_logging, get_logger
from ccm_core.settings import Settings

from . import exits
from .connect import (
    BROKER_WAIT_ENV,
    BrokerUnreachableError,
    ensure_broker,
    refused,
    refused_error,
)


def wait_for_topics(settings: Settings) -> list[str]:
    """Wait (bounded by ``broker_wait_seconds``, each retry logged) for the broker, then create
    the topics, retrying within the same deadline (a broker just started may not have a
    controller yet). The one wait of the worker's start: ``ccm-tally worker`` does not wait
    before it. Raises :class:`BrokerUnreachableError` (one line) when the time is up or the
    broker refuses our credentials or TLS."""
    from .kafka_security import aiokafka_kwargs
    from .topics import ensure_topics

    log = get_logger("ccm.worker")
    bootstrap = settings.kafka_bootstrap_servers
    deadline = time.monotonic() + settings.broker_wait_seconds

    def waiting(exc: BaseException, seconds_left: float) -> None:
        log.warning(
            "broker_unavailable_waiting",
            bootstrap=bootstrap,
            error=type(exc).__name__,
            seconds_left=round(seconds_left, 1),
        )

    ensure_broker(
        bootstrap,
        settings.broker_wait_seconds,
        retry_every=1.0,
        on_retry=waiting,
        **aiokafka_kwargs(settings),
    )
    delay = 0.5
    while True:
        try:
            return ensure_topics(settings)
        except Exception as exc:  # the admin client raises many kinds; most mean "not yet"
            if refused(exc):
                raise refused_error(bootstrap, exc) from exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnreachableError(
                    f"no Kafka broker reachable at {bootstrap} within "
                    f"{settings.broker_wait_seconds:g}s to create topics ({BROKER_WAIT_ENV}; "
                    f"last error: {type(exc).__name__})"
                ) from exc
            waiting(exc, left)
            time.sleep(min(delay, max(0.1, left)))
            delay = min(delay * 2, 10.0)


def run_worker(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_json)
    log = get_logger("ccm.worker")
    try:
        created = wait_for_topics(settings)
    except BrokerUnreachableError as exc:
        log.error("broker_unavailable_exiting", error=str(exc))
        print(f"ccm-tally worker: {exc}", file=sys.stderr)
        return exits.BROKER_UNAVAILABLE
    log.info(
        "worker_starting",
        bootstrap=settings.kafka_bootstrap_servers,
        partitions=settings.partitions,
        topics_created=created,
        web=f"http://{settings.web_host}:{settings.web_port}",
        processing_guarantee=settings.processing_guarantee,
    )
    import faust

    from .app import TallyWorker

    worker = TallyWorker(settings)
    worker.start_loop_watchdog()
    faust_worker = faust.Worker(
        worker.app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False
    )
    try:
        faust_worker.execute_from_commandline()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else exits.CRASHED
        return code
    return exits.OK
