"""Flow control under races, replays and edge cases found in review: each test pins down one bug (both backends).

Where a race can only happen on PostgreSQL (several writers), SQLite runs the same code path with the other
party's statement executed on the same connection at the same point: the state the store then sees is the one
the race produces.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from typing import Any

import psycopg
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
from stepline.storage.postgres.store import PostgresStore
from stepline.storage.records import IngestBatch, RunFilter, RunFinish
from stepline.storage.sql_store import SqlStore

from ..backends import Backend
from .helpers import advance, drain, runs


def ms(clock: FakeClock) -> int:
    return clock.now_ms()


def fid(client: Stepline, name: str) -> str:
    return f"{client.app_id}-{name}"


async def replay(client: Stepline, batch: IngestBatch, clock: FakeClock) -> None:
    """Apply one planned ingest twice, as the group-commit writer does when a COMMIT's acknowledgement is lost
    (the connection drops after the server committed): the same operation runs again on a new connection."""
    for _ in range(2):
        await client.store.ingest(batch, client.engine.matcher, ms(clock))


class _HookedQueries(dict[str, str]):
    """The store's queries, calling ``hook(name)`` whenever one is looked up."""

    def __init__(self, queries: dict[str, str], hook: Any) -> None:
        super().__init__(queries)
        self.hook = hook

    def __getitem__(self, name: str) -> str:
        self.hook(name)
        return super().__getitem__(name)


# --- debounce / batch ---


async def test_a_batch_event_is_not_lost_when_the_open_run_is_claimed_meanwhile(
    client: Stepline, backend: Backend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open batch run is read (``flow_open_run``), then updated (``flow_batch_run``); a worker claiming it in
    between (its timeout is reached) made the update change nothing, yet the event was reported merged."""

    @client.function(id="bulk", trigger="log/line", batch=Batch(max_size=3, timeout="10s"))
    async def bulk(ctx: Context) -> Any:
        return [e.data["n"] for e in ctx.events]

    await client.send({"name": "log/line", "data": {"n": 0}})
    clock.advance(dt.timedelta(seconds=10))  # the open batch's timeout: a worker may claim it now
    store = client.store
    assert isinstance(store, SqlStore)
    conns: list[Any] = []
    claimed: list[Any] = []

    original_admit = store._admit

    def admit(conn: Any, *args: Any) -> Any:
        conns.append(conn)
        return original_admit(conn, *args)

    def hook(name: str) -> None:
        if name != "flow_batch_run" or claimed:
            return
        params = {"owner": "other-node", "now": ms(clock), "lease_until": ms(clock) + 30_000, "limit": 10,
                  "function_ids": f'["{fid(client, "bulk")}"]'}  # fmt: skip
        if isinstance(store, PostgresStore):  # another node's claim, committed between the two statements
            with psycopg.connect(store.url, autocommit=True) as other:
                claimed.extend(other.execute(type(store).Q["claim_runs"], params).fetchall())
        else:
            claimed.extend(conns[-1].execute(type(store).Q["claim_runs"], params).fetchall())

    monkeypatch.setattr(store, "_admit", admit)
    monkeypatch.setattr(store, "Q", _HookedQueries(type(store).Q, hook))
    await client.send({"name": "log/line", "data": {"n": 1}})
    monkeypatch.undo()
    assert len(claimed) == 1
    await drain(client)
    await advance(client, clock, 10)
    outputs = sorted(r.output for r in await runs(client, "bulk") if r.status == "completed")
    assert outputs == [[1]]  # the claimed run (other-node's) is still running with [0]; n=1 opened the next batch


async def test_a_replayed_ingest_does_not_add_an_event_to_a_batch_twice(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="bulk", trigger="log/line", batch=Batch(max_size=3, timeout="10s"))
    async def bulk(ctx: Context) -> Any:
        return [e.data["n"] for e in ctx.events]

    await client.send({"name": "log/line", "data": {"n": 0}})
    await replay(client, await client.engine.plan_ingest({"name": "log/line", "data": {"n": 1}}), clock)
    await client.send({"name": "log/line", "data": {"n": 2}})
    await drain(client)
    await advance(client, clock, 10)
    assert sorted(r.output for r in await runs(client, "bulk")) == [[0, 1, 2]]


async def test_a_replayed_ingest_does_not_charge_a_rate_limit_twice(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="limited", trigger="co/updated", rate_limit=RateLimit(limit=2, period="1m"))
    async def limited(ctx: Context) -> Any:
        return ctx.event.data["n"]

    await client.ready()
    await replay(client, await client.engine.plan_ingest({"name": "co/updated", "data": {"n": 1}}), clock)
    await client.send({"name": "co/updated", "data": {"n": 2}})  # the second of 2 per minute
    await drain(client)
    assert sorted((r.status, r.output) for r in await runs(client, "limited")) == [("completed", 1), ("completed", 2)]


async def test_a_replayed_ingest_does_not_cancel_its_own_singleton_run(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="latest", trigger="sync/start", singleton=Singleton(mode="cancel"))
    async def latest(ctx: Context) -> Any:
        return ctx.event.data["n"]

    await client.ready()
    await replay(client, await client.engine.plan_ingest({"name": "sync/start", "data": {"n": 1}}), clock)
    await drain(client)
    assert [(r.status, r.output) for r in await runs(client, "latest")] == [("completed", 1)]


# --- throttle with debounce / batch ---


async def test_a_full_batch_does_not_bypass_the_throttle(client: Stepline, clock: FakeClock) -> None:
    started: list[int] = []

    @client.function(id="bulk", trigger="log/line", batch=Batch(max_size=2, timeout="10s"),
                     throttle=Throttle(limit=1, period="1m"))  # fmt: skip
    async def bulk(ctx: Context) -> Any:
        started.append(ms(clock))
        return [e.data["n"] for e in ctx.events]

    t0 = ms(clock)
    await client.send([{"name": "log/line", "data": {"n": n}} for n in range(4)])  # two full batches
    await drain(client)
    assert [s - t0 for s in started] == [0]  # one start per minute: the second batch waits
    await advance(client, clock, 70)
    assert len(started) == 2 and started[1] - started[0] >= 60_000


async def test_a_debounced_event_does_not_move_a_throttled_run_earlier(client: Stepline, clock: FakeClock) -> None:
    started: list[int] = []

    @client.function(id="deb", trigger="doc/edited", debounce=Debounce(period="5s"),
                     throttle=Throttle(limit=1, period="1m"))  # fmt: skip
    async def deb(ctx: Context) -> Any:
        started.append(ms(clock))

    await client.send({"name": "doc/edited", "data": {"rev": 0}})
    await advance(client, clock, 6)  # the first debounced run starts
    await client.send({"name": "doc/edited", "data": {"rev": 1}})  # opens the next one, throttled for a minute
    await advance(client, clock, 1)
    await client.send({"name": "doc/edited", "data": {"rev": 2}})  # debounced: due 5 s later, not before its turn
    for _ in range(8):
        await advance(client, clock, 10)
    assert len(started) == 2 and started[1] - started[0] >= 60_000, started


# --- GCRA ---


async def test_a_rate_limit_above_one_per_millisecond_still_limits(client: Stepline, clock: FakeClock) -> None:
    """period / limit under 1 ms: the theoretical arrival time, truncated to whole ms, never advanced."""

    @client.function(id="fast", trigger="api/hit", rate_limit=RateLimit(limit=1200, period="1s"))
    async def fast(ctx: Context) -> Any:
        return None

    await client.ready()
    result = await client.engine.ingest([{"name": "api/hit"}] * 1300)
    assert (len(result.created_run_ids), len(result.flow_skipped_run_ids)) == (1200, 100)


async def test_a_throttle_above_one_per_millisecond_still_spreads_starts(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="fast", trigger="api/hit", throttle=Throttle(limit=2000, period="1s"))
    async def fast(ctx: Context) -> Any:
        return None

    await client.ready()
    await client.engine.ingest([{"name": "api/hit"}] * 2500)
    got = await client.store.list_runs(RunFilter(function_id=fid(client, "fast"), limit=5000))
    due = sorted(r.due_at or 0 for r in got)
    assert len(due) == 2500
    t0 = ms(clock)
    assert due[1999] == t0 and due[-1] - t0 >= 249  # 2000 at once, then one every 0.5 ms


async def test_a_rate_limit_admits_no_run_before_its_interval(client: Stepline, clock: FakeClock) -> None:
    """3 per 10 s: 3 at once, then one every 3333.3 ms; truncating each step let the 4th in at 3332 ms."""

    @client.function(id="thirds", trigger="api/hit", rate_limit=RateLimit(limit=3, period="10s"))
    async def thirds(ctx: Context) -> Any:
        return None

    await client.ready()
    assert len((await client.engine.ingest([{"name": "api/hit"}] * 3)).created_run_ids) == 3
    clock.advance(dt.timedelta(milliseconds=3332))
    assert len((await client.engine.ingest({"name": "api/hit"})).flow_skipped_run_ids) == 1
    clock.advance(dt.timedelta(milliseconds=2))  # 3334 ms: past 3333.3
    assert len((await client.engine.ingest({"name": "api/hit"})).created_run_ids) == 1


# --- concurrency ---


async def test_a_freed_slot_is_not_lost_to_a_woken_run_blocked_on_its_other_key(
    client: Stepline, clock: FakeClock
) -> None:
    """Two keys: the woken run finds its other key full and blocks on it; the slot it was woken for stayed free
    while the next run waiting for it slept until its fallback (the old holder's lease expiry)."""

    @client.function(id="two", trigger="job/run", concurrency=[Concurrency(limit=1, key="event.data.a"),
                                                             Concurrency(limit=1, key="event.data.b")])  # fmt: skip
    async def two(ctx: Context) -> Any:
        return None

    await client.ready()
    f = fid(client, "two")
    gated = frozenset({f})
    names = {}
    for name, a, b in [("h1", "x", "p"), ("h2", "y", "q"), ("r1", "x", "q"), ("r2", "x", "r")]:
        (names[name],) = (await client.engine.ingest({"name": "job/run", "data": {"a": a, "b": b}})).created_run_ids
        clock.advance(dt.timedelta(milliseconds=1))
    now = ms(clock)
    held = {c.run.id for c in await client.store.claim_runs("n", [f], now, 10, 30_000, gated)}
    assert held == {names["h1"], names["h2"]}  # r1 and r2 wait for x
    await client.store.finish_run(names["h1"], "n", RunFinish("completed"), client.engine.matcher, now)
    got = set()
    for _ in range(3):  # r1 is woken and blocks on q (held by h2); x is free for r2
        got |= {c.run.id for c in await client.store.claim_runs("n", [f], now, 10, 30_000, gated)}
    assert got == {names["r2"]}


async def test_claims_lock_concurrency_keys_in_one_order(
    client: Stepline, backend: Backend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Two nodes claiming runs whose keys come in opposite orders took the per-key locks in opposite orders:
    a deadlock (PostgreSQL aborts one after deadlock_timeout and the writer retries its whole batch)."""
    if backend.name != "postgres":
        pytest.skip("advisory locks: PostgreSQL only")

    @client.function(id="keyed", trigger="job/run", concurrency=Concurrency(limit=5, key="event.data.k"))
    async def keyed(ctx: Context) -> Any:
        return None

    await client.ready()
    f = fid(client, "keyed")
    gated = frozenset({f})
    for k in ["A", "B", "B", "A"]:
        await client.engine.ingest({"name": "job/run", "data": {"k": k}})
        clock.advance(dt.timedelta(milliseconds=1))
    other = backend.same_database(client.store)
    await other.open()
    first_lock = {id(client.store): threading.Event(), id(other): threading.Event()}
    assert isinstance(client.store, PostgresStore) and isinstance(other, PostgresStore)

    def hooked(store: PostgresStore, peer: PostgresStore) -> Any:
        original = store._lock_key

        def lock_key(conn: Any, key: str) -> None:
            original(conn, key)
            if not first_lock[id(store)].is_set():
                first_lock[id(store)].set()
                first_lock[id(peer)].wait(timeout=2)  # let the other node take its first key lock

        return lock_key

    monkeypatch.setattr(client.store, "_lock_key", hooked(client.store, other))
    monkeypatch.setattr(other, "_lock_key", hooked(other, client.store))
    now = ms(clock)
    caplog.set_level(logging.WARNING, logger="stepline.storage.writer")
    try:
        one = asyncio.create_task(client.store.claim_runs("n1", [f], now, 2, 30_000, gated))
        await asyncio.to_thread(first_lock[id(client.store)].wait, 5)  # n1 holds the first two runs
        two = asyncio.create_task(other.claim_runs("n2", [f], now, 2, 30_000, gated))
        got = await asyncio.gather(one, two)
    finally:
        await other.close()
    assert sorted(len(g) for g in got) == [2, 2]
    assert not [r for r in caplog.records if "deadlock" in r.getMessage()]


# --- functions without flow control ---


async def test_a_plain_function_is_not_starved_by_a_flow_controlled_backlog(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="plain", trigger="job/plain")
    async def plain(ctx: Context) -> Any:
        return None

    @client.function(id="prio", trigger="job/prio", priority=Priority(run="0"))
    async def prio(ctx: Context) -> Any:
        return None

    await client.ready()
    await client.send({"name": "job/plain"})
    clock.advance(dt.timedelta(seconds=1))
    await client.send([{"name": "job/prio"}] * 3)
    ids = [fid(client, "plain"), fid(client, "prio")]
    (first,) = await client.store.claim_runs("n", ids, ms(clock), 1, 30_000, frozenset({fid(client, "prio")}))
    assert first.run.function_id == fid(client, "plain")  # due a second earlier than any of the backlog
