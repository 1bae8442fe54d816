"""stepline.testing: users' functions run in their own tests as on a worker, without one (or a database), and
without waiting."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import BaseModel

from stepline import Backoff, Context, FakeClock, SerializationError, StepError, Stepline, SyncContext, testing

app = Stepline(app_id="testing-tests")
START = FakeClock().now()


class Quote(BaseModel):
    amount: int


async def test_a_failing_step_is_retried_with_its_backoff_skipped_and_the_function_replayed() -> None:
    calls: list[str] = []

    def flaky() -> int:
        calls.append("step")
        if calls.count("step") < 3:
            raise RuntimeError("provider down")
        return 7

    backoff = Backoff((dt.timedelta(seconds=10), dt.timedelta(seconds=20)))

    @app.function(id="flaky", trigger="t/flaky", retries=3, backoff=backoff)
    async def fn(ctx: Context) -> int:
        calls.append("body")
        return await ctx.step.run("call", flaky) * 2

    result = await testing.run(fn)
    assert result.output == 14
    assert calls == ["body", "step", "body", "step", "body", "step"]  # replayed from the start, as on a worker
    assert result.steps["call"].attempts == 3
    assert result.clock.now() - START == dt.timedelta(seconds=30)  # 10 s then 20 s of backoff, skipped


async def test_a_step_out_of_retries_raises_step_error_into_the_function() -> None:
    @app.function(id="doomed", trigger="t/doomed", retries=1)
    async def fn(ctx: Context) -> str:
        try:
            await ctx.step.run("call", lambda: 1 / 0)
        except StepError as exc:
            return f"{exc.step_id}: {exc.name}"
        return "unreachable"

    result = await testing.run(fn)
    assert result.output == "call: ZeroDivisionError"
    assert result.steps["call"].error is not None and result.steps["call"].attempts == 2


async def test_results_come_back_through_json_as_a_replay_returns_them() -> None:
    def quote() -> Quote:
        return Quote(amount=3)

    @app.function(id="json", trigger="t/json")
    async def fn(ctx: Context) -> list[Any]:
        pair = await ctx.step.run("pair", lambda: (1, 2))
        model = await ctx.step.run("quote", quote)
        return [pair, type(model).__name__, model.amount]

    assert (await testing.run(fn)).output == [[1, 2], "Quote", 3]

    @app.function(id="not-json", trigger="t/not-json", retries=4)
    async def bad(ctx: Context) -> Any:
        return await ctx.step.run("set", lambda: {1, 2})

    with pytest.raises(StepError, match="SerializationError"):  # not retried: it would fail the same way
        await testing.run(bad)


async def test_sync_functions_with_parallel_steps_sleeps_and_signals() -> None:
    @app.function(id="sync", trigger="t/sync")
    def fn(ctx: SyncContext) -> dict[str, Any]:
        a, b = ctx.group.parallel([lambda: ctx.step.run("a", lambda: 1), lambda: ctx.step.run("b", lambda: 2)])
        ctx.step.sleep("week", dt.timedelta(days=7))
        approval = ctx.step.wait_for_signal("approve", signal=f"order-{ctx.event.data['id']}", timeout="1d")
        late = ctx.step.wait_for_signal("second", signal="never", timeout="2h")
        ctx.publish("orders", "done", {"id": ctx.event.data["id"]})
        return {"sum": a + b, "approval": approval, "late": late}

    result = await testing.run(fn, {"name": "t/sync", "data": {"id": 9}}, signals={"approve": {"by": "ann"}})
    assert result.output == {"sum": 3, "approval": {"signal": "order-9", "data": {"by": "ann"}}, "late": None}
    assert result.clock.now() - START == dt.timedelta(days=7, hours=2)  # the sleep and the timed-out wait
    assert result.published == [("orders", "done", {"id": 9})]


async def test_mocks_by_step_id_including_repeated_ids_and_failures() -> None:
    @app.function(id="mocked", trigger="t/mocked", retries=0)
    async def fn(ctx: Context) -> list[Any]:
        out = [await ctx.step.run("item", lambda: "real") for _ in range(3)]
        try:
            await ctx.step.run("charge", lambda: "charged")
        except StepError as exc:
            out.append(exc.message)
        return out

    result = await testing.run(fn, steps={"item:1": "mocked", "charge": ValueError("card declined")})
    assert result.output == ["real", "mocked", "real", "card declined"]
    assert result.steps["item:1"].mocked and not result.steps["item"].mocked


async def test_a_mock_for_a_step_never_reached_is_an_error() -> None:
    @app.function(id="typo", trigger="t/typo")
    async def fn(ctx: Context) -> Any:
        return await ctx.step.wait_for_event("confirm", event="t/confirmed", timeout="1h")

    with pytest.raises(ValueError, match=r"events= names steps the function never reached: 'confrim' "
                                         r"\(steps reached: 'confirm'\)"):  # fmt: skip
        await testing.run(fn, events={"confrim": {"name": "t/confirmed"}})


async def test_invoke_runs_a_function_def_here_or_takes_its_result() -> None:
    @app.function(id="child", trigger="t/child")
    async def child(ctx: Context) -> int:
        return int(ctx.event.data["n"]) + await ctx.step.run("one", lambda: 1)

    @app.function(id="parent", trigger="t/parent")
    async def parent(ctx: Context) -> list[Any]:
        return [await ctx.step.invoke("local", function=child, data={"n": 1}),
                await ctx.step.invoke("remote", function="elsewhere", data={})]  # fmt: skip

    result = await testing.run(parent, invokes={"remote": {"ok": True}})
    assert result.output == [2, {"ok": True}]
    with pytest.raises(ValueError, match="step 'remote' invokes 'elsewhere': give its result in invokes="):
        await testing.run(parent)


async def test_an_error_outside_steps_runs_the_function_again_with_steps_memoised() -> None:
    runs: list[int] = []
    steps: list[str] = []

    @app.function(id="outside", trigger="t/outside", retries=2)
    async def fn(ctx: Context) -> int:
        runs.append(ctx.attempt)
        value = await ctx.step.run("once", lambda: steps.append("once") or 5)
        if len(runs) < 3:
            raise RuntimeError("after the step")
        return value

    result = await testing.run(fn)
    assert (result.output, result.attempts, steps) == (5, 3, ["once"])
    assert runs == [0, 1, 2]  # ctx.attempt: the function's attempt, as a worker counts it

    runs.clear()
    with pytest.raises(RuntimeError, match="after the step"):
        await testing.run(fn, retries=0)
    assert runs == [0]


async def test_run_step_checks_a_step_result_is_json() -> None:
    async def fetch(n: int) -> tuple[int, int]:
        return n, n

    assert await testing.run_step(fetch, 2) == [2, 2]
    with pytest.raises(SerializationError):
        await testing.run_step(lambda: object())
