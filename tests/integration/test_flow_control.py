"""Flow control enforced by the engine on real stores (SQLite and PostgreSQL), with a fake clock for every timing."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
from typing import Any

import pytest

from stepline import (
    Batch,
    Concurrency,
    Context,
    Debounce,
    FakeClock,
    Priority,
    RateLimit,
    Singleton,
    Stepline,
    Throttle,
)
from stepline.storage.records import StepUpdate

from ..backends import Backend
from .helpers import advance, drain, runs

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def ms(clock: FakeClock) -> int:
    return clock.now_ms()


class Overlap:
    """Counts how many handler bodies run at once, per key."""

    def __init__(self) -> None:
        self.now: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()
        self.total_peak = 0

    async def hold(self, key: str, seconds: float = 0.01) -> None:
        self.now[key] += 1
        self.peak[key] = max(self.peak[key], self.now[key])
        self.total_peak = max(self.total_peak, sum(self.now.values()))
        try:
            await asyncio.sleep(seconds)  # real time: only to let other runs overlap, no timing is asserted
        finally:
            self.now[key] -= 1


# --- concurrency ---


async def test_keyed_concurrency_never_exceeds_the_limit_per_key(client: Stepline) -> None:
    seen = Overlap()

    @client.function(id="per-user", trigger="job/run", concurrency=Concurrency(limit=2, key="event.data.user"))
    async def per_user(ctx: Context) -> Any:
        await ctx.step.run("work", seen.hold, ctx.event.data["user"])
        return "ok"

    await client.send([{"name": "job/run", "data": {"user": u}} for u in ["a"] * 6 + ["b"] * 6])
    await drain(client)
    done = await runs(client, "per-user")
    assert [r.status for r in done] == ["completed"] * 12
    assert seen.peak["a"] == 2 and seen.peak["b"] == 2  # the limit was reached, never passed
    assert seen.total_peak >= 3  # the two keys ran side by side


async def test_a_full_key_says_why_and_the_next_run_starts_when_a_slot_frees(
    client: Stepline, clock: FakeClock
) -> None:
    @client.function(id="one-at-a-time", trigger="job/run", concurrency=[{"limit": 1, "key": "event.data.user"}])
    async def one(ctx: Context) -> Any:
        return ctx.event.data["n"]

    await client.ready()
    await client.send([{"name": "job/run", "data": {"user": "u42", "n": n}} for n in range(3)])
    store, now = client.store, ms(clock)
    gated = frozenset({f"{client.app_id}-one-at-a-time"})  # concurrency: claimed through flow control
    first = await store.claim_runs("node-a", list(gated), now, 10, 30_000, gated)
    assert len(first) == 1  # one slot: the other two wait
    waiting = [r for r in await runs(client, "one-at-a-time") if r.id != first[0].run.id]
    for r in waiting:
        assert r.status == "queued" and r.idle_reason is not None
        assert r.idle_reason["kind"] == "concurrency"
        assert r.idle_reason["message"] == "concurrency key u42 at 1 of 1"
    assert await store.claim_runs("node-b", list(gated), now, 10, 30_000, gated) == []  # still full
    # The holder sleeps: a sleeping run holds no slot, so the next run becomes due at once.
    nap = StepUpdate("s", "nap", "sleep", "sleeping", wake_at=now + 60_000)
    reason = {"kind": "sleeping", "until": now + 60_000}
    await store.suspend_run(first[0].run.id, "node-a", [nap], reason, client.engine.matcher, now)
    second = await store.claim_runs("node-b", list(gated), now, 10, 30_000, gated)
    assert len(second) == 1 and second[0].run.id == waiting[0].id  # first come, first served


async def test_a_dead_holder_frees_its_slot_when_its_lease_expires(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="solo", trigger="job/run", concurrency=1)
    async def solo(ctx: Context) -> Any:
        return "done"

    await client.ready()
    await client.send([{"name": "job/run"}, {"name": "job/run"}])
    gated = frozenset({f"{client.app_id}-solo"})
    held = await client.store.claim_runs("dead-node", list(gated), ms(clock), 10, 30_000, gated)
    assert len(held) == 1
    await drain(client)  # the other run waits for the dead node's slot
    assert sorted(r.status for r in await runs(client, "solo")) == ["queued", "running"]
    await advance(client, clock, 31)  # the lease expired: both runs complete (the dead node's run is retaken)
    assert [r.status for r in await runs(client, "solo")] == ["completed", "completed"]


async def test_account_scoped_concurrency_is_shared_across_functions(client: Stepline) -> None:
    seen = Overlap()
    limit = Concurrency(limit=1, key="event.data.account", scope="account")

    @client.function(id="export", trigger="acct/export", concurrency=limit)
    async def export(ctx: Context) -> Any:
        await ctx.step.run("work", seen.hold, ctx.event.data["account"])

    @client.function(id="import", trigger="acct/import", concurrency=limit)
    async def import_(ctx: Context) -> Any:
        await ctx.step.run("work", seen.hold, ctx.event.data["account"])

    await client.send([{"name": f"acct/{kind}", "data": {"account": "acme"}} for kind in ["export", "import"] * 3])
    await drain(client)
    assert [r.status for r in await runs(client)] == ["completed"] * 6
    assert seen.peak["acme"] == 1


async def test_concurrency_holds_across_two_workers_on_one_database(
    client: Stepline, backend: Backend, clock: FakeClock
) -> None:
    other = Stepline(client.app_id, backend.same_database(client.store), clock=clock)
    seen = Overlap()

    for c in (client, other):

        @c.function(id="limited", trigger="job/run", concurrency=Concurrency(limit=3, key="event.data.k"))
        async def limited(ctx: Context) -> Any:
            await ctx.step.run("a", seen.hold, ctx.event.data["k"])
            await ctx.step.run("b", seen.hold, ctx.event.data["k"])
            return "ok"

    await client.ready()
    await other.ready()
    await client.send([{"name": "job/run", "data": {"k": f"k{i % 2}"}} for i in range(30)])
    w1, w2 = client.worker(), other.worker()
    try:
        for _ in range(5):
            await asyncio.gather(w1.run_until_idle(), w2.run_until_idle())
    finally:
        w1.close()
        w2.close()
    assert [r.status for r in await runs(client, "limited")] == ["completed"] * 30
    assert seen.peak["k0"] == 3 and seen.peak["k1"] == 3
    await other.store.close()


# --- priority ---


async def test_priority_moves_a_run_ahead_under_contention(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="prio", trigger="job/run", concurrency=1, priority=Priority(run="event.data.boost"))
    async def prio(ctx: Context) -> Any:
        return ctx.event.data["name"]

    await client.ready()
    await client.send({"name": "job/run", "data": {"name": "early-low", "boost": -100}})
    clock.advance(dt.timedelta(seconds=1))
    await client.send({"name": "job/run", "data": {"name": "normal", "boost": 0}})
    clock.advance(dt.timedelta(seconds=1))
    await client.send({"name": "job/run", "data": {"name": "late-high", "boost": 600}})
    order = []
    gated = frozenset({f"{client.app_id}-prio"})
    for _ in range(3):
        (c,) = await client.store.claim_runs("n", list(gated), ms(clock), 1, 30_000, gated)
        order.append(c.event.data["name"])
        await client.store.suspend_run(c.run.id, "n", [], {"kind": "x"}, client.engine.matcher, ms(clock),
                                       max_due_at=ms(clock) + 3_600_000)  # fmt: skip
    assert order == ["late-high", "normal", "early-low"]


# --- throttle ---


async def test_throttle_delays_starts_to_the_rate_and_drops_nothing(client: Stepline, clock: FakeClock) -> None:
    started: list[int] = []

    @client.function(id="paced", trigger="api/call", throttle=Throttle(limit=2, period="6s", burst=1))
    async def paced(ctx: Context) -> Any:
        started.append(ms(clock))

    t0 = ms(clock)
    await client.send([{"name": "api/call", "data": {"n": n}} for n in range(6)])
    await drain(client)
    assert len(started) == 3  # limit + burst start at once
    waiting = [r for r in await runs(client, "paced") if r.status == "queued"]
    assert len(waiting) == 3 and all(r.idle_reason and r.idle_reason["kind"] == "throttled" for r in waiting)
    assert waiting[0].idle_reason is not None and waiting[0].idle_reason["message"].startswith("throttled until ")
    for _ in range(3):
        await advance(client, clock, 3)  # then one start every period / limit
    assert [s - t0 for s in started] == [0, 0, 0, 3000, 6000, 9000]
    assert [r.status for r in await runs(client, "paced")] == ["completed"] * 6


async def test_throttled_starts_stay_within_the_rate_across_two_workers(
    client: Stepline, backend: Backend, clock: FakeClock
) -> None:
    other = Stepline(client.app_id, backend.same_database(client.store), clock=clock)
    started: list[int] = []

    for c in (client, other):

        @c.function(id="paced", trigger="api/call", throttle=Throttle(limit=2, period="10s"))
        async def paced(ctx: Context) -> Any:
            started.append(ms(clock))

    await client.ready()
    await other.ready()
    t0 = ms(clock)
    # Events arrive through both nodes, in turns.
    for i in range(6):
        await (client if i % 2 else other).send([{"name": "api/call", "data": {"i": i, "j": j}} for j in range(2)])
    w1, w2 = client.worker(), other.worker()
    try:
        for _ in range(61):
            await asyncio.gather(w1.run_until_idle(), w2.run_until_idle())
            clock.advance(dt.timedelta(seconds=1))
    finally:
        w1.close()
        w2.close()
        await other.store.close()
    offsets = sorted(s - t0 for s in started)
    assert len(offsets) == 12  # all of them, none dropped
    # GCRA: `limit` at once, then one every period / limit = 5 s. The k-th start is never earlier than that
    # schedule (the rate holds across both workers) and, with the clock stepping 1 s, at most 1 s later.
    for k, offset in enumerate(offsets):
        slot = max(0, k - 1) * 5000
        assert slot <= offset <= slot + 1000, (k, offsets)


async def test_throttle_keys_are_independent(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="per-key", trigger="api/call", throttle={"limit": 1, "period": "1m", "key": "event.data.k"})
    async def per_key(ctx: Context) -> Any:
        return ctx.event.data["k"]

    await client.send([{"name": "api/call", "data": {"k": k}} for k in ["a", "a", "b"]])
    await drain(client)
    assert sorted(r.output for r in await runs(client, "per-key") if r.status == "completed") == ["a", "b"]
    await advance(client, clock, 60)
    assert [r.status for r in await runs(client, "per-key")] == ["completed"] * 3


# --- rate limit ---


async def test_rate_limit_skips_excess_runs_and_records_why(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="sync", trigger="co/updated", rate_limit=RateLimit(limit=2, period="1m", key="event.data.co"))
    async def sync(ctx: Context) -> Any:
        return ctx.event.data["co"]

    await client.ready()
    result = await client.engine.ingest([{"name": "co/updated", "data": {"co": c}} for c in ["x", "x", "x", "y"]])
    assert len(result.flow_skipped_run_ids) == 1
    await drain(client)
    got = await runs(client, "sync")
    assert sorted((str(r.output), r.status) for r in got) == [("None", "skipped"), ("x", "completed"),
                                                              ("x", "completed"), ("y", "completed")]  # fmt: skip
    (skipped,) = [r for r in got if r.status == "skipped"]
    assert skipped.idle_reason is not None and skipped.idle_reason["kind"] == "rate_limited"
    assert "rate limited (skipped)" in skipped.idle_reason["message"] and skipped.ended_at == ms(clock)
    await advance(client, clock, 30)  # 2 per minute: one more fits after half a minute
    await client.send([{"name": "co/updated", "data": {"co": "x"}}] * 2)
    await drain(client)
    assert collections.Counter(r.status for r in await runs(client, "sync")) == {"completed": 4, "skipped": 2}


# --- debounce ---


async def test_debounce_starts_once_with_the_last_event_after_a_quiet_period(
    client: Stepline, clock: FakeClock
) -> None:
    @client.function(id="deb", trigger="doc/edited", debounce=Debounce(period="5s", key="event.data.doc"))
    async def deb(ctx: Context) -> Any:
        return ctx.event.data["rev"]

    for rev in range(3):
        await client.send({"name": "doc/edited", "data": {"doc": "d1", "rev": rev}})
        await advance(client, clock, 2)
    (pending,) = await runs(client, "deb")
    assert pending.status == "queued" and pending.idle_reason is not None
    assert pending.idle_reason["kind"] == "debounced" and pending.idle_reason["message"].startswith("debounced until")
    await advance(client, clock, 2)  # 4 s since the last event: still quiet period
    assert (await runs(client, "deb"))[0].status == "queued"
    await advance(client, clock, 1)
    (done,) = await runs(client, "deb")
    assert done.status == "completed" and done.output == 2  # the last event
    await client.send({"name": "doc/edited", "data": {"doc": "d1", "rev": 3}})  # a new debounce window
    await advance(client, clock, 5)
    assert [r.output for r in await runs(client, "deb")] == [2, 3]


async def test_debounce_timeout_caps_the_delay(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="capped", trigger="doc/edited", debounce=Debounce(period="5s", timeout="8s"))
    async def capped(ctx: Context) -> Any:
        return ctx.event.data["rev"]

    for rev in range(5):  # an event every 3 s would postpone forever without the timeout
        await client.send({"name": "doc/edited", "data": {"rev": rev}})
        await advance(client, clock, 3)
    got = await runs(client, "capped")
    assert got[0].status == "completed" and got[0].output == 2  # started at 8 s with the last event so far
    assert got[0].started_at == got[0].created_at + 9000  # due at 8 s; the first drain after that is at 9 s


# --- batching ---


async def test_batch_runs_once_full_or_at_the_timeout(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="bulk", trigger="log/line", batch=Batch(max_size=3, timeout="10s"))
    async def bulk(ctx: Context) -> Any:
        assert ctx.event.data == ctx.events[0].data
        return [e.data["n"] for e in ctx.events]

    await client.send([{"name": "log/line", "data": {"n": n}} for n in range(4)])
    await drain(client)
    first, second = await runs(client, "bulk")
    assert first.status == "completed" and first.output == [0, 1, 2]
    assert second.status == "queued" and second.idle_reason is not None
    assert second.idle_reason["message"].startswith("waiting in batch 1 of 3")
    await client.send({"name": "log/line", "data": {"n": 4}})
    assert (await runs(client, "bulk"))[1].idle_reason["message"].startswith("waiting in batch 2 of 3")  # type: ignore[index]
    await advance(client, clock, 10)
    assert (await runs(client, "bulk"))[1].output == [3, 4]


async def test_batch_key_and_if(client: Stepline, clock: FakeClock) -> None:
    options = {"max_size": 2, "timeout": "5s", "key": "event.data.user", "if": "event.data.batch"}

    @client.function(id="keyed", trigger="log/line", batch=options)
    async def keyed(ctx: Context) -> Any:
        return sorted(e.data["n"] for e in ctx.events)

    await client.send([{"name": "log/line", "data": {"user": u, "n": n, "batch": b}}
                       for u, n, b in [("a", 1, True), ("b", 2, True), ("a", 3, True), ("a", 4, False)]])  # fmt: skip
    await drain(client)
    done = sorted(r.output for r in await runs(client, "keyed") if r.status == "completed")
    assert done == [[1, 3], [4]]  # a's batch is full; the event the `if` excludes ran alone
    await advance(client, clock, 5)
    assert sorted(r.output for r in await runs(client, "keyed")) == [[1, 3], [2], [4]]


# --- singleton ---


async def test_singleton_skip_drops_new_runs_while_one_is_live(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="single", trigger="sync/start", singleton=Singleton(mode="skip", key="event.data.repo"))
    async def single(ctx: Context) -> Any:
        await ctx.step.sleep("pause", "1m")
        return ctx.event.data["n"]

    await client.send({"name": "sync/start", "data": {"repo": "r", "n": 1}})
    await drain(client)
    await client.send([{"name": "sync/start", "data": {"repo": "r", "n": 2}},
                       {"name": "sync/start", "data": {"repo": "other", "n": 3}}])  # fmt: skip
    await advance(client, clock, 60)
    await advance(client, clock, 60)
    got = {r.status: r for r in await runs(client, "single") if r.status == "skipped"}
    assert got["skipped"].idle_reason is not None and got["skipped"].idle_reason["kind"] == "singleton"
    assert sorted(r.output for r in await runs(client, "single") if r.status == "completed") == [1, 3]
    await client.send({"name": "sync/start", "data": {"repo": "r", "n": 4}})  # nothing live for r now
    await advance(client, clock, 60)
    await advance(client, clock, 60)
    assert sorted(r.output for r in await runs(client, "single") if r.status == "completed") == [1, 3, 4]


async def test_singleton_cancel_replaces_the_live_run(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="latest", trigger="sync/start", singleton=Singleton(mode="cancel"))
    async def latest(ctx: Context) -> Any:
        await ctx.step.sleep("pause", "1m")
        return ctx.event.data["n"]

    await client.send({"name": "sync/start", "data": {"n": 1}})
    await drain(client)
    await client.send({"name": "sync/start", "data": {"n": 2}})
    await advance(client, clock, 60)
    await advance(client, clock, 60)
    first, second = await runs(client, "latest")
    assert first.status == "cancelled" and first.error is not None and "singleton" in first.error["message"]
    assert second.status == "completed" and second.output == 2


# --- registration errors ---


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency.limit must be from 1"),
        ({"concurrency": [{"limit": 1}] * 3}, "at most 2 limits"),
        ({"concurrency": {"limit": 1, "scope": "galaxy"}}, "concurrency.scope"),
        ({"concurrency": {"limit": 1, "key": "event.data.("}}, "concurrency.key: invalid expression"),
        ({"throttle": {"limit": 1, "period": "0s"}}, "throttle.period must be from 1s to 7d"),
        ({"throttle": {"limit": 1, "period": "8d"}}, "throttle.period must be from 1s to 7d"),
        ({"rate_limit": {"limit": 1, "period": "25h"}}, "rate_limit.period must be from 1s to 1d"),
        ({"debounce": {"period": "10s", "timeout": "5s"}}, "debounce.timeout (5s) must not be shorter"),
        ({"batch": {"max_size": 10, "timeout": "2m"}}, "batch.timeout must be from 1s to 1m"),
        ({"singleton": {"mode": "queue"}}, "singleton.mode must be 'skip' or 'cancel'"),
        ({"concurrency": {"limit": 1, "scope": "account"}}, "key is required for a limit with scope 'account'"),
        (
            {"batch": {"max_size": 2, "timeout": "1s"}, "priority": {"run": "1"}},
            "batch cannot be combined with priority",
        ),
        ({"priority": {"run": "1 +"}}, "priority.run: invalid expression"),
        ({"throttle": {"limit": 1, "period": "1s", "rate": 2}}, "throttle: unknown option(s) rate"),
    ],
)
def test_invalid_options_fail_at_registration_naming_function_and_field(
    client: Stepline, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as err:

        @client.function(id="bad", trigger="x/y", **options)
        async def bad(ctx: Context) -> Any:
            return None

    assert "function 'bad'" in str(err.value) and message in str(err.value)
