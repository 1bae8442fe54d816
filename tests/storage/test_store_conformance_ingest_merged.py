"""Store conformance: ingests that reach the writer together are applied together (multi-row statements), with
the same outcome as one after the other: order, redelivered events, waits, cancellations, one bad ingest."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from stepline.storage.base import Store
from stepline.storage.records import IngestBatch, IngestResult, RunFilter, RunFinish, StepResultConflict, WaitSpec

from .builders import (
    DAY,
    EVENT,
    FN,
    HOUR,
    LEASE,
    MATCH,
    MIN,
    NOW,
    OTHER_FN,
    event,
    memo,
    new_run,
    start,
    start_and_claim,
    waiting,
)

T = TypeVar("T")


@asynccontextmanager
async def held_writers(store: Store) -> AsyncIterator[None]:
    """Every writer of the store busy until the block ends: the writes queued meanwhile form one batch."""
    writer: Any = store.writer  # both SQL stores write through group-commit writers
    writers = getattr(writer, "writers", [writer])
    release = threading.Event()
    started = [threading.Event() for _ in writers]

    def hold(i: int) -> Any:
        def op(conn: Any) -> None:
            started[i].set()
            release.wait(10)

        return op

    futures = [w.submit(hold(i)) for i, w in enumerate(writers)]
    for s in started:
        await asyncio.to_thread(s.wait, 10)
    try:
        yield
    finally:
        release.set()
        for f in futures:
            await asyncio.wrap_future(f)


async def together(store: Store, *writes: Awaitable[T]) -> list[T | BaseException]:
    tasks = [asyncio.ensure_future(w) for w in writes]
    async with held_writers(store):
        await asyncio.sleep(0.05)  # every write is queued behind the held ones
    return await asyncio.gather(*tasks, return_exceptions=True)


def ingest_op(store: Store, events: list[Any], runs: list[Any], now: int = NOW) -> Awaitable[IngestResult]:
    return store.ingest(IngestBatch(events, runs), MATCH, now)


async def test_many_ingests_in_one_batch_store_every_event_and_run_in_order(store: Store) -> None:
    events = [event(EVENT, {"i": i}, received_at=NOW + i) for i in range(30)]
    runs = [new_run(ev, created_at=NOW, due_at=NOW + i) for i, ev in enumerate(events)]
    results = await together(store, *(ingest_op(store, [ev], [run]) for ev, run in zip(events, runs, strict=True)))
    for ev, run, result in zip(events, runs, results, strict=True):
        assert isinstance(result, IngestResult)
        assert (result.event_ids, result.created_run_ids) == ([ev.internal_id], [run.id])
    # (a store with several writer connections applies their batches in parallel: order holds within one)
    listed = await store.list_events(EVENT, 100)
    assert sorted(e.internal_id for e in listed) == sorted(e.internal_id for e in events)
    claimed = await store.claim_runs("w1", [FN], NOW + HOUR, 100, LEASE)
    by_due = sorted(claimed, key=lambda c: c.run.due_at or 0)
    assert [c.run.id for c in by_due] == [r.id for r in runs]  # each with its own due time and event
    assert [c.event.data for c in by_due] == [{"i": i} for i in range(30)]


async def test_an_event_sent_twice_in_one_batch_is_stored_once_and_matches_a_wait_once(store: Store) -> None:
    waiter = await start_and_claim(store, name="start")
    since = await store.event_cursor()
    await store.suspend_run(waiter.run.id, "w1", [waiting("w", "paid", since=since, timeout_at=NOW + HOUR)],
                            {"kind": "waiting"}, MATCH, NOW)  # fmt: skip
    paid = event("paid", {"n": 1}, received_at=NOW + MIN)
    again = event("paid", {"n": 2}, received_at=NOW + MIN)
    first, second, third = await together(
        store, ingest_op(store, [paid], [], NOW + MIN), ingest_op(store, [paid], [], NOW + MIN),
        ingest_op(store, [again], [], NOW + MIN),
    )  # fmt: skip
    assert isinstance(first, IngestResult) and isinstance(second, IngestResult) and isinstance(third, IngestResult)
    # One of the three resolved the wait; the redelivery never matches after the original has.
    woken = [r.woken_run_ids for r in (first, second, third)]
    assert sorted(woken) == [[], [], [waiter.run.id]]
    assert sorted(e.internal_id for e in await store.list_events("paid", 10)) == sorted(
        [again.internal_id, paid.internal_id]
    )
    (step,) = await store.list_steps(waiter.run.id)
    assert step.status == "completed"
    assert step.output == (again if woken[2] else paid).as_dict()


async def test_a_cancelling_event_in_a_batch_cancels_only_runs_that_existed_before_it(store: Store) -> None:
    stop = WaitSpec("stop", None, NOW + DAY)
    _, old_id = await start(store, cancel_on=(stop,))
    ev = event(EVENT)
    fresh = new_run(ev, cancel_on=(stop,))
    created, cancelling = await together(
        store, ingest_op(store, [ev], [fresh], NOW + 1), ingest_op(store, [event("stop")], [], NOW + 2)
    )
    assert isinstance(created, IngestResult) and isinstance(cancelling, IngestResult)
    assert cancelling.cancelled_run_ids == [old_id]
    statuses = {r.id: r.status for r in await store.list_runs(RunFilter())}
    assert statuses == {old_id: "cancelled", fresh.id: "queued"}
    # the new run's cancel wait is in place for the next one
    assert (await ingest_op(store, [event("stop")], [], NOW + 3)).cancelled_run_ids == [fresh.id]


async def test_one_bad_ingest_fails_alone(store: Store) -> None:
    good = [event(EVENT, {"i": i}) for i in range(5)]
    bad = dataclasses.replace(event(EVENT, {"i": "bad"}), ts=2**70)  # no database integer holds it
    writes = [ingest_op(store, [ev], [new_run(ev)]) for ev in good[:3]]
    writes.append(ingest_op(store, [bad], [new_run(bad)]))
    writes += [ingest_op(store, [ev], [new_run(ev)]) for ev in good[3:]]
    results = await together(store, *writes)
    assert [isinstance(r, BaseException) for r in results] == [False, False, False, True, False, False]
    assert sorted(e.internal_id for e in await store.list_events(EVENT, 10)) == sorted(e.internal_id for e in good)
    assert len(await store.list_runs(RunFilter())) == 5


@pytest.mark.parametrize("size", [1, 2, 50])
async def test_runs_with_keys_and_batches_of_events_keep_their_columns(store: Store, size: int) -> None:
    evs = [event(EVENT, {"i": i}) for i in range(size)]
    runs = [new_run(ev, batch=(ev.internal_id,), start_deadline=NOW + HOUR if i % 2 else None)
            for i, ev in enumerate(evs)]  # fmt: skip
    result = await ingest_op(store, evs, runs)
    assert result.created_run_ids == [r.id for r in runs]
    claimed = await store.claim_runs("w1", [FN], NOW, 100, LEASE)
    got = {c.run.id: c for c in claimed}
    for i, run in enumerate(runs):
        rec = got[run.id].run
        assert (rec.event_id, rec.batch, rec.start_deadline, rec.status) == (
            run.event_id, [run.event_id], NOW + HOUR if i % 2 else None, "running")  # fmt: skip


# --- run ends applied together -------------------------------------------------------------------------------


async def test_many_run_ends_in_one_batch_each_get_their_own_outcome_and_follow_up(store: Store) -> None:
    evs = [event(EVENT, {"i": i}) for i in range(8)]
    await ingest_op(store, evs, [new_run(ev) for ev in evs])
    claimed = await store.claim_runs("w1", [FN], NOW, 100, LEASE)
    assert len(claimed) == 8
    ids = sorted(c.run.id for c in claimed)
    # run 6: cancelled before its end arrives; run 7: its lease passed to another worker
    await store.finish_run(ids[6], None, RunFinish("cancelled"), MATCH, NOW + 1)
    await store.release_run(ids[7], "w1", NOW)
    assert [c.run.id for c in await store.claim_runs("w2", [FN], NOW + 1, 10, LEASE)] == [ids[7]]
    # a run cancelled by the end event of run 0 (cancel_on its function.finished)
    _, victim = await start(store, OTHER_FN, cancel_on=(WaitSpec("fn/finished", "async.data.i == 0", NOW + DAY),))
    finished = {i: event("fn/finished", {"i": i}, received_at=NOW + 2) for i in range(8)}
    then = {i: new_run(finished[i], OTHER_FN, created_at=NOW + 2, due_at=NOW + 2) for i in range(8)}
    ends = [
        store.finish_run(run_id, "w1", RunFinish("completed", i, follow_up=IngestBatch([finished[i]], [then[i]])),
                         MATCH, NOW + 2)
        for i, run_id in enumerate(ids)
    ]  # fmt: skip
    outcomes = await together(store, *ends)
    assert [getattr(o, "status", o) for o in outcomes] == ["ok"] * 6 + ["cancelled", "lost"]
    assert [getattr(o, "cancelled_run_ids", o) for o in outcomes] == [(victim,)] + [()] * 7
    runs = {r.id: r for r in await store.list_runs(RunFilter())}
    assert [(runs[i].status, runs[i].output) for i in ids[:6]] == [("completed", n) for n in range(6)]
    assert (runs[ids[6]].status, runs[ids[7]].status, runs[victim].status) == ("cancelled", "running", "cancelled")
    # only the ends that happened stored their events and started their runs
    stored = {e.internal_id for e in await store.list_events("fn/finished", 20)}
    assert stored == {finished[i].internal_id for i in range(6)}
    started = await store.claim_runs("w3", [OTHER_FN], NOW + 3, 20, LEASE)
    assert sorted(c.run.id for c in started) == sorted(then[i].id for i in range(6))


async def test_run_ends_in_one_batch_store_their_held_back_results_and_a_conflict_fails_alone(store: Store) -> None:
    evs = [event(EVENT, {"i": i}) for i in range(6)]
    await ingest_op(store, evs, [new_run(ev) for ev in evs])
    ids = sorted(c.run.id for c in await store.claim_runs("w1", [FN], NOW, 100, LEASE))
    # a worker that lost the lease recorded step "s" of run 4 with another result, and of run 5 with the same one
    await store.record_step(ids[4], "stale", memo("s", "theirs"), MATCH, NOW + 1)
    await store.record_step(ids[5], "stale", memo("s", 5), MATCH, NOW + 1)
    ends = [
        store.finish_run(run_id, "w1", RunFinish("completed", i, steps=[memo("s", i)]), MATCH, NOW + 2)
        for i, run_id in enumerate(ids)
    ]
    outcomes = await together(store, *ends)
    assert isinstance(outcomes[4], StepResultConflict)
    assert [getattr(o, "status", None) for i, o in enumerate(outcomes) if i != 4] == ["ok"] * 5
    runs = {r.id: r for r in await store.list_runs(RunFilter())}
    assert [runs[i].status for i in ids] == ["completed"] * 4 + ["running", "completed"]  # run 4: not ended
    for i, run_id in enumerate(ids):
        (step,) = await store.list_steps(run_id)
        assert (step.display_id, step.status, step.output) == ("s", "completed", "theirs" if i == 4 else i)
