"""Kafka security settings: validation, secrets from files, never shown, client options.

The options built here are proven against the real broker in
``tests/integration/test_kafka_security.py``; these tests pin what each setting turns into.
"""

from __future__ import annotations

import argparse
import logging
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from ccm_core.settings import Settings
from ccm_localkafka.tls import CertificateAuthority, make_ca
from ccm_worker import cli, kafka_security
from ccm_worker.kafka_security import (
    SECURITY_ENV_NAMES,
    KafkaSecurityError,
    aiokafka_kwargs,
    describe,
    faust_broker_kwargs,
    security_env,
)
from ccm_worker.process import worker_env

PASSWORD = "s3cret-Pa55word-value"


@pytest.fixture(autouse=True)
def _no_security_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their settings explicitly; the machine's environment must not leak in."""
    for name in SECURITY_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_ca(tmp_path_factory.mktemp("ca"))


def secret_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secret"
    path.write_text(text, encoding="utf-8")
    return path


def sasl_ssl(tmp_path: Path, ca: CertificateAuthority, **more: object) -> Settings:
    return Settings(
        kafka_bootstrap_servers="broker-1:9093,broker-2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="ccm-worker",
        kafka_sasl_password_file=secret_file(tmp_path, PASSWORD + "\n"),
        kafka_ssl_cafile=ca.cert,
        **more,  # type: ignore[arg-type]
    )


# -- settings ---------------------------------------------------------------------------------


def test_default_is_plaintext_without_credentials() -> None:
    s = Settings()
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert aiokafka_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_kwargs(s) == {"broker": ["kafka://127.0.0.1:9092"]}


def test_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: CertificateAuthority
) -> None:
    monkeypatch.setenv("CCM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CCM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("CCM_KAFKA_SASL_USERNAME", "ccm-worker")
    monkeypatch.setenv("CCM_KAFKA_SASL_PASSWORD_FILE", str(secret_file(tmp_path, PASSWORD)))
    monkeypatch.setenv("CCM_KAFKA_SSL_CAFILE", str(ca.cert))
    monkeypatch.setenv("CCM_KAFKA_SSL_CHECK_HOSTNAME", "false")
    s = Settings()
    kwargs = aiokafka_kwargs(s)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kwargs["sasl_plain_username"] == "ccm-worker"
    assert kwargs["sasl_plain_password"] == PASSWORD
    ctx = kwargs["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED  # the certificate is still verified
    assert ctx.check_hostname is False


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_password": "x"}, "USERNAME"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"}, "PASSWORD"),
        (
            {"kafka_sasl_password": "x", "kafka_sasl_password_file": "/run/secrets/p"},
            "not both",
        ),
        ({"kafka_ssl_cafile": "/ca.pem"}, "use SSL or SASL_SSL"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/c.pem"},
            "go together",
        ),
        ({"web_tls_client_cafile": "/ca.pem"}, "needs CCM_WEB_TLS_CERTFILE"),
        ({"web_auth_token": "a", "web_auth_token_file": "/t"}, "not both"),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": "p",
            },
            "in clear",
        ),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_inconsistent_settings_are_refused(fields: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(**fields)  # type: ignore[arg-type]
    assert complaint in str(err.value)


def test_secrets_never_show_in_repr_str_or_validation_errors() -> None:
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="u",
        kafka_sasl_password=PASSWORD,
        web_auth_token="tok-" + PASSWORD,
    )
    assert PASSWORD not in repr(s)
    assert PASSWORD not in str(s)
    assert PASSWORD not in str(s.model_dump())
    assert PASSWORD not in s.model_dump_json()
    with pytest.raises(ValidationError) as err:  # the input is not echoed in the error
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password=PASSWORD)
    assert PASSWORD not in str(err.value)
    # what the CLI prints (messages and locations, never the input)
    assert PASSWORD not in repr(err.value.errors(include_input=False))


def test_describe_for_logs_names_no_secret(tmp_path: Path, ca: CertificateAuthority) -> None:
    s = sasl_ssl(tmp_path, ca)
    info = describe(s)
    assert info["kafka_security_protocol"] == "SASL_SSL"
    assert info["kafka_sasl_mechanism"] == "SCRAM-SHA-512"
    assert PASSWORD not in repr(info)
    assert "ccm-worker" not in repr(info)


def test_password_file_trailing_newline_is_dropped(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    assert aiokafka_kwargs(sasl_ssl(tmp_path, ca))["sasl_plain_password"] == PASSWORD


def test_username_from_a_file(tmp_path: Path, ca: CertificateAuthority) -> None:
    user_file = tmp_path / "user"
    user_file.write_text("from-file\n", encoding="utf-8")
    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username_file=user_file,
        kafka_sasl_password=PASSWORD,
    )
    kwargs = aiokafka_kwargs(s)
    assert kwargs["sasl_plain_username"] == "from-file"
    assert "ssl_context" not in kwargs  # SASL_PLAINTEXT: no TLS


@pytest.mark.parametrize("content", ["", "\n"])
def test_empty_or_missing_secret_file_is_an_error_naming_the_file(
    tmp_path: Path, ca: CertificateAuthority, content: str
) -> None:
    s = sasl_ssl(tmp_path, ca).model_copy(
        update={"kafka_sasl_password_file": secret_file(tmp_path, content)}
    )
    with pytest.raises(KafkaSecurityError, match="is empty"):
        aiokafka_kwargs(s)
    missing = s.model_copy(update={"kafka_sasl_password_file": tmp_path / "nope"})
    with pytest.raises(KafkaSecurityError, match="nope"):
        aiokafka_kwargs(missing)


def test_missing_ca_file_is_an_error(tmp_path: Path) -> None:
    s = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "no-ca.pem")
    with pytest.raises(KafkaSecurityError, match=r"no-ca\.pem"):
        aiokafka_kwargs(s)


def test_mutual_tls_loads_the_client_certificate(tmp_path: Path, ca: CertificateAuthority) -> None:
    client = ca.issue("client-a", server=False)
    s = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=ca.cert,
        kafka_ssl_certfile=client.cert,
        kafka_ssl_keyfile=client.key,
    )
    kwargs = aiokafka_kwargs(s)
    assert kwargs["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in kwargs
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    # a key that does not belong to the certificate is refused at start, not at first use
    other = ca.issue("client-b", server=False)
    wrong = s.model_copy(update={"kafka_ssl_keyfile": other.key})
    with pytest.raises(KafkaSecurityError, match="cannot load client certificate"):
        aiokafka_kwargs(wrong)


# -- faust --------------------------------------------------------------------------------------


def test_faust_credentials_reach_aiokafka_as_ours_do(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    """faust turns broker_credentials into aiokafka options with its own function; they must
    say what ``aiokafka_kwargs`` says (mechanism, user, password, TLS, protocol)."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    for protocol in ("SASL_SSL", "SASL_PLAINTEXT", "SSL"):
        s = sasl_ssl(tmp_path, ca, kafka_sasl_mechanism="SCRAM-SHA-256").model_copy(
            update={"kafka_security_protocol": protocol}
        )
        if protocol == "SASL_PLAINTEXT":
            s = s.model_copy(update={"kafka_ssl_cafile": None})
        faust_kwargs = faust_broker_kwargs(s)
        assert faust_kwargs["broker"] == ["kafka://broker-1:9093", "kafka://broker-2:9093"]
        via_faust = dict(credentials_to_aiokafka_auth(faust_kwargs["broker_credentials"]))
        ours = aiokafka_kwargs(s)
        assert via_faust.pop("security_protocol") == ours.pop("security_protocol") == protocol
        assert (via_faust.pop("ssl_context") is None) == (ours.pop("ssl_context", None) is None)
        assert {k: v for k, v in via_faust.items() if v is not None} == ours


def test_faust_credentials_repr_hides_the_password(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    creds = faust_broker_kwargs(sasl_ssl(tmp_path, ca))["broker_credentials"]
    assert PASSWORD not in repr(creds)


# -- child processes and flags --------------------------------------------------------------------


def test_worker_env_reproduces_the_settings_in_a_child(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: CertificateAuthority
) -> None:
    token = tmp_path / "token"
    token.write_text("tok", encoding="utf-8")
    s = sasl_ssl(tmp_path, ca, web_auth_token_file=token)
    # a stale variable of the parent must not reach the child beside the file setting
    monkeypatch.setenv("CCM_KAFKA_SASL_PASSWORD", "stale")
    env = worker_env(s)
    assert "CCM_KAFKA_SASL_PASSWORD" not in env
    assert env["CCM_KAFKA_SASL_PASSWORD_FILE"] == str(s.kafka_sasl_password_file)
    for name, value in env.items():
        if name.startswith("CCM_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("CCM_KAFKA_SASL_PASSWORD")
    child = Settings()
    assert aiokafka_kwargs(child)["sasl_plain_password"] == PASSWORD
    for field in ("kafka_security_protocol", "kafka_ssl_cafile", "web_auth_token_file"):
        assert getattr(child, field) == getattr(s, field)
    assert security_env(child) == security_env(s)


def test_security_flags_on_top_of_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: CertificateAuthority
) -> None:
    monkeypatch.setenv("CCM_KAFKA_SASL_USERNAME", "env-user")
    password = secret_file(tmp_path, PASSWORD)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.add_commands(sub, lambda p: None)
    args = parser.parse_args(
        [
            "topics",
            "--bootstrap-servers",
            "b:9093",
            "--security-protocol",
            "SASL_SSL",
            "--sasl-mechanism",
            "PLAIN",
            "--sasl-password-file",
            str(password),
            "--ssl-cafile",
            str(ca.cert),
            "--no-ssl-check-hostname",
        ]
    )
    s = cli.settings_from_args(args)
    assert s.kafka_bootstrap_servers == "b:9093"
    assert s.kafka_sasl_username == "env-user"  # from the environment
    kwargs = aiokafka_kwargs(s)
    assert kwargs["sasl_mechanism"] == "PLAIN"
    assert kwargs["sasl_plain_password"] == PASSWORD
    assert kwargs["ssl_context"].check_hostname is False


def test_inconsistent_flags_exit_with_the_reason_and_no_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CCM_KAFKA_SASL_PASSWORD", PASSWORD)
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(), lambda p: None)
    args = parser.parse_args(["topics", "--security-protocol", "SASL_SSL"])
    with pytest.raises(SystemExit) as exc:
        cli.settings_from_args(args)
    assert "CCM_KAFKA_SASL_USERNAME" in str(exc.value.code)
    assert PASSWORD not in str(exc.value.code)


def test_simulator_takes_the_security_flags(tmp_path: Path, ca: CertificateAuthority) -> None:
    from ccm_simulator.__main__ import add_simulator_args

    parser = argparse.ArgumentParser()
    add_simulator_args(parser)
    args = parser.parse_args(
        ["--security-protocol", "SSL", "--ssl-cafile", str(ca.cert), "--patients", "3"]
    )
    overrides = kafka_security.security_overrides(args)
    assert overrides == {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": ca.cert}


def test_no_secret_in_log_output(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, ca: CertificateAuthority
) -> None:
    """Building clients logs nothing that carries the password (aiokafka logs at DEBUG)."""
    caplog.set_level(logging.DEBUG)
    s = sasl_ssl(tmp_path, ca)
    aiokafka_kwargs(s)
    faust_broker_kwargs(s)
    assert PASSWORD not in caplog.text


def test_preflight_names_the_missing_file(tmp_path: Path, ca: CertificateAuthority) -> None:
    good = sasl_ssl(tmp_path, ca)
    kafka_security.preflight(good)  # all there: no error
    for update, name in (
        ({"kafka_ssl_cafile": tmp_path / "gone-ca.pem"}, "gone-ca.pem"),
        ({"kafka_sasl_password_file": tmp_path / "gone-pw"}, "gone-pw"),
        ({"web_auth_token_file": tmp_path / "gone-token"}, "gone-token"),
    ):
        with pytest.raises(KafkaSecurityError, match=name.replace(".", r"\.")):
            kafka_security.preflight(good.model_copy(update=update))


def test_commands_stop_at_start_on_a_missing_security_file(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(), lambda p: None)
    args = parser.parse_args(
        ["worker", "--security-protocol", "SSL", "--ssl-cafile", str(tmp_path / "nope.pem")]
    )
    with pytest.raises(SystemExit) as exc:
        cli.settings_from_args(args)
    assert "nope.pem" in str(exc.value.code)
