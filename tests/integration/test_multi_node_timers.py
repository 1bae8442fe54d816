"""Timers, wait timeouts and debounce with several workers on one database (two stores = two processes):
each due run is taken by exactly one worker, so the code after a sleep, a timed-out wait or a debounce period
runs once. Fake clock: the racing workers all see the same due time."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stepline import Context, Debounce, FakeClock, Stepline
from stepline.core.worker import Worker

from ..backends import Backend
from .helpers import runs


@pytest.fixture
async def nodes(client: Stepline, backend: Backend, clock: FakeClock) -> AsyncIterator[list[Stepline]]:
    """The test's client and a second client on another Store of the same database."""
    other = Stepline(client.app_id, backend.same_database(client.store), clock=clock)
    yield [client, other]
    await other.store.close()


async def race(workers: list[Worker]) -> None:
    """Every worker drains what is due, all at once, twice (the second pass finds what the first left)."""
    for _ in range(2):
        await asyncio.gather(*(w.run_until_idle() for w in workers))


@contextlib.asynccontextmanager
async def three_workers(nodes: list[Stepline]) -> AsyncIterator[list[Worker]]:
    """Two workers on the first node's store, one on the second's; closed at the end."""
    for node in nodes:
        await node.ready()
    workers = [nodes[0].worker(), nodes[0].worker(), nodes[1].worker()]
    try:
        yield workers
    finally:
        for w in workers:
            w.close()


async def test_each_sleep_resumes_once_across_three_workers(nodes: list[Stepline], clock: FakeClock) -> None:
    executed: collections.Counter[tuple[str, str]] = collections.Counter()

    for node in nodes:

        @node.function(id="napper", trigger="job/nap")
        async def napper(ctx: Context) -> Any:
            def mark(step: str) -> str:
                executed[(ctx.event.data["n"], step)] += 1
                return step

            await ctx.step.run("before", mark, "before")
            await ctx.step.sleep("nap", "10s")
            return await ctx.step.run("after", mark, "after")

    async with three_workers(nodes) as workers:
        await nodes[0].send([{"name": "job/nap", "data": {"n": f"r{i}"}} for i in range(40)])
        await race(workers)
        assert {r.status for r in await runs(nodes[0], "napper")} == {"running"}  # all asleep
        clock.advance(dt.timedelta(seconds=10))
        await race(workers)
    assert [r.status for r in await runs(nodes[0], "napper")] == ["completed"] * 40
    assert executed == {(f"r{i}", step): 1 for i in range(40) for step in ("before", "after")}


async def test_each_wait_timeout_fires_once_across_three_workers(nodes: list[Stepline], clock: FakeClock) -> None:
    resumed: collections.Counter[str] = collections.Counter()

    for node in nodes:

        @node.function(id="waiter", trigger="job/wait")
        async def waiter(ctx: Context) -> Any:
            got = await ctx.step.wait_for_event("reply", event="job/reply", match="data.n", timeout="30s")

            def note() -> bool:
                resumed[ctx.event.data["n"]] += 1
                return got is None

            return await ctx.step.run("after", note)

    async with three_workers(nodes) as workers:
        await nodes[1].send([{"name": "job/wait", "data": {"n": i}} for i in range(30)])
        await race(workers)
        clock.advance(dt.timedelta(seconds=31))
        await race(workers)
    done = await runs(nodes[0], "waiter")
    assert [(r.status, r.output) for r in done] == [("completed", True)] * 30  # every wait timed out
    assert resumed == {i: 1 for i in range(30)}


async def test_debounce_sent_from_two_nodes_starts_once_per_key(nodes: list[Stepline], clock: FakeClock) -> None:
    started: collections.Counter[str] = collections.Counter()

    for node in nodes:

        @node.function(id="deb", trigger="doc/edited", debounce=Debounce(period="5s", key="event.data.doc"))
        async def deb(ctx: Context) -> Any:
            started[ctx.event.data["doc"]] += 1
            return ctx.event.data["rev"]

    async with three_workers(nodes) as workers:
        for rev in range(4):  # each node sends every other revision of every document, concurrently
            sender = nodes[rev % 2]
            await asyncio.gather(
                *(sender.send({"name": "doc/edited", "data": {"doc": f"d{d}", "rev": rev}}) for d in range(8))
            )
            clock.advance(dt.timedelta(seconds=1))
            await race(workers)
        assert started == {}  # never quiet for 5 s yet
        clock.advance(dt.timedelta(seconds=5))
        await race(workers)
    done = await runs(nodes[0], "deb")
    assert [(r.status, r.output) for r in done] == [("completed", 3)] * 8  # one run per document, last event
    assert started == {f"d{d}": 1 for d in range(8)}
