"""Where a patient lives: the key's partition (what forwarding and faust's router use)."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from ccm_core.settings import Settings
from ccm_worker.routing import advertised_url, partition_of


def test_partition_of_is_the_producers_default_partitioner() -> None:
    partitions = list(range(8))
    for i in range(200):
        key = f"patient-{i}"
        assert partition_of(key, 8) == DefaultPartitioner()(key.encode(), partitions, partitions)


def test_advertised_url() -> None:
    assert advertised_url(Settings(web_host="10.1.2.3", web_port=7000)) == "http://10.1.2.3:7000"
    named = Settings(web_host="0.0.0.0", web_advertised_host="worker-1")
    assert advertised_url(named) == "http://worker-1:6066"
    wildcard = advertised_url(Settings(web_host="0.0.0.0"))
    assert "0.0.0.0" not in wildcard and wildcard.endswith(":6066")
