"""Kafka over SASL_SSL and mutual TLS, against the session broker's real secure listeners.

What a hospital's security review relies on: our clients, built from the ``CCM_KAFKA_*``
settings (``ccm_worker.kafka_security``), get in with the right credentials and CA; a client
without credentials, with a wrong password, without the CA or without a client certificate is
refused; and nothing readable crosses the wire (a recording relay sees the whole
conversation and finds neither the record, nor the password, nor the topic name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from ccm_core.settings import Settings
from ccm_localkafka import LocalKafka, create_topics_sync
from ccm_worker.kafka_security import aiokafka_kwargs
from tests.integration.harness import Stack, WorkerProcess, collect, produce, wait_processed
from tests.unit.unit_helpers import encode, local
from tests.unit.unit_helpers import log as time_log

pytestmark = pytest.mark.integration

REFUSAL_TIMEOUT_S = 60.0  # a refused client must fail, not hang; generous on a loaded machine


def _topic() -> str:
    return f"sec.{uuid.uuid4().hex[:10]}"


def _secret_file(tmp_path: Path, value: str) -> Path:
    path = tmp_path / f"secret-{uuid.uuid4().hex[:6]}"
    path.write_text(value + "\n", encoding="utf-8")  # as `echo` writes it
    path.chmod(0o600)
    return path


def sasl_ssl_settings(
    kafka: LocalKafka, tmp_path: Path, *, bootstrap: str | None = None, **overrides: Any
) -> Settings:
    """A client of the SASL_SSL listener as the README configures one: password in a file."""
    user = kafka.sasl_users[0]
    fields: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap or kafka.secure_bootstrap_servers,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": user.username,
        "kafka_sasl_password_file": _secret_file(tmp_path, user.password),
        "kafka_ssl_cafile": kafka.ca_file,
    }
    if "kafka_sasl_password" in overrides:
        del fields["kafka_sasl_password_file"]
    fields.update(overrides)
    return Settings(**fields)


def _plain_topic(kafka: LocalKafka, topic: str) -> None:
    create_topics_sync(kafka.bootstrap_servers, {topic: 1})


async def _round_trip(settings: Settings, topic: str, value: bytes) -> list[bytes]:
    """Produce ``value`` to ``topic`` and read the topic back, both with ``settings``."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        **aiokafka_kwargs(settings),
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"patient-1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        **aiokafka_kwargs(settings),
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while not got:
                batch = await consumer.getmany(timeout_ms=500)
                got += [m.value for part in batch.values() for m in part]
    finally:
        await consumer.stop()
    return got


async def _connect(settings: Settings) -> None:
    """Start (connect, authenticate, fetch metadata) and stop a producer."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        request_timeout_ms=20_000,
        **aiokafka_kwargs(settings),
    )
    try:
        async with asyncio.timeout(REFUSAL_TIMEOUT_S):
            await producer.start()
    finally:
        await producer.stop()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_client_with_credentials_and_ca_round_trips(
    kafka_secure: LocalKafka, tmp_path: Path, mechanism: str
) -> None:
    settings = sasl_ssl_settings(kafka_secure, tmp_path, kafka_sasl_mechanism=mechanism)
    topic = _topic()
    # topic creation through the secure listener too (ccm-tally topics does the same)
    created = create_topics_sync(
        settings.kafka_bootstrap_servers, {topic: 1}, client_options=aiokafka_kwargs(settings)
    )
    assert created == [topic]
    value = json.dumps({"patient_id": "p-1", "minutes": 20}).encode()
    assert asyncio.run(_round_trip(settings, topic, value)) == [value]


def test_client_without_credentials_is_refused(kafka_secure: LocalKafka) -> None:
    # TLS with the right CA, but no SASL: the broker drops the connection
    settings = Settings(
        kafka_bootstrap_servers=kafka_secure.secure_bootstrap_servers,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=kafka_secure.ca_file,
    )
    with pytest.raises(KafkaError):
        asyncio.run(_connect(settings))


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_client_with_wrong_password_is_refused(
    kafka_secure: LocalKafka, tmp_path: Path, mechanism: str
) -> None:
    settings = sasl_ssl_settings(
        kafka_secure,
        tmp_path,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_password_file=_secret_file(tmp_path, "not-the-password"),
    )
    with pytest.raises(KafkaError):
        asyncio.run(_connect(settings))


def test_unknown_user_is_refused(kafka_secure: LocalKafka, tmp_path: Path) -> None:
    password = kafka_secure.sasl_users[0].password
    settings = sasl_ssl_settings(
        kafka_secure, tmp_path, kafka_sasl_username="mallory", kafka_sasl_password=password
    )
    with pytest.raises(KafkaError):
        asyncio.run(_connect(settings))


def test_client_without_the_ca_is_refused(kafka_secure: LocalKafka, tmp_path: Path) -> None:
    # right credentials, but trusting only the system CAs: the broker's certificate fails
    settings = sasl_ssl_settings(kafka_secure, tmp_path, kafka_ssl_cafile=None)
    with pytest.raises(KafkaError):
        asyncio.run(_connect(settings))


def test_client_trusting_another_ca_is_refused(kafka_secure: LocalKafka, tmp_path: Path) -> None:
    from ccm_localkafka.tls import make_ca

    other = make_ca(tmp_path / "other-ca", name="other-ca")
    settings = sasl_ssl_settings(kafka_secure, tmp_path, kafka_ssl_cafile=other.cert)
    with pytest.raises(KafkaError):
        asyncio.run(_connect(settings))


def test_plaintext_client_is_refused_by_the_secure_listener(kafka_secure: LocalKafka) -> None:
    settings = Settings(kafka_bootstrap_servers=kafka_secure.secure_bootstrap_servers)
    with pytest.raises(KafkaError):
        asyncio.run(_connect(settings))


# -- mutual TLS -------------------------------------------------------------------------------


def test_mutual_tls_client_certificate_round_trips(
    kafka_secure: LocalKafka, tmp_path: Path
) -> None:
    assert kafka_secure.ca is not None
    client = kafka_secure.ca.issue(f"client-{uuid.uuid4().hex[:6]}", server=False)
    settings = Settings(
        kafka_bootstrap_servers=kafka_secure.mtls_bootstrap_servers,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=kafka_secure.ca_file,
        kafka_ssl_certfile=client.cert,
        kafka_ssl_keyfile=client.key,
    )
    topic = _topic()
    _plain_topic(kafka_secure, topic)
    assert asyncio.run(_round_trip(settings, topic, b"over mutual TLS")) == [b"over mutual TLS"]


def test_mutual_tls_without_client_certificate_is_refused(kafka_secure: LocalKafka) -> None:
    settings = Settings(
        kafka_bootstrap_servers=kafka_secure.mtls_bootstrap_servers,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=kafka_secure.ca_file,
    )
    with pytest.raises(KafkaError):
        asyncio.run(_connect(settings))


def test_mutual_tls_certificate_of_another_ca_is_refused(
    kafka_secure: LocalKafka, tmp_path: Path
) -> None:
    from ccm_localkafka.tls import make_ca

    stranger = make_ca(tmp_path / "other-ca", name="other-ca").issue("stranger", server=False)
    settings = Settings(
        kafka_bootstrap_servers=kafka_secure.mtls_bootstrap_servers,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=kafka_secure.ca_file,
        kafka_ssl_certfile=stranger.cert,
        kafka_ssl_keyfile=stranger.key,
    )
    with pytest.raises(KafkaError):
        asyncio.run(_connect(settings))


# -- on the wire ------------------------------------------------------------------------------


class Relay:
    """A TCP relay on 127.0.0.1 that records every byte in each direction."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.to_broker = bytearray()
        self.to_client = bytearray()
        self.connections = 0

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, sink: bytearray
    ) -> None:
        try:
            while data := await src.read(65536):
                sink += data
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pump(reader, up_writer, self.to_broker),
            self._pump(up_reader, writer, self.to_client),
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)
        try:
            yield self
        finally:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await server.wait_closed()


def test_nothing_in_clear_on_the_sasl_ssl_listener(
    kafka_secure: LocalKafka, tmp_path: Path
) -> None:
    """Every connection of the client goes through the relay (the tap listener advertises the
    relay's port), and the relay never sees the record, the password, the user, the topic or
    even the cluster id of the broker's metadata answers."""
    assert kafka_secure.tap_port is not None and kafka_secure.tap_target_port is not None
    user = kafka_secure.sasl_users[0]
    settings = sasl_ssl_settings(
        kafka_secure, tmp_path, bootstrap=f"127.0.0.1:{kafka_secure.tap_port}"
    )
    topic = _topic()
    _plain_topic(kafka_secure, topic)
    marker = f"PHI-{uuid.uuid4().hex}"
    # a record as an EHR sends it: patient id, staff name, a note; 20 kB so the bytes that
    # went through the relay can be checked to hold it (in encrypted form)
    value = json.dumps(
        {"patient_id": marker, "staff_name": "Jane Nurse", "note": marker * 200}
    ).encode()
    relay = Relay(kafka_secure.tap_port, kafka_secure.tap_target_port)

    async def run() -> list[bytes]:
        async with relay.running():
            return await _round_trip(settings, topic, value)

    assert asyncio.run(run()) == [value]  # the record went through, via the relay only
    sent, received = bytes(relay.to_broker), bytes(relay.to_client)
    assert relay.connections >= 2  # bootstrap, then the broker at its advertised (relay) port
    assert len(sent) > len(value) and len(received) > len(value)
    assert kafka_secure.cluster_id is not None
    for secret in (
        marker,
        user.password,
        user.username,
        topic,
        "Jane Nurse",
        kafka_secure.cluster_id,
    ):
        needle = secret.encode()
        assert needle not in sent, f"{secret!r} went to the broker in clear"
        assert needle not in received, f"{secret!r} came back in clear"


def test_relay_sees_clear_text_on_the_plaintext_listener(kafka_secure: LocalKafka) -> None:
    """The control: the same relay in front of the plaintext listener reads the broker's
    metadata answer (its cluster id) in clear, so the check above can fail."""
    assert kafka_secure.broker_port is not None and kafka_secure.cluster_id is not None
    with_relay_port = _free_port()
    relay = Relay(with_relay_port, kafka_secure.broker_port)
    settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{with_relay_port}")

    async def run() -> None:
        async with relay.running():
            await _connect(settings)

    asyncio.run(run())
    assert kafka_secure.cluster_id.encode() in bytes(relay.to_client)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the worker over SASL_SSL -------------------------------------------------------------------


def test_worker_over_sasl_ssl(kafka_secure: LocalKafka, tmp_path: Path) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    probe = sasl_ssl_settings(kafka_secure, tmp_path)
    stack = Stack(
        kafka_secure.secure_bootstrap_servers,
        partitions=2,
        security={
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": probe.kafka_sasl_username,
            "kafka_sasl_password_file": probe.kafka_sasl_password_file,
            "kafka_ssl_cafile": kafka_secure.ca_file,
            "web_auth_token_file": _secret_file(tmp_path, token),
        },
    )
    stack.create_topics()
    worker = WorkerProcess(stack, tmp_path).start(timeout=90)
    try:
        events = [
            time_log(f"sec-{i}", local(2 + i), 20, patient_id="sec-patient") for i in range(3)
        ]
        produce(stack, [(b"sec-patient", encode(e)) for e in events])
        wait_processed(stack)
        outputs = collect(stack)
        answer = worker.get("/tally/sec-patient")  # carries the token (harness)
        unauthenticated = _status(f"http://127.0.0.1:{worker.port}/tally/sec-patient")
        health = _status(f"http://127.0.0.1:{worker.port}/healthz")
    finally:
        worker.stop()
    assert [t["data"]["code"] for t in outputs["threshold"]] == ["99487"]
    assert answer is not None and answer["patient_id"] == "sec-patient"
    assert unauthenticated == 401
    assert health == 200


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_worker_with_a_wrong_password_exits_69_at_once(
    kafka_secure: LocalKafka, tmp_path: Path
) -> None:
    """A refused login does not get better with waiting: the worker says so in one line and
    exits 69 long before its broker wait (120 s) is over, so a supervisor's backoff and an
    operator's alert see it, instead of a worker that looks like it waits for Kafka."""
    import subprocess
    import sys
    import time

    from ccm_worker.process import worker_env

    probe = sasl_ssl_settings(kafka_secure, tmp_path)
    settings = probe.model_copy(
        update={"kafka_sasl_password_file": _secret_file(tmp_path, "not-the-password")}
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ccm_cli.main", "worker", "--web-port", "0"],
        env=worker_env(settings, CCM_BROKER_WAIT_SECONDS="120"),
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 69, result.stderr
    assert time.monotonic() - started < 100, "refused at once, not after the whole wait"
    last = result.stderr.strip().splitlines()[-1]
    assert "refused our credentials or TLS" in last, result.stderr
    assert "not-the-password" not in result.stderr
