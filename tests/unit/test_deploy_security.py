"""The secure deployment files agree with each other and with the code.

``docker-compose.secure.yml`` (overlay of docker-compose.yml) and the Kubernetes manifests are
parsed (PyYAML) and checked against ``ccm_core.settings.Settings`` and the secret files
``ccm_localkafka.devsecrets`` writes: every client of Kafka uses SASL_SSL with a CA, secrets
reach containers as files only, every file a setting names is mounted, every listener a
container can reach is encrypted and authenticated, and the patient-data endpoints have a
token. No Docker engine is needed.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ccm_core.settings import Settings
from ccm_localkafka import devsecrets
from ccm_worker.kafka_security import SECURITY_ENV_NAMES
from tests.unit.test_deploy_files import (
    K8S_DIR,
    REPO,
    command,
    compose,
    environment,
    k8s,
    known_env_vars,
    load_yaml,
    parse_cli,
)

SECURE_COMPOSE = REPO / "docker-compose.secure.yml"
CCM_SERVICES = ("topics", "worker", "simulator")
README = REPO / "README.md"


@cache
def secure() -> dict[str, Any]:
    data = load_yaml(SECURE_COMPOSE)
    assert isinstance(data, dict)
    return data


def merged(name: str) -> dict[str, Any]:
    """A service as ``docker compose -f docker-compose.yml -f docker-compose.secure.yml``
    merges it (maps merged key by key, the overlay's values win; lists of secrets added)."""
    base = dict(compose()["services"].get(name, {}))
    over = secure()["services"][name]
    out = {**base, **over}
    for key in ("environment", "depends_on"):
        if isinstance(base.get(key), dict) or isinstance(over.get(key), dict):
            out[key] = {**(base.get(key) or {}), **(over.get(key) or {})}
    out["environment"] = {**environment(base), **environment(over)}
    return out


def secret_targets(svc: dict[str, Any]) -> dict[str, str]:
    """{path in the container: secret name} of a compose service's secrets."""
    targets = {}
    for entry in svc.get("secrets") or []:
        name = entry if isinstance(entry, str) else entry["source"]
        target = name if isinstance(entry, str) else entry.get("target", name)
        path = target if target.startswith("/") else f"/run/secrets/{target}"
        targets[path] = name
    return targets


def settings_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in SECURITY_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def listeners(env: dict[str, str], key: str) -> dict[str, str]:
    """{listener name: host:port} of KAFKA_LISTENERS / KAFKA_ADVERTISED_LISTENERS."""
    return dict(item.split("://", 1) for item in env[key].split(","))


# -- compose ------------------------------------------------------------------------------------


def test_overlay_secures_every_kafka_client(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka_env = merged("kafka")["environment"]
    protocols = dict(
        item.split(":") for item in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    advertised = listeners(kafka_env, "KAFKA_ADVERTISED_LISTENERS")
    for name in CCM_SERVICES:
        svc = merged(name)
        env = svc["environment"]
        assert set(env) <= known_env_vars(), name
        s = settings_of(env, monkeypatch)
        assert s.kafka_security_protocol == "SASL_SSL", name
        assert s.kafka_sasl_mechanism in kafka_env["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
        # the bootstrap address is a SASL_SSL listener of the broker
        [listener] = [n for n, addr in advertised.items() if addr == s.kafka_bootstrap_servers]
        assert protocols[listener] == "SASL_SSL", name
        # secrets are files, mounted as compose secrets
        mounted = secret_targets(svc)
        for setting in ("kafka_sasl_password_file", "kafka_ssl_cafile"):
            assert str(getattr(s, setting)) in mounted, f"{name}: {setting} is not mounted"
        assert s.kafka_sasl_password is None and s.web_auth_token is None, name


def test_overlay_keeps_secrets_out_of_the_environment() -> None:
    for name, svc in secure()["services"].items():
        for key, value in environment(svc).items():
            if any(word in key for word in ("PASSWORD", "TOKEN", "SECRET")):
                assert key.endswith("_FILE") or value.startswith("$${file:") or "${file:" in value
                assert "/run/secrets/" in value, f"{name}: {key} is not a mounted file"


def test_only_loopback_listeners_are_unencrypted() -> None:
    env = merged("kafka")["environment"]
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    for name, address in listeners(env, "KAFKA_LISTENERS").items():
        if protocols[name] not in ("SASL_SSL", "SSL"):
            assert address.startswith("127.0.0.1:"), f"{name} is in clear on {address}"
    for name, address in listeners(env, "KAFKA_ADVERTISED_LISTENERS").items():
        if protocols[name] not in ("SASL_SSL", "SSL"):
            assert address.startswith("127.0.0.1:"), name
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")[1].startswith("127.0.0.1:")
    # the host port goes to a SASL_SSL listener, on the host's loopback
    host_port = env["KAFKA_ADVERTISED_LISTENERS"].split("EXTERNAL://")[1].split(",")[0]
    assert protocols["EXTERNAL"] == "SASL_SSL"
    assert host_port == "localhost:9094"
    # and SCRAM is configured on every SASL listener
    for name, protocol in protocols.items():
        if protocol.startswith("SASL"):
            mechanism = env["KAFKA_SASL_ENABLED_MECHANISMS"].replace("-", "___")
            assert f"KAFKA_LISTENER_NAME_{name}_{mechanism}_SASL_JAAS_CONFIG" in env


def test_broker_keystore_and_its_password_are_secret_files() -> None:
    kafka = merged("kafka")
    env, mounted = kafka["environment"], secret_targets(kafka)
    assert env["KAFKA_SSL_KEYSTORE_LOCATION"] in mounted
    provider = env["KAFKA_SSL_KEYSTORE_PASSWORD"]
    # "$${file:PATH:KEY}" in YAML is "${file:PATH:KEY}" for Kafka's FileConfigProvider
    assert provider.startswith("$${file:/run/secrets/")
    assert provider.split(":")[1] in mounted
    assert env["KAFKA_CONFIG_PROVIDERS"] == "file"
    assert env["KAFKA_CONFIG_PROVIDERS_FILE_CLASS"].endswith("FileConfigProvider")


def test_every_principal_used_is_created_and_has_a_password_file() -> None:
    users_job = secure()["services"]["kafka-users"]
    script = command(users_job)[-1]
    created = set(script.split("for user in ", 1)[1].split(";", 1)[0].split())
    assert created == set(devsecrets.PRINCIPALS)
    assert users_job["network_mode"] == "service:kafka"  # reaches the loopback listener
    used = {merged(name)["environment"]["CCM_KAFKA_SASL_USERNAME"] for name in CCM_SERVICES}
    assert used <= created
    assert merged("simulator")["environment"]["CCM_KAFKA_SASL_USERNAME"] == "ehr-producer"
    for name in CCM_SERVICES:
        deps = merged(name)["depends_on"]
        assert deps["kafka-users"]["condition"] == "service_completed_successfully", name


def test_secret_files_are_the_ones_devsecrets_writes() -> None:
    files = {PurePosixPath(s["file"]).name for s in secure()["secrets"].values()}
    assert files == set(devsecrets.FILES)
    for entry in secure()["secrets"].values():
        assert entry["file"].startswith("./deploy/secrets/dev/")
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8").split()
    assert "deploy/secrets/dev/" in ignored
    declared = set(secure()["secrets"])
    for name, svc in secure()["services"].items():
        assert set(secret_targets(svc).values()) <= declared, name


def test_worker_patient_data_needs_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = merged("worker")
    s = settings_of(worker["environment"], monkeypatch)
    assert str(s.web_auth_token_file) in secret_targets(worker)
    assert parse_cli(command(worker)).command == "worker"


def test_devsecrets_writes_usable_files(tmp_path: Path) -> None:
    written = devsecrets.make_dev_secrets(tmp_path)
    assert {p.name for p in written} >= set(devsecrets.FILES)
    assert devsecrets.make_dev_secrets(tmp_path) == []  # kept on a second run
    password = (tmp_path / "kafka-broker.properties").read_text().strip().split("=", 1)[1]
    # the keystore opens with the password of the properties file and holds a key for "kafka"
    out = subprocess.run(
        [
            "openssl",
            "pkcs12",
            "-in",
            str(tmp_path / "kafka-broker.p12"),
            "-passin",
            f"pass:{password}",
            "-nokeys",
            "-clcerts",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cert = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
        input=out,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:kafka" in cert and "DNS:localhost" in cert
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt")],
        input=out,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    tokens = {(tmp_path / f).read_text() for f in devsecrets.FILES if f.endswith(".password")}
    assert len(tokens) == len(devsecrets.PRINCIPALS)  # one password each
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0


# -- Kubernetes ---------------------------------------------------------------------------------


def _secret_mounts(pod_spec: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """{mount path: secret name} of a container's secret volumes."""
    secrets = {
        v["name"]: v["secret"]["secretName"] for v in pod_spec.get("volumes", []) if "secret" in v
    }
    return {
        m["mountPath"]: secrets[m["name"]]
        for m in container.get("volumeMounts", [])
        if m["name"] in secrets
    }


def _files_of(pod_spec: dict[str, Any], mount: str, secret: str) -> set[str]:
    [volume] = [
        v for v in pod_spec["volumes"] if "secret" in v and v["secret"]["secretName"] == secret
    ]
    return {f"{mount}/{item['path']}" for item in volume["secret"]["items"]}


def test_k8s_config_is_sasl_ssl_with_secret_files(monkeypatch: pytest.MonkeyPatch) -> None:
    [config] = k8s("ConfigMap")
    data = {k: str(v) for k, v in config["data"].items()}
    s = settings_of(data, monkeypatch)
    assert s.kafka_security_protocol == "SASL_SSL"
    assert s.kafka_ssl_check_hostname is True
    assert s.kafka_sasl_password is None and s.web_auth_token is None
    for key in data:
        assert not key.endswith(("PASSWORD", "TOKEN")), f"{key}: secret values go in files"
    [deployment] = k8s("StatefulSet")
    [job] = k8s("Job")
    needs = {
        "worker": (
            deployment["spec"]["template"]["spec"],
            [s.kafka_sasl_password_file, s.kafka_ssl_cafile, s.web_auth_token_file],
        ),
        "topics": (
            job["spec"]["template"]["spec"],
            [s.kafka_sasl_password_file, s.kafka_ssl_cafile],
        ),
    }
    for name, (pod_spec, paths) in needs.items():
        [container] = pod_spec["containers"]
        mounts = _secret_mounts(pod_spec, container)
        files = set().union(*(_files_of(pod_spec, m, sec) for m, sec in mounts.items()))
        for path in paths:
            assert str(path) in files, f"{name}: {path} is not a mounted secret file"
        for volume in pod_spec["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["defaultMode"] & 0o007 == 0, "secrets: not world-readable"
        assert (
            pod_spec["securityContext"].get("fsGroup") == pod_spec["securityContext"]["runAsGroup"]
        ), f"{name}: the group must be able to read the 0440 secret files"


def test_k8s_readme_says_how_to_create_the_secrets() -> None:
    readme = (K8S_DIR / "README.md").read_text(encoding="utf-8")
    for needed in ("kubectl -n ccm-tally create secret generic ccm-tally-kafka", "ccm-tally-web"):
        assert needed in readme
    [deployment] = k8s("StatefulSet")
    pod = deployment["spec"]["template"]["spec"]
    for volume in pod["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["secretName"] in readme
            for item in volume["secret"]["items"]:
                assert f"--from-file={item['key']}=" in readme


def test_readme_security_section() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Security", 1)[1].split("\n## ", 1)[0]
    for needed in (
        "SASL_SSL",
        "CCM_KAFKA_SASL_PASSWORD_FILE",
        "CCM_KAFKA_SSL_CAFILE",
        "CCM_WEB_AUTH_TOKEN_FILE",
        "ACL",
        "DLQ",
        "docker-compose.secure.yml",
        "ccm-tally broker --secure",
    ):
        assert needed in section, needed
    # every security variable of the settings is documented somewhere in the README
    for name in SECURITY_ENV_NAMES:
        assert name in text, f"{name} is not documented in README.md"
