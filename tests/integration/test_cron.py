"""Cron functions end to end (fake clock, SQLite and PostgreSQL): one run per scheduled time, the timer event's
shape, several workers racing, downtime, and the worker's scheduler sleeping on the clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import pytest

from stepline import Context, FakeClock, Stepline
from stepline.core.scheduler import SCHEDULED_TIMER
from stepline.storage.base import Store

from ..backends import Backend
from ..eventually import eventually
from .helpers import drain, runs

MINUTE = 60


def cron_function(client: Stepline, seen: list[dict[str, Any]], cron: str = "*/5 * * * *") -> None:
    @client.function(id="tick", trigger={"cron": cron})
    async def tick(ctx: Context) -> Any:
        seen.append(ctx.event.as_dict() if hasattr(ctx.event, "as_dict") else dict(ctx.event))
        return "ok"


async def test_a_cron_function_runs_once_per_scheduled_time(client: Stepline, clock: FakeClock) -> None:
    seen: list[dict[str, Any]] = []
    cron_function(client, seen)

    @client.function(id="listener", trigger=SCHEDULED_TIMER)
    async def listener(ctx: Context) -> None:  # the timer event starts only the cron function's run
        return None

    await drain(client)  # 00:00 exactly: a new schedule does not fire for the time it is first seen at
    assert await runs(client) == []
    worker = client.worker()
    try:
        for _ in range(16):  # 00:01 ... 00:16, a minute at a time, draining twice each time
            clock.advance(MINUTE)
            await worker.run_until_idle()
            await worker.run_until_idle()
    finally:
        worker.close()
    done = await runs(client, "tick")
    assert [r.status for r in done] == ["completed"] * 3
    assert await runs(client, "listener") == []
    assert [e["id"] for e in seen] == ["2026-01-01T00:05:00Z", "2026-01-01T00:10:00Z", "2026-01-01T00:15:00Z"]
    first = seen[0]
    assert (first["name"], first["ts"]) == (SCHEDULED_TIMER, 1767225900000)
    # As Inngest's: the schedule, the scheduled time and the fire time (later only with a jitter).
    at = "2026-01-01T00:05:00Z"
    assert first["data"] == {"cron": "*/5 * * * *", "scheduledAt": at, "fireAt": at}


async def test_after_downtime_only_the_most_recent_missed_time_fires(
    client: Stepline, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[dict[str, Any]] = []
    cron_function(client, seen, "0 * * * *")
    await drain(client)  # first seen at 00:00
    clock.advance(dt.timedelta(hours=5, minutes=30))  # every worker was down from 00:00 to 05:30
    with caplog.at_level(logging.WARNING, logger="stepline.cron"):
        await drain(client)
        await drain(client)  # a second worker starting afterwards fires nothing more
    assert [e["id"] for e in seen] == ["2026-01-01T05:00:00Z"]
    [warning] = [r.getMessage() for r in caplog.records if r.name == "stepline.cron"]
    assert "skipped 4 missed scheduled time(s)" in warning and "test-app-tick" in warning
    clock.advance(dt.timedelta(minutes=30))
    await drain(client)
    assert [e["id"] for e in seen] == ["2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z"]


async def test_a_changed_cron_does_not_fire_for_times_before_it_was_seen(engine_store: Store, clock: FakeClock) -> None:
    seen: list[dict[str, Any]] = []
    old = Stepline("test-app", engine_store, clock=clock)
    cron_function(old, seen, "0 * * * *")
    await drain(old)
    clock.advance(dt.timedelta(hours=3, minutes=10))
    new = Stepline("test-app", engine_store, clock=clock)  # redeployed with another schedule
    cron_function(new, seen, "30 * * * *")
    await drain(new)
    assert seen == []  # nothing at 03:10: 02:30 was before the new schedule was first seen
    clock.advance(dt.timedelta(minutes=20))
    await drain(new)
    assert [e["id"] for e in seen] == ["2026-01-01T03:30:00Z"]


async def test_two_workers_on_two_stores_race_and_each_time_fires_once(
    client: Stepline, clock: FakeClock, backend: Backend, engine_store: Store
) -> None:
    seen: list[dict[str, Any]] = []
    cron_function(client, seen, "* * * * *")
    other_store = backend.same_database(engine_store)  # another process on the same database
    other = Stepline("test-app", other_store, clock=clock)
    cron_function(other, seen, "* * * * *")
    await client.ready()
    await other.ready()
    workers = [client.worker(), client.worker(), other.worker()]
    try:
        await asyncio.gather(*(w.run_until_idle() for w in workers))  # each loads the schedule at 00:00
        for _ in range(5):
            clock.advance(MINUTE)
            fired = await asyncio.gather(*(w.scheduler.fire_due() for w in workers))  # race for the same time
            assert sorted(fired) == [0, 0, 1]
            await asyncio.gather(*(w.run_until_idle() for w in workers))
    finally:
        for w in workers:
            w.close()
        await other_store.close()
    ids = [e["id"] for e in seen]
    assert ids == [f"2026-01-01T00:0{m}:00Z" for m in range(1, 6)]
    assert [r.status for r in await runs(client, "tick")] == ["completed"] * 5


async def test_the_worker_loop_sleeps_on_the_clock_until_the_next_scheduled_time(
    client: Stepline, clock: FakeClock
) -> None:
    seen: list[dict[str, Any]] = []
    cron_function(client, seen, "0 9 * * *")
    await client.ready()
    worker = client.worker(poll_interval=3600)  # its poll would fire 09:00 an hour late: only the clock can wake it
    task = asyncio.create_task(worker.run())
    try:
        await eventually("the scheduler", lambda: worker.scheduler.next_fire_at() == 1767258000000)  # 09:00
        clock.advance(dt.timedelta(hours=8, minutes=59))
        assert await worker.scheduler.fire_due() == 0  # nothing is due a minute early
        clock.advance(dt.timedelta(minutes=1))  # wakes the scheduler's sleep at once
        await eventually("the 09:00 run", lambda: seen, timeout=5)
        assert [e["id"] for e in seen] == ["2026-01-01T09:00:00Z"]
        assert worker.scheduler.next_fire_at() == 1767258000000 + 86_400_000
    finally:
        worker.stop()
        await task


async def test_a_worker_fires_crons_after_run_until_idle_and_after_a_restart(
    client: Stepline, clock: FakeClock
) -> None:
    seen: list[dict[str, Any]] = []
    cron_function(client, seen, "0 9 * * *")
    await client.ready()
    worker = client.worker(poll_interval=3600)
    await worker.run_until_idle()  # the same worker, later run() for real (it must still start its scheduler)
    for hours, fired in ((9, 1), (24, 2)):  # 09:00 on the first day; then, after a restart, on the next day
        task = asyncio.create_task(worker.run())
        try:
            await eventually("the scheduler", lambda: worker.scheduler.next_fire_at() is not None)
            clock.advance(dt.timedelta(hours=hours))
            await eventually(f"{fired} cron run(s)", lambda: len(seen) >= fired)
        finally:
            worker.stop()
            await task
            worker._stopping = False  # run() again, as a supervisor restarting the worker would
    assert [e["id"] for e in seen] == ["2026-01-01T09:00:00Z", "2026-01-02T09:00:00Z"]


async def test_a_worker_without_cron_functions_runs_no_scheduler(client: Stepline, clock: FakeClock) -> None:
    done: list[str] = []

    @client.function(id="plain", trigger="t/plain")
    async def plain(ctx: Context) -> None:
        done.append(ctx.event.id)

    cron_calls: list[str] = []
    for name in ("init_cron_schedules", "fire_cron"):
        real = getattr(client.store, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            cron_calls.append(_name)
            return await _real(*args)

        setattr(client.store, name, counted)
    await client.ready()
    worker = client.worker(poll_interval=3600)
    task = asyncio.create_task(worker.run())
    try:
        await client.send({"name": "t/plain", "id": "first"})
        await eventually("the first run", lambda: done)
        clock.advance(dt.timedelta(days=2))  # midnight twice: any schedule would have been looked at
        await client.send({"name": "t/plain", "id": "second"})
        await eventually("the second run", lambda: len(done) == 2)
        assert [t.get_name() for t in asyncio.all_tasks() if t.get_name() == "stepline-cron"] == []
        assert cron_calls == []
    finally:
        worker.stop()
        await task


async def test_a_schedule_that_fails_to_fire_does_not_hold_the_others(
    client: Stepline, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    fired: list[str] = []

    @client.function(id="broken", trigger={"cron": "0 * * * *"})
    async def broken(ctx: Context) -> None:
        fired.append("broken")

    @client.function(id="fine", trigger={"cron": "0 * * * *"})
    async def fine(ctx: Context) -> None:
        fired.append("fine")

    await client.ready()
    real_fire = client.store.fire_cron
    failures = 0

    async def fire(function_id: str, *args: Any) -> bool:
        nonlocal failures
        if function_id.endswith("-broken") and failures < 1:
            failures += 1
            raise RuntimeError("the database refused this one")
        return await real_fire(function_id, *args)

    await drain(client)  # the schedules are first seen now (00:00): nothing fires for that
    client.store.fire_cron = fire  # type: ignore[method-assign]
    clock.advance(dt.timedelta(hours=1))
    with caplog.at_level(logging.ERROR, logger="stepline.cron"):
        await drain(client)
    assert fired == ["fine"]  # the other schedule fired although the first one failed
    assert "firing 2026-01-01T01:00:00Z failed; retrying in 5 s" in caplog.text
    clock.advance(dt.timedelta(seconds=5))
    await drain(client)
    assert sorted(fired) == ["broken", "fine"]  # retried: that time still fires, once
