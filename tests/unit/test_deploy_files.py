"""The deployment files agree with each other and with the code.

docker-compose.yml, the Dockerfile, the Prometheus scrape config and alert rules, the Grafana
provisioning and dashboard, and the Kubernetes manifests are parsed here (PyYAML, json) and
checked against the code they deploy: metric names and labels against
``ccm_core.observability`` (through prometheus-client's registry), environment variables against
``ccm_core.settings.Settings``, and container commands against the real ``ccm-tally`` argument
parser. No Docker engine and no ``docker`` CLI are needed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from ccm_core import observability
from ccm_core.settings import Settings, Topics

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "ccm-tally.json"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
K8S_DIR = REPO / "deploy" / "k8s"

WORKER_JOB = "ccm-tally-worker"
WEB_PORT = 6066
SERVICES = {"kafka", "topics", "worker", "simulator", "prometheus", "grafana"}

# Labels Prometheus adds to every scraped series; ``le`` is a histogram bucket's bound.
TARGET_LABELS = {"job", "instance"}
METRIC_TOKEN = re.compile(r"\bccm_[a-z0-9_]+\b")
LABEL_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"\b(ccm_[a-z0-9_]+|up)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


# ---------------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


@cache
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict)
    return found


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment, map or list syntax, values as strings."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def volumes(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of a service's mounts, short or long syntax."""
    mounts = []
    for entry in svc.get("volumes") or []:
        if isinstance(entry, dict):
            mounts.append((entry["type"], str(entry.get("source", "")), str(entry["target"])))
            continue
        source, _, rest = str(entry).partition(":")
        target = rest.split(":")[0]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        mounts.append((kind, source, target))
    return mounts


def published_ports(svc: dict[str, Any]) -> dict[int, int]:
    """{container port: host port} of a service's published ports."""
    ports: dict[int, int] = {}
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            ports[int(entry["target"])] = int(entry["published"])
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) >= 2:
            ports[int(parts[-1])] = int(parts[-2])
    return ports


def container_to_repo(svc: dict[str, Any], container_path: str) -> Path | None:
    """The repository file a container path of ``svc`` resolves to through its bind mounts."""
    wanted = PurePosixPath(container_path)
    for kind, source, target in volumes(svc):
        if kind != "bind":
            continue
        if wanted == PurePosixPath(target) or PurePosixPath(target) in wanted.parents:
            return REPO / source / wanted.relative_to(target)
    return None


def known_env_vars() -> set[str]:
    """Environment variables the service reads (pydantic-settings, ``CCM_`` prefixes)."""
    names = {f"CCM_{field.upper()}" for field in Settings.model_fields}
    names |= {f"CCM_TOPIC_{field.upper()}" for field in Topics.model_fields}
    return names | {"KAFKA_BOOTSTRAP_SERVERS"}


def parse_cli(argv: list[str]) -> Any:
    """Parse a container command with the real ``ccm-tally`` parser (flags must exist)."""
    from ccm_cli.main import build_parser

    return build_parser().parse_args(argv)


# ------------------------------------------------------------------- metrics of the code


class Family:
    def __init__(self, name: str, kind: str, labels: set[str]) -> None:
        self.name, self.kind, self.labels = name, kind, labels

    def exposed(self) -> set[str]:
        """Series names prometheus-client exposes for this family."""
        if self.kind == "counter":
            return {f"{self.name}_total", f"{self.name}_created"}
        if self.kind == "histogram":
            return {f"{self.name}_{suffix}" for suffix in ("bucket", "sum", "count", "created")}
        if self.kind == "summary":
            return {self.name, f"{self.name}_sum", f"{self.name}_count", f"{self.name}_created"}
        if self.kind == "info":
            return {f"{self.name}_info"}
        return {self.name}


@cache
def families() -> dict[str, Family]:
    """Every ``ccm_`` metric family registered by ``ccm_core.observability``, by series name."""
    labels_of: dict[str, set[str]] = {}
    for value in vars(observability).values():
        if isinstance(value, MetricWrapperBase):
            for described in value.describe():
                labels_of[described.name] = set(value._labelnames)
    by_series: dict[str, Family] = {}
    for metric in REGISTRY.collect():
        if not metric.name.startswith("ccm_"):
            continue
        family = Family(metric.name, metric.type, labels_of.get(metric.name, set()))
        for series in family.exposed():
            by_series[series] = family
    return by_series


def check_promql(expr: str, where: str, legend: str = "") -> list[str]:
    """Problems of one PromQL expression against the code's metrics (empty when fine)."""
    problems = []
    known = families()
    used = METRIC_TOKEN.findall(expr)
    for name in used:
        if name not in known:
            problems.append(f"{where}: {name} is not a metric of ccm_core.observability")
    allowed = set(TARGET_LABELS)
    for name in used:
        if name in known:
            allowed |= known[name].labels
            if name.endswith("_bucket"):
                allowed.add("le")
    labels = [
        label.strip()
        for clause in LABEL_CLAUSE.findall(expr)
        for label in clause.split(",")
        if label.strip()
    ]
    for _metric, matchers in SELECTOR.findall(expr):
        labels += MATCHER.findall(matchers)
    labels += LEGEND_LABEL.findall(legend)
    problems += [
        f"{where}: label {label!r} is not on {used}" for label in labels if label not in allowed
    ]
    for job in re.findall(r'\bjob\s*=\s*"([^"]*)"', expr):
        if job != WORKER_JOB:
            problems.append(f"{where}: job {job!r} is not the scrape job {WORKER_JOB!r}")
    return problems


def test_metric_families_are_found() -> None:
    """The registry walk finds the core's metrics (else every drift check would be vacuous)."""
    exposed = families()
    for series in (
        "ccm_events_total",
        "ccm_rejections_total",
        "ccm_event_processing_seconds_bucket",
        "ccm_consumer_lag_messages",
    ):
        assert series in exposed
    assert exposed["ccm_events_total"].labels == {"outcome"}
    assert "ccm_events" not in exposed  # counters are only exposed with _total


def test_promql_checker_catches_drift() -> None:
    assert (
        check_promql('sum by (outcome) (rate(ccm_events_total{job="ccm-tally-worker"}[5m]))', "ok")
        == []
    )
    assert check_promql("rate(ccm_event_total[5m])", "typo")
    assert check_promql("sum by (code) (rate(ccm_events_total[5m]))", "label")
    assert check_promql("ccm_consumer_lag_messages", "legend", legend="{{reason}}")
    assert check_promql('up{job="worker"}', "job")


# ------------------------------------------------------------------------ docker-compose


def test_compose_has_the_stack() -> None:
    assert set(compose()["services"]) >= SERVICES
    for name, svc in compose()["services"].items():
        assert "image" in svc or "build" in svc, name
        assert "container_name" not in svc, f"{name}: a fixed name prevents scaling"


def test_kafka_is_apache_kafka_in_kraft_mode() -> None:
    kafka = service("kafka")
    assert kafka["image"].startswith("apache/kafka:")
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node_id}@kafka:")
    listeners = env["KAFKA_LISTENERS"].split(",")
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert any(item.startswith(f"{controller}://") for item in listeners)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    protocol_map = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert {item.split("://")[0] for item in listeners} <= set(protocol_map)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert not any("ZOOKEEPER" in key for key in env)
    test = kafka["healthcheck"]["test"]
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in " ".join(test)
    assert any(target == env["KAFKA_LOG_DIRS"] for _, _, target in volumes(kafka))


def test_topics_is_a_one_shot_after_kafka() -> None:
    topics = service("topics")
    args = parse_cli(command(topics))
    assert args.command == "topics"
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert topics.get("restart", "no") == "no"
    assert environment(topics)["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_worker_scales_out() -> None:
    worker = service("worker")
    assert worker["deploy"]["replicas"] == 2
    assert parse_cli(command(worker)).command == "worker"
    env = environment(worker)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["CCM_WEB_HOST"] == "0.0.0.0"
    assert env["CCM_PARTITIONS"] == "8"
    assert int(env.get("CCM_WEB_PORT", WEB_PORT)) == WEB_PORT
    assert "ports" not in worker, "replicas would fight over a fixed host port"
    assert str(WEB_PORT) in [str(port) for port in worker["expose"]]
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_worker_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's environment parses into Settings as intended."""
    for key, value in environment(service("worker")).items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.partitions == 8
    assert settings.web_host == "0.0.0.0"
    assert settings.web_port == WEB_PORT


def test_simulator_command_uses_real_flags() -> None:
    simulator = service("simulator")
    args = parse_cli(command(simulator))
    assert args.command == "simulate"
    assert args.patients == 2000
    assert args.rate == 200
    assert args.out is None, "the simulator must produce to Kafka, not to a file"
    assert environment(simulator)["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert simulator["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_ccm_environment_variables_are_known_settings() -> None:
    known = known_env_vars()
    for name, svc in compose()["services"].items():
        for key in environment(svc):
            if key.startswith("CCM_") or key == "KAFKA_BOOTSTRAP_SERVERS":
                assert key in known, f"{name}: {key} is not a setting of ccm_core.settings"


def test_prometheus_and_grafana_ports_published() -> None:
    assert published_ports(service("prometheus")) == {9090: 9090}
    assert published_ports(service("grafana")) == {3000: 3000}


def test_named_volumes_declared_and_used() -> None:
    """Kafka, Prometheus and Grafana keep their data in declared named volumes."""
    declared = set(compose().get("volumes") or {})
    named = {
        name: {source for kind, source, _ in volumes(svc) if kind == "volume"}
        for name, svc in compose()["services"].items()
    }
    assert declared == set().union(*named.values()), (
        "a volume is declared but unused, or not declared"
    )
    for name in ("kafka", "prometheus", "grafana"):
        assert named[name], f"{name} keeps its data in no named volume"


def test_bind_mounts_and_build_context_exist() -> None:
    for name, svc in compose()["services"].items():
        for kind, source, _ in volumes(svc):
            if kind == "bind":
                assert (REPO / source).exists(), f"{name}: {source} is not in the repository"
        build = svc.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert (REPO / context / dockerfile).is_file(), name


def test_grafana_provisioning_is_mounted() -> None:
    grafana = service("grafana")
    env = environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    provisioning = container_to_repo(grafana, "/etc/grafana/provisioning")
    assert provisioning == GRAFANA_DIR / "provisioning"
    home = container_to_repo(grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home == DASHBOARD_FILE
    providers = load_yaml(DASHBOARD_PROVIDERS_FILE)["providers"]
    for provider in providers:
        folder = container_to_repo(grafana, provider["options"]["path"])
        assert folder is not None
        assert folder.is_dir()
        assert DASHBOARD_FILE in folder.glob("*.json")


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    instructions = dockerfile_instructions()
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )
    for keyword, rest in instructions:
        if keyword == "FROM":
            image = rest.split()[0].replace("${PYTHON_VERSION}", args.get("PYTHON_VERSION", ""))
            assert image == "python:3.11-slim", image
    stage = final_stage()
    found = dict(stage)
    user = found["USER"].split(":")[0]
    assert user not in {"root", "0"}
    assert json.loads(found["ENTRYPOINT"]) == ["ccm-tally"]
    assert json.loads(found["CMD"]) == ["worker"]
    assert str(WEB_PORT) in found["EXPOSE"].split()
    healthcheck = found["HEALTHCHECK"]
    assert "/healthz" in healthcheck
    assert "urllib" in healthcheck
    assert "curl" not in healthcheck
    check = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert check[:2] == ["python", "-c"]
    compile(check[2], "HEALTHCHECK", "exec")


def test_dockerfile_copies_what_pip_install_needs() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    copies = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    sources = [
        part.rstrip("/")
        for rest in copies
        if "--from" not in rest
        for part in rest.split()[:-1]
        if not part.startswith("--")
    ]
    assert "pyproject.toml" in sources
    for source in sources:
        if "*" in source:
            continue
        assert (REPO / source).exists(), source
        assert source not in ignored, f"{source} is copied but excluded by .dockerignore"
    pip_installs = [rest for keyword, rest in dockerfile_instructions() if "pip install ." in rest]
    assert pip_installs


# ---------------------------------------------------------------------------- Prometheus


@cache
def prometheus_config() -> dict[str, Any]:
    data = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert isinstance(data, dict)
    return data


def alert_rules() -> list[dict[str, Any]]:
    data = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_prometheus_scrapes_every_worker_replica() -> None:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    worker = jobs[WORKER_JOB]
    assert worker.get("metrics_path", "/metrics") == "/metrics"
    [sd] = worker["dns_sd_configs"]
    assert sd["names"] == ["worker"]  # the compose service: every replica's address
    assert sd["type"] == "A"
    assert sd["port"] == WEB_PORT
    assert "worker" in compose()["services"]


def test_prometheus_loads_the_alert_rules() -> None:
    prometheus = service("prometheus")
    config_flag = next(arg for arg in command(prometheus) if arg.startswith("--config.file="))
    assert (
        container_to_repo(prometheus, config_flag.split("=", 1)[1])
        == PROMETHEUS_DIR / "prometheus.yml"
    )
    # Prometheus resolves relative rule files against the config file's directory
    config_dir = PurePosixPath(config_flag.split("=", 1)[1]).parent
    rule_files = [
        container_to_repo(prometheus, str(config_dir / path))
        for path in prometheus_config()["rule_files"]
    ]
    assert PROMETHEUS_DIR / "alerts.yml" in rule_files
    assert all(path is not None and path.is_file() for path in rule_files)


def test_alert_rules_are_documented() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{rule['alert']}: no {key}"


def test_alerts_cover_the_required_signals() -> None:
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    assert re.search(r'up\{job="ccm-tally-worker"\}\s*==\s*0', exprs)
    for needed in (
        "ccm_consumer_lag_messages",
        "rate(ccm_rejections_total[5m])",
        "rate(ccm_events_total[5m])",
        "ccm_event_processing_seconds_bucket",
        "ccm_event_age_seconds_bucket",
        "ccm_month_close_duration_seconds_bucket",
    ):
        assert needed in exprs, needed


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_metrics_exist_in_the_code(rule: dict[str, Any]) -> None:
    assert check_promql(rule["expr"], rule["alert"]) == []


# ------------------------------------------------------------------------------- Grafana


@cache
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) of every panel target and templating query."""
    queries = [
        (f"panel {panel['id']} {panel['title']!r}", target["expr"], target.get("legendFormat", ""))
        for panel in panels()
        for target in panel.get("targets", [])
    ]
    for variable in dashboard().get("templating", {}).get("list", []):
        query = variable.get("query")
        expr = query.get("query", "") if isinstance(query, dict) else str(query or "")
        queries.append((f"variable {variable['name']}", expr, ""))
    return queries


def test_datasource_is_provisioned() -> None:
    [datasource] = load_yaml(DATASOURCES_FILE)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["uid"] == "ccm-prometheus"


def test_dashboard_is_valid_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    assert 36 <= board["schemaVersion"] <= 41
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    [datasource] = load_yaml(DATASOURCES_FILE)["datasources"]
    occupied: set[tuple[int, int]] = set()
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["w"] > 0
        assert grid["h"] > 0
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for ref in [panel.get("datasource"), *(t.get("datasource") for t in panel["targets"])]:
            assert ref == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == datasource["uid"]


def test_dashboard_shows_the_required_panels() -> None:
    used = {name for _, expr, _ in dashboard_queries() for name in METRIC_TOKEN.findall(expr)}
    for needed in (
        "ccm_events_total",
        "ccm_rejections_total",
        "ccm_thresholds_total",
        "ccm_billing_units_total",
        "ccm_billing_records_total",
        "ccm_event_processing_seconds_bucket",
        "ccm_event_age_seconds_bucket",
        "ccm_consumer_lag_messages",
        "ccm_patient_months",
        "ccm_month_close_duration_seconds_bucket",
        "ccm_assigned_partitions",
    ):
        assert needed in used, needed


def test_dashboard_metrics_exist_in_the_code() -> None:
    problems = [
        problem
        for where, expr, legend in dashboard_queries()
        for problem in check_promql(expr, where, legend)
    ]
    assert problems == []


# ---------------------------------------------------------------------------- Kubernetes


@cache
def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_docs(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path.name
            docs.append(doc)
    return docs


def k8s(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_docs() if doc["kind"] == kind]


def test_k8s_manifests_parse_and_are_complete() -> None:
    kinds = {doc["kind"] for doc in k8s_docs()}
    assert {"Namespace", "ConfigMap", "StatefulSet", "Service", "Job"} <= kinds
    [namespace] = k8s("Namespace")
    for doc in k8s_docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"], doc["kind"]
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    readme = (K8S_DIR / "README.md").read_text(encoding="utf-8")
    assert "partition" in readme.lower()


def test_k8s_worker_deployment() -> None:
    [deployment] = k8s("StatefulSet")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(WEB_PORT)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    [container] = template["spec"]["containers"]
    assert parse_cli(container["args"]).command == "worker"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert ports.get(http["port"], http["port"]) == WEB_PORT
    resources = container["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    known = known_env_vars()
    assert all(item["name"] in known for item in container.get("env", []))
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_k8s_worker_keeps_its_rocksdb_stores_on_a_volume_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A StatefulSet: each pod gets its claim back after a restart, mounted where the
    worker's CCM_DATA_DIR points, with the RocksDB store on and standby replicas."""
    [statefulset] = k8s("StatefulSet")
    assert not k8s("Deployment"), "the worker is a StatefulSet"
    spec = statefulset["spec"]
    services = {svc["metadata"]["name"] for svc in k8s("Service")}
    assert spec["serviceName"] in services
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    pod = spec["template"]["spec"]
    assert claim["metadata"]["name"] not in {v["name"] for v in pod["volumes"]}
    [container] = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dir = PurePosixPath(env["CCM_DATA_DIR"])
    mount = PurePosixPath(mounts[claim["metadata"]["name"]])
    assert data_dir == mount or mount in data_dir.parents
    [config] = k8s("ConfigMap")
    for key, value in {**config["data"], "CCM_DATA_DIR": str(data_dir)}.items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert settings.store == "rocksdb"
    assert settings.standby_replicas >= 1
    assert settings.data_dir == Path(str(data_dir))


def test_compose_workers_keep_their_rocksdb_stores_on_a_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = service("worker")
    env = environment(worker)
    assert env["CCM_STORE"] == "rocksdb"
    [(kind, source, target)] = [v for v in volumes(worker) if v[2] != "/tmp"]
    assert kind == "volume" and source in compose()["volumes"]
    data_dir = PurePosixPath(env["CCM_DATA_DIR"])
    assert PurePosixPath(target) in data_dir.parents, "the data dir must be on the volume"
    # replicas share the volume: each keeps its stores in a folder named after its host
    assert "{hostname}" in env["CCM_DATA_DIR"]


def test_k8s_service_selects_the_workers() -> None:
    [deployment] = k8s("StatefulSet")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for svc in k8s("Service"):
        assert svc["spec"]["selector"].items() <= labels.items()
        assert WEB_PORT in [port["port"] for port in svc["spec"]["ports"]]


def test_k8s_topics_job_and_config() -> None:
    [job] = k8s("Job")
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert parse_cli(container["args"]).command == "topics"
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}
    [config] = k8s("ConfigMap")
    data = config["data"]
    assert set(data) <= known_env_vars()
    assert data["CCM_PARTITIONS"] == "8"
    assert "KAFKA_BOOTSTRAP_SERVERS" in data
    names = {ref["configMapRef"]["name"] for ref in container["envFrom"]}
    [deployment] = k8s("StatefulSet")
    [worker] = deployment["spec"]["template"]["spec"]["containers"]
    names |= {ref["configMapRef"]["name"] for ref in worker["envFrom"]}
    assert names == {config["metadata"]["name"]}


def test_promtool_accepts_the_config_as_laid_out_in_the_repository() -> None:
    """``promtool check config`` on the shipped file, from the repository (not the container):
    the rule files must resolve from here too. promtool comes with Debian's ``prometheus``
    package, which ``.ci/install-system.sh`` installs when missing."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing on CI: .ci/install-system.sh installs it")
        pytest.skip("promtool not installed (make setup installs it)")
    done = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr
