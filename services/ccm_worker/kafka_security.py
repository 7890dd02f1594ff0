"""Kafka client security from :class:`~ccm_core.settings.Settings`: TLS, mutual TLS and SASL.

One place turns the ``CCM_KAFKA_*`` security settings into client options, for every client
the project runs: :func:`aiokafka_kwargs` for ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` /
``AIOKafkaAdminClient`` and :func:`faust_broker_kwargs` for ``faust.App(...)``.

Secrets (SASL password, key password) come from the environment or from a file (a mounted
Kubernetes secret); they are read here, when a client is built, and are never logged: the
settings keep them as ``SecretStr`` and :func:`describe` (for log lines) names no secret.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ccm_core.settings import Settings


class KafkaSecurityError(ValueError):
    """A security file is missing, empty or unreadable (the message names the file only)."""


def read_secret_file(path: Path) -> str:
    """A secret from a file, without its trailing newline (``echo`` and editors add one)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KafkaSecurityError(f"cannot read secret file {path}: {exc.strerror}") from None
    value = text.rstrip("\r\n")
    if not value:
        raise KafkaSecurityError(f"secret file {path} is empty")
    return value


def secret_value(value: SecretStr | str | None, file: Path | None) -> str | None:
    """The value of a ``X`` / ``X_FILE`` setting pair (the settings allow at most one)."""
    if file is not None:
        return read_secret_file(file)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


def sasl_username(settings: Settings) -> str | None:
    return secret_value(settings.kafka_sasl_username, settings.kafka_sasl_username_file)


def sasl_password(settings: Settings) -> str | None:
    return secret_value(settings.kafka_sasl_password, settings.kafka_sasl_password_file)


def _existing(path: Path, what: str) -> str:
    if not path.is_file():
        raise KafkaSecurityError(f"{what} {path} does not exist")
    return str(path)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the Kafka clients (None for PLAINTEXT and SASL_PLAINTEXT).

    The broker's certificate is always verified (against ``kafka_ssl_cafile``, else the system
    CAs); ``kafka_ssl_check_hostname=false`` only skips matching its name to the address.
    With ``kafka_ssl_certfile`` and ``kafka_ssl_keyfile`` the client presents a certificate
    (mutual TLS). TLS 1.2 at least.
    """
    if not settings.kafka_uses_tls:
        return None
    cafile = settings.kafka_ssl_cafile
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=None if cafile is None else _existing(cafile, "CA file"),
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = settings.kafka_ssl_check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.kafka_ssl_certfile is not None and settings.kafka_ssl_keyfile is not None:
        key_password = secret_value(
            settings.kafka_ssl_key_password, settings.kafka_ssl_key_password_file
        )
        try:
            ctx.load_cert_chain(
                _existing(settings.kafka_ssl_certfile, "client certificate"),
                _existing(settings.kafka_ssl_keyfile, "client key"),
                password=key_password,
            )
        except ssl.SSLError as exc:
            raise KafkaSecurityError(
                f"cannot load client certificate {settings.kafka_ssl_certfile} with key "
                f"{settings.kafka_ssl_keyfile}: {exc.reason}"
            ) from None
    return ctx


def aiokafka_kwargs(settings: Settings) -> dict[str, Any]:
    """Security options for an aiokafka client, to add to its other options::

        AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, **aiokafka_kwargs(s), ...)

    Same keys for ``AIOKafkaConsumer`` and ``AIOKafkaAdminClient``: ``security_protocol``,
    plus ``ssl_context`` (SSL, SASL_SSL) and ``sasl_mechanism`` / ``sasl_plain_username`` /
    ``sasl_plain_password`` (SASL_*; aiokafka uses the ``sasl_plain_*`` pair for SCRAM too).
    """
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    ctx = ssl_context(settings)
    if ctx is not None:
        kwargs["ssl_context"] = ctx
    if settings.kafka_uses_sasl:
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = sasl_username(settings)
        kwargs["sasl_plain_password"] = sasl_password(settings)
    return kwargs


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` and the security options: all an aiokafka client needs to connect."""
    return {"bootstrap_servers": settings.kafka_bootstrap_servers, **aiokafka_kwargs(settings)}


def faust_broker_url(settings: Settings) -> list[str]:
    """faust's ``broker=`` value: one ``kafka://host:port`` per bootstrap server.

    faust-streaming has one URL scheme for its aiokafka driver, ``kafka://``, whatever the
    security protocol; TLS and SASL come from ``broker_credentials``.
    """
    servers = [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()]
    return [s if "://" in s else f"kafka://{s}" for s in servers]


def faust_broker_kwargs(settings: Settings) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for ``faust.App(...)`` (faust-streaming 0.15.3).

    faust hands ``broker_credentials`` to every aiokafka client it makes (producer, consumer,
    table recovery) through ``credentials_to_aiokafka_auth``: ``faust.SASLCredentials`` gives
    ``security_protocol`` SASL_SSL when it has an ``ssl_context`` (else SASL_PLAINTEXT),
    ``sasl_mechanism`` (SCRAM-SHA-256/512 or PLAIN) and ``sasl_plain_username/password``;
    ``faust.SSLCredentials(context)`` gives SSL (with or without a client certificate).
    PLAINTEXT passes no credentials.
    """
    from faust.auth import SASLCredentials, SSLCredentials

    kwargs: dict[str, Any] = {"broker": faust_broker_url(settings)}
    ctx = ssl_context(settings)
    if settings.kafka_uses_sasl:
        kwargs["broker_credentials"] = SASLCredentials(
            username=sasl_username(settings),
            password=sasl_password(settings),
            ssl_context=ctx,
            mechanism=settings.kafka_sasl_mechanism,
        )
    elif ctx is not None:
        kwargs["broker_credentials"] = SSLCredentials(ctx)
    return kwargs


def preflight(settings: Settings) -> None:
    """Read every security file the settings name (CA, certificate and key, password and token
    files) once, so that a wrong path or an empty secret stops a command at start with the
    file's name (:class:`KafkaSecurityError`, a ValueError), instead of looking like a broker
    that does not answer."""
    aiokafka_kwargs(settings)
    if settings.web_auth_token_file is not None:
        read_secret_file(settings.web_auth_token_file)
    for what, path in (
        ("web TLS certificate", settings.web_tls_certfile),
        ("web TLS key", settings.web_tls_keyfile),
        ("web client CA", settings.web_tls_client_cafile),
    ):
        if path is not None:
            _existing(path, what)


def describe(settings: Settings) -> dict[str, Any]:
    """What a log line may say about the Kafka security in use: never a secret."""
    info: dict[str, Any] = {"kafka_security_protocol": settings.kafka_security_protocol}
    if settings.kafka_uses_sasl:
        info["kafka_sasl_mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_uses_tls:
        info["kafka_ssl_cafile"] = str(settings.kafka_ssl_cafile or "system")
        info["kafka_mutual_tls"] = settings.kafka_ssl_certfile is not None
        info["kafka_ssl_check_hostname"] = settings.kafka_ssl_check_hostname
    return info


SECURITY_ENV_NAMES: frozenset[str] = frozenset(
    f"CCM_{name.upper()}"
    for name in Settings.model_fields
    if name.startswith(("kafka_security", "kafka_sasl", "kafka_ssl", "web_auth", "web_tls"))
)
"""Every security variable: a child's environment takes them from its settings only."""


def security_env(settings: Settings) -> dict[str, str]:
    """The ``CCM_KAFKA_*`` / ``CCM_WEB_*`` security variables that reproduce ``settings`` in a
    child process (``ccm_worker.process.worker_env``). Secrets given as files stay files."""
    env: dict[str, str] = {
        "CCM_KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
        "CCM_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "CCM_KAFKA_SSL_CHECK_HOSTNAME": str(settings.kafka_ssl_check_hostname).lower(),
    }
    values: dict[str, SecretStr | str | Path | None] = {
        "CCM_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "CCM_KAFKA_SASL_USERNAME_FILE": settings.kafka_sasl_username_file,
        "CCM_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password,
        "CCM_KAFKA_SASL_PASSWORD_FILE": settings.kafka_sasl_password_file,
        "CCM_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
        "CCM_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
        "CCM_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile,
        "CCM_KAFKA_SSL_KEY_PASSWORD": settings.kafka_ssl_key_password,
        "CCM_KAFKA_SSL_KEY_PASSWORD_FILE": settings.kafka_ssl_key_password_file,
        "CCM_WEB_AUTH_TOKEN": settings.web_auth_token,
        "CCM_WEB_AUTH_TOKEN_FILE": settings.web_auth_token_file,
        "CCM_WEB_TLS_CERTFILE": settings.web_tls_certfile,
        "CCM_WEB_TLS_KEYFILE": settings.web_tls_keyfile,
        "CCM_WEB_TLS_CLIENT_CAFILE": settings.web_tls_client_cafile,
    }
    for name, value in values.items():
        if isinstance(value, SecretStr):
            env[name] = value.get_secret_value()
        elif value is not None:
            env[name] = str(value)
    return env


# --------------------------------------------------------------------------------------------
# Command-line flags (every command that talks to Kafka: worker, topics, close, simulate)
# --------------------------------------------------------------------------------------------

SECURITY_FLAGS: tuple[tuple[str, str], ...] = (
    ("security_protocol", "kafka_security_protocol"),
    ("sasl_mechanism", "kafka_sasl_mechanism"),
    ("sasl_username", "kafka_sasl_username"),
    ("sasl_password_file", "kafka_sasl_password_file"),
    ("ssl_cafile", "kafka_ssl_cafile"),
    ("ssl_certfile", "kafka_ssl_certfile"),
    ("ssl_keyfile", "kafka_ssl_keyfile"),
    ("ssl_check_hostname", "kafka_ssl_check_hostname"),
)
"""(argparse dest, Settings field) of the flags :func:`add_security_args` adds."""


def security_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields the security flags set (unset flags leave the environment's)."""
    out: dict[str, Any] = {}
    for flag, name in SECURITY_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            out[name] = value
    return out


def add_security_args(parser: argparse.ArgumentParser) -> None:
    """Kafka TLS/SASL flags (each also an environment variable, see README "Security").
    Secrets only as files: a password on the command line shows in ``ps``."""
    group = parser.add_argument_group("Kafka security")
    group.add_argument(
        "--security-protocol",
        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        help="env CCM_KAFKA_SECURITY_PROTOCOL (default PLAINTEXT)",
    )
    group.add_argument(
        "--sasl-mechanism",
        choices=["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"],
        help="env CCM_KAFKA_SASL_MECHANISM (default SCRAM-SHA-512)",
    )
    group.add_argument("--sasl-username", help="env CCM_KAFKA_SASL_USERNAME")
    group.add_argument(
        "--sasl-password-file", type=Path, help="file holding the SASL password (env …_FILE)"
    )
    group.add_argument("--ssl-cafile", type=Path, help="CA (PEM) that signed the brokers' certs")
    group.add_argument("--ssl-certfile", type=Path, help="client certificate (mutual TLS)")
    group.add_argument("--ssl-keyfile", type=Path, help="client key (mutual TLS)")
    group.add_argument(
        "--no-ssl-check-hostname",
        dest="ssl_check_hostname",
        action="store_const",
        const=False,
        default=None,
        help="verify the broker certificate but not its host name",
    )
