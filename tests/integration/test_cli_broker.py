"""The operator commands against a real broker: the bounded broker wait lets them through when
a broker answers (its failure side is tests/unit/test_cli_errors.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "ccm-tally"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "ccm_cli.main"]
    return subprocess.run(
        [*cli, *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=180,
    )


def test_topics_and_close_reach_a_live_broker(kafka_bootstrap: str) -> None:
    """topics creates the (private) topics, close --due fans out to every partition: exit 0."""
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CCM_BROKER_WAIT_SECONDS": "60",
        "CCM_PARTITIONS": "3",
        "CCM_TOPIC_TIMELOG": f"{prefix}.timelog",
        "CCM_TOPIC_MONTH_CLOSE": f"{prefix}.month-close",
        "CCM_TOPIC_THRESHOLD": f"{prefix}.threshold",
        "CCM_TOPIC_BILLING_RECORD": f"{prefix}.billing-record",
        "CCM_TOPIC_DLQ": f"{prefix}.dlq",
        "CCM_APP_ID": f"ccm-{prefix}",
    }
    topics = run("topics", env=env)
    assert topics.returncode == 0, topics.stderr
    assert f"{prefix}.month-close\tpartitions=3" in topics.stdout
    close = run("close", "--due", "--command-id", f"close-{prefix}", env=env)
    assert close.returncode == 0, close.stderr
    assert f"close command close-{prefix} sent to 3 partitions" in close.stderr
