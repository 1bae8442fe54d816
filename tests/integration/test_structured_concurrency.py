"""Steps under asyncio's structured concurrency and cancellation; bounded system-event cascades."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from stepline import Backoff, Context, FakeClock, Stepline

from .helpers import advance, drain, only_run, runs, steps

FAST = Backoff(schedule=(dt.timedelta(seconds=10),), jitter=dt.timedelta(0))


async def test_task_group_with_a_sleeping_step_suspends_and_resumes(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="tg", trigger="x/tg")
    async def tg(ctx: Context) -> Any:
        async with asyncio.TaskGroup() as group:
            a = group.create_task(ctx.step.run("a", lambda: "a"))
            group.create_task(ctx.step.sleep("nap", "10s"))
        return a.result()

    await client.send({"name": "x/tg"})
    await drain(client)
    run = await only_run(client)
    assert run.status == "running" and run.lease_owner is None and run.idle_reason["kind"] == "sleeping"
    await advance(client, clock, 11)
    run = await only_run(client)
    assert run.status == "completed" and run.output == "a"


async def test_gather_with_return_exceptions_keeps_a_step_retry(client: Stepline, clock: FakeClock) -> None:
    calls: list[int] = []

    @client.function(id="g", trigger="x/g", retries=3, backoff=FAST)
    async def g(ctx: Context) -> Any:
        def flaky() -> str:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("try again")
            return "ok"

        results = await asyncio.gather(ctx.step.run("a", flaky), ctx.step.run("b", lambda: "b"),
                                       return_exceptions=True)  # fmt: skip
        return [r if isinstance(r, str) else f"error:{type(r).__name__}" for r in results]

    await client.send({"name": "x/g"})
    await drain(client)
    assert (await only_run(client)).status == "running"  # the swallowed retry still suspends the run
    await advance(client, clock, 11)
    run = await only_run(client)
    assert run.status == "completed" and run.output == ["ok", "b"] and len(calls) == 2


async def test_a_step_cancelled_by_wait_for_does_not_hang_the_run(client: Stepline) -> None:
    @client.function(id="w", trigger="x/w")
    async def w(ctx: Context) -> Any:
        try:
            await asyncio.wait_for(ctx.step.run("slow", asyncio.sleep, 10), 0.05)
        except TimeoutError:
            return await ctx.step.run("fallback", lambda: "timed out")
        return "unreachable"

    await client.send({"name": "x/w"})
    await asyncio.wait_for(drain(client), 10)
    run = await only_run(client)
    assert run.status == "completed" and run.output == "timed out" and run.lease_owner is None
    assert [s.display_id for s in await steps(client, run.id)] == ["fallback"]


async def test_wildcard_and_run_end_triggers_do_not_feed_each_other(client: Stepline) -> None:
    @client.function(id="everything", trigger="*")
    async def everything(ctx: Context) -> Any:
        return ctx.event.name

    @client.function(id="on-finish", trigger="stepline/function.finished")
    async def on_finish(ctx: Context) -> Any:
        return ctx.event.data["function_id"]

    await client.send({"name": "app/start"})
    await asyncio.wait_for(drain(client), 20)
    # everything(app/start) ends -> on-finish (a function's own end never re-triggers it); on-finish's end
    # (a run started by a run end) starts nothing more.
    assert [r.output for r in await runs(client, "everything")] == ["app/start"]
    assert [r.output for r in await runs(client, "on-finish")] == ["test-app-everything"]


async def test_an_invoked_child_honours_its_cancel_on(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="child", trigger="x/never", cancel_on=[{"event": "x/stop"}])
    async def child(ctx: Context) -> Any:
        await ctx.step.sleep("long", "1h")
        return "finished"

    @client.function(id="parent", trigger="x/parent", retries=0)
    async def parent(ctx: Context) -> Any:
        return await ctx.step.invoke("call", function=child)

    await client.send({"name": "x/parent"})
    await drain(client)
    await drain(client)
    await client.send({"name": "x/stop"})
    await advance(client, clock, 3601)
    assert (await only_run(client, "child")).status == "cancelled"
    parent_run = await only_run(client, "parent")
    assert parent_run.status == "failed"  # the invoke step failed with the child's cancellation
