"""PostgreSQL: runs that one ingest schedules for several later times (a throttle) start on time.

One transaction stores three throttled runs, due now, in 1 s and in 2 s. Its NOTIFY must let an idle worker
on another store learn the later times too (it claims the first run, then sets a timer), or the second and third
runs would wait for the worker's safety poll (set to 30 s here).
"""

from __future__ import annotations

import asyncio
import time

from stepline import Context, Stepline, Throttle
from stepline.core.worker import Worker
from stepline.storage.postgres.store import PostgresStore
from tests.acceptance.pg_faults.test_worker_bugs import db_url, stores

__all__ = ["db_url", "stores"]  # fixtures


async def test_throttled_runs_scheduled_by_one_ingest_start_on_time_on_another_node(
    stores: list[PostgresStore],
) -> None:
    started: list[float] = []

    def app(store: PostgresStore) -> Stepline:
        client = Stepline("paced", store)

        @client.function(id="paced", trigger="paced/go", throttle=Throttle(limit=1, period="1s"))
        async def paced(ctx: Context) -> None:
            started.append(time.time())

        return client

    sender, runner = app(stores[0]), app(stores[1])
    await sender.ready()
    await runner.ready()
    worker = Worker(runner.engine, runner.functions.values(), poll_interval=60.0)  # safety poll: 30 s
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)  # idle, waiting for notifications
        t0 = time.time()
        await sender.send([{"name": "paced/go", "data": {"n": n}} for n in range(3)])
        deadline = time.monotonic() + 10
        while len(started) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await task
    offsets = [round(s - t0, 2) for s in started]
    assert len(offsets) == 3, offsets
    for k, offset in enumerate(offsets):  # at its slot (never before), and well before any safety poll
        assert k - 0.05 <= offset <= k + 1.0, offsets


async def test_a_throttled_backlog_from_several_sends_drains_at_the_rate(stores: list[PostgresStore]) -> None:
    """Several sends queue throttled runs behind each other: after each claim the worker must look for the next
    due time itself (later runs were announced by earlier notifications it had no timer for)."""
    started: list[float] = []
    client = Stepline("paced", stores[0])

    @client.function(id="paced", trigger="paced/go", throttle=Throttle(limit=50, period="1s"))
    async def paced(ctx: Context) -> None:
        started.append(time.time())

    await client.ready()
    worker = Worker(client.engine, client.functions.values(), poll_interval=60.0)  # safety poll: 30 s
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)
        t0 = time.time()
        for batch in range(4):
            await client.send([{"name": "paced/go", "data": {"n": batch * 50 + n}} for n in range(50)])
        deadline = time.monotonic() + 15
        while len(started) < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await task
    assert len(started) == 200, len(started)
    # 50 at once, then one every 20 ms: the last one at 3.0 s (not at the safety poll, 30 s away)
    assert max(started) - t0 < 4.5, sorted(round(s - t0, 2) for s in started)
