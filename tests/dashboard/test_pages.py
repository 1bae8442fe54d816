"""Every dashboard page over HTTP, on SQLite and PostgreSQL: what it shows, its filters, search and paging."""

from __future__ import annotations

import datetime as dt
import html
import re

from stepline.core.flow import normalize_flow
from stepline.storage.records import FunctionRecord

from ..integration.helpers import drain
from .conftest import Dash


async def test_root_redirects_to_the_dashboard_and_the_apis_still_answer(dash: Dash) -> None:
    resp = await dash.http.get("/")
    assert resp.status_code == 307 and resp.headers["location"] == "/dashboard/runs"
    assert (await dash.http.get("/dashboard/")).status_code == 303
    assert (await dash.http.get("/health")).json()["status"] == 200
    assert (await dash.http.get("/openapi.json")).json()["openapi"] == "3.1.0"
    assert (await dash.http.get("/v1/runs")).json()["data"] == []
    assert (await dash.http.post("/e/any-key", json={"name": "dash/none"})).status_code == 200
    # The SDKs' own paths are not the dashboard's.
    assert (await dash.http.get("/dev")).status_code == 404
    css = await dash.http.get("/dashboard/static/dashboard.css")
    js = await dash.http.get("/dashboard/static/dashboard.js")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    assert js.status_code == 200 and "EventSource" in js.text


async def test_runs_list_shows_each_run_with_its_status_and_the_reason_it_waits(dash: Dash) -> None:
    ok = await dash.run_of(await dash.send("dash/greet", {"name": "ann"}))
    failed = await dash.run_of(await dash.send("dash/checkout", {"key": "a"}))
    sleeping = await dash.run_of(await dash.send("dash/nap"))
    page = await dash.page("/dashboard/runs")
    for run_id, status in ((ok, "completed"), (failed, "failed"), (sleeping, "running")):
        row = re.search(rf'<tr data-run-id="{run_id}".*?</tr>', page, re.S)
        assert row, f"run {run_id} is not listed"
        assert f"s-{status}" in row.group(0)
    assert "Sleeping in step &#39;long-nap&#39; until 2026-01-01 01:00:00Z" in page
    assert "card declined for a" in page
    assert page.index(sleeping) < page.index(failed) < page.index(ok)  # newest first


async def test_runs_filters_search_and_paging(dash: Dash) -> None:
    greets = [await dash.run_of(await dash.send("dash/greet", {"n": i})) for i in range(5)]
    failed = await dash.run_of(await dash.send("dash/checkout", {"key": "b"}))
    event_id = await dash.send("dash/nap")
    napping = await dash.run_of(event_id)

    def listed(page: str) -> list[str]:
        return re.findall(r'<tr data-run-id="([^"]+)"', page)

    assert listed(await dash.page("/dashboard/runs?status=failed")) == [failed]
    assert listed(await dash.page("/dashboard/runs?status=running")) == [napping]
    assert listed(await dash.page("/dashboard/runs?function_id=test-app-greet")) == greets[::-1]
    assert set(listed(await dash.page("/dashboard/runs?app_id=test-app"))) == {*greets, failed, napping}
    assert listed(await dash.page("/dashboard/runs?app_id=other")) == []
    assert len(listed(await dash.page("/dashboard/runs?range=1h"))) == 7
    dash.clock.advance(dt.timedelta(hours=2))
    assert listed(await dash.page("/dashboard/runs?range=1h")) == []
    assert len(listed(await dash.page("/dashboard/runs?from=2026-01-01T00:00&to=2026-01-01T00:30"))) == 7
    assert listed(await dash.page("/dashboard/runs?from=2026-01-01T00:30")) == []
    assert "is not a time" in await dash.page("/dashboard/runs?from=yesterday", status=400)
    assert "unknown status" in await dash.page("/dashboard/runs?status=sleeping", status=400)

    # search: a run id opens the run, an event id lists its runs, anything else says so
    resp = await dash.http.get(f"/dashboard/runs?q={failed}")
    assert resp.status_code == 303 and resp.headers["location"] == f"/dashboard/runs/{failed}"
    assert listed(await dash.page(f"/dashboard/runs?q={event_id}")) == [napping]
    assert "No run and no event has the id" in await dash.page("/dashboard/runs?q=nope")

    # paging by cursor, keeping the filter
    first = await dash.page("/dashboard/runs?function_id=test-app-greet&limit=2")
    assert listed(first) == greets[:2:-1]
    nxt = re.search(r'href="([^"]+)" id="next-page"', first)
    assert nxt
    second = await dash.page(html.unescape(nxt.group(1)))
    assert listed(second) == greets[2:0:-1]
    third = await dash.page(html.unescape(re.search(r'href="([^"]+)" id="next-page"', second).group(1)))  # type: ignore[union-attr]
    assert listed(third) == greets[:1] and 'id="next-page"' not in third and "« Newest" in third


async def test_run_page_shows_the_timeline_errors_with_stacks_and_the_trigger_event(dash: Dash) -> None:
    failed = await dash.run_of(await dash.send("dash/checkout", {"key": "c"}))
    page = await dash.page(f"/dashboard/runs/{failed}")
    assert re.search(r'data-step="load-cart".*?s-completed', page, re.S)
    charge = re.search(r'<li class="step lane st-failed" data-step="charge".*?<h2>Logs', page, re.S)
    assert charge and "RuntimeError" in charge.group(0) and "card declined for c" in charge.group(0)
    assert "Traceback" in charge.group(0)  # the stack
    assert 'class="attempt a-failed" data-attempt="1"' in charge.group(0)
    assert 'name="from_step_name" value="charge"' in page
    assert "&#34;key&#34;: &#34;c&#34;" in page  # the trigger event's payload
    assert 'id="run-logs-none"' in page  # this function logs nothing (tests/dashboard/test_run_logs.py)

    ok = await dash.run_of(await dash.send("dash/greet", {"name": "zed"}))
    page = await dash.page(f"/dashboard/runs/{ok}")
    assert 'id="run-output"' in page and "hello zed" in page and 'id="cancel-run"' not in page

    sleeping = await dash.run_of(await dash.send("dash/nap"))
    page = await dash.page(f"/dashboard/runs/{sleeping}")
    assert 'id="idle-reason"' in page and "Sleeping in step &#39;long-nap&#39;" in page
    assert 'id="cancel-run"' in page

    assert "not found" in await dash.page("/dashboard/runs/01NOSUCHRUN", status=404)


async def test_live_part_of_a_page_renders_alone(dash: Dash) -> None:
    run_id = await dash.run_of(await dash.send("dash/greet"))
    headers = {"X-Stepline-Fragment": "live"}
    for path in ("/dashboard/runs", f"/dashboard/runs/{run_id}", "/dashboard/functions", "/dashboard/events",
                 "/dashboard/apps", "/dashboard/functions/test-app-greet"):  # fmt: skip
        fragment = await dash.page(path, headers=headers)
        assert "<html" not in fragment and "<header" not in fragment, path
        assert fragment.strip(), path
    assert run_id in await dash.page("/dashboard/runs", headers=headers)


async def test_functions_pages_show_triggers_flow_control_counts_and_failure_rate(dash: Dash) -> None:
    for i in range(3):
        await dash.send("dash/greet", {"n": i})
    await dash.send("dash/checkout", {"key": "d"})
    await dash.send("dash/nap")
    flow = normalize_flow(
        "limited", {"concurrency": {"limit": 2, "key": "event.data.user"}, "throttle": {"limit": 5, "period": "1m"}}
    )
    config = {"triggers": [{"event": "x/y"}, {"cron": "0 * * * *"}], "flow": flow}
    await dash.client.engine.register("flowy", [FunctionRecord("flowy-limited", "flowy", "limited", "Limited", config)])
    page = await dash.page("/dashboard/functions")
    greet = re.search(r'<tr data-function="test-app-greet">.*?</tr>', page, re.S)
    assert greet and "dash/greet" in greet.group(0) and "3 completed" in greet.group(0)
    assert "0% / 0%" in greet.group(0)
    checkout = re.search(r'<tr data-function="test-app-checkout">.*?</tr>', page, re.S)
    assert checkout and "1 failed" in checkout.group(0) and "100% / 100%" in checkout.group(0)
    nap = re.search(r'<tr data-function="test-app-nap">.*?</tr>', page, re.S)
    assert nap and "1 running" in nap.group(0)
    limited = re.search(r'<tr data-function="flowy-limited">.*?</tr>', page, re.S)
    assert limited and "2 at a time per event.data.user" in limited.group(0)  # settings in words, not JSON
    assert "5 runs per minute" in limited.group(0) and "period_ms" not in limited.group(0)
    assert "every hour at :00 UTC, next 01:00, 02:00, 03:00" in limited.group(0)  # the fake clock: 00:00 UTC

    only_flowy = await dash.page("/dashboard/functions?app_id=flowy")
    assert "flowy-limited" in only_flowy and "test-app-greet" not in only_flowy

    page = await dash.page("/dashboard/functions/test-app-checkout")
    assert 'id="invoke-data"' in page and "card declined for d" in page and "dash/checkout" in page
    assert "No registered function" in await dash.page("/dashboard/functions/nope", status=404)


async def test_events_pages_list_events_their_payload_and_the_runs_they_started(dash: Dash) -> None:
    event_id = await dash.send("dash/greet", {"name": "eve"})
    await dash.send("dash/nap")
    page = await dash.page("/dashboard/events")
    assert event_id in page and "dash/nap" in page and "stepline/function.finished" not in page  # internal: hidden
    assert "stepline/function.finished" in await dash.page("/dashboard/events?internal=1")
    named = await dash.page("/dashboard/events?name=dash/greet")
    assert event_id in named and "dash/nap" not in named
    prefixed = await dash.page("/dashboard/events?name=dash/")  # a prefix, or a pattern with *
    assert event_id in prefixed and "dash/nap" in prefixed
    assert event_id in await dash.page("/dashboard/events?name=*/greet") and "dash/nap" not in named
    run_id = await dash.run_of(event_id)
    row = re.search(rf'<tr data-event-id="{event_id}">.*?</tr>', page, re.S)
    assert row and run_id in row.group(0) and "test-app-greet" in row.group(0) and "s-completed" in row.group(0)
    assert row.group(0).count(f">{event_id}<") == 1 and "sender" not in row.group(0)  # one id where both are one
    page = await dash.page(f"/dashboard/events/{event_id}")
    assert "&#34;name&#34;: &#34;eve&#34;" in page and "Internal id" not in page
    assert run_id in page and "test-app-greet" in page
    assert "not found" in await dash.page("/dashboard/events/01NOPE", status=404)
    # paging
    first = await dash.page("/dashboard/events?limit=1")
    assert "Older »" in first and first.count('<tr data-event-id="') == 1


async def test_replay_an_event_from_its_page(dash: Dash) -> None:
    event_id = await dash.send("dash/greet", {"name": "again"})
    first = await dash.run_of(event_id)
    assert 'id="replay-event"' in await dash.page(f"/dashboard/events/{event_id}")
    resp = await dash.act(f"/dashboard/events/{event_id}/replay")
    copy_id = resp.headers["location"].split("?")[0].rsplit("/", 1)[-1]
    assert copy_id != event_id
    await drain(dash.client)
    [run] = await dash.client.runs_for_event(copy_id)
    assert run.id != first and run.status == "completed" and run.function_id == "test-app-greet"
    copy = await dash.client.store.get_event(copy_id)
    assert copy is not None and copy.data == {"name": "again"}
    [audit] = [e for e in await dash.client.store.list_events("stepline/dashboard.action", 10)
               if e.data["action"] == "replay_event"]  # fmt: skip
    assert audit.data["event_id"] == event_id and audit.data["new_event_id"] == copy_id
    finished = await dash.client.store.list_events("stepline/function.finished", 1)
    assert "not replayed" in (await dash.act(f"/dashboard/events/{finished[0].internal_id}/replay", 400)).text


async def test_apps_page_lists_synced_and_in_process_apps(dash: Dash) -> None:
    page = await dash.page("/dashboard/apps")
    assert "test-app" in page and "in-process" in page
