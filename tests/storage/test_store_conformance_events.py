"""Store conformance: event searches (name patterns, internal events hidden unless asked for) and the runs each
event started, as the Events page and ``GET /v1/events`` read them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from stepline.storage.base import Store
from stepline.storage.records import EventRun

from .builders import FN, LEASE, OTHER_FN, event, function, ingest, new_run, start


async def _names(store: Store, pattern: str | None, **kw: object) -> list[str]:
    return [e.name for e in await store.find_events(pattern, 50, **kw)]  # type: ignore[arg-type]


async def test_internal_events_are_hidden_unless_asked_for(store: Store) -> None:
    for name in ("app/user.created", "stepline/function.finished", "inngest/scheduled.timer", "app/order.paid",
                 "steplinex/not-internal", "stepline/dashboard.action"):  # fmt: skip
        await ingest(store, [event(name)], [])
    assert await _names(store, None) == ["steplinex/not-internal", "app/order.paid", "app/user.created"]
    assert await _names(store, None, include_internal=True) == [
        "stepline/dashboard.action", "steplinex/not-internal", "app/order.paid", "inngest/scheduled.timer",
        "stepline/function.finished", "app/user.created"]  # fmt: skip
    # Naming internal events asks for them.
    assert await _names(store, "stepline/*") == ["stepline/dashboard.action", "stepline/function.finished"]
    assert await _names(store, "inngest/scheduled.timer") == ["inngest/scheduled.timer"]


async def test_name_patterns_match_prefixes_and_wildcards_literally_otherwise(store: Store) -> None:
    for name in ("app/user.created", "app/user.deleted", "billing/user.created", "app/order_paid", "app/order%x",
                 "App/user.created", "app/a?b", "app/[x]"):  # fmt: skip
        await ingest(store, [event(name)], [])
    expected = ["app/[x]", "app/a?b", "app/order%x", "app/order_paid", "app/user.deleted", "app/user.created"]
    assert await _names(store, "app/*") == expected  # case-sensitive: not App/
    assert await _names(store, "*/user.created") == ["App/user.created", "billing/user.created", "app/user.created"]
    assert await _names(store, "app/user.created") == ["app/user.created"]  # no wildcard: the exact name
    assert await _names(store, "app/order_*") == ["app/order_paid"]  # _ and % are not wildcards
    assert await _names(store, "app/order%*") == ["app/order%x"]
    assert await _names(store, "app/a?b") == ["app/a?b"] and await _names(store, "app/[x]") == ["app/[x]"]
    assert await _names(store, "nothing/*") == []
    for name in ("esc/back\\slash", "esc/backXslash", "esc/a?b", "esc/axb", "esc/[x]", "esc/x", "esc/_", "esc/%"):
        await ingest(store, [event(name)], [])
    assert await _names(store, "esc/back\\*") == ["esc/back\\slash"]  # a backslash is no escape
    assert await _names(store, "*\\slash") == ["esc/back\\slash"]
    assert await _names(store, "esc/a?*") == ["esc/a?b"] and await _names(store, "*/[x*") == ["esc/[x]", "app/[x]"]
    assert await _names(store, "esc/[*") == ["esc/[x]"] and await _names(store, "*]") == ["esc/[x]", "app/[x]"]
    assert await _names(store, "esc/_*") == ["esc/_"] and await _names(store, "esc/%*") == ["esc/%"]


async def test_pattern_pages_with_before_and_byte_budget(store: Store) -> None:
    evs = [event("app/x" if i % 2 else "other/y", {"blob": "z" * 1000}) for i in range(6)]
    for ev in evs:
        await ingest(store, [ev], [])
    xs = [e.internal_id for e in reversed(evs) if e.name == "app/x"]
    page = [e.internal_id for e in await store.find_events("app/*", 2)]
    assert page == xs[:2]
    assert [e.internal_id for e in await store.find_events("app/*", 2, before=page[-1])] == xs[2:]
    budget = [e.internal_id for e in await store.find_events(None, 10, max_bytes=1500)]
    assert budget == [evs[5].internal_id, evs[4].internal_id]


async def test_runs_of_events_in_one_read(store: Store) -> None:
    first, run_a = await start(store, FN)
    second = event("two")
    runs = [new_run(second, FN), new_run(second, OTHER_FN)]
    await ingest(store, [second], runs)
    lone = event("none")
    await ingest(store, [lone], [])
    await store.claim_runs("w1", [FN], 10**13, 10, LEASE)
    found = await store.runs_of_events([first.internal_id, second.internal_id, lone.internal_id])
    assert found[first.internal_id] == [EventRun(run_a, FN, "running")]
    assert sorted(found[second.internal_id], key=lambda r: r.function_id) == [
        EventRun(runs[0].id, FN, "running"), EventRun(runs[1].id, OTHER_FN, "queued")]  # fmt: skip
    assert lone.internal_id not in found
    assert await store.runs_of_events([]) == {}


# --- paused functions ---------------------------------------------------------------------------------------


async def test_pauses_are_kept_per_function_across_connections_and_re_registration(
    store: Store, reopen: Callable[[Store], AbstractAsyncContextManager[Store]]
) -> None:
    assert await store.paused_functions() == {}
    assert await store.pause_function(FN, 1000) is True
    assert await store.pause_function(FN, 2000) is False  # already paused: its pause time is kept
    async with reopen(store) as other:  # another process or node sees it
        assert await other.paused_functions() == {FN: 1000}
    await store.register_functions("app", [function("fn")], 3000)  # an app re-sync does not un-pause
    assert await store.paused_functions() == {FN: 1000}
    assert await store.resume_function(OTHER_FN, 4000) is False
    assert await store.resume_function(FN, 4000) is True
    assert await store.paused_functions() == {}
    assert await store.resume_function(FN, 5000) is False


async def test_resume_notifies_workers_of_the_held_runs(store: Store) -> None:
    seen: list[int | None] = []
    if not store.subscribe(seen.append):
        pytest.skip("this backend does not push notifications (its workers poll data_version)")
    try:
        await store.pause_function(FN, 1000)
        await store.resume_function(FN, 2000)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen and (seen[-1] is None or seen[-1] <= 2000)
    finally:
        store.unsubscribe(seen.append)


async def test_patterns_page_alike_whether_their_prefix_is_rare_or_common(store: Store) -> None:
    evs = [event("dense/y" if i % 700 == 0 else "dense/x") for i in range(2100)]  # more than any sorting cap
    evs.insert(1000, event("stepline/dense"))
    await ingest(store, evs, [])
    ys = [e.internal_id for e in reversed(evs) if e.name == "dense/y"]
    assert len(ys) == 3
    page = [e.internal_id for e in await store.find_events("dense/y*", 2)]  # few: read by name, then ordered
    assert page == ys[:2]
    assert [e.internal_id for e in await store.find_events("dense/y*", 2, page[-1])] == ys[2:]
    common = await store.find_events("dense/*", 5)  # many: read in order, filtered
    assert [e.internal_id for e in common] == [e.internal_id for e in reversed(evs)][:5]
    older = await store.find_events("dense/*", 3, evs[1001].internal_id)  # stepline/dense (evs[1000]) is no match
    assert [e.internal_id for e in older] == [e.internal_id for e in reversed(evs[:1000])][:3]
    assert [e.name for e in await store.find_events("stepline/d*", 5)] == ["stepline/dense"]
