"""PostgreSQL: a worker learns the timers other nodes register (sleeps) from the NOTIFY payload alone.

Workers no longer read ``next_due_at`` on every wake-up: a transaction that schedules work for later (a sleep,
a retry, a wait's timeout) notifies its due time, and every worker keeps a local timer. Here node A runs the
first part of a run and suspends it on a 2 s sleep, then stops; node B was already idle before the sleep was
registered, its ``next_due_at`` reads always answer "nothing due" and its safety poll is 15 s away, so only
the notification can tell it when to wake. It must continue the run on time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from stepline import Context, Stepline
from stepline.core.worker import Worker
from stepline.storage.postgres.store import PostgresStore
from tests.acceptance.pg_faults.test_worker_bugs import db_url, stores

__all__ = ["db_url", "stores"]  # fixtures

EVENT = "timers/start"
SLEEP_S = 2.0


async def test_a_sleep_registered_by_one_node_wakes_on_another_through_the_notification(
    stores: list[PostgresStore],
) -> None:
    parts: list[tuple[str, str, float]] = []

    def app(store: PostgresStore, name: str) -> Stepline:
        client = Stepline("timers", store)

        @client.function(id="sleeper", trigger=EVENT, retries=0)
        async def sleeper(ctx: Context) -> str:
            await ctx.step.run("before", lambda: parts.append((name, "before", time.time())))
            await ctx.step.sleep("nap", f"{int(SLEEP_S * 1000)}ms")
            await ctx.step.run("after", lambda: parts.append((name, "after", time.time())))
            return name

        return client

    a_client, b_client = app(stores[0], "A"), app(stores[1], "B")
    await a_client.ready()
    await b_client.ready()

    # B: never finds anything through next_due_at, and claims nothing until the gate opens (so that A runs the
    # first part and registers the sleep while B is already up and listening).
    b_store = stores[1]
    gate = asyncio.Event()
    due_reads = 0
    real_claim = b_store.claim_runs

    async def no_due(function_ids: list[str]) -> int | None:
        nonlocal due_reads
        due_reads += 1
        return None

    async def gated_claim(*args: Any, **kwargs: Any) -> Any:
        return await real_claim(*args, **kwargs) if gate.is_set() else []

    b_store.next_due_at = no_due  # type: ignore[method-assign]
    b_store.claim_runs = gated_claim  # type: ignore[method-assign]

    b = Worker(b_client.engine, b_client.functions.values(), owner="B", poll_interval=60.0)  # safety poll: 15 s
    a = Worker(a_client.engine, a_client.functions.values(), owner="A")
    b_task = asyncio.create_task(b.run())
    a_task = asyncio.create_task(a.run())
    try:
        await asyncio.sleep(0.3)  # B is idle and listening
        (event_id,) = await a_client.send({"name": EVENT})
        deadline = time.monotonic() + 10
        while True:
            (run,) = await a_client.runs_for_event(event_id)
            if run.idle_reason is not None and run.lease_owner is None:
                break  # suspended on the sleep
            assert time.monotonic() < deadline, run
            await asyncio.sleep(0.01)
        suspended_at = time.time()
        assert [(w, p) for w, p, _ in parts] == [("A", "before")]
        a.stop()  # A would wake the run itself (it learns the timer the same way)
        await asyncio.wait_for(a_task, 15)
        gate.set()

        deadline = time.monotonic() + SLEEP_S + 8
        while True:
            (run,) = await a_client.runs_for_event(event_id)
            if run.status == "completed":
                break
            assert time.monotonic() < deadline, f"B did not wake the sleep: {run}"
            await asyncio.sleep(0.02)
        assert run.output == "B"
        (_, _, after_at) = parts[-1]
        assert parts[-1][:2] == ("B", "after")
        assert after_at - suspended_at < SLEEP_S + 1.5, "woken late: B did not learn the timer from the NOTIFY"
        assert due_reads >= 1  # B did look (at start, and after the timer fired), but was never told anything
    finally:
        a.stop()
        b.stop()
        await asyncio.wait([a_task, b_task], timeout=15)
