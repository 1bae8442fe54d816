"""Routing, idempotency, cancellation, timeouts and bad input."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from stepline import Context, DurationError, EventValidationError, FakeClock, Stepline, Worker
from stepline.storage.records import RunFilter

from ..backends import Backend
from .helpers import advance, drain, only_run, runs, steps


async def test_fan_out_wildcard_and_if_filter(client: Stepline) -> None:
    @client.function(id="exact", trigger="shop/order.paid")
    async def exact(ctx: Context) -> Any:
        return "exact"

    @client.function(id="wild", trigger="shop/*")
    async def wild(ctx: Context) -> Any:
        return "wild"

    @client.function(id="big", trigger={"event": "shop/order.paid", "if": "event.data.amount > 100"})
    async def big(ctx: Context) -> Any:
        return "big"

    @client.function(id="multi", trigger=["other/x", "shop/order.paid"])
    async def multi(ctx: Context) -> Any:
        return ctx.event.name

    await client.send([{"name": "shop/order.paid", "data": {"amount": 50}},
                       {"name": "shop/order.paid", "data": {"amount": 500}}])  # fmt: skip
    await drain(client)
    assert len(await runs(client, "exact")) == 2
    assert len(await runs(client, "wild")) == 2
    assert len(await runs(client, "multi")) == 2
    (big_run,) = await runs(client, "big")
    event = await client.store.get_event(big_run.event_id)
    assert event is not None and event.data == {"amount": 500}


async def test_event_id_is_idempotent_for_24_hours(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="charge", trigger="pay/charge")
    async def charge(ctx: Context) -> Any:
        return "charged"

    first = await client.send({"name": "pay/charge", "id": "charge-1"})
    second = await client.send({"name": "pay/charge", "id": "charge-1"})
    await drain(client)
    assert first != second  # both events are stored ...
    assert len(await client.store.list_events("pay/charge", 10)) == 2
    assert len(await runs(client)) == 1  # ... but only one run starts
    clock.advance(dt.timedelta(hours=24, seconds=1))
    await client.send({"name": "pay/charge", "id": "charge-1"})
    await drain(client)
    assert len(await runs(client)) == 2


async def test_idempotency_expression(client: Stepline) -> None:
    @client.function(id="welcome", trigger="user/signup", idempotency="event.data.user_id")
    async def welcome(ctx: Context) -> Any:
        return ctx.event.data["user_id"]

    await client.send([{"name": "user/signup", "data": {"user_id": u}} for u in ("a", "b", "a")])
    await drain(client)
    assert sorted(r.output for r in await runs(client)) == ["a", "b"]


async def test_cancel_on_event(client: Stepline, clock: FakeClock) -> None:
    calls: list[str] = []

    @client.function(id="reminder", trigger="task/created",
                     cancel_on=[{"event": "task/deleted", "if_exp": "async.data.id == event.data.id"}])  # fmt: skip
    async def reminder(ctx: Context) -> Any:
        await ctx.step.sleep("wait", "1d")
        await ctx.step.run("remind", lambda: calls.append(ctx.event.data["id"]))

    await client.send([{"name": "task/created", "data": {"id": 1}}, {"name": "task/created", "data": {"id": 2}}])
    await drain(client)
    await client.send({"name": "task/deleted", "data": {"id": 1}})
    await advance(client, clock, 86401)
    statuses = {(await client.store.get_event(r.event_id)).data["id"]: r.status for r in await runs(client)}  # type: ignore[union-attr]
    assert statuses == {1: "cancelled", 2: "completed"}
    assert calls == [2]
    (cancelled,) = await client.store.list_events("stepline/function.cancelled", 10)
    assert cancelled.data["event"]["data"] == {"id": 1}
    assert "cancelled by event 'task/deleted'" in cancelled.data["error"]["message"]


async def test_cancel_by_api_stops_further_steps(client: Stepline, clock: FakeClock) -> None:
    calls: list[str] = []

    @client.function(id="long", trigger="t/long")
    async def long(ctx: Context) -> Any:
        await ctx.step.run("one", lambda: calls.append("one"))
        await ctx.step.sleep("nap", "1h")
        await ctx.step.run("two", lambda: calls.append("two"))

    await client.send({"name": "t/long"})
    await drain(client)
    run = await only_run(client)
    assert await client.cancel(run.id) is True
    assert await client.cancel(run.id) is False  # already ended
    await advance(client, clock, 7200)
    run = await only_run(client)
    assert run.status == "cancelled" and calls == ["one"]
    cancelled_events = await client.store.list_events("stepline/function.cancelled", 10)
    assert [e.data["run_id"] for e in cancelled_events] == [run.id]


async def test_cancel_while_executing_stops_at_next_step(client: Stepline) -> None:
    calls: list[str] = []

    @client.function(id="self-cancel", trigger="t/sc")
    async def self_cancel(ctx: Context) -> Any:
        await ctx.step.run("one", lambda: calls.append("one"))
        await client.cancel(ctx.run_id)  # as if cancelled from another process mid-run
        await ctx.step.run("two", lambda: calls.append("two"))

    await client.send({"name": "t/sc"})
    await drain(client)
    run = await only_run(client)
    assert run.status == "cancelled"
    # "one"'s result was held back for the run's next write (StepDriver._hold_back), which came after the cancel:
    # like any result that arrives after a cancel, it is not recorded, and "two" never starts.
    assert [s.display_id for s in await steps(client, run.id)] == []
    assert calls == ["one"]


async def test_finish_timeout_cancels_a_sleeping_run(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="bounded", trigger="t/bounded", timeouts={"finish": "10m"})
    async def bounded(ctx: Context) -> Any:
        await ctx.step.sleep("long-nap", "1h")
        return "finished"

    await client.send({"name": "t/bounded"})
    await drain(client)
    await advance(client, clock, 601)
    run = await only_run(client)
    assert run.status == "cancelled" and run.error["name"] == "FinishTimeout"


async def test_start_timeout_cancels_a_run_queued_too_long(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="fresh", trigger="t/fresh", timeouts={"start": "30s"})
    async def fresh(ctx: Context) -> Any:
        return "ran"

    await client.send({"name": "t/fresh"})
    clock.advance(dt.timedelta(seconds=31))  # no worker picked it up in time
    await drain(client)
    run = await only_run(client)
    assert run.status == "cancelled" and run.error["name"] == "StartTimeout"


async def test_reserved_and_malformed_events_are_rejected_and_nothing_is_stored(client: Stepline) -> None:
    await client.ready()
    with pytest.raises(EventValidationError, match="'inngest/foo' is reserved"):
        await client.send({"name": "inngest/foo"})
    with pytest.raises(EventValidationError, match="'stepline/function.failed' is reserved"):
        await client.send({"name": "stepline/function.failed"})
    with pytest.raises(EventValidationError, match="event 1 of 2: .*not JSON-compatible"):
        await client.send([{"name": "ok/one"}, {"name": "bad/two", "data": {"s": {1, 2}}}])
    with pytest.raises(EventValidationError, match="non-empty"):
        await client.send({"name": ""})
    with pytest.raises(EventValidationError, match="must be a JSON object"):
        await client.send({"name": "x/y", "data": [1, 2]})
    assert await client.store.list_events(None, 10) == []  # a batch with one bad event stores none


def test_bad_function_options_fail_at_definition(client: Stepline) -> None:
    with pytest.raises(
        ValueError, match="function 'bad-if': invalid trigger: invalid CEL expression 'event.data.x =='"
    ):
        client.function(id="bad-if", trigger={"event": "a/b", "if": "event.data.x =="})(lambda ctx: None)
    with pytest.raises(ValueError, match="retries must be an integer from 0 to 20"):
        client.function(id="bad-retries", trigger="a/b", retries=-1)(lambda ctx: None)
    with pytest.raises(ValueError, match="invalid timeouts.finish: invalid duration 'soon'"):
        client.function(id="bad-timeout", trigger="a/b", timeouts={"finish": "soon"})(lambda ctx: None)
    with pytest.raises(ValueError, match="at least one trigger"):
        client.function(id="no-trigger", trigger=[])(lambda ctx: None)


async def test_bad_duration_in_a_step_fails_with_a_precise_error(client: Stepline) -> None:
    @client.function(id="bad-sleep", trigger="t/bad-sleep", retries=0)
    async def bad_sleep(ctx: Context) -> Any:
        await ctx.step.sleep("nap", "5 minutes")

    await client.send({"name": "t/bad-sleep"})
    await drain(client)
    run = await only_run(client)
    assert run.status == "failed" and run.error["name"] == "DurationError"
    assert "invalid duration '5 minutes'" in run.error["message"]
    assert issubclass(DurationError, ValueError)


async def test_step_id_reused_with_different_meaning_fails_the_run(client: Stepline, clock: FakeClock) -> None:
    version = {"v": 1}

    @client.function(id="evolving", trigger="t/evolve", retries=3)
    async def evolving(ctx: Context) -> Any:
        if version["v"] == 1:
            await ctx.step.run("a", lambda: 1)
        else:
            try:
                await ctx.step.sleep("a", "1s")  # same id, now a sleep: the history no longer fits
            except Exception:
                pass  # even swallowing the error does not hide the mismatch
        await ctx.step.sleep("s", "1m")
        return "done"

    await client.send({"name": "t/evolve"})
    await drain(client)
    version["v"] = 2
    await advance(client, clock, 61)
    run = await only_run(client)
    assert run.status == "failed" and run.error["name"] == "StepIdConflictError"
    assert "step 'a' was recorded as a 'run' step, but the code now uses it as a 'sleep' step" in run.error["message"]


async def test_runs_are_visible_to_a_second_client_on_the_same_database(
    client: Stepline, backend: Backend, clock: FakeClock
) -> None:
    @client.function(id="visible", trigger="t/visible")
    async def visible(ctx: Context) -> Any:
        return 1

    await client.ready()
    other = Stepline("sender-only", backend.same_database(client.store), clock=clock)
    try:
        await other.send({"name": "t/visible"})  # routed by the functions the first client registered
    finally:
        await other.close()
    await drain(client)
    assert (await only_run(client)).status == "completed"
    assert isinstance(client.worker(), Worker)
    assert (await client.store.list_runs(RunFilter(status="completed")))[0].output == 1


async def test_a_cancel_event_sent_from_a_step_announces_the_cancellation(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="target", trigger="x/start", cancel_on=[{"event": "x/stop"}])
    async def target(ctx: Context) -> Any:
        await ctx.step.sleep("nap", "1h")

    @client.function(id="stopper", trigger="x/go")
    async def stopper(ctx: Context) -> Any:
        await ctx.step.send_event("stop", {"name": "x/stop"})

    @client.function(id="watch", trigger="stepline/function.cancelled")
    async def watch(ctx: Context) -> Any:
        return ctx.event.data["function_id"]

    await client.send({"name": "x/start"})
    await drain(client)
    await client.send({"name": "x/go"})
    await drain(client)
    assert [r.status for r in await runs(client, "target")] == ["cancelled"]
    assert [r.output for r in await runs(client, "watch")] == ["test-app-target"]
    finished = await client.store.list_events("stepline/function.finished", 50)
    assert [e.data["status"] for e in finished if e.data["function_id"] == "test-app-target"] == ["cancelled"]
