"""The REST API (``/v1/...``) on a real store, SQLite and PostgreSQL.

Every response of these tests is checked against the OpenAPI document the server serves (``check_responses``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from stepline import Context, FakeClock, Stepline
from stepline.core.ids import hash_step_id
from stepline.protocol.signing import hashed_signing_key
from stepline.server import rest_api
from stepline.server.config import ServerConfig
from stepline.server.state import ServerState
from stepline.storage.records import AppRecord, FunctionRecord, RunFilter

from ..integration.helpers import drain
from .openapi_check import SchemaError, response_schema, validate

SIGNING_KEY = "signkey-test-" + "ab" * 32
DOC = rest_api.document()

MakeApi = Callable[..., Awaitable[httpx.AsyncClient]]


class Checked:
    """Counts the responses validated against the document."""

    count = 0


async def check_response(response: httpx.Response) -> None:
    """Every response must be documented for its operation and status, and fit the documented schema."""
    await response.aread()
    request = response.request
    if request.url.path == "/openapi.json" and response.status_code == 200:
        assert response.json() == DOC
    schema = response_schema(DOC, request.method, request.url.path, response.status_code)
    if schema is None:
        assert response.content == b"", f"{request.method} {request.url.path}: a documented empty body has content"
    else:
        try:
            validate(response.json(), schema, DOC)
        except SchemaError as exc:
            raise AssertionError(f"{request.method} {request.url} -> {response.status_code}: {exc}") from None
    Checked.count += 1


@pytest.fixture
async def make_api(client: Stepline) -> AsyncIterator[MakeApi]:
    """``await make_api(config)``: an HTTP client for the REST API of ``client``'s engine."""
    opened: list[httpx.AsyncClient] = []

    async def make(config: ServerConfig | None = None) -> httpx.AsyncClient:
        app = Starlette(routes=rest_api.routes())
        http = httpx.AsyncClient()
        opened.append(http)
        app.state.stepline = ServerState(engine=client.engine, config=config or ServerConfig(), http=http)
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://localhost",
                                event_hooks={"response": [check_response]})  # fmt: skip
        opened.append(api)
        return api

    before = Checked.count
    yield make
    for c in opened:
        await c.aclose()
    assert Checked.count > before or not opened  # the schema check ran


@pytest.fixture
async def api(make_api: MakeApi) -> httpx.AsyncClient:
    return await make_api()


def three_steps(client: Stepline, calls: list[str], broken: set[str]) -> None:
    @client.function(id="three", trigger="t/three", retries=0, name="Three steps")
    async def three(ctx: Context) -> Any:
        def step(name: str, value: Any) -> Any:
            calls.append(name)
            if name in broken:
                raise RuntimeError(f"{name} is broken")
            return value

        one = await ctx.step.run("one", lambda: step("one", ctx.event.data.get("n", 0)))
        two = await ctx.step.run("two", lambda: step("two", one + 1))
        return [one, two, await ctx.step.run("three", lambda: step("three", two + 1))]


def data(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    return body["error"]  # type: ignore[no-any-return]


# --- the document -------------------------------------------------------------------------------------------


async def test_openapi_document_is_served_and_covers_every_route(api: httpx.AsyncClient) -> None:
    response = await api.get("/openapi.json")
    assert response.status_code == 200 and response.json() == DOC
    assert DOC["openapi"] == "3.1.0"
    documented = {(m.upper(), p) for p, ops in DOC["paths"].items() for m in ops}
    routed = {(ep.method, ep.path) for ep in rest_api.all_endpoints()}
    assert documented == routed
    assert ("DELETE", "/v0/runs/{run_id}") in documented and ("POST", "/v1/runs/{run_id}/rerun") in documented
    for path, ops in DOC["paths"].items():
        for op in ops.values():
            assert "401" in op["responses"]
            for p in op["parameters"]:
                assert p["in"] != "path" or f"{{{p['name']}}}" in path


async def test_documented_string_parameters_exclude_the_nul_the_server_refuses(api: httpx.AsyncClient) -> None:
    """A client generating any string the document allows never meets the 400 for a NUL in a path or query."""
    free = [(path, p) for path, ops in DOC["paths"].items() for op in ops.values() for p in op["parameters"]
            if p["schema"].get("type") == "string" and "enum" not in p["schema"]]  # fmt: skip
    assert free
    for path, p in free:
        pattern = p["schema"].get("pattern")
        assert pattern is not None and not re.search(pattern, "o\x00k"), (path, p)
    assert (await api.get("/v1/events", params={"name": "a b"})).status_code == 200  # (the 400 itself: test_hardening)


# --- events -------------------------------------------------------------------------------------------------


async def test_events_list_pages_newest_first_and_filters_by_name(client: Stepline, api: httpx.AsyncClient) -> None:
    ids = [(await client.send({"name": "t/a" if i % 2 else "t/b", "data": {"i": i}}))[0] for i in range(5)]
    body = (await api.get("/v1/events", params={"limit": 2})).json()
    assert [e["internal_id"] for e in body["data"]] == [ids[4], ids[3]]
    assert body["metadata"] == {"fetched_at": "2026-01-01T00:00:00.000Z", "cached_until": None}
    assert body["cursor"] == ids[3]
    body2 = (await api.get("/v1/events", params={"limit": 2, "cursor": body["cursor"]})).json()
    assert [e["internal_id"] for e in body2["data"]] == [ids[2], ids[1]]
    body3 = (await api.get("/v1/events", params={"limit": 2, "cursor": body2["cursor"]})).json()
    assert [e["internal_id"] for e in body3["data"]] == [ids[0]] and body3["cursor"] is None
    named = data(await api.get("/v1/events", params={"name": "t/b"}))
    assert [e["data"]["i"] for e in named] == [4, 2, 0]
    first = named[-1]
    assert first == {"internal_id": ids[0], "id": ids[0], "name": "t/b", "data": {"i": 0}, "user": {},
                     "ts": 1_767_225_600_000, "v": None, "received_at": "2026-01-01T00:00:00.000Z",
                     "received_at_ms": 1_767_225_600_000}  # fmt: skip


async def test_events_list_rejects_bad_parameters(api: httpx.AsyncClient) -> None:
    assert error(await api.get("/v1/events", params={"limit": "ten"}), 400) == (
        "invalid limit 'ten': expected an integer from 1 to 100"
    )
    # A cursor is an id bound (the events listed before it): an unknown one is no error, and "0" precedes every id.
    assert data(await api.get("/v1/events", params={"cursor": "0"})) == []
    for limit in (0, -1, 101, 100_000):  # refused, as the OpenAPI document says (it used to be clamped)
        assert error(await api.get("/v1/events", params={"limit": limit}), 400).startswith("invalid limit")


async def test_event_and_the_runs_it_started(client: Stepline, api: httpx.AsyncClient) -> None:
    three_steps(client, [], set())

    @client.function(id="audit", trigger="t/three")
    async def audit(ctx: Context) -> None: ...

    (event_id,) = await client.send({"name": "t/three", "id": "order-7", "data": {"n": 1}})
    got = data(await api.get(f"/v1/events/{event_id}"))
    assert (got["internal_id"], got["id"], got["name"], got["data"]) == (event_id, "order-7", "t/three", {"n": 1})
    found = data(await api.get(f"/v1/events/{event_id}/runs"))
    assert sorted(r["function_id"] for r in found) == ["test-app-audit", "test-app-three"]
    assert {r["status"] for r in found} == {"Queued"} and {r["app_id"] for r in found} == {"test-app"}
    assert error(await api.get("/v1/events/01MISSING"), 404) == "event '01MISSING' not found"
    assert error(await api.get("/v1/events/01MISSING/runs"), 404) == "event '01MISSING' not found"


async def test_events_list_hides_internal_events_and_searches_by_pattern(client: Stepline,
                                                                        api: httpx.AsyncClient) -> None:  # fmt: skip
    three_steps(client, [], set())
    await client.send([{"name": "app/user.created"}, {"name": "billing/user.created"}, {"name": "t/three"}])
    await drain(client)  # the run ends: a stepline/function.finished event
    names = [e["name"] for e in data(await api.get("/v1/events"))]
    assert names == ["t/three", "billing/user.created", "app/user.created"]
    everything = [e["name"] for e in data(await api.get("/v1/events", params={"include_internal": "true"}))]
    assert everything[0] == "stepline/function.finished" and set(names) < set(everything)
    assert [e["name"] for e in data(await api.get("/v1/events", params={"name": "app/*"}))] == ["app/user.created"]
    assert [e["name"] for e in data(await api.get("/v1/events", params={"name": "*/user.created"}))] == [
        "billing/user.created", "app/user.created"]  # fmt: skip
    assert [e["name"] for e in data(await api.get("/v1/events", params={"name": "stepline/*"}))] == [
        "stepline/function.finished"]  # fmt: skip
    for bad in ("maybe", "", "1"):  # the document says boolean: true or false, nothing else
        assert error(await api.get("/v1/events", params={"include_internal": bad}), 400) == (
            f"include_internal must be true or false, got {bad!r}")  # fmt: skip


async def test_replay_an_event_sends_a_copy_that_starts_new_runs(client: Stepline, api: httpx.AsyncClient) -> None:
    three_steps(client, [], set())
    (event_id,) = await client.send({"name": "t/three", "id": "order-8", "data": {"n": 2}, "user": {"u": 1}})
    [first] = data(await api.get(f"/v1/events/{event_id}/runs"))
    replayed = data(await api.post(f"/v1/events/{event_id}/replay"), 201)
    assert replayed["replay_of"] == event_id and replayed["internal_id"] != event_id
    copy = data(await api.get(f"/v1/events/{replayed['internal_id']}"))
    assert (copy["name"], copy["data"], copy["user"]) == ("t/three", {"n": 2}, {"u": 1})
    assert copy["id"] == copy["internal_id"]  # the sender's idempotency id is not reused: the copy is not dropped
    [second] = data(await api.get(f"/v1/events/{replayed['internal_id']}/runs"))
    assert replayed["run_ids"] == [second["run_id"]] and second["run_id"] != first["run_id"]
    assert error(await api.post("/v1/events/01MISSING/replay"), 404) == "event '01MISSING' not found"
    await drain(client)
    [finished] = data(await api.get("/v1/events", params={"name": "stepline/function.finished", "limit": 1}))
    assert "not replayed" in error(await api.post(f"/v1/events/{finished['internal_id']}/replay"), 400)


async def test_pause_and_resume_a_function(client: Stepline, api: httpx.AsyncClient) -> None:
    three_steps(client, [], set())
    await client.ready()
    paused = data(await api.post("/v1/functions/test-app-three/pause"))
    assert paused == {"function_id": "test-app-three", "paused": True, "changed": True}
    assert data(await api.post("/v1/functions/test-app-three/pause"))["changed"] is False
    (event_id,) = await client.send({"name": "t/three", "data": {"n": 1}})
    await drain(client)
    [held] = data(await api.get(f"/v1/events/{event_id}/runs"))
    assert held["status"] == "Queued" and held["idle_reason"]["message"].startswith("Function paused")
    resumed = data(await api.post("/v1/functions/test-app-three/resume"))
    assert resumed == {"function_id": "test-app-three", "paused": False, "changed": True}
    await drain(client)
    assert data(await api.get(f"/v1/runs/{held['run_id']}"))["status"] == "Completed"
    assert error(await api.post("/v1/functions/nope/pause"), 404) == "no registered function has the id 'nope'"
    assert error(await api.post("/v1/functions/nope/resume"), 404) == "no registered function has the id 'nope'"


async def test_run_a_cron_function_now(client: Stepline, api: httpx.AsyncClient) -> None:
    @client.function(id="tick", trigger={"cron": "0 * * * *"})
    async def tick(ctx: Any) -> str:
        return str(ctx.event.name)

    three_steps(client, [], set())
    await client.ready()
    started = data(await api.post("/v1/functions/test-app-tick/run-cron"), 201)
    assert started["function_id"] == "test-app-tick"
    event = data(await api.get(f"/v1/events/{started['event_id']}"))
    assert event["name"] == "inngest/scheduled.timer" and event["data"]["cron"] == "0 * * * *"
    await drain(client)
    assert data(await api.get(f"/v1/runs/{started['run_id']}"))["output"] == "inngest/scheduled.timer"
    assert "has no cron trigger" in error(await api.post("/v1/functions/test-app-three/run-cron"), 400)
    assert error(await api.post("/v1/functions/nope/run-cron"), 404) == "no registered function has the id 'nope'"


# --- runs ---------------------------------------------------------------------------------------------------


async def test_run_detail_and_steps(client: Stepline, clock: FakeClock, api: httpx.AsyncClient) -> None:
    three_steps(client, [], set())
    (event_id,) = await client.send({"name": "t/three", "data": {"n": 1}})
    (queued,) = data(await api.get(f"/v1/events/{event_id}/runs"))
    assert queued["started_at"] is None and queued["idle_reason"] is None and queued["ended_at_ms"] is None
    clock.advance(dt.timedelta(seconds=2))
    await drain(client)
    run = data(await api.get(f"/v1/runs/{queued['run_id']}"))
    assert (run["status"], run["output"], run["error"], run["attempt"]) == ("Completed", [1, 2, 3], None, 0)
    assert (run["function_id"], run["app_id"], run["event_id"]) == ("test-app-three", "test-app", event_id)
    assert run["created_at"] == "2026-01-01T00:00:00.000Z" and run["created_at_ms"] == 1_767_225_600_000
    assert run["started_at"] == run["ended_at"] == "2026-01-01T00:00:02.000Z"
    assert run["ended_at_ms"] == 1_767_225_602_000
    assert run["event"]["internal_id"] == event_id and run["event"]["data"] == {"n": 1}
    steps = data(await api.get(f"/v1/runs/{run['run_id']}/steps"))
    assert [(s["id"], s["name"], s["kind"], s["status"], s["attempts"], s["output"]) for s in steps] == [
        (hash_step_id("one"), "one", "run", "completed", 1, 1),
        (hash_step_id("two"), "two", "run", "completed", 1, 2),
        (hash_step_id("three"), "three", "run", "completed", 1, 3)]  # fmt: skip
    assert steps[0]["duration_ms"] == 0 and steps[0]["ended_at"] == "2026-01-01T00:00:02.000Z"
    assert error(await api.get("/v1/runs/01NOPE"), 404) == "run '01NOPE' not found"
    assert error(await api.get("/v1/runs/01NOPE/steps"), 404) == "run '01NOPE' not found"


async def test_a_waiting_run_says_why(client: Stepline, clock: FakeClock, api: httpx.AsyncClient) -> None:
    @client.function(id="napper", trigger="t/nap")
    async def napper(ctx: Context) -> Any:
        await ctx.step.sleep("nap", "1h")

    await client.send({"name": "t/nap"})
    await drain(client)
    (run,) = data(await api.get("/v1/runs"))
    assert run["status"] == "Running"
    assert run["idle_reason"] == {"kind": "sleeping", "step": "nap", "until": clock.now_ms() + 3_600_000}
    (step,) = data(await api.get(f"/v1/runs/{run['run_id']}/steps"))
    assert (step["status"], step["ended_at"], step["duration_ms"]) == ("sleeping", None, None)
    assert step["wake_at"] == "2026-01-01T01:00:00.000Z"


async def test_run_logs(client: Stepline, clock: FakeClock, api: httpx.AsyncClient) -> None:
    @client.function(id="logger", trigger="t/log")
    async def logger(ctx: Context) -> Any:
        ctx.logger.info("hello %s", ctx.event.data["who"])
        await ctx.step.run("greet", lambda: ctx.logger.warning("in the step"))

    await client.store.register_functions("shop", [FunctionRecord(
        "shop-remote", "shop", "remote", "Remote", {"triggers": [{"event": "t/remote"}], "runtime": "http"})],
        clock.now_ms())  # fmt: skip
    await client.engine.refresh_registry(force=True)  # PostgreSQL: checked every second otherwise
    await client.send([{"name": "t/log", "data": {"who": "you"}}, {"name": "t/remote"}])
    await drain(client)
    [run] = await client.store.list_runs(RunFilter(function_id="test-app-logger"))
    logs = data(await api.get(f"/v1/runs/{run.id}/logs"))
    assert logs["captured"] is True
    assert [(x["seq"], x["level"], x["logger"], x["message"], x["step_id"], x["step"]) for x in logs["lines"]] == [
        (1, "INFO", "stepline.fn.logger", "hello you", None, None),
        (2, "WARNING", "stepline.fn.logger", "in the step", hash_step_id("greet"), "greet")]  # fmt: skip
    assert logs["lines"][0]["ts"] == "2026-01-01T00:00:00.000Z" and logs["lines"][0]["ts_ms"] == clock.now_ms()
    [remote] = await client.store.list_runs(RunFilter(function_id="shop-remote"))
    assert data(await api.get(f"/v1/runs/{remote.id}/logs")) == {"captured": False, "lines": []}
    assert error(await api.get("/v1/runs/01NOPE/logs"), 404) == "run '01NOPE' not found"


async def test_run_traces_are_documented_and_served_as_the_app_sent_them(
    client: Stepline, api: httpx.AsyncClient
) -> None:
    """GET /v1/runs/{id}/traces: in the document, and its answers (200 with spans, 404) fit it (check_response)."""
    op = DOC["paths"]["/v1/runs/{run_id}/traces"]["get"]
    assert {"200", "404", "401"} <= set(op["responses"])

    @client.function(id="traced", trigger="t/traced")
    async def traced(ctx: Any) -> int:
        return 1

    await client.send({"name": "t/traced"})
    await drain(client)
    [run] = await client.store.list_runs(RunFilter(limit=10))
    assert data(await api.get(f"/v1/runs/{run.id}/traces")) == []
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "fetch",
        "kind": "SPAN_KIND_CLIENT",
        "attributes": [{"key": "sdk.run.id", "value": {"stringValue": run.id}}],
    }
    assert await client.store.save_run_spans({run.id: [span]}, 1_000) == {run.id: 1}
    [stored] = data(await api.get(f"/v1/runs/{run.id}/traces"))
    assert stored == {"seq": 1, "received_at": 1_000, **span}
    assert "not found" in error(await api.get("/v1/runs/nope/traces"), 404)


async def test_runs_list_filters_and_pages(client: Stepline, clock: FakeClock, api: httpx.AsyncClient) -> None:
    three_steps(client, [], set())

    @client.function(id="other", trigger="t/other")
    async def other(ctx: Context) -> None: ...

    for i in range(5):
        await client.send({"name": "t/three" if i < 4 else "t/other", "data": {"n": i}})
        clock.advance(dt.timedelta(seconds=10))
    all_runs = data(await api.get("/v1/runs"))
    assert len(all_runs) == 5 and [r["created_at_ms"] for r in all_runs] == sorted(
        (r["created_at_ms"] for r in all_runs), reverse=True)  # fmt: skip
    seen: list[str] = []
    cursor = None
    while True:
        body = (await api.get("/v1/runs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})).json()
        seen += [r["run_id"] for r in body["data"]]
        cursor = body["cursor"]
        if cursor is None:
            break
    assert seen == [r["run_id"] for r in all_runs]
    slug = data(await api.get("/v1/runs", params={"function_id": "three", "app_id": "test-app"}))
    composite = data(await api.get("/v1/runs", params={"function_id": "test-app-three"}))
    assert [r["run_id"] for r in slug] == [r["run_id"] for r in composite] == [r["run_id"] for r in all_runs[1:]]
    assert len(data(await api.get("/v1/runs", params={"app_id": "test-app"}))) == 5
    assert data(await api.get("/v1/runs", params={"app_id": "another-app"})) == []
    assert len(data(await api.get("/v1/runs", params={"status": "queued"}))) == 5
    assert data(await api.get("/v1/runs", params={"status": "Completed"})) == []
    window = {"created_after": "2026-01-01T00:00:10Z", "created_before": str(1_767_225_600_000 + 30_000)}
    assert [r["created_at_ms"] for r in data(await api.get("/v1/runs", params=window))] == [
        1_767_225_620_000, 1_767_225_610_000]  # fmt: skip
    assert error(await api.get("/v1/runs", params={"status": "done"}), 400) == (
        "invalid status 'done': expected one of Queued, Running, Completed, Failed, Cancelled, Skipped"
    )
    assert error(await api.get("/v1/runs", params={"created_after": "yesterday"}), 400).startswith(
        "invalid created_after 'yesterday': expected RFC 3339"
    )
    assert error(await api.get("/v1/runs", params={"created_before": "2026-01-01T00:00:00"}), 400).startswith(
        "invalid created_before"
    )  # no offset: ambiguous


# --- cancel -------------------------------------------------------------------------------------------------


async def test_cancel_a_run(client: Stepline, api: httpx.AsyncClient) -> None:
    three_steps(client, [], set())
    await client.send([{"name": "t/three"}, {"name": "t/three"}])
    first, second = data(await api.get("/v1/runs"))
    response = await api.delete(f"/v1/runs/{first['run_id']}")
    assert response.status_code == 204 and response.content == b""
    cancelled = data(await api.get(f"/v1/runs/{first['run_id']}"))
    assert cancelled["status"] == "Cancelled" and cancelled["error"] == {
        "name": "Cancelled",
        "message": "cancelled by API",
    }
    assert error(await api.delete(f"/v1/runs/{first['run_id']}"), 409) == (
        f"run '{first['run_id']}' has already ended (Cancelled): there is nothing to cancel"
    )
    assert (await api.delete(f"/v0/runs/{second['run_id']}")).status_code == 204
    assert error(await api.delete("/v0/runs/01NOPE"), 404) == "run '01NOPE' not found"
    assert error(await api.delete("/v1/runs/01NOPE"), 404) == "run '01NOPE' not found"
    await drain(client)
    assert {r["status"] for r in data(await api.get("/v1/runs"))} == {"Cancelled"}


async def test_bulk_cancellation_by_time_window_and_expression(
    client: Stepline, clock: FakeClock, api: httpx.AsyncClient
) -> None:
    three_steps(client, [], set())

    @client.function(id="other", trigger="t/three")
    async def other(ctx: Context) -> None: ...

    for n in range(4):  # created at +0 s, +10 s, +20 s, +30 s
        await client.send({"name": "t/three", "data": {"n": n}})
        clock.advance(dt.timedelta(seconds=10))
    body = {"app_id": "test-app", "function_id": "three", "started_after": "2026-01-01T00:00:10Z",
            "started_before": 1_767_225_630_000, "if": "event.data.n != 2"}  # fmt: skip
    created = data(await api.post("/v1/cancellations", json=body))
    assert (created["function_id"], created["cancelled"], created["if"]) == ("test-app-three", 2, "event.data.n != 2")
    assert (created["started_after"], created["started_before"]) == (
        "2026-01-01T00:00:10.000Z", "2026-01-01T00:00:30.000Z")  # fmt: skip
    runs = data(await api.get("/v1/runs", params={"function_id": "test-app-three"}))
    assert all("event" not in r for r in runs)  # lists leave the trigger event out; the run detail has it
    by_n = {}
    for r in runs:
        ev = data(await api.get(f"/v1/events/{r['event_id']}"))
        by_n[ev["data"]["n"]] = r["status"]
    assert by_n == {0: "Queued", 1: "Cancelled", 2: "Queued", 3: "Cancelled"}  # both ends are inclusive
    assert {r["status"] for r in data(await api.get("/v1/runs", params={"function_id": "test-app-other"}))} == {
        "Queued"}  # fmt: skip
    again = data(
        await api.post(
            "/v1/cancellations",
            json={"app_id": "test-app", "function_id": "test-app-three", "started_before": "2026-01-01T01:00:00+00:00"},
        )
    )
    assert again["cancelled"] == 2 and again["started_after"] is None and again["if"] is None
    listed = data(await api.get("/v1/cancellations"))
    assert [c["id"] for c in listed] == [again["id"], created["id"]]


async def test_bulk_cancellation_refusals(client: Stepline, api: httpx.AsyncClient) -> None:
    three_steps(client, [], set())
    await client.ready()
    ok = {"app_id": "test-app", "function_id": "three", "started_before": 1_767_225_600_000}
    assert error(await api.post("/v1/cancellations", json={**ok, "function_id": "nope"}), 404) == (
        "function 'nope' not found in app 'test-app'"
    )
    assert error(await api.post("/v1/cancellations", json={**ok, "app_id": "other"}), 404) == (
        "function 'three' not found in app 'other'"
    )
    missing = {k: v for k, v in ok.items() if k != "started_before"}
    assert error(await api.post("/v1/cancellations", json=missing), 400) == (
        "invalid request body: started_before: Field required"
    )
    assert error(await api.post("/v1/cancellations", json={**ok, "if": "event.data.n ==="}), 400).startswith(
        "invalid if expression: invalid CEL expression"
    )
    assert error(await api.post("/v1/cancellations", json={**ok, "started_after": 1_767_225_600_001}), 400) == (
        "started_after must not be later than started_before"
    )
    assert error(await api.post("/v1/cancellations", content=b"{not json"), 400) == (
        "request body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    assert error(await api.post("/v1/cancellations", json=[ok]), 400) == "the request body must be a JSON object"
    assert data(await api.get("/v1/cancellations")) == []


# --- rerun --------------------------------------------------------------------------------------------------


async def test_rerun_from_a_step_over_the_api(client: Stepline, api: httpx.AsyncClient) -> None:
    calls: list[str] = []
    broken = {"two"}
    three_steps(client, calls, broken)
    await client.send({"name": "t/three", "data": {"n": 1}})
    await drain(client)
    (failed,) = data(await api.get("/v1/runs"))
    assert failed["status"] == "Failed"
    broken.clear()
    calls.clear()
    new = data(await api.post(f"/v1/runs/{failed['run_id']}/rerun", json={"from_step": hash_step_id("two")}))
    queued = data(await api.get(f"/v1/runs/{new['run_id']}"))
    assert queued["status"] == "Queued"
    assert queued["idle_reason"] == {"kind": "rerun", "run_id": failed["run_id"], "from_step": "two"}
    await drain(client)
    done = data(await api.get(f"/v1/runs/{new['run_id']}"))
    assert (done["status"], done["output"], calls) == ("Completed", [1, 2, 3], ["two", "three"])
    plain = data(await api.post(f"/v1/runs/{failed['run_id']}/rerun"))  # no body: from the start
    await drain(client)
    assert data(await api.get(f"/v1/runs/{plain['run_id']}"))["status"] == "Completed"
    assert calls == ["two", "three", "one", "two", "three"]
    assert error(await api.post("/v1/runs/01NOPE/rerun"), 404) == "run '01NOPE' not found"
    assert error(await api.post(f"/v1/runs/{failed['run_id']}/rerun", json={"from_step": "f00"}), 400) == (
        f"run '{failed['run_id']}' has no step with id 'f00'"
    )
    assert error(await api.post(f"/v1/runs/{failed['run_id']}/rerun", json={"from_step": 3}), 400) == (
        "invalid request body: from_step: Input should be a valid string"
    )
    await client.engine.register(client.app_id, [])
    assert error(await api.post(f"/v1/runs/{failed['run_id']}/rerun"), 409) == (
        f"cannot rerun run '{failed['run_id']}': its function 'test-app-three' is no longer registered"
    )


# --- functions and apps -------------------------------------------------------------------------------------


async def test_functions_and_apps(client: Stepline, clock: FakeClock, api: httpx.AsyncClient) -> None:
    three_steps(client, [], set())
    await client.ready()
    await client.engine.store.save_app(AppRecord(
        "http://localhost:3000/api/inngest", "shop", "js:v4.24.0", "express", None, "cd" * 32, clock.now_ms(), None,
        clock.now_ms(), clock.now_ms()))  # fmt: skip
    await client.engine.store.save_app(AppRecord(
        "http://localhost:8000/api/inngest", None, None, None, None, None, None, "connection refused",
        clock.now_ms(), clock.now_ms()))  # fmt: skip
    (fn,) = data(await api.get("/v1/functions"))
    assert (fn["id"], fn["app_id"], fn["slug"], fn["name"]) == ("test-app-three", "test-app", "three", "Three steps")
    assert fn["config"]["triggers"] == [{"event": "t/three"}] and fn["config"]["retries"] == 0
    assert data(await api.get("/v1/functions", params={"app_id": "shop"})) == []
    apps = data(await api.get("/v1/apps"))
    assert [(a["app_id"], a["url"], a["function_count"], a["error"]) for a in apps] == [
        ("shop", "http://localhost:3000/api/inngest", 0, None),
        (None, "http://localhost:8000/api/inngest", 0, "connection refused"),
        ("test-app", None, 1, None)]  # fmt: skip
    assert apps[0]["sdk"] == "js:v4.24.0" and apps[0]["synced_at"] == "2026-01-01T00:00:00.000Z"


# --- authentication -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/runs", "/v1/events", "/v1/apps", "/v1/functions", "/v1/cancellations",
                                  "/openapi.json"])  # fmt: skip
async def test_cloud_mode_requires_the_signing_key(make_api: MakeApi, path: str) -> None:
    api = await make_api(ServerConfig(kind="cloud", signing_keys=(SIGNING_KEY,), event_keys=frozenset({"k"})))
    assert error(await api.get(path), 401) == "authentication required: send Authorization: Bearer <signing key>"
    wrong = {"Authorization": "Bearer signkey-test-" + "cd" * 32}
    assert error(await api.get(path, headers=wrong), 401) == (
        "the Authorization bearer does not match the server's signing key"
    )
    assert error(await api.get(path, headers={"Authorization": "Basic abc"}), 401)
    for token in (SIGNING_KEY, hashed_signing_key(SIGNING_KEY), hashed_signing_key(SIGNING_KEY, keep_prefix=True)):
        assert (await api.get(path, headers={"Authorization": f"Bearer {token}"})).status_code == 200, token


async def test_cloud_mode_refuses_writes_without_the_key(client: Stepline, make_api: MakeApi) -> None:
    three_steps(client, [], set())
    await client.send({"name": "t/three"})
    api = await make_api(ServerConfig(kind="cloud", signing_keys=(SIGNING_KEY,)))
    (run,) = await client.store.list_runs(RunFilter())
    assert error(await api.delete(f"/v1/runs/{run.id}"), 401)
    assert error(await api.post(f"/v1/runs/{run.id}/rerun"), 401)
    assert error(await api.post("/v1/cancellations", json={}), 401)
    assert (await client.get_run(run.id)).status == "queued"  # type: ignore[union-attr]
    auth = {"Authorization": f"Bearer {SIGNING_KEY}"}
    assert (await api.delete(f"/v1/runs/{run.id}", headers=auth)).status_code == 204


async def test_dev_mode_needs_no_key(api: httpx.AsyncClient) -> None:
    assert data(await api.get("/v1/runs")) == []


def test_the_schema_checker_refuses_what_the_document_does_not_allow() -> None:
    page = response_schema(DOC, "GET", "/v1/runs", 200)
    assert page is not None
    validate({"data": [], "metadata": {"fetched_at": "x", "cached_until": None}, "cursor": None}, page, DOC)
    bad = [
        {"data": [], "metadata": {"fetched_at": "x", "cached_until": None}},  # cursor missing
        {"data": [], "metadata": {"fetched_at": "x", "cached_until": 5}, "cursor": None},
        {"data": [{"run_id": "r"}], "metadata": {"fetched_at": "x", "cached_until": None}, "cursor": None},
        {"data": [], "metadata": {"fetched_at": "x", "cached_until": None}, "cursor": None, "extra": 1},
    ]
    for value in bad:
        with pytest.raises(SchemaError):
            validate(value, page, DOC)
    with pytest.raises(SchemaError, match="status 418 is not documented"):
        response_schema(DOC, "GET", "/v1/runs", 418)
    with pytest.raises(SchemaError, match="not in the document"):
        response_schema(DOC, "PUT", "/v1/runs", 200)
