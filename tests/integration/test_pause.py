"""Pausing and resuming a function (fake clock, SQLite and PostgreSQL): runs created while paused wait, a running
run stops before its next step, crons do not fire and do not burst on resume, re-registering does not un-pause,
resume releases the held runs in order; running a cron now leaves its schedule alone."""

from __future__ import annotations

from typing import Any

from stepline import FakeClock, Stepline
from stepline.core.engine import PAUSED_REASON
from stepline.core.scheduler import SCHEDULED_TIMER, run_cron_now

from .helpers import drain, runs, steps

MINUTE = 60


async def test_pause_holds_new_and_running_runs_and_resume_releases_them_in_order(client: Stepline) -> None:
    order: list[str] = []

    @client.function(id="two-steps", trigger="t/go", retries=0)
    async def two_steps(ctx: Any) -> str:
        async def first() -> str:
            if ctx.event.data.get("pause"):  # the function is paused while this run is between its steps
                await client.engine.pause_function(ctx.function_id)
            return "a"

        await ctx.step.run("a", first)
        await ctx.step.run("b", lambda: order.append(ctx.event.data["n"]))
        return "done"

    fid = "test-app-two-steps"
    await client.send({"name": "t/go", "data": {"n": "first", "pause": True}})
    await drain(client)
    [held] = await runs(client, "two-steps")
    assert held.status == "running" and held.idle_reason == PAUSED_REASON  # stopped before step b
    assert [s.display_id for s in await steps(client, held.id)] == ["a"] and order == []
    for n in ("second", "third"):
        await client.send({"name": "t/go", "data": {"n": n}})
    await drain(client)
    assert [r.status for r in await runs(client, "two-steps")] == ["running", "queued", "queued"]
    await client.engine.register("test-app", [f.record() for f in client.functions.values()])  # a re-sync
    await drain(client)
    assert order == [] and fid in await client.store.paused_functions()

    assert await client.engine.resume_function(fid) is True
    await drain(client)
    assert [r.status for r in await runs(client, "two-steps")] == ["completed"] * 3
    assert order == ["first", "second", "third"]
    assert [s.display_id for s in await steps(client, held.id)] == ["a", "b"]  # step a was not run again
    assert await client.engine.resume_function(fid) is False


async def test_a_paused_cron_neither_fires_nor_bursts_on_resume_and_runs_now(
    client: Stepline, clock: FakeClock
) -> None:
    @client.function(id="tick", trigger={"cron": "*/5 * * * *"})
    async def tick(ctx: Any) -> str:
        return str(ctx.event.data["scheduledAt"])

    fid = "test-app-tick"
    await drain(client)
    worker = client.worker()
    try:
        clock.advance(5 * MINUTE)  # 00:05
        await worker.run_until_idle()
        assert len(await runs(client, "tick")) == 1
        await client.engine.pause_function(fid)
        for _ in range(3):  # 00:10, 00:15, 00:20 pass while paused
            clock.advance(5 * MINUTE)
            await worker.run_until_idle()
        assert len(await runs(client, "tick")) == 1
        event_id, run_id = await run_cron_now(client.engine, fid)  # while paused: the run is held
        await worker.run_until_idle()
        assert (await client.store.get_run(run_id)).status == "queued"  # type: ignore[union-attr]
        await client.engine.resume_function(fid)
        await worker.run_until_idle()
        done = await runs(client, "tick")
        assert [r.output for r in done] == ["2026-01-01T00:05:00Z", "2026-01-01T00:20:00Z"]  # no burst for 10, 15, 20
        timer = await client.store.get_event(event_id)
        assert timer is not None and timer.name == SCHEDULED_TIMER and timer.id == event_id
        clock.advance(4 * MINUTE)  # 00:24: run now moved nothing; the next scheduled time is still 00:25
        await worker.run_until_idle()
        assert len(await runs(client, "tick")) == 2
        clock.advance(1 * MINUTE)
        await worker.run_until_idle()
        assert [r.output for r in await runs(client, "tick")][-1] == "2026-01-01T00:25:00Z"
    finally:
        worker.close()


async def test_a_run_held_by_a_pause_keeps_how_long_the_pause_delayed_its_start(
    client: Stepline, clock: FakeClock
) -> None:
    @client.function(id="held", trigger="t/held", retries=0)
    async def held(ctx: Any) -> str:
        return "done"

    fid = "test-app-held"
    await client.ready()
    await client.engine.pause_function(fid)
    await client.send({"name": "t/held", "data": {}})
    await drain(client)
    [run] = await runs(client, "held")
    assert run.status == "queued"
    clock.advance(90)
    assert await client.engine.resume_function(fid) is True
    await drain(client)
    [run] = await runs(client, "held")
    assert run.status == "completed"
    wait = await client.store.get_run_wait(run.id)
    assert wait is not None and (wait.kind, wait.duration_ms) == ("paused", 90_000)
