"""The worker's HTTP endpoints, as faust web views: metrics, health, readiness and look-up."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from .app import TallyWorker


def register_views(worker: TallyWorker) -> None:
    app = worker.app

    @app.page("/metrics")
    async def metrics(view: Any, request: Any) -> Any:
        """Prometheus exposition format."""
        return view.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(view: Any, request: Any) -> Any:
        """Alive: the event loop answers."""
        return view.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(view: Any, request: Any) -> Any:
        """Ready: partitions assigned and the table recovered from its changelog."""
        ready = worker.is_ready()
        body = {"ready": ready, "partitions": sorted(worker.owned_partitions())}
        return view.json(body, status=200 if ready else 503)

    @app.page("/tally/{patient_id}")
    @app.table_route(table=worker.table, match_info="patient_id")
    async def tally(view: Any, request: Any, patient_id: str) -> Any:
        """A patient's months: minutes, codes reached, minutes to the next threshold.

        faust's table router sends the request to the worker that owns the key's partition;
        this body runs there."""
        ledger = worker.ledger(patient_id)
        if ledger is None:
            return view.json({"patient_id": patient_id, "months": []}, status=404)
        months = [m.model_dump(mode="json") for m in worker.engine.summaries(ledger)]
        return view.json({"patient_id": patient_id, "months": months})
