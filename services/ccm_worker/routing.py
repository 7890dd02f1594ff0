"""Co-partitioned assignment with a routing map: which worker's web port owns which partition.

The group uses the range strategy: every worker subscribes to the time-log and the month-close
topics, which have the same partition count, so partition *p* of both lands on the same worker
(a close command on control partition *p* reaches the ledgers of input partition *p*).

Each member puts its advertised web URL in its subscription metadata; the group leader hands the
whole ``partition -> URL`` map to every member with its assignment, so any worker can forward a
``/tally/{patient_id}`` look-up to the worker that holds that patient's ledger.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.partitioner import murmur2

from ccm_core.settings import Settings

PROTOCOL_NAME = "ccm-range-v1"


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and aiokafka alike) picks for a key."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def advertised_url(settings: Settings) -> str:
    """The URL other workers reach this one's web port at: ``CCM_WEB_ADVERTISED_HOST``, else
    the bind host, else (bound to every interface, as in a container) this host's address."""
    host = settings.web_advertised_host or settings.web_host
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = socket.gethostname()
    return f"http://{host}:{settings.web_port}"


def _url_of(user_data: bytes) -> str | None:
    try:
        url = json.loads(user_data or b"{}").get("url")
    except (ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None


class RoutingAssignor(RangePartitionAssignor):  # type: ignore[misc]
    """Range assignment plus the routing map. Use :func:`routing_assignor` for one worker's
    subclass: aiokafka calls assignors as classes, so the per-worker URL and the received map
    live on a class made for that worker."""

    name = PROTOCOL_NAME
    url: str = ""
    route_topic: str = ""
    routes: dict[int, str] = {}  # replaced (never mutated) on each assignment

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(
            cls.version, list(topics), json.dumps({"url": cls.url}).encode()
        )

    @classmethod
    def assign(
        cls,
        cluster: ClusterMetadata,
        members: Mapping[str, ConsumerProtocolMemberMetadata],
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        plan = super().assign(cluster, members)
        routes: dict[str, str] = {}
        for member_id, assignment in plan.items():
            url = _url_of(members[member_id].user_data)
            if url is None:
                continue
            for topic, partitions in assignment.assignment:
                if topic == cls.route_topic:
                    routes.update({str(p): url for p in partitions})
        blob = json.dumps(routes, sort_keys=True).encode()
        return {
            member_id: ConsumerProtocolMemberAssignment(a.version, a.assignment, blob)
            for member_id, a in plan.items()
        }

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        try:
            raw = json.loads(assignment.user_data or b"{}")
            cls.routes = {int(k): str(v) for k, v in raw.items()}
        except (ValueError, AttributeError):
            cls.routes = {}


def routing_assignor(url: str, route_topic: str) -> type[RoutingAssignor]:
    """A :class:`RoutingAssignor` class for one worker advertising ``url``."""
    return type(
        "WorkerRoutingAssignor",
        (RoutingAssignor,),
        {"url": url, "route_topic": route_topic, "routes": {}},
    )
