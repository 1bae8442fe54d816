"""The dashboard in a real browser (Playwright driving Debian's chromium) against real ``stepline dev`` and
``stepline start`` processes running the functions of ``dash_app.py`` in-process.

Skipped only when chromium is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..serving.harness import Server
from .conftest import ADMIN_TOKEN

CHROMIUM = os.environ.get("STEPLINE_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)",
                allow_module_level=True)  # fmt: skip

from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright  # noqa: E402

APP_DIR = str(Path(__file__).parent)
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def _server(tmp: Path, **kw: object) -> Server:
    return Server(workdir=tmp, app_urls=[], extra_args=["--app", "dash_app:client", "--app-dir", APP_DIR],
                  **kw)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = _server(tmp_path_factory.mktemp("dev"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    p = context.new_page()
    p.on("dialog", lambda dialog: dialog.accept())  # every action asks to confirm
    try:
        yield p
    finally:
        context.close()


def _stay(page: Page) -> None:
    """Mark the page: if it reloads or navigates, the mark is gone."""
    page.evaluate("window.__stepline_same_page = true")


def _same_page(page: Page) -> bool:
    return bool(page.evaluate("window.__stepline_same_page === true"))


def test_a_sent_event_shows_its_run_appear_and_complete_without_reloading(dev: Server, page: Page) -> None:
    page.goto(f"{dev.url}/dashboard/runs")
    expect(page.locator("#live-status.on")).to_be_visible()
    _stay(page)
    run_id = dev.run_of(dev.send("dash/greet", {"name": "browser"}))["run_id"]
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    expect(row.locator(".status")).to_have_text("completed")
    assert _same_page(page)

    page.goto(f"{dev.url}/dashboard/events")
    _stay(page)
    event_id = dev.send("dash/greet", {"name": "stream"})
    expect(page.locator(f'tr[data-event-id="{event_id}"]')).to_be_visible()
    assert _same_page(page)


def test_a_failed_run_shows_its_failed_step_then_rerun_from_it_succeeds(dev: Server, page: Page) -> None:
    run_id = dev.trigger("dash/checkout", {"key": "browser"})["run_id"]
    page.goto(f"{dev.url}/dashboard/runs/{run_id}")
    expect(page.locator("#run-status .status")).to_have_text("failed")
    charge = page.locator('li.step[data-step="charge"]')
    expect(charge.locator(".status")).to_have_text("failed")
    expect(charge.locator(".error-box")).to_contain_text("card declined for browser")
    charge.locator(".error-box summary").click()
    expect(charge.locator(".error-box pre")).to_contain_text("Traceback")

    charge.get_by_role("button", name="Rerun from here").click()
    page.wait_for_url(re.compile(r"/dashboard/runs/(?!" + run_id + r")[0-9A-Z]+"))
    expect(page.locator(".flash")).to_contain_text("from step charge")
    expect(page.locator("#run-status .status")).to_have_text("completed")
    expect(page.locator("#run-output")).to_contain_text("charged browser")


def test_cancel_a_sleeping_run(dev: Server, page: Page) -> None:
    run_id = dev.run_of(dev.send("dash/nap"))["run_id"]
    page.goto(f"{dev.url}/dashboard/runs/{run_id}")
    expect(page.locator("#idle-reason")).to_contain_text("Sleeping in step 'long-nap'")
    asked: list[str] = []

    def remember(dialog: Dialog) -> None:
        asked.append(dialog.message)

    page.on("dialog", remember)
    page.locator("#cancel-run").click()
    expect(page.locator("#run-status .status")).to_have_text("cancelled")
    assert asked == [f"Cancel run {run_id}?"]
    assert dev.rest(f"/v1/runs/{run_id}")["status"] == "Cancelled"


def test_filter_runs(dev: Server, page: Page) -> None:
    dev.trigger("dash/greet", {"name": "filter"})
    failed = dev.trigger("dash/checkout", {"key": "filter"})["run_id"]
    page.goto(f"{dev.url}/dashboard/runs")
    page.select_option("#f-status", "failed")
    page.select_option("#f-function", "dash-checkout")
    page.locator("#apply-filters").click()
    page.wait_for_url(re.compile(r"status=failed"))
    rows = page.locator("tr.run-row")
    expect(rows.first).to_be_visible()
    assert all(s == "failed" for s in rows.locator(".status").all_inner_texts())
    expect(page.locator(f'tr[data-run-id="{failed}"]')).to_be_visible()
    page.fill("#q", failed)
    page.locator("#q").press("Enter")
    page.wait_for_url(re.compile(f"/dashboard/runs/{failed}$"))


def test_start_mode_needs_a_login_and_logs_out(tmp_path: Path, page: Page) -> None:
    server = _server(tmp_path, signing_key="signkey-test-" + "cd" * 32)
    server.extra_args += ["--admin-token", ADMIN_TOKEN]
    server.start()
    try:
        page.goto(f"{server.url}/dashboard/runs")
        expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
        page.fill("#token", "not-the-token")
        page.locator("#login").click()
        expect(page.locator("#login-error")).to_contain_text("Wrong admin token")
        page.fill("#token", ADMIN_TOKEN)
        page.locator("#login").click()
        expect(page).to_have_url(re.compile(r"/dashboard/runs$"))
        expect(page.locator("h1")).to_have_text("Runs")
        page.locator("#logout").click()
        expect(page).to_have_url(re.compile(r"/dashboard/login$"))
        page.goto(f"{server.url}/dashboard/functions")
        expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
        assert page.request.get(f"{server.url}/dashboard/stream").status == 401
    finally:
        server.stop()


def test_the_timeline_shows_one_bar_per_attempt_in_order_with_its_error(dev: Server, page: Page) -> None:
    run_id = dev.trigger("dash/rates", {"key": "browser"})["run_id"]
    page.goto(f"{dev.url}/dashboard/runs/{run_id}")
    expect(page.locator("#run-status .status")).to_have_text("completed")
    lane = page.locator('li.step[data-step="fetch-rates"]')
    bars = lane.locator(".track .bar.b-attempt")
    expect(bars).to_have_count(3)
    assert [bars.nth(i).get_attribute("data-attempt") for i in range(3)] == ["1", "2", "3"]
    assert ["bs-failed" in (bars.nth(i).get_attribute("class") or "") for i in range(3)] == [True, True, False]
    lefts = [bars.nth(i).bounding_box()["x"] for i in range(3)]  # type: ignore[index]
    assert lefts[0] < lefts[1] < lefts[2], f"the attempts are drawn in time order: {lefts}"
    expect(lane.locator(".track .bar.b-backoff")).to_have_count(2)
    attempts = lane.locator("li.attempt")
    expect(attempts).to_have_count(3)
    expect(attempts.nth(0).locator(".error-box")).to_contain_text("rate service busy (try 1) for browser")
    expect(attempts.nth(1).locator(".error-box")).to_contain_text("rate service busy (try 2) for browser")
    expect(attempts.nth(2).locator(".attempt-status")).to_have_text("completed")
    expect(attempts.nth(2).locator(".error-box")).to_have_count(0)
    assert "attempt 1 (failed)" in (bars.nth(0).get_attribute("title") or "")
    sleep = page.locator('li.step[data-step="cool-down"] .track .bar.b-sleep')
    assert sleep.bounding_box()["x"] >= lefts[2]  # type: ignore[index]
    page.locator("#step-output-3 summary").click()  # fetch-rates' output, with a copy button
    expect(page.locator("#step-output-3 button.copy")).to_be_visible()


def _chart_total(page: Page, chart: str, series: str) -> float:
    value = page.locator(f'#chart-{chart} li[data-series="{series}"] .total').get_attribute("data-total")
    return float(value or "nan")


def test_a_charts_values_match_the_store_after_a_known_workload(dev: Server, page: Page) -> None:
    for i in range(3):
        dev.trigger("dash/greet", {"name": f"chart{i}"})
    for i in range(2):
        dev.trigger("dash/checkout", {"key": f"chart{i}"})  # the first run of a key fails
    page.goto(f"{dev.url}/dashboard/charts")
    page.select_option("#c-function", "dash-greet")
    page.locator("#range-24h").click()
    page.wait_for_url(re.compile(r"function_id=dash-greet.*range=24h|range=24h.*function_id=dash-greet"))
    expect(page.locator("#chart-runs svg polyline.c-completed")).to_have_count(1)
    for function, status, series in (("dash-greet", "Completed", "completed"), ("dash-checkout", "Failed", "failed")):
        runs = dev.rest(f"/v1/runs?function_id={function}&limit=200")
        assert len(runs) < 200
        page.goto(f"{dev.url}/dashboard/charts?function_id={function}&range=1h")
        in_store = sum(r["status"] == status for r in runs)
        assert in_store >= (3 if status == "Completed" else 2)
        assert _chart_total(page, "runs", series) == in_store
        assert _chart_total(page, "runs", "started") == len(runs)
    assert page.locator('#chart-duration li[data-series="p99"] .total').get_attribute("data-total")  # not empty


def test_one_time_format_tables_that_fit_labels_that_hold_and_the_os_dark_mode(dev: Server, browser: Browser) -> None:
    run_id = dev.trigger("dash/greet", {"name": "format"})["run_id"]
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(f"{dev.url}/dashboard/runs")
        created = page.locator(f'tr[data-run-id="{run_id}"] time').first
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", created.inner_text())  # one format: ISO, UTC
        assert "local time" in (created.get_attribute("title") or "")  # the local time as the tooltip
        wrap = page.locator(".table-wrap").first
        assert wrap.evaluate("el => el.scrollWidth <= el.clientWidth"), "the runs table fits 1280 px"
        for cell in page.locator("tr.run-row td:nth-child(2) a").all()[:5]:  # function names on one line
            box = cell.bounding_box()
            assert box is not None and box["height"] < 30, box
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert sum(int(v) for v in re.findall(r"\d+", background)[:3]) < 120, background  # dark
        page.goto(f"{dev.url}/dashboard/functions/dash-greet")
        label = page.locator("#invoke-data").locator("xpath=..").locator(".label-text")
        box = label.bounding_box()
        assert box is not None and box["height"] < 30, f"the Invoke form's label breaks: {box}"
    finally:
        context.close()
