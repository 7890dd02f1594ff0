"""The console's pure parts (days left, urgency, filters) and its web layer over a view.

Statuses come from the real core (the Harness feeds time logs through ``ccm_core.ingest``), so
the worklist is tested on what the worker actually publishes; the browser test
(``tests/integration/test_console_browser.py``) runs the same pages against Kafka.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from ccm_console.view import StatusView
from ccm_console.web import make_app, render_page
from ccm_console.worklist import days_left, urgency, worklist
from ccm_core.contracts import TallyStatus
from ccm_core.settings import Settings
from tests.unit.unit_helpers import MARCH, PRACTICE, Harness, local, log

# 28 March 2026, 10:00 in Detroit: 4 local days left in March (28, 29, 30, 31)
NOW = local(28, 10)


def view_of(*events: dict[str, Any]) -> StatusView:
    """The console's view after reading the status outputs of ``events`` (as from Kafka)."""
    harness = Harness()
    harness.feed(*events)
    view = StatusView()
    for out in harness.outputs:
        if out.kind == "status":
            view.apply(out.key.encode(), out.to_json().encode())
    view.ready = True
    return view


def minutes(patient: str, total: int, payer: str = "cms", day: int = 2) -> list[dict[str, Any]]:
    """``total`` minutes for ``patient`` as logs of at most 60 minutes on consecutive days."""
    out, left = [], total
    while left > 0:
        size = min(60, left)
        out.append(log(f"{patient}-{day}", local(day), size, patient_id=patient, payer=payer))
        left -= size
        day += 1
    return out


# ------------------------------------------------------------------ days left


def test_days_left_counts_local_calendar_days_today_included() -> None:
    tz = "America/Detroit"
    assert days_left(MARCH, tz, NOW) == 4
    assert days_left(MARCH, tz, local(31, 23, 59)) == 1
    assert days_left(MARCH, tz, local(1, 0, 0)) == 31
    assert days_left(MARCH, tz, datetime(2026, 2, 20, tzinfo=UTC)) == 31  # before the month
    # 1 April 02:00 UTC is still 31 March (22:00) in Detroit: one day left
    assert days_left(MARCH, tz, datetime(2026, 4, 1, 2, 0, tzinfo=UTC)) == 1
    assert days_left(MARCH, tz, datetime(2026, 4, 1, 4, 0, tzinfo=UTC)) == 0  # local midnight
    # the same instant in Chicago is an hour behind: still March there
    assert days_left(MARCH, "America/Chicago", datetime(2026, 4, 1, 4, 30, tzinfo=UTC)) == 1


# ------------------------------------------------------------------ order and filters


def test_worklist_orders_by_minutes_to_next_threshold_per_day_left() -> None:
    view = view_of(
        *minutes("far", 10),  # 50 to go
        *minutes("close", 55),  # 5 to go
        *minutes("mid", 40),  # 20 to go
        *minutes("capped", 120, payer="priority_health"),  # at the payer's cap
        *minutes("addon", 85),  # 99487 reached, 5 to the first 99489
    )
    result = worklist(view, PRACTICE, MARCH, NOW)
    assert [r.patient_id for r in result.rows] == ["addon", "close", "mid", "far", "capped"]
    close = result.rows[1]
    assert (close.minutes_to_next_threshold, close.days_left, close.minutes_per_day) == (
        5,
        4,
        1.25,
    )
    assert result.days_left == 4
    assert result.payers == ["cms", "priority_health"]


def test_worklist_filters_payer_near_and_patient_search() -> None:
    view = view_of(
        *minutes("P-100", 10),
        *minutes("P-200", 55),
        *minutes("B-300", 20, payer="bcbsm"),  # 11 to go under BCBSM (entry at 31)
    )
    assert [r.patient_id for r in worklist(view, PRACTICE, MARCH, NOW, payer="bcbsm").rows] == [
        "B-300"
    ]
    assert [r.patient_id for r in worklist(view, PRACTICE, MARCH, NOW, near=15).rows] == [
        "P-200",
        "B-300",
    ]
    assert [r.patient_id for r in worklist(view, PRACTICE, MARCH, NOW, search="p-1").rows] == [
        "P-100"
    ]
    assert worklist(view, "other-practice", MARCH, NOW).rows == []
    assert worklist(view, PRACTICE, "2026-04", NOW).rows == []


def test_closed_and_ended_months_sort_after_open_ones() -> None:
    harness = Harness()
    harness.feed(*minutes("done", 30))
    harness.close()
    harness.feed(*minutes("open", 30, day=10))
    view = StatusView()
    for out in harness.outputs:
        if out.kind == "status":
            view.apply(out.key.encode(), out.to_json().encode())
    rows = worklist(view, PRACTICE, MARCH, NOW).rows
    assert [(r.patient_id, r.closed) for r in rows] == [("open", False), ("done", True)]
    after = worklist(view, PRACTICE, MARCH, local(2, month=4)).rows
    assert [r.days_left for r in after] == [0, 0]
    assert after[0].minutes_per_day is None


@st.composite
def statuses(draw: st.DrawFn) -> list[TallyStatus]:
    count = draw(st.integers(1, 12))
    out = []
    for n in range(count):
        to_go = draw(st.one_of(st.none(), st.integers(1, 120)))
        qualifying = 60 - to_go if to_go is not None and to_go <= 60 else 0
        out.append(
            TallyStatus(
                patient_id=f"p{n}",
                practice_id=PRACTICE,
                service_month=MARCH,
                time_zone="America/Detroit",
                payer="cms",
                profile_version="x",
                qualifying_minutes=qualifying,
                codes_reached=[],
                thresholds=[],
                next_threshold=None,
                minutes_to_next_threshold=to_go,
                logs=1,
                closed=draw(st.booleans()),
                revision=None,
            )
        )
    return out


@given(statuses(), st.integers(0, 40))
def test_urgency_order_property(found: list[TallyStatus], day_offset: int) -> None:
    """Open rows with something to reach come first, by minutes per day left (never
    decreasing); the order is total and stable (patient id breaks ties)."""
    now = local(1) + timedelta(days=day_offset)
    rows = worklist([(s, NOW) for s in found], PRACTICE, MARCH, now).rows
    keys = [urgency(r) for r in rows]
    assert keys == sorted(keys)
    actionable = [r for r in rows if not r.closed and r.minutes_to_next_threshold is not None]
    assert rows[: len(actionable)] == actionable
    ratios = [
        r.minutes_to_next_threshold / max(r.days_left, 1)  # type: ignore[operator]
        for r in actionable
        if r.days_left > 0
    ]
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(ratios))
    assert len(rows) == len(found)


# ------------------------------------------------------------------ view


def test_view_keeps_the_latest_status_per_patient_month_and_skips_junk() -> None:
    view = view_of(*minutes("a", 30), *minutes("a", 40, day=10))
    assert len(view.statuses) == 1
    [(status, _)] = list(view)
    assert status.qualifying_minutes == 70
    view.apply(b"k", b"not a status")
    assert view.invalid == 1
    view.apply(f"a/{PRACTICE}/{MARCH}".encode(), None)  # a tombstone removes the month
    assert view.statuses == {}


# ------------------------------------------------------------------ web


def _with_client(view: StatusView, test: Any) -> None:
    async def run() -> None:
        app = make_app(Settings(), view, clock=lambda: NOW.astimezone(UTC))
        async with TestClient(TestServer(app)) as client:
            await test(client)

    asyncio.run(run())


def test_api_worklist_json_sorted_and_validated() -> None:
    view = view_of(*minutes("far", 10), *minutes("close", 55))

    async def test(client: TestClient) -> None:  # type: ignore[type-arg]
        r = await client.get("/api/worklist", params={"practice": PRACTICE, "month": MARCH})
        assert r.status == 200
        body = json.loads(await r.text())
        assert [row["patient_id"] for row in body["rows"]] == ["close", "far"]
        assert body["rows"][0]["minutes_to_next_threshold"] == 5
        assert body["rows"][0]["days_left"] == 4
        near = await client.get(
            "/api/worklist", params={"practice": PRACTICE, "month": MARCH, "near": "10"}
        )
        assert [row["patient_id"] for row in json.loads(await near.text())["rows"]] == ["close"]
        assert (await client.get("/api/worklist", params={"month": MARCH})).status == 400
        bad = await client.get("/api/worklist", params={"practice": PRACTICE, "month": "2026-13"})
        assert bad.status == 400
        bad = await client.get(
            "/api/worklist", params={"practice": PRACTICE, "month": MARCH, "near": "x"}
        )
        assert bad.status == 400

    _with_client(view, test)


def test_page_shows_rows_progress_checks_and_refreshes_itself() -> None:
    view = view_of(*minutes("reached", 70), *minutes("<b>x</b>", 10))

    async def test(client: TestClient) -> None:  # type: ignore[type-arg]
        r = await client.get("/", params={"practice": PRACTICE, "month": MARCH})
        assert r.status == 200
        html = await r.text()
        assert 'data-patient="reached"' in html
        assert 'class="code check" data-code="99487"' in html
        assert "20 min to 99489&times;1" in html
        assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html  # escaped
        assert "setTimeout(refresh" in html
        assert html.index('data-patient="reached"') < html.index('data-patient="&lt;b&gt;')
        # without parameters: the first practice and the practice's current local month
        default = await (await client.get("/")).text()
        assert f"{PRACTICE} &middot;\n{MARCH}" in default

    _with_client(view, test)


def test_readyz_waits_for_the_topic_to_be_read() -> None:
    view = StatusView()

    async def test(client: TestClient) -> None:  # type: ignore[type-arg]
        assert (await client.get("/readyz")).status == 503
        view.ready = True
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/healthz")).status == 200

    _with_client(view, test)


@pytest.mark.parametrize("rows", [0, 3])
def test_render_page_is_a_complete_document(rows: int) -> None:
    view = view_of(*[e for n in range(rows) for e in minutes(f"p{n}", 20 + n)])
    result = worklist(view, PRACTICE, MARCH, NOW)
    html = render_page(result, [PRACTICE], [MARCH], 2.0)
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert html.count('<tr class="row') == rows
    assert "setTimeout(refresh, every)" in html and "var every = 2000;" in html
