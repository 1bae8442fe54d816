"""Retries, backoff, NonRetriableError, RetryAfterError, StepError, on_failure and system events."""

from __future__ import annotations

import datetime as dt
from typing import Any

from stepline import Backoff, Context, FakeClock, NonRetriableError, RetryAfterError, StepError, Stepline, SyncContext

from .helpers import advance, drain, only_run, runs, steps

FAST = Backoff(schedule=(dt.timedelta(seconds=10),), jitter=dt.timedelta(0))


async def test_step_retries_with_backoff_then_succeeds(client: Stepline, clock: FakeClock) -> None:
    attempts: list[int] = []

    @client.function(id="flaky", trigger="t/flaky", retries=3, backoff=FAST)
    async def flaky(ctx: Context) -> Any:
        def call() -> str:
            attempts.append(len(attempts))
            if len(attempts) < 3:
                raise ConnectionError("upstream down")
            return "ok"

        return await ctx.step.run("call", call)

    await client.send({"name": "t/flaky"})
    await drain(client)
    run = await only_run(client)
    assert run.status == "running" and run.idle_reason == {
        "kind": "retrying", "step": "call", "until": clock.now_ms() + 10_000,
        "error": "ConnectionError: upstream down"}  # fmt: skip
    await advance(client, clock, 9)
    assert len(attempts) == 1  # not before the backoff
    await advance(client, clock, 1)
    assert len(attempts) == 2
    await advance(client, clock, 10)
    run = await only_run(client)
    assert run.status == "completed" and run.output == "ok"
    (step,) = await steps(client, run.id)
    assert step.attempts == 3 and step.status == "completed"


async def test_default_backoff_is_inngest_schedule_with_jitter(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="slow-retry", trigger="t/sr")
    async def slow_retry(ctx: Context) -> Any:
        await ctx.step.run("x", lambda: 1 / 0)

    await client.send({"name": "t/sr"})
    await drain(client)
    run = await only_run(client)
    delay = run.idle_reason["until"] - clock.now_ms()
    assert 15_000 <= delay <= 45_000  # 15 s plus up to 30 s jitter


async def test_exhausted_step_raises_catchable_step_error(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="catch", trigger="t/catch", retries=2, backoff=FAST)
    async def catch(ctx: Context) -> Any:
        try:
            await ctx.step.run("boom", lambda: (_ for _ in ()).throw(ValueError("bad value")))
        except StepError as exc:
            err = exc
            return await ctx.step.run("fallback", lambda: f"handled {err.name}: {err.message}")
        return "unreachable"

    await client.send({"name": "t/catch"})
    for _ in range(3):
        await advance(client, clock, 11)
    run = await only_run(client)
    assert run.status == "completed" and run.output == "handled ValueError: bad value"
    boom = (await steps(client, run.id))[0]
    assert boom.status == "failed" and boom.attempts == 3 and boom.error["name"] == "ValueError"


async def test_uncaught_step_error_fails_run_without_more_retries(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="uncaught", trigger="t/uncaught", retries=1, backoff=FAST)
    async def uncaught(ctx: Context) -> Any:
        await ctx.step.run("boom", lambda: 1 / 0)

    await client.send({"name": "t/uncaught"})
    await drain(client)
    await advance(client, clock, 11)
    run = await only_run(client)
    assert run.status == "failed" and run.attempt == 0
    assert run.error["name"] == "ZeroDivisionError"


async def test_non_retriable_error_fails_at_once(client: Stepline) -> None:
    calls: list[int] = []

    @client.function(id="nr", trigger="t/nr", retries=4)
    async def nr(ctx: Context) -> Any:
        def step() -> None:
            calls.append(1)
            raise NonRetriableError("invalid account")

        await ctx.step.run("check", step)

    await client.send({"name": "t/nr"})
    await drain(client)
    run = await only_run(client)
    assert run.status == "failed" and calls == [1]
    assert run.error == {"name": "NonRetriableError", "message": "invalid account",
                         "stack": run.error["stack"]}  # fmt: skip


async def test_retry_after_error_delays_retry(client: Stepline, clock: FakeClock) -> None:
    calls: list[int] = []

    @client.function(id="ra", trigger="t/ra", backoff=FAST)
    async def ra(ctx: Context) -> Any:
        def step() -> str:
            calls.append(1)
            if len(calls) == 1:
                raise RetryAfterError("rate limited", 120)
            return "done"

        return await ctx.step.run("api", step)

    await client.send({"name": "t/ra"})
    await drain(client)
    await advance(client, clock, 119)
    assert calls == [1]
    await advance(client, clock, 1)
    assert (await only_run(client)).output == "done"


async def test_retry_after_datetime_at_function_level(client: Stepline, clock: FakeClock) -> None:
    at = clock.now() + dt.timedelta(minutes=5)
    calls: list[int] = []

    @client.function(id="ra-fn", trigger="t/rafn", backoff=FAST)
    async def ra_fn(ctx: Context) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RetryAfterError("later", at)
        return ctx.attempt

    await client.send({"name": "t/rafn"})
    await drain(client)
    await advance(client, clock, 299)
    assert calls == [1]
    await advance(client, clock, 1)
    run = await only_run(client)
    assert run.status == "completed" and run.output == 1


async def test_function_level_errors_retry_then_fail_and_on_failure_runs(client: Stepline, clock: FakeClock) -> None:
    failures: list[dict[str, Any]] = []

    def on_failure(ctx: SyncContext) -> None:
        failures.append(ctx.event.data)

    @client.function(id="doomed", trigger="t/doomed", retries=2, backoff=FAST, on_failure=on_failure)
    async def doomed(ctx: Context) -> Any:
        raise RuntimeError(f"attempt {ctx.attempt}")

    await client.send({"name": "t/doomed", "data": {"job": 7}})
    await drain(client)
    await advance(client, clock, 11)
    assert failures == []
    await advance(client, clock, 11)
    run = await only_run(client, "doomed")
    assert run.status == "failed" and run.error["message"] == "attempt 2"
    assert len(failures) == 1
    assert failures[0]["function_id"] == "test-app-doomed"
    assert failures[0]["run_id"] == run.id
    assert failures[0]["error"]["message"] == "attempt 2"
    assert failures[0]["event"]["data"] == {"job": 7}


async def test_system_events_trigger_other_functions(client: Stepline) -> None:
    @client.function(id="work", trigger="t/work")
    async def work(ctx: Context) -> Any:
        return {"answer": 42}

    @client.function(id="audit", trigger=["stepline/function.finished"])
    async def audit(ctx: Context) -> Any:
        return ctx.event.data.get("result")

    @client.function(id="compat", trigger={"event": "inngest/function.finished",
                                           "if": "event.data.function_id == 'test-app-work'"})  # fmt: skip
    async def compat(ctx: Context) -> Any:
        return "inngest alias"

    await client.send({"name": "t/work"})
    await drain(client)
    # audit fires for work's run only: never for its own runs, and the ends of runs that a run's end started
    # (compat's) start nothing, so cascades stay one level deep
    assert [r.output for r in await runs(client, "audit")] == [{"answer": 42}]
    assert [r.output for r in await runs(client, "compat")] == ["inngest alias"]


# --- retries between steps: each stretch of code between two steps gets the full retries (Inngest's rule) ---
async def test_each_stretch_between_steps_gets_the_full_retries(client: Stepline, clock: FakeClock) -> None:
    seen: list[tuple[str, int]] = []

    @client.function(id="stretches", trigger="t/stretches", retries=1, backoff=FAST)
    async def stretches(ctx: Context) -> Any:
        seen.append(("before", ctx.attempt))
        if len(seen) == 1:
            raise RuntimeError("fails once before the first step")
        first = await ctx.step.run("first", lambda: 1)
        seen.append(("after", ctx.attempt))
        if len([s for s in seen if s[0] == "after"]) == 1:
            raise RuntimeError("fails once after it")
        return first + 1

    await client.send({"name": "t/stretches"})
    await drain(client)
    run = await only_run(client)
    assert (run.status, run.attempt) == ("running", 1)
    await advance(client, clock, 10)  # attempt 1 (the last one before the step): the step runs, then the body fails
    run = await only_run(client)
    # A run counting one attempt number for the whole run would have failed here (retries=1, two failures).
    assert (run.status, run.attempt) == ("running", 1), run
    assert seen == [("before", 0), ("before", 1), ("after", 0)]
    await advance(client, clock, 10)
    run = await only_run(client)
    assert (run.status, run.output) == ("completed", 2), run
    assert seen[-2:] == [("before", 1), ("after", 1)]  # the replay still sees the attempt of the last stretch


async def test_a_stretch_fails_after_its_retries_even_after_earlier_stretches_retried(
    client: Stepline, clock: FakeClock
) -> None:
    @client.function(id="doomed-stretch", trigger="t/doomed-stretch", retries=1, backoff=FAST)
    async def doomed_stretch(ctx: Context) -> Any:
        await ctx.step.run("first", lambda: 1)
        raise RuntimeError(f"after the step, attempt {ctx.attempt}")

    await client.send({"name": "t/doomed-stretch"})
    await drain(client)
    await advance(client, clock, 10)
    run = await only_run(client)
    assert (run.status, run.error["message"]) == ("failed", "after the step, attempt 1"), run


async def test_a_sleep_starts_a_new_stretch(client: Stepline, clock: FakeClock) -> None:
    attempts: list[int] = []

    @client.function(id="sleepy-stretch", trigger="t/sleepy-stretch", retries=1, backoff=FAST)
    async def sleepy_stretch(ctx: Context) -> Any:
        if not attempts:
            attempts.append(ctx.attempt)
            raise RuntimeError("before the sleep")
        await ctx.step.sleep("nap", "1m")
        attempts.append(ctx.attempt)
        if len(attempts) == 2:
            raise RetryAfterError("after the sleep", 30)
        return attempts

    await client.send({"name": "t/sleepy-stretch"})
    await drain(client)
    await advance(client, clock, 10)  # attempt 1 reaches the sleep
    assert (await only_run(client)).attempt == 0  # the sleep began a new stretch
    await advance(client, clock, 60)  # after the sleep, attempt 0 of the new stretch fails (RetryAfterError)
    run = await only_run(client)
    assert (run.status, run.attempt, run.due_at) == ("running", 1, clock.now_ms() + 30_000), run
    await advance(client, clock, 30)
    run = await only_run(client)
    assert (run.status, run.output) == ("completed", [0, 0, 1]), run


async def test_on_failure_gets_the_error_in_inngests_shape(client: Stepline, clock: FakeClock) -> None:
    failures: list[dict[str, Any]] = []

    @client.function(id="shaped", trigger="t/shaped", retries=0, on_failure=lambda ctx: failures.append(ctx.event.data))
    async def shaped(ctx: Context) -> Any:
        raise KeyError("missing")

    await client.send({"name": "t/shaped"})
    await drain(client)
    await drain(client)
    run = await only_run(client, "shaped")
    assert run.error is not None and set(run.error) == {"name", "message", "stack"}  # as raised, unchanged
    [failure] = failures
    error = failure["error"]
    # The same shape an SDK function's failure has (Inngest's {error, name, message, stack}): handlers of both
    # kinds of function read one format.
    assert (error["error"], error["name"], error["message"]) == ("'missing'", "KeyError", "'missing'")
    assert error["stack"] == run.error["stack"]


async def test_a_sleep_or_wait_longer_than_a_year_fails_the_run_at_once(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="too-long", trigger="t/too-long", retries=3, backoff=FAST)
    async def too_long(ctx: Context) -> Any:
        if ctx.event.data["kind"] == "sleep":
            await ctx.step.sleep("nap", "400d")
        await ctx.step.wait_for_event("w", event="t/never", timeout="367d")

    await client.send([{"name": "t/too-long", "data": {"kind": kind}} for kind in ("sleep", "w")])
    await drain(client)
    messages = sorted(r.error["message"] for r in await runs(client, "too-long") if r.status == "failed")
    assert messages == [
        "step 'nap': The sleep \"400d\" ends more than one year in the future; sleeps may last at most one year.",
        "step 'w': The wait-for-event timeout \"367d\" expires more than one year in the future; timeouts may last "
        "at most one year.",
    ]
