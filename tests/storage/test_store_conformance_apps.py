"""Store conformance: apps, run and event queries for the REST API, runs created directly (rerun), bulk
cancellations."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from stepline.core.ids import ulid_from
from stepline.storage.base import Store
from stepline.storage.records import (
    AppRecord,
    CancellationRecord,
    RunFilter,
    RunFinish,
    StepRecord,
    WaitSpec,
)

from .builders import (
    APP,
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
    sid,
    start,
    start_and_claim,
    update,
)

Reopen = Callable[[Store], AbstractAsyncContextManager[Store]]


def app(url: str = "http://localhost:3000/api/inngest", app_id: str | None = "shop", **kw: object) -> AppRecord:
    fields: dict[str, object] = {
        "url": url, "app_id": app_id, "sdk": "py:v0.5.19", "framework": "fast_api", "app_version": "1.2",
        "checksum": "ab" * 32, "synced_at": NOW, "error": None, "created_at": NOW, "updated_at": NOW,
    }  # fmt: skip
    fields.update(kw)
    return AppRecord(**fields)  # type: ignore[arg-type]


def rid(n: int) -> str:
    """Run ids that sort in the order of ``n`` (ULIDs made within one millisecond do not)."""
    return ulid_from(NOW + n, bytes(10))


# --- apps ---------------------------------------------------------------------------------------------------


async def test_fresh_store_has_schema_3_and_no_apps(store: Store) -> None:
    assert store.schema_version() >= 3
    assert await store.list_apps() == []
    assert await store.get_app("http://nowhere") is None
    assert await store.list_cancellations() == []


async def test_save_app_stores_every_field(store: Store, reopen: Reopen) -> None:
    a = app()
    await store.save_app(a)
    assert await store.get_app(a.url) == a
    assert await store.list_apps() == [a]
    async with reopen(store) as again:
        assert await again.get_app(a.url) == a


async def test_save_app_upserts_by_url_and_keeps_created_at(store: Store) -> None:
    await store.save_app(app())
    failed = app(error="connection refused", synced_at=None, checksum=None, created_at=NOW + 5, updated_at=NOW + 5)
    await store.save_app(failed)
    got = await store.get_app(failed.url)
    assert got == app(error="connection refused", synced_at=None, checksum=None, created_at=NOW, updated_at=NOW + 5)
    synced = app(app_id="shop-2", sdk="js:v4.24.0", framework="express", app_version=None, synced_at=NOW + 9,
                  created_at=NOW + 9, updated_at=NOW + 9)  # fmt: skip
    await store.save_app(synced)
    got = await store.get_app(synced.url)
    assert got is not None and got.error is None and (got.app_id, got.sdk, got.framework) == (
        "shop-2", "js:v4.24.0", "express")  # fmt: skip
    assert (got.app_version, got.synced_at, got.created_at, got.updated_at) == (None, NOW + 9, NOW, NOW + 9)
    assert len(await store.list_apps()) == 1


async def test_a_never_synced_app_has_only_its_url_and_times(store: Store) -> None:
    bare = AppRecord("http://127.0.0.1:8000/api/inngest", None, None, None, None, None, None, "not reachable", NOW,
                     NOW)  # fmt: skip
    await store.save_app(bare)
    assert await store.get_app(bare.url) == bare


async def test_list_apps_is_oldest_first(store: Store) -> None:
    await store.save_app(app("http://b", "b", created_at=NOW + 2))
    await store.save_app(app("http://a", "a", created_at=NOW + 3))
    await store.save_app(app("http://c", "c", created_at=NOW + 1))
    assert [a.url for a in await store.list_apps()] == ["http://c", "http://b", "http://a"]


async def test_delete_app_removes_its_functions_and_bumps_the_registry_version(store: Store) -> None:
    await store.save_app(app("http://shop", "shop"))
    await store.save_app(app("http://mail", "mail"))
    await store.register_functions("shop", [function("a", "shop"), function("b", "shop")], NOW)
    await store.register_functions("mail", [function("send", "mail")], NOW)
    version = await store.registry_version()
    await store.delete_app("http://shop")
    assert await store.get_app("http://shop") is None
    assert [a.url for a in await store.list_apps()] == ["http://mail"]
    assert [f.id for f in await store.list_functions()] == ["mail-send"]
    assert await store.registry_version() > version


async def test_delete_app_keeps_functions_still_served_from_another_url(store: Store) -> None:
    await store.save_app(app("http://old-host/api/inngest", "shop"))
    await store.save_app(app("http://new-host/api/inngest", "shop"))
    await store.register_functions("shop", [function("a", "shop")], NOW)
    version = await store.registry_version()
    await store.delete_app("http://old-host/api/inngest")
    assert [a.url for a in await store.list_apps()] == ["http://new-host/api/inngest"]
    assert [f.id for f in await store.list_functions()] == ["shop-a"]
    assert await store.registry_version() == version


async def test_delete_unknown_or_never_synced_app_changes_nothing_else(store: Store) -> None:
    await store.register_functions(APP, [function("fn")], NOW)
    await store.save_app(app("http://unsynced", None, synced_at=None))
    version = await store.registry_version()
    await store.delete_app("http://missing")
    await store.delete_app("http://unsynced")
    assert await store.list_apps() == []
    assert [f.id for f in await store.list_functions()] == [FN]
    assert await store.registry_version() == version


# --- list_runs filters and paging ---------------------------------------------------------------------------


async def _runs(store: Store, specs: list[tuple[str, int]]) -> list[str]:
    """Create one run per (function id, created_at offset) in order, with ids in the same order."""
    ids = []
    for i, (fn, offset) in enumerate(specs):
        ev = event(received_at=NOW + offset)
        run = new_run(ev, fn, created_at=NOW + offset, due_at=NOW + HOUR, run_id=rid(i))
        await ingest(store, [ev], [run], NOW + offset)
        ids.append(run.id)
    return ids


async def ids_of(store: Store, **kw: object) -> list[str]:
    return [r.id for r in await store.list_runs(RunFilter(**kw))]  # type: ignore[arg-type]


async def test_list_runs_filters_by_creation_time_half_open(store: Store) -> None:
    ids = await _runs(store, [(FN, 0), (FN, 10), (FN, 20), (FN, 30)])
    assert await ids_of(store, created_after=NOW + 10) == [ids[3], ids[2], ids[1]]
    assert await ids_of(store, created_before=NOW + 20) == [ids[1], ids[0]]
    assert await ids_of(store, created_after=NOW + 10, created_before=NOW + 30) == [ids[2], ids[1]]
    assert await ids_of(store, created_after=NOW + 31) == []
    assert await ids_of(store, function_id=FN, created_after=NOW + 5, created_before=NOW + 25) == [ids[2], ids[1]]


async def test_list_runs_filters_by_app(store: Store) -> None:
    await store.register_functions("a", [function("x", "a")], NOW)
    await store.register_functions("a-b", [function("x", "a-b")], NOW)
    # a-x: registered to app a; a-b-x: registered to app a-b (its id also starts with "a-");
    # a-gone: no longer registered, its id names app a; ab-x: another app whose id merely starts with "a".
    ids = await _runs(store, [("a-x", 0), ("a-b-x", 1), ("a-gone", 2), ("ab-x", 3)])
    assert await ids_of(store, app_id="a") == [ids[2], ids[0]]
    assert await ids_of(store, app_id="a-b") == [ids[1]]
    assert await ids_of(store, app_id="ab") == [ids[3]]
    assert await ids_of(store, app_id="missing") == []
    assert await ids_of(store, app_id="a", function_id="a-x") == [ids[0]]
    assert await ids_of(store, app_id="a", function_id="a-b-x") == []


async def test_list_runs_combines_filters_on_every_access_path(store: Store) -> None:
    ids = await _runs(store, [(FN, 0), (OTHER_FN, 1), (FN, 2)])
    cancel = RunFinish("cancelled", error={"name": "Cancelled", "message": "test"})
    await store.finish_run(ids[2], None, cancel, MATCH, NOW + 5)
    first = await store.get_run(ids[0])
    assert first is not None
    assert await ids_of(store, status="queued") == [ids[1], ids[0]]
    assert await ids_of(store, status="queued", function_id=FN) == [ids[0]]
    assert await ids_of(store, status="cancelled", app_id=APP) == [ids[2]]
    assert await ids_of(store, event_id=first.event_id) == [ids[0]]
    assert await ids_of(store, event_id=first.event_id, status="cancelled") == []
    assert await ids_of(store, event_id=first.event_id, function_id=OTHER_FN) == []
    assert await ids_of(store, event_id=first.event_id, created_after=NOW + 1) == []
    assert await ids_of(store, status="queued", created_before=NOW + 1) == [ids[0]]


@pytest.mark.parametrize(
    "flt",
    [{}, {"function_id": FN}, {"status": "queued"}, {"app_id": APP}, {"created_after": NOW}],
    ids=["all", "function", "status", "app", "created"],
)
async def test_list_runs_pages_by_id_on_every_access_path(store: Store, flt: dict[str, object]) -> None:
    ids = await _runs(store, [(FN, i) for i in range(7)])
    seen: list[str] = []
    before = None
    while True:
        page = await ids_of(store, limit=3, before_id=before, **flt)
        assert len(page) <= 3
        seen += page
        if len(page) < 3:
            break
        before = page[-1]
    assert seen == list(reversed(ids))


async def test_list_runs_by_event_pages_too(store: Store) -> None:
    ev = event()
    runs = [new_run(ev, FN if i % 2 else OTHER_FN, run_id=rid(i)) for i in range(5)]
    await ingest(store, [ev], runs)
    first = await ids_of(store, event_id=ev.internal_id, limit=2)
    rest = await ids_of(store, event_id=ev.internal_id, limit=10, before_id=first[-1])
    assert first + rest == [r.id for r in reversed(runs)]


# --- list_events paging -------------------------------------------------------------------------------------


async def test_list_events_pages_with_before(store: Store) -> None:
    evs = [event("a" if i % 2 else "b") for i in range(5)]
    for ev in evs:
        await ingest(store, [ev], [])
    newest_first = [e.internal_id for e in reversed(evs)]
    page = [e.internal_id for e in await store.list_events(None, 2)]
    assert page == newest_first[:2]
    page2 = [e.internal_id for e in await store.list_events(None, 2, before=page[-1])]
    assert page2 == newest_first[2:4]
    assert [e.internal_id for e in await store.list_events(None, 10, before=evs[0].internal_id)] == []
    named = [e.internal_id for e in await store.list_events("b", 10, before=evs[4].internal_id)]
    assert named == [evs[2].internal_id, evs[0].internal_id]
    assert await store.list_events(None, 10, before="01UNKNOWNCURSOR00000000000") == []
    assert await store.list_events("b", 10, before="01UNKNOWNCURSOR00000000000") == []


# --- create_run (rerun) -------------------------------------------------------------------------------------


async def _finished_run_with_steps(store: Store) -> tuple[str, list[StepRecord]]:
    c = await start_and_claim(store)
    await store.record_step(c.run.id, "w1", memo("one", {"n": 1}), MATCH, NOW + 1)
    await store.record_step(c.run.id, "w1", update("two", "failed", attempts=3,
                            error={"name": "ValueError", "message": "bad"}), MATCH, NOW + 2)  # fmt: skip
    await store.record_step(c.run.id, "w1", memo("three", [3]), MATCH, NOW + 3)
    await store.finish_run(c.run.id, "w1", RunFinish("completed", output="done"), MATCH, NOW + 4)
    return c.run.id, await store.list_steps(c.run.id)


async def test_create_run_copies_steps_as_the_memo_a_claim_returns(store: Store) -> None:
    original_id, steps = await _finished_run_with_steps(store)
    original = await store.get_run(original_id)
    assert original is not None
    trigger = await store.get_event(original.event_id)
    assert trigger is not None
    run = new_run(trigger, created_at=NOW + HOUR, due_at=NOW + HOUR)
    reason = {"kind": "rerun", "run_id": original_id}
    await store.create_run(run, steps[:2], NOW + HOUR, idle_reason=reason)
    created = await store.get_run(run.id)
    assert created is not None
    assert (created.status, created.function_id, created.event_id, created.attempt) == (
        "queued", FN, original.event_id, 0)  # fmt: skip
    assert (created.created_at, created.due_at, created.idle_reason, created.output) == (
        NOW + HOUR, NOW + HOUR, reason, None)  # fmt: skip
    copied = await store.list_steps(run.id)
    assert [(s.step_id, s.display_id, s.status, s.attempts, s.output, s.error, s.started_at, s.ended_at)
            for s in copied] == [(s.step_id, s.display_id, s.status, s.attempts, s.output, s.error, s.started_at,
                                  s.ended_at) for s in steps[:2]]  # fmt: skip
    assert all(s.run_id == run.id for s in copied)
    (claimed,) = await store.claim_runs("w2", [FN], NOW + HOUR, 10, LEASE)
    assert claimed.run.id == run.id and claimed.event.internal_id == original.event_id
    assert claimed.steps == {s.step_id: s for s in copied}
    assert set(claimed.steps) == {sid("one"), sid("two")}
    assert await store.list_steps(original_id) == steps  # the original is untouched


async def test_create_run_without_steps_is_a_fresh_queued_run(store: Store) -> None:
    ev, original_id = await start(store)
    run = new_run(ev, created_at=NOW + 1, due_at=NOW + 1)
    await store.create_run(run, [], NOW + 1)
    created = await store.get_run(run.id)
    assert created is not None and created.status == "queued" and created.idle_reason is None
    claimed = await store.claim_runs("w1", [FN], NOW + 1, 10, LEASE)
    assert {c.run.id for c in claimed} == {original_id, run.id}
    assert all(c.steps == {} for c in claimed)


async def test_create_run_with_steps_gets_them_even_without_an_idle_reason(store: Store) -> None:
    original_id, steps = await _finished_run_with_steps(store)
    original = await store.get_run(original_id)
    assert original is not None
    trigger = await store.get_event(original.event_id)
    assert trigger is not None
    run = new_run(trigger, created_at=NOW + 10, due_at=NOW + 10)
    await store.create_run(run, steps, NOW + 10)
    (claimed,) = await store.claim_runs("w1", [FN], NOW + 10, 10, LEASE)
    assert set(claimed.steps) == {sid("one"), sid("two"), sid("three")}


async def test_create_run_ignores_idempotency_keys(store: Store) -> None:
    ev = event()
    held = new_run(ev, key="event:k")
    await ingest(store, [ev], [held])
    again = new_run(ev, key="event:k")
    await store.create_run(again, [], NOW)
    assert await store.get_run(again.id) is not None
    skipped = new_run(ev, key="event:k")  # the key is still held by the first run
    assert (await ingest(store, [], [skipped])).skipped_run_ids == [skipped.id]


async def test_create_run_keeps_batch_and_registers_cancel_waits(store: Store) -> None:
    first, second = event(), event()
    await ingest(store, [first, second], [])
    run = new_run(first, batch=(first.internal_id, second.internal_id),
                  cancel_on=(WaitSpec("stop", None, NOW + HOUR),))  # fmt: skip
    await store.create_run(run, [], NOW)
    created = await store.get_run(run.id)
    assert created is not None and created.batch == [first.internal_id, second.internal_id]
    result = await ingest(store, [event("stop", received_at=NOW + SEC)], [], NOW + SEC)
    assert result.cancelled_run_ids == [run.id]


# --- cancellations ------------------------------------------------------------------------------------------


async def test_cancellations_are_stored_and_listed_newest_first(store: Store, reopen: Reopen) -> None:
    a = CancellationRecord(rid(1), APP, FN, None, NOW, None, 3, NOW + 1)
    b = CancellationRecord(rid(2), APP, OTHER_FN, NOW - HOUR, NOW, "event.data.id == 'x'", 0, NOW + 2)
    await store.save_cancellation(a)
    await store.save_cancellation(b)
    assert await store.list_cancellations() == [b, a]
    assert await store.list_cancellations(limit=1) == [b]
    async with reopen(store) as again:
        assert await again.list_cancellations() == [b, a]


# --- start_endpoint_run (durable endpoints) ------------------------------------------------------------------


async def test_start_endpoint_run_is_running_under_the_apps_lease_until_it_expires(store: Store) -> None:
    ev, _ = await start(store)
    run = new_run(ev, created_at=NOW, due_at=NOW)
    assert await store.start_endpoint_run(run, "endpoint:app", NOW + 10 * SEC, NOW) is True
    created = await store.get_run(run.id)
    assert created is not None
    assert (created.status, created.started_at, created.lease_owner) == ("running", NOW, "endpoint:app")
    # The app holds it: no worker claims it, and the app's checkpoints record steps under its lease.
    assert run.id not in {c.run.id for c in await store.claim_runs("w1", [FN], NOW + 1, 10, LEASE)}
    outcome = await store.record_step(run.id, "endpoint:app", memo("one", {"n": 1}), MATCH, NOW + 2)
    assert outcome.status == "ok"
    # An app that never ends it: once the lease expires a worker claims it, with the checkpointed step.
    (claimed,) = [c for c in await store.claim_runs("w2", [FN], NOW + 10 * SEC, 10, LEASE) if c.run.id == run.id]
    assert set(claimed.steps) == {sid("one")}


async def test_start_endpoint_run_refuses_an_id_that_exists(store: Store) -> None:
    ev, _ = await start(store)
    run = new_run(ev, created_at=NOW, due_at=NOW)
    assert await store.start_endpoint_run(run, "endpoint:a", NOW + SEC, NOW)
    assert await store.start_endpoint_run(run, "endpoint:b", NOW + SEC, NOW + 1) is False
    again = await store.get_run(run.id)
    assert again is not None and again.lease_owner == "endpoint:a"


async def test_an_endpoint_run_released_by_its_app_is_claimed_at_once(store: Store) -> None:
    ev, _ = await start(store)
    run = new_run(ev, created_at=NOW, due_at=NOW)
    await store.start_endpoint_run(run, "endpoint:a", NOW + HOUR, NOW)
    await store.release_run(run.id, "endpoint:a", NOW + 5)  # the app went async (a sleep): the server resumes it
    assert run.id in {c.run.id for c in await store.claim_runs("w1", [FN], NOW + 5, 10, LEASE)}
