"""Every status change the store makes is in the transition table (``stepline.storage.states.TRANSITIONS``).

The engine drives runs through every path (complete, fail, cancel by API while queued and while sleeping, start
timeout, rate limit, singleton cancel, send_event, invoke, cron, rerun, prune) on each backend, with every store
method watched: each call's status changes (a snapshot of every run before and after it, calls serialised) must
be allowed for that method, and every method of the table must have been seen changing a status."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stepline import Context, FakeClock, RateLimit, Singleton, Stepline
from stepline.core.ids import new_ulid
from stepline.core.rerun import rerun
from stepline.storage.base import Store
from stepline.storage.records import NewRun, RunFilter
from stepline.storage.states import TRANSITIONS, allowed

from .helpers import advance, drain, runs

Change = tuple[str, str, str | None, str | None]  # method, run id, before, after
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("inside", default=False)


class Watch:
    """Wraps every coroutine method of a store instance to record the status changes each call makes."""

    def __init__(self, store: Store) -> None:
        self.changes: list[Change] = []
        self._lock = asyncio.Lock()
        self._list_runs = store.list_runs
        for name, _ in inspect.getmembers(Store, inspect.iscoroutinefunction):
            if not name.startswith("_") and name not in ("open", "close"):
                setattr(store, name, self._wrap(name, getattr(store, name)))

    async def _statuses(self) -> dict[str, str]:
        return {r.id: r.status for r in await self._list_runs(RunFilter(limit=100_000))}

    def _wrap(self, name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def watched(*args: Any, **kwargs: Any) -> Any:
            if _inside.get():  # the store calling itself: counted in the outer call
                return await method(*args, **kwargs)
            async with self._lock:
                token = _inside.set(True)
                try:
                    before = await self._statuses()
                    result = await method(*args, **kwargs)
                    after = await self._statuses()
                finally:
                    _inside.reset(token)
            for run_id in sorted(before.keys() | after.keys()):
                if before.get(run_id) != after.get(run_id):
                    self.changes.append((name, run_id, before.get(run_id), after.get(run_id)))
            return result

        return watched

    def history(self, run_id: str) -> list[tuple[str, str | None, str | None]]:
        return [(m, b, a) for m, r, b, a in self.changes if r == run_id]


async def test_every_status_change_the_store_makes_is_in_the_table(engine_store: Store, clock: FakeClock) -> None:
    watch = Watch(engine_store)
    client = Stepline("test-app", engine_store, clock=clock)

    @client.function(id="ok", trigger="t/ok")
    async def ok(ctx: Context) -> int:
        await ctx.step.send_event("emit", {"name": "t/child-event"})
        return await ctx.step.invoke("call", function=child, data={})

    @client.function(id="child", trigger="t/child-event")
    async def child(ctx: Context) -> int:
        return 1

    @client.function(id="boom", trigger="t/boom", retries=0)
    async def boom(ctx: Context) -> None:
        raise RuntimeError("no")

    @client.function(id="nap", trigger="t/nap")
    async def nap(ctx: Context) -> None:
        await ctx.step.sleep("long", "1h")

    @client.function(id="fresh", trigger="t/fresh", timeouts={"start": "30s"})
    async def fresh(ctx: Context) -> str:
        return "ran"

    @client.function(id="limited", trigger="t/limited", rate_limit=RateLimit(limit=1, period="1m"))
    async def limited(ctx: Context) -> None:
        return None

    @client.function(id="latest", trigger="t/latest", singleton=Singleton(mode="cancel"))
    async def latest(ctx: Context) -> None:
        await ctx.step.sleep("long", "1h")

    @client.function(id="tick", trigger={"cron": "*/5 * * * *"})
    async def tick(ctx: Context) -> None:
        return None

    await client.send([{"name": "t/ok"}, {"name": "t/boom"}, {"name": "t/nap"}, {"name": "t/latest"}])
    await client.send([{"name": "t/limited"}, {"name": "t/limited"}])  # the second is skipped
    await drain(client)
    [queued_nap] = await client.send({"name": "t/nap"})
    [cancel_queued] = [r.id for r in await client.runs_for_event(queued_nap)]
    assert await client.cancel(cancel_queued)  # queued -> cancelled
    [sleeping] = [r for r in await runs(client, "nap") if r.status == "running"]
    assert await client.cancel(sleeping.id)  # running (sleeping) -> cancelled
    await client.send({"name": "t/latest"})  # singleton cancel: the sleeping one is replaced
    [fresh_event] = await client.send({"name": "t/fresh"})
    [expired] = await client.runs_for_event(fresh_event)
    await advance(client, clock, 301)  # the fresh run is claimed past its start timeout; the cron fires
    assert await rerun(await client.ready(), (await runs(client, "ok"))[0].id)
    await drain(client)
    now = clock.now_ms()
    endpoint_run = NewRun(new_ulid(), "test-app-ok", queued_nap, None, now, now)  # a durable endpoint's run
    assert await engine_store.start_endpoint_run(endpoint_run, "endpoint:app", now + 60_000, now)
    await engine_store.prune(now, now + 1, {})

    violations = [c for c in watch.changes if not allowed(c[0], c[2], c[3])]  # type: ignore[arg-type]
    assert violations == []
    assert {m for m, *_ in watch.changes} == set(TRANSITIONS)  # every method of the table was walked
    # timeouts.start: cancelled without ever running (before: claimed, made running, then cancelled)
    assert watch.history(expired.id)[:2] == [("ingest", None, "queued"), ("finish_run", "queued", "cancelled")]
    assert await client.get_run(expired.id) is None  # pruned at the end; its error was StartTimeout (below)


@pytest.mark.parametrize("gated", [False, True], ids=["plain", "concurrency"])  # the two claim queries
async def test_a_run_past_its_start_timeout_is_cancelled_without_starting(
    client: Stepline, clock: FakeClock, gated: bool
) -> None:
    ran: list[str] = []

    @client.function(id="fresh", trigger="t/fresh", timeouts={"start": "30s"}, concurrency=1 if gated else None)
    async def fresh(ctx: Context) -> str:
        ran.append("ran")
        return "ran"

    [event] = await client.send({"name": "t/fresh"})
    clock.advance(dt.timedelta(seconds=31))
    await drain(client)
    [run] = await client.runs_for_event(event)
    assert (run.status, run.error and run.error["name"], run.started_at, ran) == ("cancelled", "StartTimeout", None, [])
