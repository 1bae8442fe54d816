"""Steps: memoisation, ids, sleep, wait_for_event, invoke, send_event, parallel — on a real SQLite store."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from pydantic import BaseModel

from stepline import Context, FakeClock, Stepline, SyncContext
from stepline.core.ids import hash_step_id

from .helpers import advance, drain, only_run, runs, steps


async def test_sequential_steps_memoised_across_a_sleep(client: Stepline, clock: FakeClock) -> None:
    calls: list[str] = []

    @client.function(id="seq", trigger="t/seq")
    async def seq(ctx: Context) -> Any:
        a = await ctx.step.run("a", lambda: calls.append("a") or 1)
        await ctx.step.sleep("nap", "10m")
        b = await ctx.step.run("b", lambda: calls.append("b") or a + 1)
        return [a, b]

    await client.send({"name": "t/seq"})
    await drain(client)
    run = await only_run(client)
    assert run.status == "running"
    assert run.idle_reason is not None and run.idle_reason["kind"] == "sleeping"
    assert run.idle_reason["until"] == clock.now_ms() + 600_000
    await advance(client, clock, 599)
    assert (await only_run(client)).status == "running"
    await advance(client, clock, 2)
    run = await only_run(client)
    assert run.status == "completed" and run.output == [1, 2]
    assert calls == ["a", "b"]  # "a" was not executed again when the run resumed after the sleep
    recorded = await steps(client, run.id)
    assert [(s.display_id, s.kind, s.status) for s in recorded] == [
        ("a", "run", "completed"), ("nap", "sleep", "completed"), ("b", "run", "completed")]  # fmt: skip
    assert recorded[0].step_id == hash_step_id("a")


async def test_repeated_step_ids_get_counters(client: Stepline) -> None:
    @client.function(id="loop", trigger="t/loop")
    async def loop(ctx: Context) -> Any:
        return [await ctx.step.run("item", lambda i=i: i * 10) for i in range(3)]

    await client.send({"name": "t/loop"})
    await drain(client)
    run = await only_run(client)
    assert run.output == [0, 10, 20]
    assert [s.display_id for s in await steps(client, run.id)] == ["item", "item:1", "item:2"]
    assert [s.step_id for s in await steps(client, run.id)] == [hash_step_id(x) for x in ("item", "item:1", "item:2")]


async def test_sync_function_with_parallel_group(client: Stepline) -> None:
    @client.function(id="sync-par", trigger="t/sync")
    def sync_par(ctx: SyncContext) -> Any:
        first = ctx.step.run("first", lambda: 5)
        a, b = ctx.group.parallel([lambda: ctx.step.run("a", lambda: first + 1),
                                   lambda: ctx.step.run("b", lambda: first + 2)])  # fmt: skip
        return a + b

    await client.send({"name": "t/sync"})
    await drain(client)
    run = await only_run(client)
    assert run.status == "completed" and run.output == 13
    assert sorted(s.display_id for s in await steps(client, run.id)) == ["a", "b", "first"]


async def test_async_parallel_steps_with_a_sleep_in_the_gather(client: Stepline, clock: FakeClock) -> None:
    calls: list[str] = []

    @client.function(id="par", trigger="t/par")
    async def par(ctx: Context) -> Any:
        async def slow() -> int:
            await asyncio.sleep(0.01)
            calls.append("slow")
            return 1

        x, _, y = await asyncio.gather(ctx.step.run("x", slow), ctx.step.sleep("z", "1s"),
                                       ctx.step.run("y", lambda: calls.append("y") or 2))  # fmt: skip
        return x + y

    await client.send({"name": "t/par"})
    await drain(client)
    run = await only_run(client)
    assert run.status == "running"
    # The sleep suspended the run, but the parallel steps finished and were recorded first.
    assert {s.display_id: s.status for s in await steps(client, run.id)} == {
        "x": "completed", "y": "completed", "z": "sleeping"}  # fmt: skip
    await advance(client, clock, 1.5)
    run = await only_run(client)
    assert run.status == "completed" and run.output == 3
    assert sorted(calls) == ["slow", "y"]


async def test_sleep_until(client: Stepline, clock: FakeClock) -> None:
    wake = clock.now() + dt.timedelta(hours=2)

    @client.function(id="until", trigger="t/until")
    async def until(ctx: Context) -> Any:
        await ctx.step.sleep_until("later", wake)
        return "woke"

    await client.send({"name": "t/until"})
    await drain(client)
    await advance(client, clock, 3600)
    assert (await only_run(client)).status == "running"
    await advance(client, clock, 3601)
    assert (await only_run(client)).output == "woke"


async def test_wait_for_event_matches_later_event(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="approve", trigger="order/created")
    async def approve(ctx: Context) -> Any:
        got = await ctx.step.wait_for_event("approval", event="order/approved", timeout="1h",
                                            if_exp="async.data.order == event.data.order")  # fmt: skip
        return None if got is None else got["data"]["by"]

    await client.send({"name": "order/approved", "data": {"order": 1, "by": "too-early"}})
    await client.send({"name": "order/created", "data": {"order": 1}})
    await drain(client)
    assert (await only_run(client)).status == "running"
    await client.send({"name": "order/approved", "data": {"order": 2, "by": "other-order"}})
    await client.send({"name": "order/approved", "data": {"order": 1, "by": "alice"}})
    await drain(client)
    run = await only_run(client)
    assert run.status == "completed" and run.output == "alice"


async def test_wait_for_event_times_out(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="timeout", trigger="t/start")
    async def timeout(ctx: Context) -> Any:
        got = await ctx.step.wait_for_event("w", event="t/never", timeout="30m", match="data.k")
        return {"got": got}

    await client.send({"name": "t/start", "data": {"k": 1}})
    await drain(client)
    await advance(client, clock, 1799)
    assert (await only_run(client)).status == "running"
    await advance(client, clock, 2)
    assert (await only_run(client)).output == {"got": None}


async def test_wait_does_not_miss_event_sent_while_step_executes(client: Stepline) -> None:
    """The event arrives after the wait step started but before the wait was stored."""

    @client.function(id="racy", trigger="t/racy")
    async def racy(ctx: Context) -> Any:
        async def send_then_wait() -> Any:
            return await ctx.step.wait_for_event("w", event="t/signal", timeout="1h")

        # Another producer sends the signal concurrently with the wait step starting.
        results = await asyncio.gather(send_then_wait(), client.send({"name": "t/signal", "data": {"x": 1}}),
                                       return_exceptions=True)  # fmt: skip
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results[0]["data"]

    await client.send({"name": "t/racy"})
    await drain(client)
    await drain(client)
    run = await only_run(client)
    assert run.status == "completed" and run.output == {"x": 1}


async def test_invoke_returns_other_functions_result(client: Stepline) -> None:
    @client.function(id="child", trigger="t/child-never")
    async def child(ctx: Context) -> Any:
        return await ctx.step.run("square", lambda: ctx.event.data["n"] ** 2)

    @client.function(id="parent", trigger="t/parent")
    async def parent(ctx: Context) -> Any:
        return await ctx.step.invoke("call-child", function=child, data={"n": 7})

    await client.send({"name": "t/parent"})
    await drain(client)
    await drain(client)
    parent_run = await only_run(client, "parent")
    child_run = await only_run(client, "child")
    assert child_run.status == "completed" and child_run.output == 49
    assert parent_run.status == "completed" and parent_run.output == 49


async def test_invoke_unknown_function_is_a_step_error(client: Stepline) -> None:
    @client.function(id="caller", trigger="t/caller")
    async def caller(ctx: Context) -> Any:
        try:
            await ctx.step.invoke("x", function="no-such-fn")
        except Exception as exc:
            return str(exc)
        return "unreachable"

    await client.send({"name": "t/caller"})
    await drain(client)
    assert "no registered function has id 'no-such-fn'" in (await only_run(client)).output


async def test_invoke_timeout(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="stuck", trigger="t/stuck-never")
    async def stuck(ctx: Context) -> Any:
        await ctx.step.sleep("forever", "7d")

    @client.function(id="waiter", trigger="t/waiter")
    async def waiter(ctx: Context) -> Any:
        from stepline import StepError

        try:
            return await ctx.step.invoke("call", function=stuck, timeout="1m")
        except StepError as exc:
            return exc.name

    await client.send({"name": "t/waiter"})
    await drain(client)
    await advance(client, clock, 61)
    assert (await only_run(client, "waiter")).output == "InvokeTimeoutError"


async def test_send_event_from_step_fans_out_once(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="producer", trigger="t/produce")
    async def producer(ctx: Context) -> Any:
        ids = await ctx.step.send_event("fan", [{"name": "t/item", "data": {"i": i}} for i in range(3)])
        await ctx.step.sleep("after", "1s")  # forces a replay: the send must not happen again
        return len(ids)

    @client.function(id="consumer", trigger="t/item")
    async def consumer(ctx: Context) -> Any:
        return ctx.event.data["i"]

    await client.send({"name": "t/produce"})
    await drain(client)
    await advance(client, clock, 2)
    assert (await only_run(client, "producer")).output == 3
    assert sorted(r.output for r in await runs(client, "consumer")) == [0, 1, 2]


class Point(BaseModel):
    x: int
    y: int


async def test_pydantic_event_data_and_step_output_round_trip(client: Stepline, clock: FakeClock) -> None:
    seen: list[Any] = []

    @client.function(id="models", trigger="t/models")
    async def models(ctx: Context) -> Any:
        def make() -> Point:
            return Point(x=ctx.event.data["x"], y=2)

        p = await ctx.step.run("make", make)
        seen.append(p)
        await ctx.step.sleep("s", "1s")
        return p

    await client.send({"name": "t/models", "data": Point(x=1, y=0)})
    await drain(client)
    await advance(client, clock, 2)
    assert seen == [Point(x=1, y=2), Point(x=1, y=2)]  # same type live and on replay
    assert (await only_run(client)).output == {"x": 1, "y": 2}


@pytest.mark.parametrize("bad", [{1, 2}, object()])
async def test_non_serialisable_step_result_fails_the_step(client: Stepline, bad: Any) -> None:
    @client.function(id="bad", trigger="t/bad", retries=3)
    async def bad_fn(ctx: Context) -> Any:
        return await ctx.step.run("oops", lambda: bad)

    await client.send({"name": "t/bad"})
    await drain(client)
    run = await only_run(client)
    assert run.status == "failed"
    assert "the result of step 'oops' is not JSON-compatible" in run.error["message"]
    (step,) = await steps(client, run.id)
    assert step.attempts == 1  # not retried: it would fail the same way
