"""Wait, for a bounded time, until a Kafka broker answers; else fail with one clear line.

Used by ``ccm-tally close``, ``topics`` and ``simulate`` before they produce, and by the
worker's start (``runner.wait_for_topics``, which logs each retry): without it a client either
retries forever or fails with a library traceback. The wait is ``CCM_BROKER_WAIT_SECONDS``
(``Settings.broker_wait_seconds``, default 120 s); 0 tries once. A broker that refuses our
credentials or TLS is not waited for: that will not get better, and the line says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
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
    """One metadata request to each bootstrap server until one answers.

    Not ``AIOKafkaClient.bootstrap()``: it logs why a server failed and raises a bare
    "Unable to bootstrap", so a refused login would look like a broker that is down and be
    waited for. Its own connection function keeps the cause (``SaslAuthenticationFailed``,
    ``SSLCertVerificationError`` ...), which :func:`refused` reads."""
    from aiokafka.conn import collect_hosts, create_conn
    from aiokafka.errors import KafkaConnectionError
    from aiokafka.protocol.metadata import MetadataRequest

    errors: list[BaseException] = []
    for host, port, _ in collect_hosts(bootstrap):
        try:
            async with asyncio.timeout(max(0.5, timeout)):
                conn = await create_conn(
                    host, port, request_timeout_ms=max(1000, int(timeout * 1000)), **options
                )
                try:
                    await conn.send(MetadataRequest([]))
                    return
                finally:
                    conn.close()
        except Exception as exc:  # connection refused, DNS, timeout, TLS, SASL ...
            if refused(exc):
                raise
            errors.append(exc)
    raise KafkaConnectionError(
        f"Unable to bootstrap from {bootstrap}: "
        + "; ".join(str(e) or type(e).__name__ for e in errors)
    )


def refused(exc: BaseException) -> bool:
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


def refused_error(bootstrap: str, exc: BaseException) -> BrokerUnreachableError:
    return BrokerUnreachableError(
        f"Kafka at {bootstrap} refused our credentials or TLS ({type(exc).__name__})"
    )


OnRetry = Callable[[BaseException, float], None]  # (the error, seconds left)


async def wait_for_broker(
    bootstrap: str,
    wait_seconds: float,
    retry_every: float = 0.5,
    on_retry: OnRetry | None = None,
    **options: Any,
) -> None:
    """Return once a broker of ``bootstrap`` answers a metadata request; raise
    :class:`BrokerUnreachableError` after ``wait_seconds`` (at least one attempt is made), or
    at once when the broker refuses our credentials or TLS. ``on_retry`` hears each failed
    attempt (the worker logs them). ``options`` are the client's security options
    (``kafka_security.aiokafka_kwargs``)."""
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
                if refused(exc):
                    raise refused_error(bootstrap, exc) from None
                last = str(exc) or type(exc).__name__
                if on_retry is not None:
                    on_retry(exc, max(0.0, deadline - time.monotonic()))
            if time.monotonic() + retry_every >= deadline:
                break
            await asyncio.sleep(retry_every)
    finally:
        quiet.setLevel(level)
    raise BrokerUnreachableError(
        f"no Kafka broker reachable at {bootstrap} within {wait_seconds:g}s "
        f"({BROKER_WAIT_ENV}; last error: {last.splitlines()[0][:200]})"
    )


def ensure_broker(
    bootstrap: str, wait_seconds: float, on_retry: OnRetry | None = None, **options: Any
) -> None:
    """Synchronous :func:`wait_for_broker`, for a command's start (outside an event loop)."""
    asyncio.run(wait_for_broker(bootstrap, wait_seconds, on_retry=on_retry, **options))
