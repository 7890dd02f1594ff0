"""The care-team console in a real headless Chromium against a running stack.

Real broker (the session's), a real worker process (the harness), two real console replicas
(``ccm-tally console``), Debian's ``chromium`` and ``chromedriver`` driven by Selenium. The test
reads the page as a care manager does: which patients are listed, in which order, and that a
code's check appears by itself (the page refreshes) once a log brings a patient over 60
minutes. It only relies on the worker publishing the core's status outputs to
``settings.topics.output_topic("status")``, whatever the worker's engine.

``CCM_CONSOLE_SCREENSHOT=docs/console-worklist.png`` also saves the final page there (the
README's screenshot); a screenshot is always kept in the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from ccm_console.process import ConsoleProcess
from ccm_core.months import local_month, parse_month, zone
from ccm_worker.process import WorkerProcess
from tests.integration.harness import Stack, produce, wait_processed
from tests.unit.unit_helpers import encode
from tests.unit.unit_helpers import log as time_log

pytestmark = pytest.mark.integration

# The practice's zone comes from a practices file the worker reads; the console takes it from
# the statuses. UTC+14 puts the practice's local month ahead of the test machine's clock, so
# the page shows days left on most days of the month.
TZ = "Pacific/Kiritimati"
PRACTICE = "lakeside-im"
PRACTICES_TOML = f"""
[practices.{PRACTICE}]
time_zone = "{TZ}"
"""
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,640",
)


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:  # .ci/install-system.sh installs both
        raise RuntimeError("chromium / chromedriver missing: run .ci/install-system.sh")
    return browser, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    # an explicit driver: Selenium Manager never goes to the network for one
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def this_month(now: datetime) -> tuple[str, datetime]:
    """The practice's local month four hours ago and its start: every log of the test lies
    within the first three hours of the month, so in the past (the worker rejects a log
    recorded before it ended)."""
    month = local_month(now - timedelta(hours=4), TZ)
    year, mon = parse_month(month)
    return month, datetime(year, mon, 1, tzinfo=zone(TZ))


def logs_for(
    patient: str, payer: str, total: int, start: datetime, now: datetime, tag: str = "a"
) -> list[tuple[bytes, bytes]]:
    """``total`` minutes for ``patient`` from ``start``, in logs of at most 60 minutes."""
    out, left, at, n = [], total, start, 0
    while left > 0:
        size = min(60, left)
        event = time_log(
            f"{patient}-{tag}{n}",
            at,
            size,
            patient_id=patient,
            practice_id=PRACTICE,
            payer=payer,
            recorded_at=now,
        )
        out.append((patient.encode(), encode(event)))
        left -= size
        at += timedelta(minutes=size)
        n += 1
    return out


def rows(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr.row")
    return [str(tr.get_attribute("data-patient")) for tr in found]


def has_check(driver: Any, patient: str, code: str) -> bool:
    from selenium.webdriver.common.by import By

    selector = f'tr[data-patient="{patient}"] .code.check[data-code="{code}"]'
    return bool(driver.find_elements(By.CSS_SELECTOR, selector))


def test_worklist_page_lists_patients_by_urgency_and_checks_a_code_live(
    kafka_bootstrap: str, tmp_path: Path, browser: Any
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    now = datetime.now(UTC)
    month, start = this_month(now)
    # minutes to the next threshold: P-01 5 (99487), P-04 5 (first 99489, Medicaid),
    # P-02 11 (BCBSM enters at 31), P-03 30, P-06 50, P-05 at Priority Health's cap
    patients = [
        ("P-01", "cms", 55),
        ("P-02", "bcbsm", 20),
        ("P-03", "cms", 30),
        ("P-04", "medicaid", 85),
        ("P-05", "priority_health", 120),
        ("P-06", "cms", 10),
    ]
    stack = Stack(kafka_bootstrap, partitions=2)
    stack.create_topics()
    practices = tmp_path / "practices.toml"
    practices.write_text(PRACTICES_TOML, encoding="utf-8")
    worker = WorkerProcess(
        stack.settings.model_copy(update={"practices_file": practices}), tmp_path
    )
    worker.start()
    consoles: list[ConsoleProcess] = []
    try:
        produce(
            stack,
            [m for p, payer, total in patients for m in logs_for(p, payer, total, start, now)],
        )
        wait_processed(stack)
        for label in ("console-a", "console-b"):  # replicas: each reads the topic itself
            consoles.append(
                ConsoleProcess(stack.settings, tmp_path, label, refresh_seconds=1.0).start()
            )
        query = urlencode({"practice": PRACTICE, "month": month})
        wait = WebDriverWait(browser, 90, poll_frequency=0.25)

        expected = ["P-01", "P-04", "P-02", "P-03", "P-06", "P-05"]
        browser.get(f"{consoles[0].url}?{query}")
        wait.until(lambda d: rows(d) == expected)
        assert not has_check(browser, "P-01", "99487")
        assert has_check(browser, "P-04", "99487")  # 85 minutes: entry code reached
        assert has_check(browser, "P-05", "99489")  # at the cap: both add-ons reached
        # the other replica serves the same worklist, without asking any worker
        api = f"/api/worklist?{query}"
        a, b = consoles[0].get(api), consoles[1].get(api)
        assert a is not None and b is not None
        assert [r["patient_id"] for r in b["rows"]] == expected
        assert a["rows"] == b["rows"]

        # a log arrives: P-06 goes from 10 to 65 minutes; the page refreshes by itself and
        # shows the 99487 check, and P-06 moves up (25 minutes to 99489 now)
        late_start = start + timedelta(hours=2, minutes=5)  # after P-06's first log
        produce(stack, logs_for("P-06", "cms", 55, late_start, now, tag="b"))
        wait.until(lambda d: has_check(d, "P-06", "99487"))
        wait.until(lambda d: rows(d) == ["P-01", "P-04", "P-02", "P-06", "P-03", "P-05"])
        togo = browser.find_element("css selector", 'tr[data-patient="P-06"] td.togo').text
        assert togo.startswith("25 min to 99489")

        # the payer filter and the patient search
        browser.get(f"{consoles[1].url}?{query}&payer=cms")
        wait.until(lambda d: rows(d) == ["P-01", "P-06", "P-03"])
        search = browser.find_element("id", "search")
        search.send_keys("p-03")
        wait.until(
            lambda d: (
                [
                    tr.get_attribute("data-patient")
                    for tr in d.find_elements("css selector", "#worklist tbody tr.row")
                    if tr.is_displayed()
                ]
                == ["P-03"]
            )
        )

        browser.get(f"{consoles[0].url}?{query}")
        wait.until(lambda d: len(rows(d)) == len(patients))
        expected_days = consoles[0].get(api)["days_left"]
        days = browser.find_element("css selector", 'tr[data-patient="P-01"] td.days').text
        assert int(days) == expected_days
        browser.save_screenshot(str(tmp_path / "console-worklist.png"))
        target = os.environ.get("CCM_CONSOLE_SCREENSHOT")
        if target:
            browser.save_screenshot(target)
    finally:
        for console in consoles:
            console.stop()
        worker.stop()
