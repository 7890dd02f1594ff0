"""Run the worker process: wait for the broker, create topics, build the faust app, run."""

from __future__ import annotations

import sys
import time

from ccm_core.observability import configure_logging, get_logger
from ccm_core.settings import Settings

from . import exits


def wait_for_topics(settings: Settings) -> list[str]:
    """Create the topics, waiting (bounded, logged) for a broker that does not answer yet."""
    from .topics import ensure_topics

    log = get_logger("ccm.worker")
    deadline = time.monotonic() + settings.broker_wait_seconds
    delay = 0.5
    while True:
        try:
            return ensure_topics(settings)
        except Exception as exc:  # the admin client raises many kinds; most mean "not yet"
            if _refused(exc):  # a wrong password or certificate will not get better: say so
                raise BrokerUnavailableError(settings.kafka_bootstrap_servers, exc) from exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnavailableError(settings.kafka_bootstrap_servers, exc) from exc
            log.warning(
                "broker_unavailable_waiting",
                bootstrap=settings.kafka_bootstrap_servers,
                error=type(exc).__name__,
                seconds_left=round(left, 1),
            )
            time.sleep(min(delay, max(0.1, left)))
            delay = min(delay * 2, 10.0)


def _refused(exc: BaseException) -> bool:
    """An authentication or TLS verification failure (anywhere in the exception's chain)."""
    import ssl

    from aiokafka.errors import KafkaError

    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, ssl.SSLCertVerificationError) or "Authentication" in name:
            return True
        if isinstance(seen, KafkaError) and "SASL" in str(seen).upper():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class BrokerUnavailableError(Exception):
    def __init__(self, bootstrap: str, cause: BaseException) -> None:
        name = type(cause).__name__
        if _refused(cause):
            super().__init__(f"Kafka at {bootstrap} refused our credentials or TLS ({name})")
        else:
            super().__init__(f"no Kafka broker answered at {bootstrap} ({name})")


def run_worker(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_json)
    log = get_logger("ccm.worker")
    try:
        created = wait_for_topics(settings)
    except BrokerUnavailableError as exc:
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
