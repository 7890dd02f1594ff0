"""A minimal faust-streaming app with ``ccm_worker.faust_fixes`` applied, for
``test_faust_fixes_broker.py``: an agent over the input topic that updates a table (so every
rebalance goes through table recovery) and sends "partition:offset" of each record it
processed to the sink topic. Configured by environment variables; run as
``python -m tests.integration.faust_fixes_app worker -l info --without-web``.
"""

from __future__ import annotations

import os

from ccm_worker import faust_fixes

_only = os.environ.get("FIXES_ONLY")  # comma-separated fix names, to compare; default: all
faust_fixes.apply(None if _only is None else [n for n in _only.split(",") if n])

import faust  # noqa: E402

app = faust.App(
    os.environ["FIXES_APP_ID"],
    broker=f"kafka://{os.environ['FIXES_BOOTSTRAP']}",
    store="memory://",
    processing_guarantee=os.environ.get("FIXES_GUARANTEE", "at_least_once"),
    topic_partitions=int(os.environ["FIXES_PARTITIONS"]),
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    broker_commit_interval=0.5,
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
    web_enabled=False,
)
source = app.topic(
    os.environ["FIXES_SOURCE"],
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)
sink = app.topic(
    os.environ["FIXES_SINK"],
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)
seen = app.Table("seen", default=int)


@app.agent(source)
async def process(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        message = event.message
        seen[f"{message.partition}"] += 1
        await sink.send(key=message.key, value=f"{message.partition}:{message.offset}".encode())


if __name__ == "__main__":
    app.main()
