"""Signals over HTTP (issue 14, item 6): the ``WaitForSignal`` op and ``POST /v1/signals``, with a scripted app on a
real socket, the real server and store, and the fake clock."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from stepline.core.ids import hash_step_id

from .fake_app import FakeApp, MakeStack, Reply, complete, fn_config, ops, sdk
from .test_gateway import echo_memo
from .test_retry_semantics import by_step, fid, register


def wait_op(user_id: str, signal: str, timeout: str = "1h", conflict: str | None = None) -> dict[str, Any]:
    """As the npm SDK reports step.waitForSignal."""
    opts = {"signal": signal, "timeout": timeout, "conflict": conflict}
    return {"op": "WaitForSignal", "id": hash_step_id(user_id), "name": signal, "displayName": user_id, "opts": opts,
            "userland": {"id": user_id}}  # fmt: skip


async def test_post_signals_resumes_the_waiting_run_with_inngests_memo(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    app.script(fid("waiter"), ops(wait_op("approval", "order-7")), echo_memo("approval"))
    await register(s, app, fn_config(app.url, "waiter"))
    res = await s.api.post("/v1/signals", json={"signal": "order-7", "data": {"early": True}})
    assert (res.status_code, res.json()["error"]) == (404, "no run waits for signal 'order-7'")  # nobody waits yet
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("waiter")]
    assert run.idle_reason == {"kind": "waiting", "step": "approval", "signal": "order-7", "until": s.now() + 3_600_000,
                               "message": "waiting for signal 'order-7' until 2026-01-01T01:00:00Z"}  # fmt: skip
    rest = (await s.api.get(f"/v1/runs/{run.id}")).json()["data"]
    assert rest["idle_reason"]["message"] == "waiting for signal 'order-7' until 2026-01-01T01:00:00Z"
    res = await s.api.post("/v1/signals", json={"signal": "order-7", "data": {"paid": 42}})
    assert res.status_code == 200, res.text
    assert res.json()["data"] == {"run_id": run.id}
    await s.drain()
    run = await s.run(run.id)
    # The SDK got the memo Inngest's executor writes for a signal: {"data": {"signal", "data"}}.
    assert (run.status, run.output) == ("completed", {"data": {"signal": "order-7", "data": {"paid": 42}}}), run
    res = await s.api.post("/v1/signals", json={"signal": "order-7"})
    assert res.status_code == 404  # the run ended: nothing waits
    for bad in ({"data": 1}, {"signal": ""}, {"signal": 7}, {"signal": "nul\u0000"},
                {"signal": "x" * 1025}):  # fmt: skip
        res = await s.api.post("/v1/signals", json=bad)
        assert res.status_code == 400, (bad, res.text)


async def test_a_signal_wait_times_out_with_null(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    app.script(fid("patient"), ops(wait_op("ping", "never", timeout="10m")), echo_memo("ping"))
    await register(s, app, fn_config(app.url, "patient"))
    event_id = await s.send()
    await s.drain()
    await s.advance(600)
    run = (await s.runs_of(event_id))[fid("patient")]
    assert (run.status, run.output) == ("completed", None), run


async def test_a_signal_sent_while_the_wait_registers_is_not_lost(app: FakeApp, make_stack: MakeStack) -> None:
    """The run reports the wait beside a parallel step that is still running: the wait is registered at once, so a
    signal sent before the run suspends finds it, and the run resumes with its data."""
    s = await make_stack()
    app.start()
    busy = threading.Event()
    slow = {"op": "StepPlanned", "id": hash_step_id("slow"), "name": "slow", "displayName": "slow"}
    app.script(fid("racy"), by_step(
        step=[ops(wait_op("approval", "racy-1"), slow), echo_memo("approval")],
        slow=[Reply(**{**sdk(206, [{"op": "StepRun", "id": hash_step_id("slow"), "data": 1}]).__dict__,
                       "release": busy})],
    ))  # fmt: skip
    await register(s, app, fn_config(app.url, "racy"))
    event_id = await s.send()
    drained = asyncio.create_task(s.drain())
    while not any(c.step_id == hash_step_id("slow") for c in app.calls):
        await asyncio.sleep(0.01)
    res = await s.api.post("/v1/signals", json={"signal": "racy-1", "data": "in time"})
    assert res.status_code == 200, res.text
    busy.set()
    await drained
    await s.drain()
    run = (await s.runs_of(event_id))[fid("racy")]
    assert (run.status, run.output) == ("completed", {"data": {"signal": "racy-1", "data": "in time"}}), run


async def test_a_second_wait_for_the_same_signal_fails_or_replaces(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    app.script(fid("first"), ops(wait_op("w", "shared", conflict="fail")), echo_memo("w"))
    app.script(fid("strict"), ops(wait_op("w", "shared", conflict="fail")), complete("unreachable"))
    app.script(fid("taker"), ops(wait_op("w", "shared", conflict="replace")), echo_memo("w"))
    await register(s, app, fn_config(app.url, "first", event="shop/first"), fn_config(app.url, "strict",
                   event="shop/strict", retries=3), fn_config(app.url, "taker", event="shop/taker"))  # fmt: skip
    first = (await s.runs_of(await s.send("shop/first")))[fid("first")]
    await s.drain()
    strict = (await s.runs_of(await s.send("shop/strict")))[fid("strict")]
    await s.drain()
    strict = await s.run(strict.id)
    # As Inngest: the conflicting wait fails its run at once, without retries.
    assert (strict.status, strict.error) == ("failed", {
        "name": "Error", "message": "Signal conflict; signal wait already exists for another run"}), strict  # fmt: skip
    taker = (await s.runs_of(await s.send("shop/taker")))[fid("taker")]
    await s.drain()
    res = await s.api.post("/v1/signals", json={"signal": "shared", "data": 1})
    assert res.json()["data"]["run_id"] == taker.id
    await s.drain()
    assert (await s.run(taker.id)).status == "completed"
    assert (await s.run(first.id)).status == "running"  # replaced: it waits for its timeout
