"""PostgreSQL: runs that one ingest schedules for several later times (a throttle) start on time.

One transaction stores three throttled runs, due now, in 1 s and in 2 s. Its NOTIFY must let an idle worker
on another store learn the later times too (it claims the first run, then sets a timer), or the second and third
runs would wait for the worker's safety poll (set to 30 s here).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from stepline import Stepline, Throttle
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
        async def paced(ctx: Any) -> None:
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
