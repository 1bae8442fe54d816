"""Dashboard actions over HTTP, on SQLite and PostgreSQL: each needs the page's CSRF token and a confirmation,
does what the REST API would, and is recorded as a ``stepline/dashboard.action`` event."""

from __future__ import annotations

from typing import Any

import httpx

from stepline.core.ids import hash_step_id
from stepline.storage.records import AppRecord, FunctionRecord, RunFilter

from ..integration.helpers import drain
from .conftest import Dash


async def recorded(d: Dash) -> list[dict[str, Any]]:
    events = await d.client.store.list_events("stepline/dashboard.action", 100)
    return [e.data for e in reversed(events)]


def location(resp: httpx.Response) -> str:
    return resp.headers["location"]


async def test_cancel_a_sleeping_run_after_confirming(dash: Dash) -> None:
    run_id = await dash.run_of(await dash.send("dash/nap"))
    # Without confirmed=1 the answer is a confirmation page posting the same form; nothing happens yet.
    page = (await dash.act(f"/dashboard/runs/{run_id}/cancel", 200, confirmed=False)).text
    assert f"Cancel run {run_id}?" in page and 'name="confirmed" value="1"' in page
    assert (await dash.client.get_run(run_id)).status == "running"  # type: ignore[union-attr]

    resp = await dash.act(f"/dashboard/runs/{run_id}/cancel")
    assert location(resp).startswith(f"/dashboard/runs/{run_id}?msg=")
    run = await dash.client.get_run(run_id)
    assert run is not None and run.status == "cancelled" and run.error == {
        "name": "Cancelled", "message": "cancelled from the dashboard"}  # fmt: skip
    [audit] = await recorded(dash)
    assert audit["action"] == "cancel" and audit["run_id"] == run_id and audit["by"] == "dev (open dashboard)"
    # Its system events fired as for any cancel.
    assert await dash.client.store.list_events("stepline/function.cancelled", 5)

    assert "already ended" in (await dash.act(f"/dashboard/runs/{run_id}/cancel", 409)).text
    assert "not found" in (await dash.act("/dashboard/runs/01NOPE/cancel", 404)).text


async def test_rerun_from_the_failed_step_succeeds(dash: Dash) -> None:
    failed = await dash.run_of(await dash.send("dash/checkout", {"key": "e"}))
    resp = await dash.act(f"/dashboard/runs/{failed}/rerun", from_step=hash_step_id("charge"),
                          from_step_name="charge")  # fmt: skip
    new_id = location(resp).split("/dashboard/runs/")[1].split("?")[0]
    assert new_id != failed
    await drain(dash.client)
    run = await dash.client.get_run(new_id)
    assert run is not None and run.status == "completed"
    assert run.output == {"cart": {"key": "e", "items": 2}, "receipt": "charged e"}
    steps = {s.display_id: s for s in await dash.client.steps(new_id)}
    assert steps["load-cart"].started_at == (await dash.client.steps(failed))[0].started_at  # copied, not re-run
    audit = (await recorded(dash))[-1]
    assert audit == {**audit, "action": "rerun", "run_id": failed, "new_run_id": new_id,
                     "from_step": hash_step_id("charge")}  # fmt: skip

    whole = location(await dash.act(f"/dashboard/runs/{failed}/rerun")).split("/dashboard/runs/")[1].split("?")[0]
    await drain(dash.client)
    assert (await dash.client.get_run(whole)).status == "completed"  # type: ignore[union-attr]
    assert "no step with id" in (await dash.act(f"/dashboard/runs/{failed}/rerun", 400, from_step="zzz")).text
    assert "not found" in (await dash.act("/dashboard/runs/01NOPE/rerun", 404)).text


async def test_bulk_cancel_and_bulk_rerun_by_filter(dash: Dash) -> None:
    naps = [await dash.run_of(await dash.send("dash/nap", {"i": i})) for i in range(3)]
    greet = await dash.run_of(await dash.send("dash/greet"))
    for i in range(2):
        await dash.send("dash/checkout", {"key": f"bulk{i}"})

    page = (await dash.act("/dashboard/runs/bulk-cancel", 200, confirmed=False, function_id="test-app-nap")).text
    assert "Cancel every queued or running run matching (function_id test-app-nap)?" in page
    resp = await dash.act("/dashboard/runs/bulk-cancel", function_id="test-app-nap", range="1h")
    assert "Cancelled%203%20runs" in location(resp) and "function_id=test-app-nap" in location(resp)
    for run_id in naps:
        assert (await dash.client.get_run(run_id)).status == "cancelled"  # type: ignore[union-attr]
    assert (await dash.client.get_run(greet)).status == "completed"  # type: ignore[union-attr]
    [cancellation] = await dash.client.store.list_cancellations()
    assert cancellation.function_id == "test-app-nap" and cancellation.cancelled == 3
    assert "only queued and running" in (await dash.act("/dashboard/runs/bulk-cancel", 400, status="failed")).text

    resp = await dash.act("/dashboard/runs/bulk-rerun", app_id="test-app")  # failed runs by default
    assert "Started%202%20reruns" in location(resp)
    await drain(dash.client)
    reruns = await dash.client.store.list_runs(RunFilter(function_id="test-app-checkout", status="completed"))
    assert len(reruns) == 2
    audit = await recorded(dash)
    assert [a["action"] for a in audit] == ["bulk_cancel", "bulk_rerun"]
    assert audit[0]["cancelled"] == 3 and audit[1]["rerun"] == 2 and audit[1]["filter"]["status"] == "failed"
    assert "Only ended runs" in (await dash.act("/dashboard/runs/bulk-rerun", 400, status="running")).text


async def test_invoke_a_function_with_a_json_payload(dash: Dash) -> None:
    resp = await dash.act("/dashboard/functions/test-app-greet/invoke", data='{"name": "ivy"}')
    run_id = location(resp).split("/dashboard/runs/")[1].split("?")[0]
    await drain(dash.client)
    run = await dash.client.get_run(run_id)
    assert run is not None and run.output == {"text": "hello ivy"}
    assert "not valid JSON" in (await dash.act("/dashboard/functions/test-app-greet/invoke", 400, data="{")).text
    assert "must be a JSON object" in (await dash.act("/dashboard/functions/test-app-greet/invoke", 400,
                                                      data="[1]")).text  # fmt: skip
    assert "no registered function" in (await dash.act("/dashboard/functions/nope/invoke", 404, data="{}")).text
    assert (await recorded(dash))[-1]["action"] == "invoke"


async def test_send_an_event_from_the_form(dash: Dash) -> None:
    resp = await dash.act("/dashboard/events/send", name="dash/greet", data='{"name": "sam"}', id="")
    event_id = location(resp).split("/dashboard/events/")[1].split("?")[0]
    assert "started%201%20run" in location(resp)
    await drain(dash.client)
    run_id = await dash.run_of(event_id)
    assert (await dash.client.get_run(run_id)).output == {"text": "hello sam"}  # type: ignore[union-attr]
    assert "reserved" in (await dash.act("/dashboard/events/send", 400, name="stepline/x", data="{}")).text
    assert "non-empty" in (await dash.act("/dashboard/events/send", 400, name="", data="{}")).text
    # Recorded actions start no run, whatever the triggers.
    assert (await recorded(dash))[-1] == {**(await recorded(dash))[-1], "action": "send_event", "event_id": event_id}


async def test_sync_and_remove_apps(dash: Dash) -> None:
    resp = await dash.act("/dashboard/apps/sync", url="http://127.0.0.1:9/api/inngest")
    assert "Sync%20failed" in location(resp)
    page = await dash.page("/dashboard/apps")
    assert "http://127.0.0.1:9/api/inngest" in page and "could not be reached" in page
    now = dash.clock.now_ms()
    await dash.client.store.save_app(AppRecord("http://127.0.0.1:9/other", "other-app", "js:v4.24.0", "express",
                                               "1.2.3", "c", now, None, now, now))  # fmt: skip
    page = await dash.page("/dashboard/apps")
    assert "js:v4.24.0" in page and "version 1.2.3" in page and "express" in page
    await dash.act("/dashboard/apps/remove", url="http://127.0.0.1:9/other")
    assert "http://127.0.0.1:9/other" not in await dash.page("/dashboard/apps")
    assert "No app is synced" in (await dash.act("/dashboard/apps/remove", 404, url="http://nope")).text
    assert "Give the app" in (await dash.act("/dashboard/apps/sync", 400, url="")).text
    assert [a["action"] for a in await recorded(dash)] == ["sync_app", "remove_app"]


async def test_every_action_refuses_a_missing_or_wrong_csrf_token(dash: Dash) -> None:
    run_id = await dash.run_of(await dash.send("dash/nap"))
    actions = [f"/dashboard/runs/{run_id}/cancel", f"/dashboard/runs/{run_id}/rerun", "/dashboard/runs/bulk-cancel",
               "/dashboard/runs/bulk-rerun", "/dashboard/functions/test-app-greet/invoke", "/dashboard/events/send",
               "/dashboard/apps/sync", "/dashboard/apps/remove"]  # fmt: skip
    for path in actions:
        for token in ("", "0" * 64):
            resp = await dash.http.post(path, data={"csrf": token, "confirmed": "1", "url": "x", "name": "a/b"})
            assert resp.status_code == 403 and "CSRF" in resp.text, path
    resp = await dash.http.post(actions[0], json={"confirmed": "1"})
    assert resp.status_code == 415
    assert (await dash.client.get_run(run_id)).status == "running"  # type: ignore[union-attr]
    assert await recorded(dash) == []


async def test_pause_a_function_holds_its_runs_and_resume_releases_them(dash: Dash) -> None:
    page = await dash.page("/dashboard/functions/test-app-greet")
    assert 'id="pause-function"' in page and 'id="run-cron"' not in page  # greet has no cron trigger
    confirm = (await dash.act("/dashboard/functions/test-app-greet/pause", 200, confirmed=False)).text
    assert "Pause test-app-greet on every node?" in confirm
    await dash.act("/dashboard/functions/test-app-greet/pause")
    page = await dash.page("/dashboard/functions/test-app-greet")
    assert 'id="fn-paused"' in page and 'id="resume-function"' in page
    assert "s-paused" in await dash.page("/dashboard/functions")
    run_id = await dash.run_of(await dash.send("dash/greet", {"name": "held"}))
    assert (await dash.client.get_run(run_id)).status == "queued"  # type: ignore[union-attr]
    assert "Function paused" in await dash.page(f"/dashboard/runs/{run_id}")
    await dash.act("/dashboard/functions/test-app-greet/resume")
    await drain(dash.client)
    assert (await dash.client.get_run(run_id)).status == "completed"  # type: ignore[union-attr]
    assert [r["action"] for r in await recorded(dash)][-2:] == ["pause", "resume"]
    assert "run-cron" not in await dash.page("/dashboard/functions/test-app-greet")
    assert "has no cron trigger" in (await dash.act("/dashboard/functions/test-app-greet/run-cron", 400)).text


async def test_run_a_cron_function_now_from_its_page(dash: Dash) -> None:
    config = {"triggers": [{"cron": "0 * * * *"}]}
    await dash.client.engine.register("crony", [FunctionRecord("crony-hourly", "crony", "hourly", "Hourly", config)])
    page = await dash.page("/dashboard/functions/crony-hourly")
    assert 'id="run-cron"' in page and "every hour at :00 UTC, next 01:00, 02:00, 03:00" in page
    resp = await dash.act("/dashboard/functions/crony-hourly/run-cron")
    run_id = location(resp).split("?")[0].rsplit("/", 1)[-1]
    run = await dash.client.get_run(run_id)
    assert run is not None and run.function_id == "crony-hourly" and run.status == "queued"
    timer = await dash.client.store.get_event(run.event_id)
    assert timer is not None and timer.name == "inngest/scheduled.timer" and timer.data["cron"] == "0 * * * *"
    assert "Started now; the schedule is unchanged." in await dash.page(location(resp))
    assert [r["action"] for r in await recorded(dash)][-1] == "run_cron"
