"""Cron state (``init_cron_schedules`` / ``fire_cron``): each scheduled time of a schedule fires once, whoever
races for it; a new or changed schedule starts at the time it is first seen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from stepline.core.function import FunctionSpec
from stepline.core.scheduler import SCHEDULED_TIMER, scheduled_batch
from stepline.storage.base import Store
from stepline.storage.records import AppRecord, IngestBatch, RunFilter

from .builders import FN, HOUR, MATCH, NOW, function

CRON = "0 * * * *"
Reopen = Callable[[Store], AbstractAsyncContextManager[Store]]


def batch(at: int, cron: str = CRON, now: int = NOW) -> IngestBatch:
    spec = FunctionSpec.from_record(function("fn", triggers=[{"cron": cron}]))
    return scheduled_batch(spec, cron, at, now)


async def runs(store: Store) -> list[str]:
    found = await store.list_runs(RunFilter(function_id=FN, limit=100))
    return sorted(r.id for r in found)


async def test_init_sets_a_new_schedule_and_keeps_a_known_one(store: Store) -> None:
    assert await store.init_cron_schedules(FN, {CRON: NOW}) == {CRON: NOW}
    # Another worker (or a restart) initialises later: the stored state wins.
    assert await store.init_cron_schedules(FN, {CRON: NOW + 5 * HOUR}) == {CRON: NOW}
    assert await store.init_cron_schedules("app-other", {CRON: NOW + HOUR}) == {CRON: NOW + HOUR}


async def test_a_changed_cron_starts_afresh_and_the_old_one_is_forgotten(store: Store) -> None:
    await store.init_cron_schedules(FN, {CRON: NOW})
    assert await store.fire_cron(FN, CRON, NOW + HOUR, batch(NOW + HOUR), MATCH, NOW + HOUR)
    changed = "30 * * * *"
    assert await store.init_cron_schedules(FN, {changed: NOW + 9 * HOUR}) == {changed: NOW + 9 * HOUR}
    # Back to the first cron later: it starts again at the time given, not from its old state.
    assert await store.init_cron_schedules(FN, {CRON: NOW + 20 * HOUR}) == {CRON: NOW + 20 * HOUR}
    # Two cron triggers on one function are tracked apart.
    both = await store.init_cron_schedules(FN, {CRON: NOW + 30 * HOUR, changed: NOW + 31 * HOUR})
    assert both == {CRON: NOW + 20 * HOUR, changed: NOW + 31 * HOUR}


async def test_fire_cron_fires_each_scheduled_time_once(store: Store) -> None:
    await store.init_cron_schedules(FN, {CRON: NOW})
    assert not await store.fire_cron(FN, CRON, NOW, batch(NOW), MATCH, NOW)  # the init time: already "fired"
    at = NOW + HOUR
    assert await store.fire_cron(FN, CRON, at, batch(at), MATCH, at)
    assert not await store.fire_cron(FN, CRON, at, batch(at), MATCH, at + 1)  # the same time again
    assert not await store.fire_cron(FN, CRON, NOW + 1, batch(NOW + 1), MATCH, at)  # an earlier time
    [run_id] = await runs(store)
    run = await store.get_run(run_id)
    assert run is not None and run.status == "queued"
    ev = await store.get_event(run.event_id)
    assert ev is not None and (ev.name, ev.id, ev.data, ev.ts) == (
        SCHEDULED_TIMER, "2026-01-01T01:00:00Z",
        {"cron": CRON, "scheduledAt": "2026-01-01T01:00:00Z", "fireAt": "2026-01-01T01:00:00Z"}, at)  # fmt: skip
    assert await store.fire_cron(FN, CRON, at + HOUR, batch(at + HOUR), MATCH, at + HOUR)
    assert len(await runs(store)) == 2
    assert await store.init_cron_schedules(FN, {CRON: 0}) == {CRON: at + HOUR}


async def test_a_fire_without_state_records_it(store: Store) -> None:
    # The state was forgotten under a worker still firing the old schedule (a rolling deploy): it fires once.
    at = NOW + HOUR
    assert await store.fire_cron(FN, CRON, at, batch(at), MATCH, at)
    assert not await store.fire_cron(FN, CRON, at, batch(at), MATCH, at)
    assert len(await runs(store)) == 1


async def test_a_refire_after_lost_state_starts_no_second_run(store: Store) -> None:
    at = NOW + HOUR
    await store.init_cron_schedules(FN, {CRON: NOW})
    assert await store.fire_cron(FN, CRON, at, batch(at), MATCH, at)
    await store.init_cron_schedules(FN, {"5 * * * *": NOW})  # forgets CRON's state
    # Fired again for the same time: the event's internal id and the run's idempotency key hold.
    assert await store.fire_cron(FN, CRON, at, batch(at), MATCH, at)
    assert len(await runs(store)) == 1
    assert len(await store.list_events(SCHEDULED_TIMER, 10)) == 1


async def test_racing_stores_fire_each_time_once(store: Store, reopen: Reopen) -> None:
    await store.init_cron_schedules(FN, {CRON: NOW})
    async with reopen(store) as other, reopen(store) as third:
        stores = [store, other, third]
        for hour in range(1, 6):
            at = NOW + hour * HOUR
            # Each contender builds its own batch (its own run id), as separate workers do.
            results = await asyncio.gather(*(s.fire_cron(FN, CRON, at, batch(at), MATCH, at) for s in stores))
            assert sorted(results) == [False, False, True], hour
    assert len(await runs(store)) == 5


async def test_a_function_that_leaves_or_loses_its_cron_forgets_its_schedule(store: Store) -> None:
    app = FN.rsplit("-", 1)[0]
    with_cron = function("fn", triggers=[{"cron": CRON}])
    await store.register_functions(app, [with_cron], NOW)
    await store.init_cron_schedules(FN, {CRON: NOW})
    assert await store.fire_cron(FN, CRON, NOW + HOUR, batch(NOW + HOUR), MATCH, NOW + HOUR)
    # The app is synced without the function, then with it again much later: its schedule starts afresh.
    await store.register_functions(app, [], NOW + 2 * HOUR)
    await store.register_functions(app, [with_cron], NOW + 50 * HOUR)
    assert await store.init_cron_schedules(FN, {CRON: NOW + 50 * HOUR}) == {CRON: NOW + 50 * HOUR}
    # The same when the function stays but its cron trigger goes away and comes back.
    await store.register_functions(app, [function("fn", triggers=[{"event": "x/y"}])], NOW + 51 * HOUR)
    await store.register_functions(app, [with_cron], NOW + 60 * HOUR)
    assert await store.init_cron_schedules(FN, {CRON: NOW + 60 * HOUR}) == {CRON: NOW + 60 * HOUR}
    # And when the app is deleted.
    await store.save_app(AppRecord("http://a", app, None, None, None, None, None, None, NOW, NOW))
    await store.delete_app("http://a")
    await store.register_functions(app, [with_cron], NOW + 70 * HOUR)
    assert await store.init_cron_schedules(FN, {CRON: NOW + 70 * HOUR}) == {CRON: NOW + 70 * HOUR}
