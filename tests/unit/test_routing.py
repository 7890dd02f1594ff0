"""The worker's group assignment: co-partitioned inputs and the partition -> URL routing map."""

from __future__ import annotations

import json
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from ccm_core.settings import Settings
from ccm_worker.routing import advertised_url, partition_of, routing_assignor

TIMELOG, CONTROL = "t.timelog", "t.month-close"


class Cluster:
    """What the range assignor reads of the cluster metadata: each topic's partitions."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions))


def cluster(partitions: int) -> Any:
    return Cluster(partitions)


def test_partition_of_is_the_producers_default_partitioner() -> None:
    partitions = list(range(8))
    for i in range(200):
        key = f"patient-{i}"
        assert partition_of(key, 8) == DefaultPartitioner()(key.encode(), partitions, partitions)


def test_assignment_is_copartitioned_and_carries_every_workers_url() -> None:
    members = {
        f"member-{n}": routing_assignor(f"http://10.0.0.{n}:6066", TIMELOG).metadata(
            [TIMELOG, CONTROL]
        )
        for n in (1, 2, 3)
    }
    plan = routing_assignor("http://leader:6066", TIMELOG).assign(cluster(8), members)
    owner: dict[int, str] = {}
    for member_id, assignment in plan.items():
        parts = dict(assignment.assignment)
        # partition p of the time logs and of the close commands go to the same worker
        assert parts[TIMELOG] == parts[CONTROL]
        owner.update(dict.fromkeys(parts[TIMELOG], member_id))
    assert sorted(owner) == list(range(8))
    # every member receives the whole map, pointing each partition at its owner's URL
    for assignment in plan.values():
        routes = json.loads(assignment.user_data)
        assert {int(p): url for p, url in routes.items()} == {
            p: f"http://10.0.0.{owner[p][-1]}:6066" for p in range(8)
        }


def test_a_worker_learns_the_map_from_its_assignment() -> None:
    mine = routing_assignor("http://10.0.0.1:6066", TIMELOG)
    other = routing_assignor("http://10.0.0.2:6066", TIMELOG)
    members = {"a": mine.metadata([TIMELOG, CONTROL]), "b": other.metadata([TIMELOG, CONTROL])}
    plan = mine.assign(cluster(4), members)
    mine.on_assignment(plan["a"])
    assert mine.routes == {
        0: "http://10.0.0.1:6066",
        1: "http://10.0.0.1:6066",
        2: "http://10.0.0.2:6066",
        3: "http://10.0.0.2:6066",
    }
    assert other.routes == {}  # one class per worker: maps are not shared between workers


def test_advertised_url() -> None:
    assert advertised_url(Settings(web_host="10.1.2.3", web_port=7000)) == "http://10.1.2.3:7000"
    named = Settings(web_host="0.0.0.0", web_advertised_host="worker-1")
    assert advertised_url(named) == "http://worker-1:6066"
    wildcard = advertised_url(Settings(web_host="0.0.0.0"))
    assert "0.0.0.0" not in wildcard and wildcard.endswith(":6066")
