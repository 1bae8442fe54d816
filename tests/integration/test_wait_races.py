"""Waits never miss an event stored by another process while the wait is being registered."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from stepline import Context, FakeClock, Stepline

from ..backends import Backend
from ..eventually import eventually
from .helpers import runs


async def test_signals_sent_by_another_store_while_waits_register_are_never_missed(
    client: Stepline, backend: Backend, clock: FakeClock
) -> None:
    n = 40
    # A second store instance on the same database: its own connections and writers, as another process has.
    other = Stepline("signals", backend.same_database(client.store), clock=clock)
    rng = random.Random(7)
    sent: set[int] = set()
    pending: list[asyncio.Task[Any]] = []

    @client.function(id="waiter", trigger="race/start")
    async def waiter(ctx: Context) -> Any:
        k = ctx.event.data["k"]

        async def signal_soon() -> None:
            # Lands after the wait step started (its cursor is read synchronously, before this task runs),
            # and before, during or after the wait's own transaction commits.
            await asyncio.sleep(rng.random() * 0.004)
            await other.send({"name": "race/signal", "data": {"k": k}})

        if k not in sent:
            sent.add(k)
            pending.append(asyncio.create_task(signal_soon()))
        got = await ctx.step.wait_for_event(
            "signal", event="race/signal", if_exp="async.data.k == event.data.k", timeout="1h"
        )
        return None if got is None else got["data"]["k"]

    await client.ready()
    worker = client.worker(concurrency=n)
    task = asyncio.create_task(worker.run())
    try:
        await client.send([{"name": "race/start", "data": {"k": k}} for k in range(n)])

        async def all_done() -> bool:
            return len(sent) == n and all(r.status == "completed" for r in await runs(client))

        with contextlib.suppress(AssertionError):  # what is missing is asserted below, with the runs' states
            await eventually("every run to complete", all_done, 20, interval=0.05)
    finally:
        worker.stop()
        await task
        await asyncio.gather(*pending, return_exceptions=True)
        await other.close()
    done = await runs(client)
    waiting = [r.id for r in done if r.status != "completed"]
    assert waiting == [], f"{len(waiting)} of {n} waits missed their signal"
    assert sorted(r.output for r in done) == list(range(n))
