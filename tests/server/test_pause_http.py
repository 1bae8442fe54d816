"""Pausing a function served over HTTP: a run between two calls stops before the next one (no call is made while
paused), and resume continues it from its recorded steps."""

from __future__ import annotations

from stepline.core.engine import PAUSED_REASON

from .fake_app import APP_ID, Call, FakeApp, MakeStack, Reply, complete, fn_config, ops, register_body, step_op


async def test_a_paused_http_function_makes_no_call_until_resumed(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    fid = f"{APP_ID}-charge"

    async def first_step_then_pause(call: Call) -> Reply:
        await s.st.engine.pause_function(fid)  # paused while the run is in its first call
        return ops(step_op("a", 1))

    app.script(fid, first_step_then_pause, ops(step_op("b", 2)), complete("done"))
    assert (await s.register(register_body(app.url, [fn_config(app.url, "charge")]))).status_code == 200
    held_id = (await s.runs_of(await s.send()))[fid].id
    await s.drain()
    held = await s.run(held_id)
    assert held.status == "running" and held.idle_reason == PAUSED_REASON
    assert len(app.calls_of(fid)) == 1  # step a recorded; no call for the next step while paused
    await s.advance(60)
    assert len(app.calls_of(fid)) == 1

    assert await s.st.engine.resume_function(fid)
    await s.drain()
    done = await s.run(held_id)
    assert (done.status, done.output) == ("completed", "done")
    assert len(app.calls_of(fid)) == 3  # step a was not called again
