"""Store conformance: migrations, function registry, ingest (events, runs, idempotency, cancellation), reads."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from stepline.core.ids import new_ulid
from stepline.storage.base import Store
from stepline.storage.records import IngestBatch, RunFilter, RunFinish, StaleRegistryError, WaitSpec

from .builders import (
    APP,
    DAY,
    EVENT,
    FN,
    HOUR,
    LEASE,
    MATCH,
    NOW,
    OTHER_FN,
    SEC,
    event,
    function,
    ingest,
    memo,
    new_run,
    start,
    start_and_claim,
)

Reopen = Callable[[Store], AbstractAsyncContextManager[Store]]

# --- migrations ---------------------------------------------------------------------------------------------


async def test_fresh_store_has_a_schema_and_is_empty(store: Store) -> None:
    assert store.schema_version() >= 1
    assert await store.list_functions() == []
    assert await store.list_events(None, 10) == []
    assert await store.list_runs(RunFilter()) == []
    assert await store.registry_version() == 0


async def test_reopening_the_same_database_keeps_data_and_schema(store: Store, reopen: Reopen) -> None:
    await store.register_functions(APP, [function("fn")], NOW)
    ev, run_id = await start(store)
    version = await store.registry_version()
    await store.open()  # opening an open store again is harmless
    async with reopen(store) as again:
        assert again.schema_version() == store.schema_version() >= 1
        assert await again.get_event(ev.internal_id) == ev
        run = await again.get_run(run_id)
        assert run is not None and run.status == "queued"
        assert [f.id for f in await again.list_functions()] == [FN]
        assert await again.registry_version() == version


# --- functions ----------------------------------------------------------------------------------------------


async def test_register_functions_stores_every_field(store: Store) -> None:
    fn = function("fn", name="My function", triggers=[{"event": EVENT}], retries=3)
    await store.register_functions(APP, [fn], NOW)
    assert await store.list_functions() == [fn]


async def test_register_functions_upserts_and_bumps_version_only_on_change(store: Store) -> None:
    v0 = await store.registry_version()
    v1 = await store.register_functions(APP, [function("a"), function("b")], NOW)
    assert v1 != v0 and await store.registry_version() == v1
    assert await store.register_functions(APP, [function("b"), function("a")], NOW + 1) == v1  # same set
    assert await store.registry_version() == v1

    v2 = await store.register_functions(APP, [function("a", retries=5), function("b")], NOW + 2)
    assert v2 != v1
    assert {f.id: f.config for f in await store.list_functions()} == {"app-a": {"retries": 5}, "app-b": {}}

    v3 = await store.register_functions(APP, [function("a", name="Renamed", retries=5), function("b")], NOW + 3)
    assert v3 not in (v1, v2)
    assert {f.id: f.name for f in await store.list_functions()} == {"app-a": "Renamed", "app-b": "B"}


async def test_register_functions_removes_unlisted_functions_of_that_app_only(store: Store) -> None:
    await store.register_functions("app", [function("a"), function("b")], NOW)
    await store.register_functions("other", [function("x", app_id="other")], NOW)
    before = await store.registry_version()

    after = await store.register_functions("app", [function("a")], NOW + 1)
    assert after != before
    assert sorted(f.id for f in await store.list_functions()) == ["app-a", "other-x"]

    await store.register_functions("app", [], NOW + 2)
    assert [f.id for f in await store.list_functions()] == ["other-x"]
    unchanged = await store.registry_version()
    assert await store.register_functions("app", [], NOW + 3) == unchanged


# --- ingest: events ---------------------------------------------------------------------------------------


async def test_ingest_stores_events_readable_by_id(store: Store) -> None:
    ev = event("order/created", {"id": 7, "items": ["a", "ü"]}, user={"email": "a@b.c"}, user_id="ext-1", v="2")
    result = await ingest(store, [ev], [])
    assert result.event_ids == [ev.internal_id]
    assert result.created_run_ids == result.skipped_run_ids == []
    assert await store.get_event(ev.internal_id) == ev
    assert await store.get_event(new_ulid()) is None


async def test_event_cursor_moves_with_each_event(store: Store) -> None:
    """The cursor is opaque (a sequence number, a snapshot); what matters is that it moves."""
    await ingest(store, [event()], [])
    first = await store.event_cursor()
    await ingest(store, [event(), event()], [])
    assert await store.event_cursor() != first


async def test_list_events_newest_first_filtered_by_name_and_limited(store: Store) -> None:
    a1, b1 = event("a"), event("b")
    await ingest(store, [a1, b1], [])
    a2 = event("a")
    await ingest(store, [a2], [])
    assert [e.internal_id for e in await store.list_events(None, 10)] == [a2.internal_id, b1.internal_id,
                                                                            a1.internal_id]  # fmt: skip
    assert [e.internal_id for e in await store.list_events("a", 10)] == [a2.internal_id, a1.internal_id]
    assert [e.internal_id for e in await store.list_events(None, 1)] == [a2.internal_id]
    assert await store.list_events("missing", 10) == []


async def test_an_ingest_planned_with_a_stale_registry_stores_nothing(store: Store) -> None:
    await store.register_functions(APP, [function("fn")], NOW)
    planned = await store.registry_version()
    await store.register_functions(APP, [function("fn"), function("other")], NOW)  # changed meanwhile
    ev = event()
    with pytest.raises(StaleRegistryError):
        await store.ingest(IngestBatch([ev], [new_run(ev)], registry_version=planned), MATCH, NOW)
    assert await store.get_event(ev.internal_id) is None
    assert await store.list_runs(RunFilter()) == []
    # planned with the current version (or unchecked), the same event goes in
    current = await store.registry_version()
    result = await store.ingest(IngestBatch([ev], [new_run(ev)], registry_version=current), MATCH, NOW)
    assert result.event_ids == [ev.internal_id] and len(result.created_run_ids) == 1


# --- ingest: runs -------------------------------------------------------------------------------------------


async def test_ingest_creates_queued_runs(store: Store) -> None:
    ev = event()
    r1, r2 = new_run(ev, FN, due_at=NOW + 5), new_run(ev, OTHER_FN)
    result = await ingest(store, [ev], [r1, r2])
    assert result.created_run_ids == [r1.id, r2.id]
    run = await store.get_run(r1.id)
    assert run is not None
    assert (run.function_id, run.event_id, run.status, run.attempt) == (FN, ev.internal_id, "queued", 0)
    assert (run.created_at, run.due_at, run.started_at, run.ended_at) == (NOW, NOW + 5, None, None)
    assert (run.lease_owner, run.output, run.error, run.idle_reason) == (None, None, None, None)


async def test_ingest_stores_batch_and_start_deadline(store: Store) -> None:
    e1, e2 = event(), event()
    run = new_run(e1, batch=(e1.internal_id, e2.internal_id), start_deadline=NOW + HOUR)
    await ingest(store, [e1, e2], [run])
    got = await store.get_run(run.id)
    assert got is not None
    assert got.batch == [e1.internal_id, e2.internal_id]
    assert got.start_deadline == NOW + HOUR


async def test_idempotency_key_skips_a_second_run_within_24h(store: Store) -> None:
    e1, e2 = event(), event()
    first, second = new_run(e1, key="k"), new_run(e2, key="k")
    assert (await ingest(store, [e1], [first])).created_run_ids == [first.id]
    result = await ingest(store, [e2], [second], NOW + DAY - 1)
    assert result.created_run_ids == []
    assert result.skipped_run_ids == [second.id]
    assert result.event_ids == [e2.internal_id]  # the event is stored all the same
    assert await store.get_event(e2.internal_id) is not None
    assert await store.get_run(second.id) is None


async def test_idempotency_key_is_per_function_and_per_key(store: Store) -> None:
    ev = event()
    runs = [new_run(ev, FN, key="k"), new_run(ev, OTHER_FN, key="k"), new_run(ev, FN, key="k2")]
    result = await ingest(store, [ev], runs)
    assert result.created_run_ids == [r.id for r in runs]
    assert result.skipped_run_ids == []


async def test_idempotency_key_held_within_one_batch(store: Store) -> None:
    e1, e2 = event(), event()
    first, second = new_run(e1, key="k"), new_run(e2, key="k")
    result = await ingest(store, [e1, e2], [first, second])
    assert (result.created_run_ids, result.skipped_run_ids) == ([first.id], [second.id])


async def test_idempotency_key_is_free_again_after_24h(store: Store) -> None:
    e1, e2, e3 = event(), event(), event()
    await ingest(store, [e1], [new_run(e1, key="k")])
    again = new_run(e2, key="k", created_at=NOW + DAY)
    result = await ingest(store, [e2], [again], NOW + DAY)
    assert result.created_run_ids == [again.id]
    # ... and the new run holds the key for another 24 hours
    late = new_run(e3, key="k")
    assert (await ingest(store, [e3], [late], NOW + DAY + HOUR)).skipped_run_ids == [late.id]


# --- ingest: cancellation ---------------------------------------------------------------------------------


async def test_matching_event_cancels_run_with_cancel_wait(store: Store) -> None:
    cancel = WaitSpec("task/deleted", "async.data.id == event.data.id", NOW + DAY)
    _, keep_id = await start(store, data={"id": 2}, cancel_on=(cancel,))
    _, run_id = await start(store, data={"id": 1}, cancel_on=(cancel,))
    deleting = event("task/deleted", {"id": 1}, received_at=NOW + SEC)
    result = await ingest(store, [deleting], [], NOW + SEC)
    assert result.cancelled_run_ids == [run_id]
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.ended_at, run.due_at, run.lease_owner) == ("cancelled", NOW + SEC, None, None)
    assert run.error is not None and run.error.get("name") == "Cancelled"
    kept = await store.get_run(keep_id)
    assert kept is not None and kept.status == "queued"
    assert [c.run.id for c in await store.claim_runs("w1", [FN], NOW + 2 * SEC, 10, LEASE)] == [keep_id]


async def test_cancel_wait_of_a_leased_running_run(store: Store) -> None:
    claimed = await start_and_claim(store, cancel_on=(WaitSpec("stop", None, NOW + DAY),))
    result = await ingest(store, [event("stop", received_at=NOW + 1)], [], NOW + 1)
    assert result.cancelled_run_ids == [claimed.run.id]
    run = await store.get_run(claimed.run.id)
    assert run is not None and (run.status, run.lease_owner, run.due_at) == ("cancelled", None, None)
    # the worker that held it learns on its next write
    outcome = await store.record_step(claimed.run.id, "w1", memo("s", 1), MATCH, NOW + 2)
    assert outcome.status == "cancelled"


async def test_cancel_wait_ignores_other_names_non_matching_and_expired(store: Store) -> None:
    cancel = WaitSpec("stop", "async.data.id == event.data.id", NOW + HOUR)
    _, run_id = await start(store, data={"id": 1}, cancel_on=(cancel,))
    result = await ingest(store, [event("other", {"id": 1}), event("stop", {"id": 2})], [], NOW + 1)
    assert result.cancelled_run_ids == []
    late = await ingest(store, [event("stop", {"id": 1}, received_at=NOW + HOUR)], [], NOW + HOUR)
    assert late.cancelled_run_ids == []  # the cancel wait expired
    run = await store.get_run(run_id)
    assert run is not None and run.status == "queued"


async def test_cancel_wait_does_not_outlive_the_run(store: Store) -> None:
    claimed = await start_and_claim(store, cancel_on=(WaitSpec("stop", None, NOW + DAY),))
    assert (await store.finish_run(claimed.run.id, "w1", RunFinish("completed", 1), MATCH, NOW + 1)).status == "ok"
    result = await ingest(store, [event("stop")], [], NOW + 2)
    assert result.cancelled_run_ids == []
    run = await store.get_run(claimed.run.id)
    assert run is not None and run.status == "completed"


async def test_trigger_event_does_not_cancel_its_own_run(store: Store) -> None:
    """cancel_on with the trigger's own event name ("cancel the previous run for this user")."""
    cancel = WaitSpec("user/updated", "async.data.user == event.data.user", NOW + DAY)
    _, old_id = await start(store, data={"user": "u1"}, name="user/updated", cancel_on=(cancel,))
    old = await store.get_run(old_id)
    assert old is not None and old.status == "queued"  # not cancelled by its own trigger
    ev = event("user/updated", {"user": "u1"}, received_at=NOW + 1)
    new = new_run(ev, created_at=NOW + 1, due_at=NOW + 1, cancel_on=(cancel,))
    result = await ingest(store, [ev], [new], NOW + 1)
    assert result.cancelled_run_ids == [old_id]  # the earlier run is cancelled by the newer event...
    run = await store.get_run(new.id)
    assert run is not None and run.status == "queued"  # ...but not the new run
    assert result.created_run_ids == [new.id]


# --- reads --------------------------------------------------------------------------------------------------


async def test_get_run_of_unknown_id_is_none(store: Store) -> None:
    assert await store.get_run(new_ulid()) is None
    assert await store.list_steps(new_ulid()) == []


async def test_list_runs_filters_and_pages_newest_first(store: Store) -> None:
    ids = sorted(new_ulid() for _ in range(5))  # ULID order = creation order
    e1, e2 = event(), event()
    runs = [new_run(e1 if i < 3 else e2, FN if i % 2 == 0 else OTHER_FN, run_id=rid) for i, rid in enumerate(ids)]
    await ingest(store, [e1, e2], runs)
    await store.finish_run(ids[1], None, RunFinish("completed"), MATCH, NOW + 1)

    async def listed(**kw: object) -> list[str]:
        return [r.id for r in await store.list_runs(RunFilter(**kw))]  # type: ignore[arg-type]

    newest_first = ids[::-1]
    assert await listed() == newest_first
    assert await listed(function_id=FN) == [ids[4], ids[2], ids[0]]
    assert await listed(status="completed") == [ids[1]]
    assert await listed(status="queued", function_id=OTHER_FN) == [ids[3]]
    assert await listed(event_id=e2.internal_id) == [ids[4], ids[3]]
    assert await listed(limit=2) == newest_first[:2]
    assert await listed(limit=2, before_id=ids[3]) == [ids[2], ids[1]]
    assert await listed(limit=2, before_id=ids[1]) == [ids[0]]
    assert await listed(before_id=ids[0]) == []
    assert await listed(status="failed") == []
