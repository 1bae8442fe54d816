"""Rerun: a new run of the same function and event, from the start or from one of the original's steps."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from stepline import Context, FakeClock, Stepline
from stepline.core.ids import hash_step_id
from stepline.core.rerun import RerunNotPossibleError, RunNotFoundError, StepNotFoundError, rerun

from .helpers import drain, runs, steps


def three_steps(client: Stepline, calls: list[str], broken: set[str]) -> None:
    @client.function(id="three", trigger="t/three", retries=0)
    async def three(ctx: Context) -> Any:
        def step(name: str, value: Any) -> Any:
            calls.append(name)
            if name in broken:
                raise RuntimeError(f"{name} is broken")
            return value

        one = await ctx.step.run("one", lambda: step("one", ctx.event.data["n"]))
        two = await ctx.step.run("two", lambda: step("two", one + 1))
        three = await ctx.step.run("three", lambda: step("three", two + 1))
        return [one, two, three]


async def test_rerun_from_the_failed_step_skips_the_steps_before_it(client: Stepline) -> None:
    calls: list[str] = []
    broken = {"two"}
    three_steps(client, calls, broken)
    await client.send({"name": "t/three", "data": {"n": 1}})
    await drain(client)
    (failed,) = await runs(client)
    assert failed.status == "failed" and calls == ["one", "two"]

    broken.clear()  # the bug is fixed; rerun from the step that failed
    calls.clear()
    new_id = await rerun(client.engine, failed.id, hash_step_id("two"))
    assert new_id != failed.id
    queued = await client.get_run(new_id)
    assert queued is not None and queued.status == "queued" and queued.event_id == failed.event_id
    assert queued.idle_reason == {"kind": "rerun", "run_id": failed.id, "from_step": "two"}
    await drain(client)
    done = await client.get_run(new_id)
    assert done is not None and done.status == "completed" and done.output == [1, 2, 3]
    assert calls == ["two", "three"]  # "one" came from the copied memo
    recorded = await steps(client, new_id)
    assert [(s.display_id, s.status, s.output) for s in recorded] == [
        ("one", "completed", 1), ("two", "completed", 2), ("three", "completed", 3)]  # fmt: skip
    original_one = (await steps(client, failed.id))[0]
    assert (recorded[0].started_at, recorded[0].ended_at) == (original_one.started_at, original_one.ended_at)
    assert (await client.get_run(failed.id)).status == "failed"  # type: ignore[union-attr]


async def test_plain_rerun_executes_everything_again_despite_the_event_id(client: Stepline) -> None:
    calls: list[str] = []
    three_steps(client, calls, set())
    await client.send({"name": "t/three", "id": "order-1", "data": {"n": 5}})
    await drain(client)
    (first,) = await runs(client)
    assert first.status == "completed" and calls == ["one", "two", "three"]
    await client.send({"name": "t/three", "id": "order-1", "data": {"n": 5}})  # idempotency: no new run
    await drain(client)
    assert len(await runs(client)) == 1

    calls.clear()
    new_id = await rerun(client.engine, first.id)
    await drain(client)
    again = await client.get_run(new_id)
    assert again is not None and again.status == "completed" and again.output == [5, 6, 7]
    assert calls == ["one", "two", "three"]
    assert again.event_id == first.event_id
    assert [r.id for r in await runs(client)] == [first.id, new_id]


async def test_rerun_from_a_step_after_a_sleep_does_not_sleep_again(client: Stepline, clock: FakeClock) -> None:
    calls: list[str] = []

    @client.function(id="napper", trigger="t/nap", retries=0)
    async def napper(ctx: Context) -> Any:
        await ctx.step.run("before", lambda: calls.append("before"))
        await ctx.step.sleep("nap", "1h")
        return await ctx.step.run("after", lambda: calls.append("after") or len(calls))

    await client.send({"name": "t/nap"})
    await drain(client)
    clock.advance(dt.timedelta(hours=1))
    await drain(client)
    (first,) = await runs(client)
    assert first.status == "completed" and calls == ["before", "after"]
    calls.clear()
    new_id = await rerun(client.engine, first.id, "after")  # a display id is accepted too
    await drain(client)  # no clock advance needed: the sleep is in the copied memo
    again = await client.get_run(new_id)
    assert again is not None and again.status == "completed" and calls == ["after"]


async def test_rerun_errors_name_what_is_missing(client: Stepline) -> None:
    three_steps(client, [], set())
    await client.send({"name": "t/three", "data": {"n": 1}})
    await drain(client)
    (run,) = await runs(client)
    with pytest.raises(RunNotFoundError, match="run 'nope' not found"):
        await rerun(client.engine, "nope")
    with pytest.raises(StepNotFoundError, match=f"run '{run.id}' has no step with id 'abc'"):
        await rerun(client.engine, run.id, "abc")
    await client.engine.register(client.app_id, [])  # the app no longer defines the function
    with pytest.raises(RerunNotPossibleError, match="'test-app-three' is no longer registered"):
        await rerun(client.engine, run.id)
