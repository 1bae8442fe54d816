"""Realtime from in-process functions: ``ctx.publish`` (at least once, never re-sent by a replay), ``ctx.step.publish``
(memoised), ``client.subscribe`` (live, replay, bounded queues), across processes on one database; and waiting for
results (``client.wait_for_run``, ``send_and_wait``) without a query per waiter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stepline import Context, FakeClock, Message, PublishError, Stepline, SubscriptionClosed, UnknownRunError
from stepline.realtime.hub import Subscription
from stepline.storage.base import Store

from ..backends import Backend
from .helpers import advance, drain, only_run


async def received(sub: Subscription) -> list[Message]:
    """What the subscription holds now (without waiting)."""
    out = []
    while sub.queued:
        d = await sub.get(timeout=0)
        assert d is not None
        out.append(d.message())
    return out


def datas(messages: list[Message]) -> list[Any]:
    return [m.data for m in messages]


async def test_ctx_publish_is_not_sent_again_when_a_replay_passes_it(client: Stepline, clock: FakeClock) -> None:
    calls: list[str] = []

    @client.function(id="job", trigger="job/go")
    async def job(ctx: Context) -> str:
        await ctx.publish("job:1", "progress", {"stage": "start"})
        await ctx.step.run("a", lambda: calls.append("a"))
        await ctx.publish("job:1", "progress", {"stage": "a done"})
        await ctx.step.sleep("nap", "10s")
        await ctx.publish("job:1", "progress", {"stage": "woke"})
        return "ok"

    await client.ready()
    sub = await client.subscribe("job:1", ["progress"])
    await client.send({"name": "job/go"})
    await drain(client)
    assert datas(await received(sub)) == [{"stage": "start"}, {"stage": "a done"}]
    await advance(client, clock, 11)  # the run replays start, a and a done from the memo: nothing re-sent
    got = await received(sub)
    assert datas(got) == [{"stage": "woke"}]
    run = await only_run(client)
    assert (run.status, got[0].run_id, got[0].channel, got[0].topic) == ("completed", run.id, "job:1", "progress")
    assert calls == ["a"]


async def test_step_publish_is_memoised_and_a_retried_step_publishes_again(client: Stepline, clock: FakeClock) -> None:
    attempts: list[int] = []

    @client.function(id="job", trigger="job/go", retries=2)
    def job(ctx: Context) -> str:  # sync flavour: steps and ctx.publish block
        ctx.step.publish("announce", "ch", "t", {"hello": 1})

        def flaky() -> str:
            attempts.append(1)
            ctx.publish("ch", "t", {"attempt": len(attempts)})
            if len(attempts) == 1:
                raise RuntimeError("transient")
            return "done"

        return str(ctx.step.run("flaky", flaky))

    await client.ready()
    sub = await client.subscribe("ch", "t")
    await client.send({"name": "job/go"})
    await drain(client)
    assert datas(await received(sub)) == [{"hello": 1}, {"attempt": 1}]
    await advance(client, clock, 60)  # the step's retry: the run replays "announce" (memoised: not re-sent)
    assert datas(await received(sub)) == [{"attempt": 2}]
    assert (await only_run(client)).output == "done"
    steps = {s.display_id: s for s in await client.steps((await only_run(client)).id)}
    assert steps["announce"].output == {"hello": 1}


async def test_publishing_after_the_run_ended_is_a_clear_error(client: Stepline) -> None:
    kept: list[Context] = []

    @client.function(id="job", trigger="job/go")
    async def job(ctx: Context) -> None:
        kept.append(ctx)

    await client.send({"name": "job/go"})
    await drain(client)
    with pytest.raises(PublishError, match="has ended") as err:
        await kept[0].publish("ch", "t", 1)
    assert err.value.status == 409


async def test_bad_messages_are_refused_with_the_reason(client: Stepline) -> None:
    await client.ready()
    with pytest.raises(PublishError, match="non-empty"):
        await client.publish("", "t", 1)
    with pytest.raises(PublishError, match="at most 256"):
        await client.publish("c", "x" * 300, 1)
    with pytest.raises(PublishError, match="at most 524288 bytes") as err:
        await client.publish("c", "t", "x" * (600 * 1024))
    assert err.value.status == 413
    with pytest.raises(PublishError, match="JSON-serialisable"):
        await client.publish("c", "t", {"when": object()})


async def test_a_late_subscriber_gets_the_replay_then_live_messages_without_repeats(client: Stepline) -> None:
    await client.ready()
    first = await client.publish("job:2", "progress", 1)
    await client.publish("job:2", "other", "not asked for")
    await client.publish("job:2", "progress", 2)
    everything = await client.subscribe("job:2", ["progress"], since=0)
    after_first = await client.subscribe("job:2", ["progress"], since=first)
    live_only = await client.subscribe("job:2", ["progress"])
    await client.publish("job:2", "progress", 3)
    assert datas(await received(everything)) == [1, 2, 3]
    assert datas(await received(after_first)) == [2, 3]
    assert datas(await received(live_only)) == [3]
    got = [m.id for m in (await received(await client.subscribe("job:2", ["progress"], since=0)))]
    assert got == sorted(got) and len(got) == 3


async def test_a_slow_subscriber_is_disconnected_with_a_reason_and_freed(client: Stepline) -> None:
    await client.ready()
    hub = client.engine.realtime
    slow = await hub.subscribe([("ch", "t")], max_messages=5)
    fast = await hub.subscribe([("ch", "t")])
    for i in range(6):
        await client.publish("ch", "t", i)
    assert slow.closed and slow.queued == 0
    with pytest.raises(SubscriptionClosed, match="slow subscriber: 5 messages"):
        async for _ in slow:
            pass
    assert fast.queued == 6 and hub.subscriptions == 1
    fast.close()  # a subscriber that leaves frees everything at once
    assert (hub.subscriptions, hub.topics, fast.queued) == (0, 0, 0)


async def test_iterating_a_subscription_and_leaving_it(client: Stepline) -> None:
    await client.ready()
    async with await client.subscribe("ch", ["t"]) as sub:
        await client.publish("ch", "t", {"n": 1})
        async for message in sub:
            assert (message.data, message.kind) == ({"n": 1}, "data")
            break
    assert client.engine.realtime.subscriptions == 0


async def test_a_subscriber_in_another_process_receives_what_a_run_publishes(
    engine_store: Store, backend: Backend, clock: FakeClock
) -> None:
    """Two processes on one database (two stores, engines and hubs): SQLite by cursor when data_version moves,
    PostgreSQL through NOTIFY (a large message by its id)."""
    worker_side = Stepline("test-app", engine_store, clock=clock)

    @worker_side.function(id="job", trigger="job/go")
    async def job(ctx: Context) -> None:
        await ctx.publish("ch", "t", {"small": True})
        await ctx.publish("ch", "t", {"large": "x" * 20_000})

    other = backend.same_database(engine_store)
    subscriber_side = Stepline("web", other, clock=clock)
    await subscriber_side.ready()
    try:
        sub = await subscriber_side.subscribe("ch", "t")
        await asyncio.sleep(0.3)  # PostgreSQL: the LISTEN connection is up
        await worker_side.send({"name": "job/go"})
        await drain(worker_side)
        got: list[Message] = []
        async with asyncio.timeout(10):
            async for m in sub:
                got.append(m)
                if len(got) == 2:
                    break
        assert got[0].data == {"small": True} and got[1].data == {"large": "x" * 20_000}
    finally:
        await subscriber_side.close()


# --- waiting for results ---


@contextlib.asynccontextmanager
async def running_worker(client: Stepline) -> AsyncIterator[None]:
    await client.ready()
    worker = client.worker(poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        await task


async def test_wait_for_run_returns_the_ended_run(client: Stepline) -> None:
    gate, entered = asyncio.Event(), asyncio.Event()

    @client.function(id="slow", trigger="job/go")
    async def slow(ctx: Context) -> int:
        entered.set()
        await gate.wait()
        return await ctx.step.run("a", lambda: 42)

    async with running_worker(client):
        [event_id] = await client.send({"name": "job/go"})
        [run] = await client.runs_for_event(event_id)
        waiting = asyncio.create_task(client.wait_for_run(run.id, timeout=10))
        await entered.wait()  # the run is executing, held by the gate
        await asyncio.sleep(0)
        assert not waiting.done()
        gate.set()
        ended = await waiting
        assert (ended.status, ended.output) == ("completed", 42)
        with pytest.raises(UnknownRunError):
            await client.wait_for_run("no-such-run")


async def test_wait_for_run_times_out(client: Stepline) -> None:
    @client.function(id="never", trigger="job/go")
    async def never(ctx: Context) -> None:
        await ctx.step.sleep("long", "1h")

    await client.send({"name": "job/go"})
    await drain(client)
    run = await only_run(client)
    with pytest.raises(TimeoutError, match="had not ended after 0.1 s"):
        await client.wait_for_run(run.id, timeout=0.1)
    assert client.engine.waiters.waiting == 0


async def test_send_and_wait_returns_the_outputs_of_every_run_started(client: Stepline) -> None:
    @client.function(id="double", trigger="n/in")
    async def double(ctx: Context) -> int:
        return int(ctx.event.data["n"]) * 2

    @client.function(id="square", trigger="n/in")
    async def square(ctx: Context) -> int:
        return int(ctx.event.data["n"]) ** 2

    async with running_worker(client):
        runs = await client.send_and_wait({"name": "n/in", "data": {"n": 3}}, timeout=10)
    assert sorted((r.function_id, r.output) for r in runs) == [("test-app-double", 6), ("test-app-square", 9)]


async def test_many_waiters_cost_one_status_query_per_change_not_one_each(
    engine_store: Store, backend: Backend, clock: FakeClock
) -> None:
    """100 waiters of this process wait for runs another process ends: while nothing changes no query is made; the
    other process's end wakes them all through the change marker."""
    ender = Stepline("test-app", engine_store, clock=clock)

    @ender.function(id="job", trigger="job/go")
    async def job(ctx: Context) -> None:
        await ctx.step.sleep("nap", "10s")

    [event_id] = await ender.send({"name": "job/go"})
    await drain(ender)
    [run] = await ender.runs_for_event(event_id)
    waiting_side = Stepline("web", backend.same_database(engine_store), clock=clock)
    await waiting_side.ready()
    try:
        waiters = waiting_side.engine.waiters
        tasks = [asyncio.create_task(waiting_side.wait_for_run(run.id, timeout=20)) for _ in range(100)]
        await asyncio.sleep(0.5)
        assert waiters.waiting == 100
        quiet_checks = waiters.checks
        await asyncio.sleep(0.5)
        assert waiters.checks == quiet_checks <= 2  # nothing changed: no status query
        await advance(ender, clock, 11)
        ended = await asyncio.gather(*tasks)
        assert {r.status for r in ended} == {"completed"}
        assert waiters.checks - quiet_checks <= 5  # one query per change of the marker, for all 100 waiters
        assert waiters.waiting == 0
    finally:
        await waiting_side.close()
