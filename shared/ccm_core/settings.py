"""Service settings (pydantic-settings): environment variables ``CCM_*``, or CLI flags.

``KAFKA_BOOTSTRAP_SERVERS`` is honoured too, as the tests and the demo use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Topics(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CCM_TOPIC_", frozen=True)

    timelog: str = "ccm.timelog.v1"
    month_close: str = "ccm.month-close.v1"
    threshold: str = "ccm.threshold.v1"
    billing_record: str = "ccm.billing-record.v1"
    dlq: str = "ccm.timelog.dlq.v1"

    def output_topic(self, kind: str) -> str:
        """The topic of an output of ``kind`` (``ccm_core.tally.Output.kind``).

        The one place that maps outputs to topics: a new output kind gets a topic field here
        and an entry below, and every worker publishes it without further wiring.
        """
        topics = {
            "threshold": self.threshold,
            "billing_record": self.billing_record,
            "rejected": self.dlq,
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
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CCM_", frozen=True)

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
        description="The worker's local directory (faust's datadir).",
    )
    batch_within_seconds: Annotated[float, Field(gt=0)] = Field(
        default=0.02,
        description="Longest wait to fill a batch before processing what arrived.",
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
