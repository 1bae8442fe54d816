"""Pause and resume, replay, and internal events in a real browser (Playwright driving Debian's chromium) against
real ``stepline dev`` processes running ``dash_app.py``'s functions: two of them share one database (two nodes).

Skipped only when chromium is not installed (``.ci/run`` installs it)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from ..serving.harness import Server
from .test_browser import _server, browser, page  # noqa: F401 - its fixtures; skips this module without chromium


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Two ``stepline dev`` nodes on one SQLite database, each running the app's functions in-process."""
    tmp = tmp_path_factory.mktemp("two-nodes")
    shared = ["--db", str(tmp / "shared.db")]
    first = _server(tmp)
    first.extra_args += shared
    first.start()
    second = _server(tmp)
    second.extra_args += shared
    try:
        second.start()
        yield first, second
    finally:
        second.stop()
        first.stop()


def _status(node: Server, run_id: str) -> str:
    return str(node.rest(f"/v1/runs/{run_id}")["status"])


def test_pause_holds_runs_on_both_nodes_until_resumed(nodes: tuple[Server, Server], page: Page) -> None:  # noqa: F811
    first, second = nodes
    page.goto(f"{first.url}/dashboard/functions/dash-greet")
    page.locator("#pause-function").click()
    expect(page.locator("#fn-paused")).to_be_visible()
    expect(page.locator(".flash")).to_contain_text("Paused")
    time.sleep(1.5)  # the other node reads the paused functions every second
    held = [second.run_of(second.send("dash/greet", {"name": f"held-{i}"}))["run_id"] for i in range(3)]
    time.sleep(2)  # both nodes' workers had every chance to run them
    assert [_status(second, r) for r in held] == ["Queued"] * 3

    page.goto(f"{second.url}/dashboard/runs/{held[0]}")
    expect(page.locator("#idle-reason")).to_contain_text("Function paused")
    page.goto(f"{second.url}/dashboard/functions")
    expect(page.locator('tr[data-function="dash-greet"] .s-paused')).to_be_visible()
    page.goto(f"{second.url}/dashboard/functions/dash-greet")
    page.locator("#resume-function").click()
    expect(page.locator(".flash")).to_contain_text("Resumed")
    expect(page.locator("#fn-paused")).to_have_count(0)
    ended = [second.ended(r) for r in held]
    assert [r["status"] for r in ended] == ["Completed"] * 3
    assert [r["output"]["text"] for r in ended] == ["hello held-0", "hello held-1", "hello held-2"]
    starts = [r["started_at_ms"] for r in ended]
    assert starts == sorted(starts)  # released in the order they were created


def test_replay_an_event_starts_a_new_run(nodes: tuple[Server, Server], page: Page) -> None:  # noqa: F811
    first, _ = nodes
    event_id = first.send("dash/greet", {"name": "replayed"})
    original = first.ended(first.run_of(event_id)["run_id"])
    page.goto(f"{first.url}/dashboard/events/{event_id}")
    page.locator("#replay-event").click()
    page.wait_for_url(re.compile(r"/dashboard/events/(?!" + event_id + r")[0-9A-Z]+"))
    expect(page.locator(".flash")).to_contain_text(f"Replayed event {event_id}")
    copy_id = page.url.split("?")[0].rsplit("/", 1)[-1]
    run = first.ended(first.run_of(copy_id)["run_id"])
    assert run["run_id"] != original["run_id"] and run["output"] == {"text": "hello replayed"}
    expect(page.locator(f'tr[data-run-id="{run["run_id"]}"] .status')).to_have_text("completed")


def test_internal_events_are_hidden_until_asked_for(nodes: tuple[Server, Server], page: Page) -> None:  # noqa: F811
    first, _ = nodes
    run = first.trigger("dash/greet", {"name": "internal"})  # its end is a stepline/function.finished event
    page.goto(f"{first.url}/dashboard/events")
    row = page.locator(f'tr[data-event-id="{run["event_id"]}"]')
    expect(row).to_be_visible()
    expect(row.locator(".event-runs")).to_contain_text("dash-greet")
    expect(page.locator("table.events")).not_to_contain_text("stepline/function.finished")
    page.locator("#show-internal").check()
    page.locator("form.filters button[type=submit]").click()
    expect(page.locator("table.events")).to_contain_text("stepline/function.finished")
    page.fill("#event-search", "dash/gr")  # a prefix
    page.locator("form.filters button[type=submit]").click()
    expect(row).to_be_visible()
    expect(page.locator("table.events")).not_to_contain_text("stepline/function.finished")
