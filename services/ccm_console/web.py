"""``ccm-tally console``: the care-team worklist over the status view (aiohttp).

- ``GET /api/worklist?practice=P&month=YYYY-MM[&payer=][&near=MIN][&q=]`` JSON, by urgency;
- ``GET /`` the same as an HTML page: a row per patient, a progress bar toward the payer's
  entry and next add-on thresholds, a check on each code reached, minutes to go, days left,
  a payer filter and a patient-id search; it refreshes itself (a little JavaScript re-reads
  the page and swaps the table, no build step);
- ``GET /healthz`` (alive), ``GET /readyz`` (200 once the topic was read up to its end).

Server-rendered with :mod:`html` escaping rather than a template engine: one page, and no new
dependency for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from html import escape
from urllib.parse import urlencode

import structlog
from aiohttp import web

from ccm_core.settings import Settings

from .view import StatusView, follow_forever
from .worklist import Worklist, WorklistRow, current_month, worklist

log = structlog.get_logger("ccm_console")

VIEW = web.AppKey("view", StatusView)
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
SETTINGS = web.AppKey("settings", Settings)
DEFAULT_ZONE = "America/Detroit"
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BadRequestError(ValueError):
    pass


def _query(request: web.Request, practice_required: bool) -> dict[str, object]:
    q = request.query
    view = request.app[VIEW]
    practice = q.get("practice", "").strip()
    if not practice:
        if practice_required:
            raise BadRequestError("practice is required")
        practices = view.practices()
        practice = practices[0] if practices else ""
    month = q.get("month", "").strip()
    if month:
        if not _MONTH.fullmatch(month):
            raise BadRequestError("month must be YYYY-MM")
    elif practice_required:
        raise BadRequestError("month is required")
    else:
        zones = sorted({s.time_zone for s, _ in view if s.practice_id == practice})
        month = current_month(zones[0] if zones else DEFAULT_ZONE, request.app[CLOCK]())
    near: int | None = None
    if q.get("near", "").strip():
        try:
            near = int(q["near"])
        except ValueError:
            raise BadRequestError("near must be a whole number of minutes") from None
    return {
        "practice_id": practice,
        "service_month": month,
        "payer": q.get("payer", "").strip() or None,
        "near": near,
        "search": q.get("q", "").strip() or None,
    }


def _worklist(request: web.Request, practice_required: bool) -> Worklist:
    args = _query(request, practice_required)
    view: StatusView = request.app[VIEW]
    return worklist(
        view,
        str(args["practice_id"]),
        str(args["service_month"]),
        request.app[CLOCK](),
        payer=args["payer"],  # type: ignore[arg-type]
        near=args["near"],  # type: ignore[arg-type]
        search=args["search"],  # type: ignore[arg-type]
    )


async def api_worklist(request: web.Request) -> web.Response:
    try:
        result = _worklist(request, practice_required=True)
    except BadRequestError as err:
        return web.json_response({"error": str(err)}, status=400)
    return web.Response(text=result.model_dump_json(), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    body = {"ready": view.ready, "patient_months": len(view.statuses)}
    return web.json_response(body, status=200 if view.ready else 503)


async def page(request: web.Request) -> web.Response:
    try:
        result = _worklist(request, practice_required=False)
    except BadRequestError as err:
        return web.Response(text=escape(str(err)), status=400)
    view = request.app[VIEW]
    refresh = request.app[SETTINGS].console_refresh_seconds
    with contextlib.suppress(ValueError):
        refresh = max(0.5, float(request.query.get("refresh", refresh)))
    html = render_page(
        result,
        view.practices(),
        view.months(result.practice_id),
        refresh,
        payer=request.query.get("payer", ""),
        search=request.query.get("q", ""),
    )
    return web.Response(text=html, content_type="text/html")


# ------------------------------------------------------------------------------ rendering


def _bar(row: WorklistRow) -> str:
    scale = row.scale_minutes
    filled = min(100.0, 100.0 * row.qualifying_minutes / scale)
    ticks = "".join(
        f'<span class="tick{" reached" if t.reached else ""}" '
        f'style="left:{100.0 * t.minutes / scale:.1f}%" '
        f'title="{escape(t.code)} unit {t.unit} at {t.minutes} min"></span>'
        for t in row.thresholds
    )
    return (
        f'<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="{scale}" '
        f'aria-valuenow="{row.qualifying_minutes}"><div class="fill" style="width:{filled:.1f}%">'
        f"</div>{ticks}</div>"
    )


def _label(code: str, unit: int, entry_code: str) -> str:
    """``99487`` for the entry code, ``99489&times;2`` for the second add-on unit."""
    return escape(code) if code == entry_code else f"{escape(code)}&times;{unit}"


def _codes(row: WorklistRow) -> str:
    entry = row.thresholds[0].code if row.thresholds else ""
    cells = []
    for t in row.thresholds:
        label = _label(t.code, t.unit, entry)
        attrs = f'data-code="{escape(t.code)}" data-unit="{t.unit}"'
        if t.reached:
            cells.append(f'<span class="code check" {attrs}>&#10003; {label}</span>')
        else:
            cells.append(
                f'<span class="code todo" {attrs}>{label} <small>{t.minutes}</small></span>'
            )
    return " ".join(cells)


def _to_go(row: WorklistRow) -> str:
    nxt = row.next_threshold
    if nxt is None:
        return "at cap"
    entry = row.thresholds[0].code if row.thresholds else ""
    return f"{row.minutes_to_next_threshold} min to {_label(nxt.code, nxt.unit, entry)}"


def _row(row: WorklistRow) -> str:
    state = "closed" if row.closed else ("cap" if row.next_threshold is None else "open")
    return (
        f'<tr class="row {state}" data-patient="{escape(row.patient_id)}" '
        f'data-payer="{escape(row.payer)}" '
        f'data-minutes-to-go="{_blank(row.minutes_to_next_threshold)}">'
        f'<td class="patient">{escape(row.patient_id)}</td>'
        f'<td class="payer">{escape(row.payer)}</td>'
        f'<td class="minutes">{row.qualifying_minutes}</td>'
        f'<td class="progress">{_bar(row)}</td>'
        f'<td class="codes">{_codes(row)}</td>'
        f'<td class="togo">{_to_go(row)}</td>'
        f'<td class="days">{row.days_left}</td>'
        f'<td class="state">{"closed" if row.closed else ""}</td>'
        "</tr>"
    )


def _blank(value: int | None) -> str:
    return "" if value is None else str(value)


def _options(values: list[str], selected: str, empty: str | None = None) -> str:
    out = [f'<option value="">{escape(empty)}</option>'] if empty is not None else []
    for v in values:
        sel = " selected" if v == selected else ""
        out.append(f'<option value="{escape(v)}"{sel}>{escape(v)}</option>')
    return "".join(out)


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.2em;color:#1d2733}
h1{font-size:1.3em;margin:0 0 .4em}
form{margin:.4em 0 1em;display:flex;gap:.8em;flex-wrap:wrap;align-items:end}
label{display:flex;flex-direction:column;font-size:.8em;color:#556}
table{border-collapse:collapse;width:100%}
th,td{padding:.35em .6em;border-bottom:1px solid #e3e6ea;text-align:left;white-space:nowrap}
th{font-size:.8em;color:#556;text-transform:uppercase}
td.minutes,td.days{text-align:right}
.bar{position:relative;width:220px;height:12px;background:#eef1f4;border-radius:6px}
.fill{height:100%;background:#3b82c4;border-radius:6px}
.tick{position:absolute;top:-3px;width:2px;height:18px;background:#9aa4ae}
.tick.reached{background:#1f7a3a}
.code{display:inline-block;padding:0 .4em;border-radius:4px;margin-right:.2em}
.code.check{background:#dcf3e2;color:#1f7a3a;font-weight:600}
.code.todo{background:#f2f3f5;color:#667}
tr.closed{color:#889}
.meta{color:#667;font-size:.85em}
"""

_SCRIPT = """
(function () {
  var every = %(refresh_ms)d;
  function filter() {
    var box = document.getElementById('search');
    var needle = (box ? box.value : '').trim().toLowerCase();
    document.querySelectorAll('#worklist tbody tr').forEach(function (tr) {
      var hit = !needle || tr.dataset.patient.toLowerCase().indexOf(needle) >= 0;
      tr.style.display = hit ? '' : 'none';
    });
  }
  function refresh() {
    fetch(window.location.href, {cache: 'no-store'}).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (text) {
      if (!text) return;
      var doc = new DOMParser().parseFromString(text, 'text/html');
      var fresh = doc.getElementById('worklist');
      var stamp = doc.getElementById('as-of');
      if (fresh) document.getElementById('worklist').replaceWith(fresh);
      if (stamp) document.getElementById('as-of').replaceWith(stamp);
      filter();
    }).catch(function () {}).finally(function () { setTimeout(refresh, every); });
  }
  document.addEventListener('DOMContentLoaded', function () {
    var box = document.getElementById('search');
    if (box) box.addEventListener('input', filter);
    filter();
    setTimeout(refresh, every);
  });
})();
"""


def render_page(
    result: Worklist,
    practices: list[str],
    months: list[str],
    refresh_seconds: float,
    payer: str = "",
    search: str = "",
) -> str:
    """The worklist page (plain HTML; the script only refreshes the table and filters it)."""
    months = months if result.service_month in months else [result.service_month, *months]
    rows = "".join(_row(r) for r in result.rows)
    if not result.rows:
        rows = '<tr class="empty"><td colspan="8">no patient-month matches</td></tr>'
    api = "/api/worklist?" + urlencode(
        {"practice": result.practice_id, "month": result.service_month}
    )
    days = "" if result.days_left is None else f" &middot; {result.days_left} days left"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>CCM worklist &middot; {escape(result.practice_id)} {escape(result.service_month)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style>
<script>{_SCRIPT % {"refresh_ms": int(refresh_seconds * 1000)}}</script>
</head><body>
<h1>Complex CCM worklist &middot; {escape(result.practice_id)} &middot;
{escape(result.service_month)}{days}</h1>
<form method="get" action="/">
<label>practice<select name="practice" onchange="this.form.submit()">
{_options(practices, result.practice_id)}</select></label>
<label>month<select name="month" onchange="this.form.submit()">
{_options(months, result.service_month)}</select></label>
<label>payer<select name="payer" id="payer" onchange="this.form.submit()">
{_options(result.payers, payer, "all payers")}</select></label>
<label>patient id<input type="search" name="q" id="search" value="{escape(search)}"
 placeholder="search"></label>
<noscript><button type="submit">show</button></noscript>
</form>
<p class="meta" id="as-of">{len(result.rows)} patients &middot; most urgent first
(fewest minutes to the next code per day left) &middot; as of
{result.as_of:%Y-%m-%d %H:%M:%S} UTC &middot; <a href="{escape(api)}">JSON</a></p>
<table id="worklist"><thead><tr><th>patient</th><th>payer</th><th>minutes</th>
<th>progress</th><th>codes</th><th>to go</th><th>days left</th><th></th></tr></thead>
<tbody>{rows}</tbody></table>
</body></html>
"""


# ------------------------------------------------------------------------------ app


def make_app(
    settings: Settings, view: StatusView | None = None, clock: Callable[[], datetime] = _utcnow
) -> web.Application:
    """The console's web application over ``view`` (followed from Kafka when it runs)."""
    app = web.Application()
    app[VIEW] = view if view is not None else StatusView()
    app[CLOCK] = clock
    app[SETTINGS] = settings
    app.router.add_get("/", page)
    app.router.add_get("/api/worklist", api_worklist)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def with_kafka(app: web.Application) -> web.Application:
    """Follow the status topic for as long as the app runs."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        stop = asyncio.Event()
        task = asyncio.create_task(
            follow_forever(
                app[VIEW], settings.kafka_bootstrap_servers, settings.topics.tally_status, stop
            )
        )
        yield
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()

    app.cleanup_ctx.append(lifecycle)
    return app


def run_console(settings: Settings) -> int:
    from ccm_core.observability import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    app = with_kafka(make_app(settings))
    log.info(
        "console_starting",
        url=f"http://{settings.console_host}:{settings.console_port}/",
        topic=settings.topics.tally_status,
    )
    web.run_app(
        app, host=settings.console_host, port=settings.console_port, print=None, access_log=None
    )
    return 0
