"""Minimal reproductions of worker bugs found by the PostgreSQL fault tests (``test_pg_faults.py``).

1. A read that fails because the server dropped the connection (a restart, a failover, an administrator's
   ``pg_terminate_backend``) ends ``Worker.run()`` with that error: the worker process exits instead of
   reconnecting. The fault tests' PostgreSQL restart hits it now and then (the worker was in ``next_due_at``).
2. A worker that stops gracefully stops renewing its leases at once, but waits up to ``shutdown_grace`` for its
   active runs: when a run takes longer than what is left of its lease, another worker takes it over and runs
   the step that is still running on the stopping worker a second time. (With the defaults, a 30 s lease
   renewed every 10 s and a 10 s grace, what is left always covers the grace; a lease under 1.5 x the grace
   does not.)

Both tests fail until the bugs are fixed.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from stepline import Context, Stepline
from stepline.core.worker import Worker
from stepline.storage.postgres.store import PostgresStore
from tests.pg_cluster import PgCluster, get_cluster

EVENT = "bugs/start"


@pytest.fixture
def db_url() -> Iterator[str]:
    cluster: PgCluster | None = get_cluster()
    if cluster is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found: CI should have installed them")
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl not found)")
    url = cluster.create_database()
    yield url
    try:
        cluster.drop_database(url)
    except psycopg.Error:
        pass


@pytest.fixture
async def stores(db_url: str) -> AsyncIterator[list[PostgresStore]]:
    """Two stores on the same database: two worker processes' worth of connections."""
    made = [PostgresStore(db_url), PostgresStore(db_url)]
    yield made
    for s in made:
        await s.close()


def kill_connection_of_next_read(store: PostgresStore, url: str) -> threading.Event:
    """Make the store's next read run on a connection the server has just terminated (what a server restart or
    ``pg_terminate_backend`` does to a query in flight). Returns an event set once that happened."""
    inner = store._read
    armed = threading.Event()
    armed.set()
    done = threading.Event()

    def read(fn: Any) -> Any:
        if not armed.is_set():
            return inner(fn)
        armed.clear()

        def doomed(conn: Any) -> Any:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
            done.set()
            return fn(conn)

        return inner(doomed)

    store._read = read  # type: ignore[method-assign]
    return done


async def test_worker_survives_a_read_connection_killed_mid_query(db_url: str, stores: list[PostgresStore]) -> None:
    client = Stepline("bugs", stores[0])

    @client.function(id="noop", trigger=EVENT, retries=0)
    async def noop(ctx: Context) -> str:
        return "done"

    await client.ready()
    worker = client.worker(lease_seconds=2, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)  # the worker is idle: it reads ``next_due_at`` every 50 ms
        killed = kill_connection_of_next_read(stores[0], db_url)
        deadline = time.monotonic() + 5
        while not killed.is_set():
            assert time.monotonic() < deadline, "the worker made no read"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        # Expected: the worker logs the error and carries on (the pool replaces the connection). Actual: run()
        # raised psycopg.errors.AdminShutdown from next_due_at (a worker process exits).
        assert not task.done(), f"Worker.run() ended: {task.exception()!r}"
        sender = Stepline("bugs", stores[1])
        (event_id,) = await sender.send({"name": EVENT})
        deadline = time.monotonic() + 10
        while True:
            runs = await client.runs_for_event(event_id)
            if runs and runs[0].status == "completed":
                break
            assert time.monotonic() < deadline, runs
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await asyncio.wait([task], timeout=15)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: reported by the assertions above


async def test_graceful_stop_keeps_leases_of_runs_it_waits_for(stores: list[PostgresStore]) -> None:
    executions: list[str] = []

    def app(store: PostgresStore, name: str) -> Stepline:
        client = Stepline("bugs", store)

        @client.function(id="slow", trigger=EVENT, retries=0)
        async def slow(ctx: Context) -> str:
            async def long_step() -> str:
                executions.append(name)
                await asyncio.sleep(2.5)  # longer than the 1 s lease; shorter than the 10 s shutdown grace
                return name

            return await ctx.step.run("long", long_step)

        return client

    a_client, b_client = app(stores[0], "A"), app(stores[1], "B")
    await a_client.ready()
    await b_client.ready()
    a = Worker(a_client.engine, a_client.functions.values(), lease_seconds=1.0, shutdown_grace=10.0, owner="A")
    b = Worker(b_client.engine, b_client.functions.values(), lease_seconds=1.0, owner="B", poll_interval=0.05)
    a_task = asyncio.create_task(a.run())
    b_task: asyncio.Task[None] | None = None
    try:
        (event_id,) = await a_client.send({"name": EVENT})
        deadline = time.monotonic() + 10
        while executions != ["A"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        b_task = asyncio.create_task(b.run())  # another node, ready to take over expired leases
        a.stop()  # graceful: A waits for its active run (up to 10 s) ...
        await asyncio.wait_for(a_task, 15)
        deadline = time.monotonic() + 10
        while True:
            (run,) = await a_client.runs_for_event(event_id)
            if run.status == "completed":
                break
            assert time.monotonic() < deadline, run
            await asyncio.sleep(0.05)
        # ... and should keep the run's lease meanwhile. Actual: the lease expired, B took the run over and
        # executed the step a second time while A was still running it.
        assert executions == ["A"], executions
        assert run.output == "A"
    finally:
        a.stop()
        b.stop()
        await asyncio.wait([t for t in (a_task, b_task) if t is not None], timeout=15)
