"""Service settings (pydantic-settings): environment variables ``CCM_*``, or CLI flags.

``KAFKA_BOOTSTRAP_SERVERS`` is honoured too, as the tests and the demo use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]


class Topics(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CCM_TOPIC_", frozen=True)

    timelog: str = "ccm.timelog.v1"
    month_close: str = "ccm.month-close.v1"
    threshold: str = "ccm.threshold.v1"
    billing_record: str = "ccm.billing-record.v1"
    dlq: str = "ccm.timelog.dlq.v1"
    fhir_chargeitem: str = "ccm.fhir-chargeitem.v1"
    enrollment: str = "ccm.enrollment.v1"  # input: consent, eligibility, other codes billed
    tally_status: str = "ccm.tally-status.v1"  # compacted: latest status per patient-month

    def output_topic(self, kind: str) -> str:
        """The topic of an output of ``kind`` (``ccm_core.tally.Output.kind``).

        The one place that maps outputs to topics: a new output kind gets a topic field here
        and an entry below, and every worker publishes it without further wiring.
        """
        topics = {
            "threshold": self.threshold,
            "billing_record": self.billing_record,
            "rejected": self.dlq,
            "fhir_chargeitem": self.fhir_chargeitem,
            "status": self.tally_status,
        }
        return topics[kind]

    @classmethod
    def prefixed(cls, prefix: str, timelog: str | None = None) -> Topics:
        """A private set of topic names (``<prefix>.timelog`` …) for tests and benchmarks."""
        return cls(
            timelog=timelog or f"{prefix}.timelog",
            month_close=f"{prefix}.month-close",
            threshold=f"{prefix}.threshold",
            billing_record=f"{prefix}.billing-record",
            dlq=f"{prefix}.dlq",
            fhir_chargeitem=f"{prefix}.fhir-chargeitem",
            enrollment=f"{prefix}.enrollment",
            tally_status=f"{prefix}.tally-status",
        )


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error must not echo a password or token it was given
    model_config = SettingsConfigDict(env_prefix="CCM_", frozen=True, hide_input_in_errors=True)

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("CCM_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    app_id: str = "ccm-tally"
    partitions: Annotated[int, Field(gt=0)] = 8
    replication_factor: Annotated[int, Field(gt=0)] = 1
    topics: Topics = Field(default_factory=Topics)
    processing_guarantee: Literal["exactly_once"] = Field(
        default="exactly_once",
        description="The worker always fences its writes with Kafka transactions "
        "(docs/processing-guarantee.md); the setting exists to say so.",
    )
    data_dir: Path = Field(
        default=Path("ccm-tally-data"),
        description="The worker's local directory (faust's datadir; the RocksDB tables).",
    )
    store: Literal["memory", "rocksdb"] = Field(
        default="memory",
        description="Where the ledger table lives: 'memory' (tests, the demo; rebuilt from the "
        "changelog at every start) or 'rocksdb' (production: one RocksDB per partition under "
        "data_dir, kept across restarts; only the changelog since its last flush is read).",
    )
    ledger_cache: Annotated[int, Field(gt=0)] = Field(
        default=100_000,
        description="rocksdb store: patient-months of decoded ledgers kept in memory (LRU, "
        "about 3 KB each); RSS depends on it, not on the number of patients.",
    )
    standby_replicas: Annotated[int, Field(ge=0)] = Field(
        default=1,
        description="rocksdb store: standby copies of each table partition on other workers "
        "(faust's table_standby_replicas), so a failover reads only the gap.",
    )
    batch_within_seconds: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="When the input fetched so far is taken and a batch is not full, wait "
        "this long once more for input before processing it (0: process what is ready).",
    )
    commit_max_seconds: Annotated[float, Field(ge=0)] = Field(
        default=0.25,
        description="With input waiting (a backlog), batches share a transaction for up to "
        "this long before it commits; without a backlog every batch commits at once.",
    )
    broker_wait_seconds: Annotated[float, Field(ge=0)] = Field(
        default=120.0,
        description="At start, how long to wait for an unreachable broker before exiting 69.",
    )
    web_host: str = "127.0.0.1"
    web_port: Annotated[int, Field(ge=0, le=65535)] = 6066
    web_advertised_host: str | None = Field(
        default=None,
        description="Host other workers use to reach this one (look-up forwarding); "
        "defaults to web_host, or to this host's address when web_host is 0.0.0.0.",
    )
    console_host: str = Field(
        default="127.0.0.1", description="Bind address of the care-team console (worklist)."
    )
    console_port: int = Field(default=6070, description="Port of the care-team console.")
    console_refresh_seconds: Annotated[float, Field(gt=0)] = Field(
        default=5.0, description="How often the worklist page refreshes itself."
    )
    batch_max_events: Annotated[int, Field(gt=0)] = 5000
    close_tick_seconds: Annotated[float, Field(gt=0)] = 60.0
    session_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    stall_exit_seconds: Annotated[float, Field(ge=0)] = Field(
        default=30.0,
        description="Exit (code 75) when input waits but no batch ran for this long; 0: never.",
    )
    profiles_file: Path | None = None
    practices_file: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    # -- Kafka security (every client: worker, simulator, close, topics, demo, tests) ---------
    # Secrets are SecretStr (repr and str show '**********'); ``*_file`` variants read them
    # from a mounted file (Kubernetes secrets) when the client is built, never at import.
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_username_file: Path | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_cafile: Path | None = Field(
        default=None, description="CA bundle (PEM) to verify the brokers; default: system CAs."
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="Private key (PEM) of kafka_ssl_certfile."
    )
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_key_password_file: Path | None = None
    kafka_ssl_check_hostname: bool = True

    # -- HTTP: endpoints with patient data (/tally/...) need a bearer token or mutual TLS -------
    web_auth_token: SecretStr | None = None
    web_auth_token_file: Path | None = None
    web_tls_certfile: Path | None = Field(
        default=None, description="Serve the web port over HTTPS with this certificate (PEM)."
    )
    web_tls_keyfile: Path | None = None
    web_tls_client_cafile: Path | None = Field(
        default=None,
        description="Mutual TLS: client certificates signed by this CA may read patient data "
        "(needs web_tls_certfile).",
    )

    @model_validator(mode="after")
    def _consistent_security(self) -> Settings:
        problems = security_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def kafka_uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    @property
    def kafka_uses_sasl(self) -> bool:
        return self.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def security_problems(s: Settings) -> list[str]:
    """What is inconsistent in the security settings (pure: no file is read here)."""
    problems: list[str] = []

    def one_of(value: object, file: Path | None, name: str) -> None:
        if value is not None and file is not None:
            problems.append(f"set CCM_{name} or CCM_{name}_FILE, not both")

    one_of(s.kafka_sasl_username, s.kafka_sasl_username_file, "KAFKA_SASL_USERNAME")
    one_of(s.kafka_sasl_password, s.kafka_sasl_password_file, "KAFKA_SASL_PASSWORD")
    one_of(s.kafka_ssl_key_password, s.kafka_ssl_key_password_file, "KAFKA_SSL_KEY_PASSWORD")
    one_of(s.web_auth_token, s.web_auth_token_file, "WEB_AUTH_TOKEN")
    if s.kafka_uses_sasl:
        if s.kafka_sasl_username is None and s.kafka_sasl_username_file is None:
            problems.append(
                f"security protocol {s.kafka_security_protocol} needs CCM_KAFKA_SASL_USERNAME "
                "(or CCM_KAFKA_SASL_USERNAME_FILE)"
            )
        if s.kafka_sasl_password is None and s.kafka_sasl_password_file is None:
            problems.append(
                f"security protocol {s.kafka_security_protocol} needs CCM_KAFKA_SASL_PASSWORD_FILE "
                "(or CCM_KAFKA_SASL_PASSWORD)"
            )
    if s.kafka_security_protocol == "SASL_PLAINTEXT" and s.kafka_sasl_mechanism == "PLAIN":
        problems.append(
            "SASL mechanism PLAIN over SASL_PLAINTEXT sends the password in clear: "
            "use SASL_SSL, or a SCRAM mechanism"
        )
    tls_only = (s.kafka_ssl_cafile, s.kafka_ssl_certfile, s.kafka_ssl_keyfile)
    if not s.kafka_uses_tls and any(f is not None for f in tls_only):
        problems.append(
            f"Kafka TLS files are set but CCM_KAFKA_SECURITY_PROTOCOL is "
            f"{s.kafka_security_protocol}: use SSL or SASL_SSL"
        )
    if (s.kafka_ssl_certfile is None) != (s.kafka_ssl_keyfile is None):
        problems.append("CCM_KAFKA_SSL_CERTFILE and CCM_KAFKA_SSL_KEYFILE go together")
    if (s.web_tls_certfile is None) != (s.web_tls_keyfile is None):
        problems.append("CCM_WEB_TLS_CERTFILE and CCM_WEB_TLS_KEYFILE go together")
    if s.web_tls_client_cafile is not None and s.web_tls_certfile is None:
        problems.append("CCM_WEB_TLS_CLIENT_CAFILE (mutual TLS) needs CCM_WEB_TLS_CERTFILE")
    return problems
