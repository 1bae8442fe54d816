"""Retention: ended runs, their steps and unreferenced events are pruned by age; live runs never are."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from stepline import Context, FakeClock, Stepline

from .helpers import advance, drain, runs


async def test_prune_deletes_old_ended_runs_and_keeps_the_rest(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="quick", trigger="t/quick")
    async def quick(ctx: Context) -> Any:
        return await ctx.step.run("one", lambda: 1)

    @client.function(id="short-lived", trigger="t/short", retention="2d")
    async def short_lived(ctx: Context) -> Any:
        return await ctx.step.run("one", lambda: 1)

    @client.function(id="sleeper", trigger="t/sleep")
    async def sleeper(ctx: Context) -> Any:
        await ctx.step.sleep("long", "90d")

    await client.send([{"name": "t/quick"}, {"name": "t/short"}, {"name": "t/sleep"}])
    await drain(client)
    await client.send({"name": "t/unmatched"})  # starts no run
    await advance(client, clock, 3 * 86400)

    result = await client.engine.prune(dt.timedelta(days=30), batch_size=1)
    assert (result.runs, result.steps) == (1, 1)  # only short-lived's run (2 days) is old enough
    assert [r.function_id for r in await runs(client)] == ["test-app-quick", "test-app-sleeper"]

    clock.advance(dt.timedelta(days=28))
    seen: list[tuple[int, int, int]] = []  # the totals after each transaction (the CLI's progress display)
    result = await client.engine.prune(dt.timedelta(days=30), batch_size=1,
                                       progress=lambda r: seen.append((r.runs, r.steps, r.events)))  # fmt: skip
    assert (result.runs, result.steps) == (1, 1)  # quick's run is now 31 days old
    assert seen[0] == (1, 1, 0) and seen[-1] == (1, 1, 5) and len(seen) >= 6  # one event per transaction
    # Gone: the triggers of the pruned runs, the unmatched event and the two runs' function.finished events.
    assert result.events == 5
    remaining = await runs(client)
    assert [r.function_id for r in remaining] == ["test-app-sleeper"]  # the sleeping run is never pruned
    assert remaining[0].status == "running"
    assert [e.name for e in await client.store.list_events(None, 100)] == ["t/sleep"]


def test_retention_must_be_a_sane_duration(client: Stepline) -> None:
    with pytest.raises(ValueError, match="retention must be at least 1h"):
        client.function(id="r", trigger="a/b", retention="5m")(lambda ctx: None)
    with pytest.raises(ValueError, match="invalid retention: invalid duration 'forever'"):
        client.function(id="r2", trigger="a/b", retention="forever")(lambda ctx: None)
