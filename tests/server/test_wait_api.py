"""Waiting for results over HTTP: ``GET /v1/runs/{id}?wait=`` and ``GET /v1/events/{id}/runs?wait=`` on a real
socket (bad values, the per-node cap, shutdown, clients that leave mid-wait)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from stepline import Context, Stepline
from stepline.server.rest_api import document

from .live_server import live_server


def define(client: Stepline, gate: asyncio.Event) -> None:
    @client.function(id="gated", trigger="w/go")
    async def gated(ctx: Context) -> str:
        await gate.wait()
        return await ctx.step.run("a", lambda: "done")

    @client.function(id="quick", trigger="w/go")
    async def quick(ctx: Context) -> int:
        return 7


async def started(http: httpx.AsyncClient, client: Stepline) -> tuple[str, str]:
    """Send w/go; the event id and the gated run's id."""
    r = await http.post("/e/key", json={"name": "w/go"})
    [event_id] = r.json()["ids"]
    runs = await client.runs_for_event(event_id)
    gated = next(r.id for r in runs if r.function_id.endswith("gated"))
    return event_id, gated


async def test_a_wait_answers_as_soon_as_the_run_ends(client: Stepline) -> None:
    gate = asyncio.Event()
    define(client, gate)
    async with live_server(client) as srv:
        event_id, run_id = await started(srv.http, client)
        waiting = asyncio.create_task(srv.http.get(f"/v1/runs/{run_id}?wait=30s"))
        all_runs = asyncio.create_task(srv.http.get(f"/v1/events/{event_id}/runs?wait=2m"))
        await asyncio.sleep(0.3)
        assert not waiting.done() and not all_runs.done()
        assert srv.live.waits == 2
        began = time.monotonic()
        gate.set()
        r = await waiting
        assert time.monotonic() - began < 2
        assert r.status_code == 200 and (r.json()["data"]["status"], r.json()["data"]["output"]) == (
            "Completed",
            "done",
        )
        runs = (await all_runs).json()["data"]
        assert sorted((x["status"], str(x["output"])) for x in runs) == [("Completed", "7"), ("Completed", "done")]
        assert srv.live.waits == 0 and client.engine.waiters.waiting == 0


async def test_a_wait_that_runs_out_answers_with_the_current_state(client: Stepline) -> None:
    gate = asyncio.Event()
    define(client, gate)
    async with live_server(client) as srv:
        _, run_id = await started(srv.http, client)
        began = time.monotonic()
        r = await srv.http.get(f"/v1/runs/{run_id}?wait=300ms")
        assert 0.25 < time.monotonic() - began < 3
        assert r.status_code == 200 and r.json()["data"]["status"] == "Running"
        gate.set()


@pytest.mark.parametrize("value", ["abc", "-1", "301", "6m", "300001ms", "1h", "30 s", "1.2345", "0x10"])
async def test_bad_waits_are_refused(client: Stepline, value: str) -> None:
    define(client, asyncio.Event())
    async with live_server(client, worker=False) as srv:
        _, run_id = await started(srv.http, client)
        r = await srv.http.get(f"/v1/runs/{run_id}", params={"wait": value})
        assert r.status_code == 400 and "invalid wait" in r.json()["error"], r.text
        assert (await srv.http.get("/v1/events/x/runs", params={"wait": value})).status_code == 400


async def test_waiting_on_an_unknown_run_or_event_is_a_404(client: Stepline) -> None:
    async with live_server(client, worker=False) as srv:
        assert (await srv.http.get("/v1/runs/nope?wait=10s")).status_code == 404
        assert (await srv.http.get("/v1/events/nope/runs?wait=10s")).status_code == 404


async def test_past_the_cap_a_wait_gets_429_with_retry_after(client: Stepline) -> None:
    gate = asyncio.Event()
    define(client, gate)
    async with live_server(client, max_waiting_requests=2) as srv:
        _, run_id = await started(srv.http, client)
        held = [asyncio.create_task(srv.http.get(f"/v1/runs/{run_id}?wait=30")) for _ in range(2)]
        await asyncio.sleep(0.3)
        r = await srv.http.get(f"/v1/runs/{run_id}?wait=30")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "2 waiting requests" in r.json()["error"]
        plain = await srv.http.get(f"/v1/runs/{run_id}")  # without wait: no cap
        assert plain.status_code == 200
        gate.set()
        assert {(await t).status_code for t in held} == {200}


async def test_at_shutdown_waiters_get_the_current_state_at_once(client: Stepline) -> None:
    gate = asyncio.Event()
    define(client, gate)
    async with live_server(client) as srv:
        _, run_id = await started(srv.http, client)
        waiting = asyncio.create_task(srv.http.get(f"/v1/runs/{run_id}?wait=300"))
        await asyncio.sleep(0.3)
        began = time.monotonic()
        srv.server.should_exit = True  # the CLI's shutdown probe
        srv.app.state.shutdown_probe = lambda: True
        r = await waiting
        assert time.monotonic() - began < 2
        assert r.status_code == 200 and r.json()["data"]["status"] == "Running"
        gate.set()


async def test_a_client_that_leaves_mid_wait_costs_nothing_afterwards(client: Stepline) -> None:
    gate = asyncio.Event()
    define(client, gate)
    async with live_server(client) as srv:
        _, run_id = await started(srv.http, client)
        async with httpx.AsyncClient(base_url=srv.url) as leaving:
            task = asyncio.create_task(leaving.get(f"/v1/runs/{run_id}?wait=300"))
            await asyncio.sleep(0.3)
            assert srv.live.waits == 1 and client.engine.waiters.waiting == 1
            task.cancel()
        async with asyncio.timeout(2):
            while srv.live.waits or client.engine.waiters.waiting:
                await asyncio.sleep(0.02)
        gate.set()


def test_the_openapi_document_describes_wait() -> None:
    doc = document()
    for path in ("/v1/runs/{run_id}", "/v1/events/{internal_id}/runs"):
        op = doc["paths"][path]["get"]
        [wait] = [p for p in op["parameters"] if p["name"] == "wait"]
        assert wait["in"] == "query" and "300 s" in wait["description"] and wait["schema"]["pattern"]
        assert {"200", "400", "404", "429"} <= set(op["responses"])
