"""Shared pytest fixtures.

``kafka_bootstrap`` gives integration tests a real Apache Kafka broker: the one named by
``KAFKA_BOOTSTRAP_SERVERS`` if set, otherwise a local single-node KRaft broker started once per
session (``ccm_localkafka.LocalKafka``). ``kafka_secure`` gives the security tests that local
broker's SASL_SSL and mutual-TLS listeners (started even when an external broker is named).
Both are lazy: unit tests that do not ask for them never need Java or Maven. If the broker
cannot start, the requesting tests *error* (never skip).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ccm_localkafka import LocalKafka

_REPO = Path(__file__).resolve().parent.parent
_STARTUP_KEY = pytest.StashKey[str]()
_PG_KEY = pytest.StashKey[str]()


# Make ``ccm_localkafka`` (deploy/) importable even when the project is not pip-installed.
# Only a path entry: nothing is imported here, so unit tests never touch aiokafka or Java.
if importlib.util.find_spec("ccm_localkafka") is None:
    sys.path.insert(0, str(_REPO / "deploy"))


@pytest.fixture(scope="session")
def local_kafka(request: pytest.FixtureRequest) -> Iterator[LocalKafka]:
    """The session's own broker: plaintext listener plus SASL_SSL and mutual-TLS listeners
    (throw-away CA, one SCRAM user), started once, lazily."""
    from ccm_localkafka import KAFKA_VERSION, LocalKafka

    broker = LocalKafka(secure=True)
    # Raises KafkaLauncherError (with the broker's log) if it cannot start: the requesting tests
    # error, never skip. pytest caches the failure, so later tests do not retry the start.
    broker.start()
    request.config.stash[_STARTUP_KEY] = (
        f"local Kafka {KAFKA_VERSION} (KRaft) at {broker.bootstrap_servers} "
        f"(SASL_SSL {broker.secure_bootstrap_servers}, mTLS {broker.mtls_bootstrap_servers}) "
        f"started in {broker.startup_seconds:.2f}s"
    )
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """Bootstrap address ("host:port") of a real Kafka broker for this test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        request.config.stash[_STARTUP_KEY] = f"using external Kafka at {external}"
        yield external
        return
    broker: LocalKafka = request.getfixturevalue("local_kafka")
    yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_secure(local_kafka: LocalKafka) -> LocalKafka:
    """The session broker's secure side: ``secure_bootstrap_servers`` (SASL_SSL),
    ``mtls_bootstrap_servers`` (SSL, client certificate required), ``ca`` / ``ca_file`` and
    ``sasl_users``. Always the local broker (an external one has no throw-away CA)."""
    return local_kafka


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A real PostgreSQL server for this test session (``tests/localpg.py``): Debian's
    binaries, a throwaway cluster on a free port. Lazy like the broker; if it cannot start,
    the requesting tests error (never skip)."""
    from tests.localpg import LocalPostgres

    server = LocalPostgres()
    try:
        server.start()
        request.config.stash[_PG_KEY] = (
            f"PostgreSQL ({server.bin.parent.name}) at 127.0.0.1:{server.port} "
            f"started in {server.startup_seconds:.2f}s"
        )
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: Any) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    dsn: str = postgres_server.new_database()
    return dsn


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    line = terminalreporter.config.stash.get(_STARTUP_KEY, None)
    if line:
        terminalreporter.write_sep("-", "kafka broker")
        terminalreporter.write_line(line)
    pg = terminalreporter.config.stash.get(_PG_KEY, None)
    if pg:
        terminalreporter.write_sep("-", "postgresql")
        terminalreporter.write_line(pg)
