"""Where a patient lives: the partition of its key, and the URL other workers reach us at.

faust's table router answers ``/tally/{patient_id}`` from the worker that owns the key's
partition; it finds that partition with the producer's default partitioner (murmur2 of the
key bytes, as Java clients and aiokafka compute it), which :func:`partition_of` mirrors.
"""

from __future__ import annotations

import socket

from aiokafka.partitioner import murmur2

from ccm_core.settings import Settings


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
    scheme = "https" if settings.web_tls_certfile is not None else "http"
    return f"{scheme}://{host}:{settings.web_port}"
