"""Parallel steps in race mode (``group.parallel({mode: "race"})``: ``opts.parallelMode = "race"``), issue 14 item 3,
with a scripted app on a real socket, the real server and store, and the fake clock.

- As Inngest does, the server asks for discovery after each race step ends, not after all of them: the code past
  the race goes on while the other racers still run.
- Beyond Inngest (inngest-js issue 1617): once a race has a result, its losing sleeps and waits resolve instead of
  holding the run open until their timeouts; this holds across executions (the race is stored with its steps).
"""

from __future__ import annotations

import threading
from typing import Any

from stepline.core.ids import hash_step_id

from .fake_app import FakeApp, MakeStack, Reply, complete, fn_config, ops, sdk
from .test_retry_semantics import by_step, fid, register

RACE = {"parallelMode": "race"}


def racer(op: str, user_id: str, name: str | None = None, **opts: Any) -> dict[str, Any]:
    return {"op": op, "id": hash_step_id(user_id), "name": name or user_id, "displayName": user_id,
            "opts": {**RACE, **opts}, "userland": {"id": user_id}}  # fmt: skip


def ran(user_id: str, data: Any) -> dict[str, Any]:
    """A race step's StepRun as the JS SDK reports it (the step's opts ride along)."""
    return {"op": "StepRun", "id": hash_step_id(user_id), "name": user_id, "displayName": user_id, "data": data,
            "opts": RACE}  # fmt: skip


async def test_discovery_follows_each_race_step_and_the_run_ends_while_a_racer_still_runs(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(call_timeout=20.0)
    app.start()
    slow = threading.Event()  # never set: the losing racer's call is still running when the run ends
    app.script(fid("race"), by_step(
        step=[ops(racer("StepPlanned", "fast"), racer("StepPlanned", "slow")), complete("fast won")],
        fast=[ops(ran("fast", "F"))],
        slow=[Reply(**{**sdk(206, [ran("slow", "S")]).__dict__, "release": slow})],
    ))  # fmt: skip
    await register(s, app, fn_config(app.url, "race"))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("race")]
    assert (run.status, run.output) == ("completed", "fast won"), run
    calls = [c.step_id for c in app.calls_of(fid("race"))]
    assert calls == ["step", hash_step_id("fast"), hash_step_id("slow"), "step"], calls
    # The discovery after "fast" was told that a parallel step was still running: plan, do not run inline.
    assert app.calls_of(fid("race"))[3].json()["ctx"]["disable_immediate_execution"] is True
    steps = {st.display_id: st for st in await s.store.list_steps(run.id)}
    assert set(steps) == {"fast"} and steps["fast"].output == "F"


async def test_a_decided_race_resolves_its_losing_wait_so_the_run_ends_without_waiting_for_its_timeout(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    app.start()
    wait = racer("WaitForEvent", "approval", "shop/approved", timeout="1h")
    deadline = racer("Sleep", "deadline", "10s")
    after = {"op": "StepPlanned", "id": hash_step_id("after"), "name": "after", "displayName": "after"}
    app.script(fid("wait-race"), by_step(
        # The SDK keeps reporting the losing wait (still unresolved in its code) beside the next step.
        step=[ops(wait, deadline), ops(wait, after), complete("deadline won")],
        after=[ops({"op": "StepRun", "id": hash_step_id("after"), "name": "after", "data": 1})],
    ))  # fmt: skip
    await register(s, app, fn_config(app.url, "wait-race"))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("wait-race")]
    assert run.idle_reason is not None and run.idle_reason["kind"] == "multiple", run
    await s.advance(10)  # the sleep wins the race
    run = await s.run(run.id)
    # Without the fix the run would rest until the losing wait's timeout, an hour later.
    assert (run.status, run.output) == ("completed", "deadline won"), run
    steps = {st.display_id: st for st in await s.store.list_steps(run.id)}
    assert (steps["approval"].status, steps["approval"].output) == ("completed", None)
    assert steps["approval"].race == steps["deadline"].race is not None
    # The loser's memo is what a timed-out wait gets: null.
    last = app.calls_of(fid("wait-race"))[-1].json()
    assert last["steps"][hash_step_id("approval")] is None
    await s.send("shop/approved")  # its wait is gone: nothing to resume
    await s.drain()
    assert len(app.calls_of(fid("wait-race"))) == 4


async def test_a_race_decided_in_a_later_execution_still_resolves_its_losers(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    app.start()
    failing = {**ran("lookup", None), "op": "StepError", "error": {"name": "Error", "message": "try again"}}
    app.script(fid("later"), by_step(
        step=[ops(racer("StepPlanned", "lookup"), racer("WaitForEvent", "reply", "shop/reply", timeout="1d")),
              complete("looked up")],
        lookup=[sdk(206, [failing]), ops(ran("lookup", {"found": True}))],
    ))  # fmt: skip
    await register(s, app, fn_config(app.url, "later", retries=2))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("later")]
    assert run.status == "running" and run.lease_owner is None  # resting: the lookup retries, the wait waits
    await s.advance(10)  # the retry, in a new execution, wins the race stored with the steps
    run = await s.run(run.id)
    assert (run.status, run.output) == ("completed", "looked up"), run
    steps = {st.display_id: st for st in await s.store.list_steps(run.id)}
    assert (steps["reply"].status, steps["reply"].output) == ("completed", None)
    assert (steps["lookup"].status, steps["lookup"].attempts) == ("completed", 2)
