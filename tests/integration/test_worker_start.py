"""A worker started before its broker: it waits (bounded, each retry logged), then runs.

The compose file, Kubernetes and the demo may start the worker before Kafka answers, and a
broker may be down for a while when a worker (re)starts; the worker must neither exit nor
lose input then (issue 7, supervision). The broker here is a real one that is stopped before
the worker starts and started again on the same address while the worker waits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ccm_localkafka import LocalKafka
from tests.integration.harness import Stack, WorkerProcess, collect, produce, wait_processed
from tests.unit.unit_helpers import PATIENT, encode, local, log

pytestmark = pytest.mark.integration


def test_worker_started_before_the_broker_waits_then_counts(tmp_path: Path) -> None:
    kafka = LocalKafka()
    kafka.start()
    try:
        stack = Stack(kafka.bootstrap_servers, partitions=2)
        kafka.stop(keep_data=True)  # the address is known, nobody answers on it
        worker = WorkerProcess(stack, tmp_path)  # CCM_BROKER_WAIT_SECONDS: the 120 s default
        try:
            worker.spawn()
            time.sleep(8)
            assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
            assert worker.exit_codes == [], worker.tail()
            waiting = [
                json.loads(line)
                for line in worker.log_path.read_text().splitlines()
                if "broker_unavailable_waiting" in line
            ]
            assert waiting, f"each retry is logged:\n{worker.tail()}"
            assert all(w["bootstrap"] == stack.bootstrap for w in waiting)
            assert 0 < waiting[-1]["seconds_left"] < 120

            kafka.start()
            worker.wait_ready(120)
            assert worker.exit_codes == [], "it waited: no exit, no restart"
            logs = [log(f"l{i}", local(3, 9 + i), minutes=20) for i in range(3)]
            produce(stack, [(PATIENT.encode(), encode(e)) for e in logs])
            wait_processed(stack)
            thresholds = collect(stack)["threshold"]
            assert [t["data"]["code"] for t in thresholds] == ["99487"]
        finally:
            worker.stop()
    finally:
        kafka.stop()
