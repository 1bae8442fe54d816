"""A step's result is held back until the run's next write (StepDriver._hold_back): what a user can rely on."""

from __future__ import annotations

import asyncio
from typing import Any

from stepline import Context, FakeClock, Stepline
from stepline.core.ids import hash_step_id
from stepline.storage.records import StepUpdate

from .helpers import advance, drain, only_run, runs, steps


async def test_a_step_result_is_durable_before_the_next_step_starts(client: Stepline) -> None:
    seen: list[list[tuple[str, Any]]] = []

    @client.function(id="two", trigger="t/two")
    async def two(ctx: Context) -> Any:
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
    async def one(ctx: Context) -> Any:
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
    async def fails(ctx: Context) -> Any:
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
    async def retry(ctx: Context) -> Any:
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
    async def race(ctx: Context) -> Any:
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
    async def slow(ctx: Context) -> Any:
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


async def test_a_held_back_result_that_lost_to_another_is_replayed_before_later_steps_use_it(client: Stepline) -> None:
    """The next step finds another result recorded for the held-back one: what later steps compute comes from the
    recorded result (the run is replayed from the store), never from the value that lost."""
    calls: list[str] = []

    @client.function(id="race2", trigger="t/race2")
    async def race2(ctx: Context) -> Any:
        mine = await ctx.step.run("s", lambda: calls.append("s") or "mine")
        if len(calls) == 1:
            await client.store.record_step(ctx.run_id, "stale-worker", StepUpdate(
                hash_step_id("s"), "s", "run", "completed", 1, output="theirs"), client.engine.matcher,
                client.engine.clock.now_ms())  # fmt: skip
        return await ctx.step.run("t", lambda: calls.append("t") or f"from-{mine}")

    await client.send({"name": "t/race2"})
    await drain(client)
    run = await only_run(client)
    assert (run.status, run.output) == ("completed", "from-theirs")
    assert [(s.display_id, s.output) for s in await steps(client, run.id)] == [("s", "theirs"), ("t", "from-theirs")]
    assert calls == ["s", "t"]  # "t" ran once, after the replay


async def test_the_live_execution_and_a_replay_see_the_same_step_value(client: Stepline, clock: FakeClock) -> None:
    seen: list[Any] = []

    @client.function(id="keys", trigger="t/keys", retries=1)
    async def keys(ctx: Context) -> Any:
        d = await ctx.step.run("d", lambda: {"bb": 1, "a": 2, "big": 1e20, "small": 1.5e-7})
        seen.append((list(d), repr(d["big"]), repr(d["small"])))
        if ctx.attempt == 0:
            raise ValueError("retried: the next attempt replays 'd' from the store")
        return None

    await client.send({"name": "t/keys"})
    await drain(client)
    await advance(client, clock, 600)
    assert (await only_run(client)).status == "completed"
    assert seen == [(["bb", "a", "big", "small"], "1e+20", "1.5e-07")] * 2


async def test_results_and_errors_with_nul_characters_are_stored(client: Stepline) -> None:
    @client.function(id="nul", trigger="t/nul", retries=0)
    async def nul(ctx: Context) -> Any:
        part = await ctx.step.run("a", lambda: "a\x00b")
        if ctx.event.data.get("fail"):
            raise ValueError("bad \x00 byte")
        return part + "\x00"

    await client.send([{"name": "t/nul"}, {"name": "t/nul", "data": {"fail": True}}])
    await drain(client)
    by_status = {r.status: r for r in await runs(client)}
    assert sorted(by_status) == ["completed", "failed"]
    assert by_status["completed"].output == "a\x00b\x00"
    assert "bad \x00 byte" in (by_status["failed"].error or {}).get("message", "")
    for run in by_status.values():
        assert [(s.display_id, s.output) for s in await steps(client, run.id)] == [("a", "a\x00b")]
