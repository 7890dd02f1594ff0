"""The worker's HTTP endpoints (aiohttp): metrics, health, readiness and the tally look-up."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .routing import partition_of

if TYPE_CHECKING:
    from .app import TallyWorker

FORWARDED = "X-Ccm-Forwarded"  # set on a look-up forwarded once: never forward it again


class WebServer:
    """``/metrics``, ``/healthz``, ``/readyz`` and ``/tally/{patient_id}`` on the web port."""

    def __init__(self, worker: TallyWorker) -> None:
        self.worker = worker
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/tally/{patient_id}", self.tally)
        self.runner = web.AppRunner(app, access_log=None)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        s = self.worker.settings
        await self.runner.setup()
        await web.TCPSite(self.runner, s.web_host, s.web_port).start()
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition format."""
        return web.Response(body=generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive: the event loop answers."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready: partitions assigned and their ledgers recovered from the changelog."""
        ready = self.worker.is_ready()
        body = {"ready": ready, "partitions": sorted(self.worker.owned)}
        return web.json_response(body, status=200 if ready else 503)

    async def tally(self, request: web.Request) -> web.Response:
        """A patient's months: minutes, codes reached, minutes to the next threshold.

        Answered by the worker that owns the patient's partition; another worker forwards
        the request there (once)."""
        worker = self.worker
        patient_id = request.match_info["patient_id"]
        ledger = worker.ledger(patient_id)
        if ledger is not None:
            months = [m.model_dump(mode="json") for m in worker.engine.summaries(ledger)]
            return web.json_response({"patient_id": patient_id, "months": months})
        partition = partition_of(patient_id, worker.settings.partitions)
        if partition in worker.owned or request.headers.get(FORWARDED):
            return web.json_response({"patient_id": patient_id, "months": []}, status=404)
        owner = worker.route(partition)
        if owner is None or owner == worker.url or self.session is None:
            body = {"error": "partition_owner_unknown", "partition": partition}
            return web.json_response(body, status=503)
        try:
            async with self.session.get(
                f"{owner}/tally/{quote(patient_id, safe='')}", headers={FORWARDED: worker.url}
            ) as answer:
                return web.Response(
                    body=await answer.read(),
                    status=answer.status,
                    content_type="application/json",
                )
        except (aiohttp.ClientError, TimeoutError):
            body = {"error": "owner_unreachable", "partition": partition}
            return web.json_response(body, status=502)
