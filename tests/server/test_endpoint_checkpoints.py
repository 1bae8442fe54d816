"""Durable endpoints (issue 14, item 7: sync checkpointing, ``server/endpoint_api.py``): runs an app starts with
``POST /v1/checkpoint``. A scripted app plays the npm SDK's endpoint when the server resumes a run; the real store
and the fake clock. (The real npm SDK end to end: ``tests/compat/test_durable_endpoints.py``.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

from stepline.core.ids import hash_step_id, new_ulid
from stepline.server.endpoint_api import OUTPUT_CSP

from .fake_app import SIGNING_KEY, Call, FakeApp, MakeStack, Reply, ops
from .test_checkpoints import complete_op, ran


def new_run_body(app: FakeApp, run_id: str, *steps: dict[str, Any]) -> dict[str, Any]:
    origin = urlsplit(app.url)
    data = {"content_type": "", "domain": f"{origin.scheme}://{origin.netloc}", "ip": "", "method": "GET",
            "path": "/api/report", "query_params": "", "body": "", "fn": ""}  # fmt: skip
    return {"run_id": run_id, "event": {"name": "inngest/http.request", "data": data}, "steps": list(steps),
            "ts": 0, "request_version": 2, "retries": 3}  # fmt: skip


async def test_bad_checkpoints_get_a_precise_error_and_store_nothing(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    good = new_run_body(app, new_ulid())
    cases: list[tuple[Any, str]] = [
        ({**good, "run_id": "no spaces allowed"}, "is not a run id"),
        ({**good, "event": {"name": "inngest/http.request", "data": {}}}, "needs data.domain"),
        ({**good, "event": {"data": {"domain": "ftp://x", "path": "/"}}}, "is not an http(s) origin"),
        # The app is named after the domain's host: the URL called must be on that host.
        ({**good, "event": {"data": {**good["event"]["data"], "domain": "http://a.example@127.0.0.1:9"}}}, "origin"),
        ({**good, "event": {"data": {**good["event"]["data"], "domain": "http://a.example/x"}}}, "origin"),
        ({**good, "event": {"data": {**good["event"]["data"], "path": ".evil.example/x"}}}, "start with '/'"),
        ({**good, "steps": {"op": "StepRun"}}, "'steps' is a list of ops"),
        ({**good, "steps": [{"op": "StepRun", "data": 1}]}, "needs an 'op' and a step 'id'"),
        ([good], "is a JSON object"),
    ]
    for body, message in cases:
        res = await s.api.post("/v1/checkpoint", json=body)
        assert res.status_code == 400 and message in res.text, (body, res.text)
    res = await s.api.post("/v1/checkpoint", content=b"{nope", headers={"content-type": "application/json"})
    assert res.status_code == 400 and "not valid JSON" in res.text
    assert await s.store.get_run(good["run_id"]) is None
    assert await s.events("inngest/http.request") == []


async def test_steps_and_run_complete_end_the_run_with_the_endpoints_response(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    run_id = new_ulid()
    res = await s.api.post("/v1/checkpoint", json=new_run_body(app, run_id, ran("a", 1)))
    assert res.status_code == 200, res.text
    data = res.json()["data"]
    assert (data["run_id"], data["app_id"]) == (run_id, "endpoint-" + urlsplit(app.url).netloc.replace(":", "-"))
    assert data["fn_id"] == f"{data['app_id']}-GET-api-report" and data["token"] and data["realtime_token"]
    run = await s.run(run_id)
    assert (run.status, run.lease_owner) == ("running", f"endpoint:{run_id}")
    response = {"status": 201, "headers": {"content-type": "text/plain", "x-report": "yes"}, "body": "done"}
    steps_body = {"fn_id": data["fn_id"], "app_id": data["app_id"], "run_id": run_id,
                  "steps": [ran("b", 2), complete_op(response)]}  # fmt: skip
    res = await s.api.post(f"/v1/checkpoint/{run_id}/steps", json=steps_body)
    assert res.status_code == 200, res.text
    run = await s.run(run_id)
    assert (run.status, run.output) == ("completed", response)
    assert [(x.display_id, x.output) for x in await s.store.list_steps(run_id)] == [("a", 1), ("b", 2)]
    out = await s.api.get(f"/v1/http/runs/{run_id}/output", params={"token": data["token"]})
    assert (out.status_code, out.text, out.headers["x-report"]) == (201, "done", "yes")
    # Later checkpoints of the ended run, and the same run id again, are refused.
    assert (await s.api.post(f"/v1/checkpoint/{run_id}/steps", json=steps_body)).status_code == 409
    assert (await s.api.post("/v1/checkpoint", json=new_run_body(app, run_id))).status_code == 409
    assert (await s.api.get(f"/v1/http/runs/{run_id}/output", params={"token": "x"})).status_code == 401


async def test_a_run_its_app_never_ends_is_resumed_by_calling_the_endpoint(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack(call_timeout=30.0)
    app.start()
    run_id = new_ulid()
    res = await s.api.post("/v1/checkpoint", json=new_run_body(app, run_id, ran("a", 1)))
    assert res.status_code == 200, res.text
    calls: list[Call] = []

    async def endpoint(call: Call) -> Reply:  # the SDK's forced execution: replays "a", runs "b", completes
        calls.append(call)
        return ops(complete_op({"status": 200, "headers": {}, "body": "resumed"}))

    app.script(None, endpoint)  # (an endpoint URL names no fnId)
    await s.advance(20)
    assert calls == [] and (await s.run(run_id)).status == "running"  # a checkpoint renews the app's lease
    res = await s.api.post(f"/v1/checkpoint/{run_id}/steps", json={"run_id": run_id, "steps": [ran("b", 2)]})
    assert res.status_code == 200
    await s.advance(20)
    assert calls == []
    await s.advance(15)  # the app's lease expired: a worker calls the endpoint
    [call] = calls
    assert call.path == "/api/report" and call.headers["x-run-id"] == run_id
    assert call.headers["x-inngest-signature"] == ""  # dev: present and empty, so the SDK takes it as Inngest's
    run = await s.run(run_id)
    assert (run.status, run.output["body"]) == ("completed", "resumed")
    assert {x.step_id for x in await s.store.list_steps(run_id)} == {hash_step_id("a"), hash_step_id("b")}


async def test_signed_servers_want_the_signing_key(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack(kind="cloud", signing_keys=(SIGNING_KEY,))
    run_id = new_ulid()
    assert (await s.api.post("/v1/checkpoint", json=new_run_body(app, run_id))).status_code == 401
    res = await s.api.post("/v1/checkpoint", json=new_run_body(app, run_id),
                           headers={"Authorization": f"Bearer {SIGNING_KEY}"})  # fmt: skip
    assert res.status_code == 200, res.text
    assert (await s.api.post(f"/v1/checkpoint/{run_id}/steps", json={"steps": []})).status_code == 401


async def test_a_failed_step_is_stored_and_an_erring_one_retried_after_the_backoff(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    failed_run, erring_run = new_ulid(), new_ulid()
    error = {"name": "NonRetriableError", "message": "no stock", "stack": None}
    failed = {"op": "StepFailed", "id": hash_step_id("reserve"), "displayName": "reserve", "error": error}
    res = await s.api.post("/v1/checkpoint", json=new_run_body(app, failed_run, ran("a", 1), failed))
    assert res.status_code == 200, res.text
    steps = {x.display_id: (x.status, x.error) for x in await s.store.list_steps(failed_run)}
    assert steps == {"a": ("completed", None), "reserve": ("failed", error)}  # the SDK replays the failure
    run = await s.run(failed_run)
    assert (run.lease_owner, run.due_at) == (None, s.now())  # a worker calls the endpoint at once
    erring = {**failed, "op": "StepError", "error": {"name": "Error", "message": "flaky", "stack": None}}
    res = await s.api.post("/v1/checkpoint", json=new_run_body(app, erring_run, erring))
    assert res.status_code == 200, res.text
    run = await s.run(erring_run)
    assert run.lease_owner is None and run.due_at is not None and run.due_at > s.now()
    assert await s.store.list_steps(erring_run) == []


async def test_output_waiters_are_capped_and_woken_by_the_runs_end(app: FakeApp, make_stack: MakeStack) -> None:
    """Anyone holding a run's output token (the endpoint's callers) could open thousands of output requests, each
    querying the store every 100 ms for 5 minutes: they count against the node's waiting requests (429 beyond)
    and wait on the engine's run-end notices."""
    s = await make_stack(max_waiting_requests=1)
    run_id = new_ulid()
    data = (await s.api.post("/v1/checkpoint", json=new_run_body(app, run_id, ran("a", 1)))).json()["data"]
    url, token = f"/v1/http/runs/{run_id}/output", {"token": data["token"]}
    held = asyncio.create_task(s.api.get(url, params=token))
    await asyncio.sleep(0.3)
    extra = await asyncio.wait_for(s.api.get(url, params=token), 5)
    assert (extra.status_code, extra.headers["retry-after"]) == (429, "1"), extra.text
    response = {"status": 200, "headers": {}, "body": "ok"}
    steps_body = {"fn_id": data["fn_id"], "app_id": data["app_id"], "run_id": run_id, "steps": [complete_op(response)]}
    assert (await s.api.post(f"/v1/checkpoint/{run_id}/steps", json=steps_body)).status_code == 200
    out = await asyncio.wait_for(held, 5)
    assert (out.status_code, out.text) == (200, "ok")


async def test_a_checkpoints_event_is_checked_as_any_event(app: FakeApp, make_stack: MakeStack) -> None:
    """The event a new run's checkpoint carries is stored and matched like a sent one: it gets the event API's
    checks (a 400 naming the problem, nothing stored) instead of a 500 or an event no API can read back."""
    s = await make_stack()
    good = new_run_body(app, new_ulid())
    data = good["event"]["data"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good["event"], "ts": 2**70}, "not unix milliseconds"),
        ({**good["event"], "data": {**data, "n": 2**70}}, "64-bit"),
        ({**good["event"], "data": {**data, "x": "\ud800"}}, "surrogate"),
        ({**good["event"], "name": "a\x00b"}, "NUL"),
        ({**good["event"], "id": "x" * 600}, "the limit is 512"),
    ]
    for event, message in cases:
        body = json.dumps({**good, "event": event})  # ASCII: a lone surrogate goes as its escape
        res = await s.api.post("/v1/checkpoint", content=body, headers={"content-type": "application/json"})
        assert res.status_code == 400 and message in res.text, (event, res.text)
    assert await s.store.get_run(good["run_id"]) is None
    assert await s.events("inngest/http.request") == []
    assert (await s.api.post("/v1/checkpoint", json=good)).status_code == 200


async def test_the_output_url_serves_the_endpoints_page_sandboxed(app: FakeApp, make_stack: MakeStack) -> None:
    """The output URL is on the server's origin, the dashboard's: the endpoint's response (often built from its
    callers' input) is served in a CSP sandbox (scripts run in an opaque origin, not with the dashboard's cookie),
    without cookies for that origin, and a header that cannot be sent is left out (it dropped the connection)."""
    s = await make_stack()
    run_id = new_ulid()
    data = (await s.api.post("/v1/checkpoint", json=new_run_body(app, run_id))).json()["data"]
    page = "<script>fetch('/dashboard')</script>"
    headers = {"content-type": "text/html", "set-cookie": "stepline_session=planted", "x-ok": "yes",
               "x-split": "a\r\nx-injected: 1", "content-security-policy": "default-src *"}  # fmt: skip
    steps_body = {"fn_id": data["fn_id"], "app_id": data["app_id"], "run_id": run_id,
                  "steps": [complete_op({"status": 200, "headers": headers, "body": page})]}  # fmt: skip
    assert (await s.api.post(f"/v1/checkpoint/{run_id}/steps", json=steps_body)).status_code == 200
    out = await s.api.get(f"/v1/http/runs/{run_id}/output", params={"token": data["token"]})
    assert (out.status_code, out.text, out.headers["x-ok"]) == (200, page, "yes")
    assert out.headers.get_list("content-security-policy") == [OUTPUT_CSP]
    assert "set-cookie" not in out.headers and "x-injected" not in out.headers and "x-split" not in out.headers
    assert out.headers["x-content-type-options"] == "nosniff"
