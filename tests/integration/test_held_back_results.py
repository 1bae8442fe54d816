"""A step's result is held back until the run's next write (StepDriver._hold_back): what a user can rely on."""

from __future__ import annotations

import asyncio
from typing import Any

from stepline import FakeClock, Stepline
from stepline.core.ids import hash_step_id
from stepline.storage.records import StepUpdate

from .helpers import advance, drain, only_run, steps


async def test_a_step_result_is_durable_before_the_next_step_starts(client: Stepline) -> None:
    seen: list[list[tuple[str, Any]]] = []

    @client.function(id="two", trigger="t/two")
    async def two(ctx: Any) -> Any:
        a = await ctx.step.run("a", lambda: 1)

        async def look() -> int:
            seen.append([(s.display_id, s.output) for s in await client.store.list_steps(ctx.run_id)])
            return a + 1

        return await ctx.step.run("b", look)

    await client.send({"name": "t/two"})
    await drain(client)
    run = await only_run(client)
    assert (run.status, run.output) == ("completed", 2)
    assert seen == [[("a", 1)]]  # "b"'s code found "a" stored
    assert [(s.display_id, s.status, s.output) for s in await steps(client, run.id)] == [
        ("a", "completed", 1), ("b", "completed", 2)]  # fmt: skip


async def test_the_last_result_is_stored_with_the_run_end(client: Stepline) -> None:
    stored_at_return: list[list[str]] = []

    @client.function(id="one", trigger="t/one")
    async def one(ctx: Any) -> Any:
        value = await ctx.step.run("only", lambda: {"x": 1})
        stored_at_return.append([s.display_id for s in await client.store.list_steps(ctx.run_id)])
        return value

    await client.send({"name": "t/one"})
    await drain(client)
    run = await only_run(client)
    assert stored_at_return == [[]]  # not written on its own...
    assert (run.status, run.output) == ("completed", {"x": 1})
    assert [(s.display_id, s.output) for s in await steps(client, run.id)] == [
        ("only", {"x": 1})
    ]  # ...but with the end


async def test_a_failing_run_stores_the_results_it_held_back(client: Stepline) -> None:
    @client.function(id="fails", trigger="t/fails", retries=0)
    async def fails(ctx: Any) -> Any:
        await ctx.step.run("ok", lambda: "done")
        raise ValueError("after the step")

    await client.send({"name": "t/fails"})
    await drain(client)
    run = await only_run(client)
    assert run.status == "failed"
    assert [(s.display_id, s.status, s.output) for s in await steps(client, run.id)] == [("ok", "completed", "done")]


async def test_a_retried_run_keeps_the_result_and_does_not_run_the_step_again(
    client: Stepline, clock: FakeClock
) -> None:
    calls: list[str] = []

    @client.function(id="retry", trigger="t/retry", retries=1)
    async def retry(ctx: Any) -> Any:
        got = await ctx.step.run("once", lambda: calls.append("once") or len(calls))
        if ctx.attempt == 0:
            raise ValueError("outside any step")
        return got

    await client.send({"name": "t/retry"})
    await drain(client)
    await advance(client, clock, 300)
    run = await only_run(client)
    assert (run.status, run.output, calls) == ("completed", 1, ["once"])


async def test_a_result_recorded_meanwhile_by_a_worker_that_lost_the_lease_wins(client: Stepline) -> None:
    """First write wins: the run's end carried another result for the step, so the run replays with the stored one."""
    calls: list[str] = []

    @client.function(id="race", trigger="t/race")
    async def race(ctx: Any) -> Any:
        mine = await ctx.step.run("s", lambda: calls.append("s") or "mine")
        if len(calls) == 1:  # a stale worker records its own result for "s" before this run ends
            await client.store.record_step(ctx.run_id, "stale-worker", StepUpdate(
                hash_step_id("s"), "s", "run", "completed", 1, output="theirs"), client.engine.matcher,
                client.engine.clock.now_ms())  # fmt: skip
        return mine

    await client.send({"name": "t/race"})
    await drain(client)
    run = await only_run(client)
    assert (run.status, run.output) == ("completed", "theirs")
    assert calls == ["s"]  # the replay took the stored result
    assert [(s.display_id, s.output) for s in await steps(client, run.id)] == [("s", "theirs")]


async def test_a_stopping_worker_writes_the_result_it_held_back(client: Stepline) -> None:
    """Shutdown cancels a run still in its code after a step (grace over): the step's result is kept, so the worker
    that takes the run over does not run the step again."""
    calls: list[str] = []
    in_slow_part = asyncio.Event()

    @client.function(id="slow", trigger="t/slow")
    async def slow(ctx: Any) -> Any:
        value = await ctx.step.run("a", lambda: calls.append("a") or "A")
        if len(calls) == 1 and not in_slow_part.is_set():
            in_slow_part.set()
            await asyncio.sleep(60)  # code between steps, still running when the worker stops
        return value

    await client.ready()
    await client.send({"name": "t/slow"})
    worker = client.worker(shutdown_grace=0.1, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(in_slow_part.wait(), 10)
    worker.stop()
    await asyncio.wait_for(task, 10)
    run = await only_run(client)
    assert run.status == "running" and run.lease_owner is None  # released for another worker
    assert [(s.display_id, s.output) for s in await steps(client, run.id)] == [("a", "A")]
    await drain(client)
    run = await only_run(client)
    assert (run.status, run.output, calls) == ("completed", "A", ["a"])
