"""Run logs: the logging records of in-process function code, stored once per run (not again on replays), in order,
with the step whose code logged them, capped, pruned with their runs."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from stepline import Backoff, Context, FakeClock, Stepline, SyncContext
from stepline.core.ids import hash_step_id
from stepline.storage.records import RUN_LOG_LIMIT, RUN_LOG_MESSAGE_LIMIT, RunLogLine

from .helpers import advance, drain, only_run

FAST = Backoff(schedule=(dt.timedelta(seconds=10),), jitter=dt.timedelta(0))
user_log = logging.getLogger("tests.user_code")  # a plain logger: WARNING passes the default configuration


def shown(found: list[RunLogLine]) -> list[tuple[str, str | None, str, str]]:
    steps = {hash_step_id(s): s for s in ("a", "b", "c", "s1", "p1", "p2", "flaky")}
    return [(line.level, steps.get(line.step_id or "", line.step_id), line.logger, line.message) for line in found]


async def test_async_function_logs_once_across_a_sleep_replay(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="chatty", trigger="t/chatty")
    async def chatty(ctx: Context) -> Any:
        ctx.logger.info("start %s", ctx.event.data["n"])  # INFO: ctx.logger is captured below the root's level
        await ctx.step.run("a", lambda: user_log.warning("sync callable in a") or 1)

        async def b() -> int:
            user_log.warning("async callable in b")
            return 2

        await ctx.step.run("b", b)
        ctx.logger.info("before the nap")
        await ctx.step.sleep("nap", "10m")
        ctx.logger.info("after the nap")
        logging.getLogger("stepline.worker").warning("Stepline's own logger")  # never captured
        await ctx.step.run("c", lambda: ctx.logger.warning("in c"))
        return "ok"

    await client.send({"name": "t/chatty", "data": {"n": 1}})
    await drain(client)
    run = await only_run(client)
    assert run.status == "running"
    fn_logger = "stepline.fn.chatty"
    first = [
        ("INFO", None, fn_logger, "start 1"),
        ("WARNING", "a", "tests.user_code", "sync callable in a"),
        ("WARNING", "b", "tests.user_code", "async callable in b"),
        ("INFO", None, fn_logger, "before the nap"),  # stored with the suspension
    ]
    assert shown(await client.store.list_run_logs(run.id)) == first
    await advance(client, clock, 601)  # the replay runs the body again: its lines before the nap are not stored again
    run = await only_run(client)
    assert run.status == "completed"
    found = await client.store.list_run_logs(run.id)
    assert shown(found) == [*first, ("INFO", None, fn_logger, "after the nap"), ("WARNING", "c", fn_logger, "in c")]
    assert [line.seq for line in found] == [1, 2, 3, 4, 5, 6]
    assert found[0].ts == run.started_at and found[-1].ts == clock.now_ms()


async def test_sync_function_logs_from_the_thread_pool_and_parallel_branches(
    client: Stepline, clock: FakeClock
) -> None:
    @client.function(id="sync-fn", trigger="t/sync")
    def sync_fn(ctx: SyncContext) -> Any:
        ctx.logger.info("sync body")
        ctx.step.run("s1", lambda: user_log.warning("in s1"))
        ctx.group.parallel((
            lambda: ctx.step.run("p1", lambda: user_log.warning("in p1")),
            lambda: ctx.step.run("p2", lambda: user_log.warning("in p2")),
        ))  # fmt: skip
        ctx.step.sleep("nap", "1s")
        ctx.logger.error("after the nap")
        return None

    await client.send({"name": "t/sync"})
    await drain(client)
    await advance(client, clock, 2)
    run = await only_run(client)
    assert run.status == "completed"
    found = shown(await client.store.list_run_logs(run.id))
    user = "tests.user_code"
    assert found[:2] == [("INFO", None, "stepline.fn.sync-fn", "sync body"), ("WARNING", "s1", user, "in s1")]
    assert sorted(found[2:4]) == [("WARNING", "p1", user, "in p1"), ("WARNING", "p2", user, "in p2")]
    assert found[4:] == [("ERROR", None, "stepline.fn.sync-fn", "after the nap")]


async def test_step_and_function_retries_log_each_attempt_but_not_the_replayed_body(
    client: Stepline, clock: FakeClock
) -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        user_log.warning("flaky attempt %d", len(attempts))
        if len(attempts) == 1:
            raise ValueError("not yet")
        return "ok"

    @client.function(id="retrying", trigger="t/retry", retries=1, backoff=FAST)
    async def retrying(ctx: Context) -> Any:
        ctx.logger.info("body, attempt %d", ctx.attempt)
        await ctx.step.run("flaky", flaky)
        ctx.logger.info("after flaky, attempt %d", ctx.attempt)
        if ctx.attempt == 0:
            try:
                raise RuntimeError("function-level failure")
            except RuntimeError:
                ctx.logger.exception("failing attempt %d", ctx.attempt)
                raise
        return None

    await client.send({"name": "t/retry"})
    await drain(client)  # the step fails and is retried in 10 s
    await advance(client, clock, 11)  # the step succeeds, then the function fails: retried in 10 s
    await advance(client, clock, 11)
    run = await only_run(client)
    assert run.status == "completed"
    found = await client.store.list_run_logs(run.id)
    assert [(step, message.splitlines()[0]) for _, step, _, message in shown(found)] == [
        (None, "body, attempt 0"),  # not again when the step's retry replays the body
        ("flaky", "flaky attempt 1"),
        ("flaky", "flaky attempt 2"),
        (None, "after flaky, attempt 0"),
        (None, "failing attempt 0"),
        (None, "after flaky, attempt 1"),  # the function-level retry replays up to the memoised step, then logs
    ]
    assert "Traceback" in found[4].message and "RuntimeError: function-level failure" in found[4].message


async def test_a_chatty_function_is_capped(client: Stepline) -> None:
    @client.function(id="chatty", trigger="t/chatty")
    async def chatty(ctx: Context) -> Any:
        for i in range(RUN_LOG_LIMIT + 200):
            ctx.logger.info("line %d", i)
        ctx.logger.info("x" * (RUN_LOG_MESSAGE_LIMIT + 5))

    @client.function(id="long", trigger="t/long")
    async def long(ctx: Context) -> Any:
        ctx.logger.warning("%s", "y" * (RUN_LOG_MESSAGE_LIMIT + 5))

    await client.send([{"name": "t/chatty"}, {"name": "t/long"}])
    await drain(client)
    found = await client.store.list_run_logs((await only_run(client, "chatty")).id)
    assert len(found) == RUN_LOG_LIMIT + 1
    assert found[RUN_LOG_LIMIT - 1].message == f"line {RUN_LOG_LIMIT - 1}"
    assert found[-1].message.startswith("201 more records dropped")
    [line] = await client.store.list_run_logs((await only_run(client, "long")).id)
    assert line.message == "y" * RUN_LOG_MESSAGE_LIMIT + "… [5 more characters]"


async def test_logs_are_pruned_with_their_runs(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="quick", trigger="t/quick")
    async def quick(ctx: Context) -> Any:
        ctx.logger.info("hello")

    await client.send({"name": "t/quick"})
    await drain(client)
    run = await only_run(client)
    assert len(await client.store.list_run_logs(run.id)) == 1
    clock.advance(dt.timedelta(days=31))
    assert (await client.engine.prune(dt.timedelta(days=30))).runs == 1
    assert await client.store.list_run_logs(run.id) == []


def test_records_outside_runs_are_not_captured() -> None:
    from stepline.core.run_logs import RunLogCapture, activate, deactivate

    capture = RunLogCapture(lambda: 0)
    user_log.warning("outside")
    token = activate(capture)
    try:
        user_log.warning("inside")
        logging.getLogger("stepline.engine").warning("Stepline's own")
    finally:
        deactivate(token)
    user_log.warning("outside again")
    logs = capture.take()
    assert logs is not None and [line.message for line in logs.lines] == ["inside"]
    assert capture.take() is None
