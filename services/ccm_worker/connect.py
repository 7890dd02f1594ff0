"""Wait, for a bounded time, until a Kafka broker answers; else fail with one clear line.

Used by ``ccm-tally close`` and ``ccm-tally simulate`` before they produce, and meant for the
worker's start (``ensure_broker``): without it a client either retries forever or fails with a
library traceback. The wait is ``CCM_BROKER_WAIT_SECONDS`` (``Settings.broker_wait_seconds``,
default 120 s); 0 tries once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ccm_core.settings import Settings

from .exits import BROKER_UNAVAILABLE

BROKER_WAIT_ENV = "CCM_BROKER_WAIT_SECONDS"
DEFAULT_BROKER_WAIT_SECONDS: float = Settings.model_fields["broker_wait_seconds"].default
BROKER_UNAVAILABLE_EXIT_CODE = BROKER_UNAVAILABLE  # 69, EX_UNAVAILABLE, as the worker's


class BrokerUnreachableError(Exception):
    """No broker answered within the wait; ``str()`` is the one line to show a person."""


def broker_wait_seconds(environ: dict[str, str] | None = None) -> float:
    """``CCM_BROKER_WAIT_SECONDS`` from the environment (for commands without Settings)."""
    text = (environ if environ is not None else os.environ).get(BROKER_WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_BROKER_WAIT_SECONDS
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{BROKER_WAIT_ENV} must be a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"{BROKER_WAIT_ENV} must be 0 or more seconds, got {text!r}")
    return value


async def _try_once(bootstrap: str, timeout: float, options: dict[str, Any]) -> None:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(1000, int(timeout * 1000)), **options
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout=max(0.5, timeout))
    finally:
        await client.close()


async def wait_for_broker(
    bootstrap: str, wait_seconds: float, retry_every: float = 0.5, **options: Any
) -> None:
    """Return once a broker of ``bootstrap`` answers a metadata request; raise
    :class:`BrokerUnreachableError` after ``wait_seconds`` (at least one attempt is made).
    ``options`` are the client's security options (``kafka_security.aiokafka_kwargs``)."""
    deadline = time.monotonic() + wait_seconds
    last = "no attempt"
    quiet = logging.getLogger("aiokafka")  # one warning per failed attempt: not for people
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                await _try_once(bootstrap, max(remaining, 1.0), options)
                return
            except Exception as exc:  # connection refused, DNS, timeout, bad address ...
                last = str(exc) or type(exc).__name__
            if time.monotonic() + retry_every >= deadline:
                break
            await asyncio.sleep(retry_every)
    finally:
        quiet.setLevel(level)
    raise BrokerUnreachableError(
        f"no Kafka broker reachable at {bootstrap} within {wait_seconds:g}s "
        f"({BROKER_WAIT_ENV}; last error: {last.splitlines()[0][:200]})"
    )


def ensure_broker(bootstrap: str, wait_seconds: float, **options: Any) -> None:
    """Synchronous :func:`wait_for_broker`, for a command's start (outside an event loop)."""
    asyncio.run(wait_for_broker(bootstrap, wait_seconds, **options))
