"""Store conformance: the attempts of a step (the run page's timeline), written with the step's own writes,
the gate a run waited on before its start, and the runs a run invoked."""

from __future__ import annotations

from stepline.storage.base import Store
from stepline.storage.records import IngestBatch, RunFinish, RunWait, StepAttempt

from .builders import (
    DAY,
    FN,
    HOUR,
    MATCH,
    NOW,
    OTHER_FN,
    event,
    ingest,
    memo,
    new_run,
    sid,
    start_and_claim,
    update,  # fmt: skip
)
from .test_store_conformance_steps import suspend

E1 = {"name": "RuntimeError", "message": "declined once", "stack": "Traceback 1"}
E2 = {"name": "RuntimeError", "message": "declined twice", "stack": "Traceback 2"}


async def test_a_step_run_once_is_its_own_attempt_from_its_start(store: Store) -> None:
    c = await start_and_claim(store)
    outcome = await store.record_step(c.run.id, "w1", memo("once", 1, attempts=1, started_at=NOW + 2), MATCH,
                                      NOW + 7)  # fmt: skip
    assert outcome.step is not None and (outcome.step.started_at, outcome.step.ended_at) == (NOW + 2, NOW + 7)
    assert await store.list_step_attempts(c.run.id) == []  # no row of its own: the step is the attempt


async def test_each_attempt_of_a_retried_step_is_kept_in_order_with_its_error(store: Store) -> None:
    c = await start_and_claim(store)
    run_id = c.run.id
    first = update("charge", "retrying", attempts=1, error=E1, wake_at=NOW + 1000, started_at=NOW + 10)
    assert await suspend(store, run_id, first, now=NOW + 20) == "ok"
    claimed = await store.claim_runs("w1", [c.run.function_id], NOW + 1000, 10, 60_000)
    assert [x.run.id for x in claimed] == [run_id]
    # the same attempt reported again (a replayed write) is not a new one: the first report stays
    again = update("charge", "retrying", attempts=1, error=E2, wake_at=NOW + 1000, started_at=NOW + 11)
    assert await suspend(store, run_id, again, now=NOW + 1001) == "ok"
    await store.claim_runs("w1", [c.run.function_id], NOW + 1001, 10, 60_000)
    second = update("charge", "retrying", attempts=2, error=E2, wake_at=NOW + 3000, started_at=NOW + 1005)
    assert await suspend(store, run_id, second, now=NOW + 1040) == "ok"
    await store.claim_runs("w1", [c.run.function_id], NOW + 3000, 10, 60_000)
    done = memo("charge", "ok", attempts=3, started_at=NOW + 3002)
    await store.finish_run(run_id, "w1", RunFinish("completed", output=1, steps=[done]), MATCH, NOW + 3050)
    assert await store.list_step_attempts(run_id) == [
        StepAttempt(sid("charge"), 1, "failed", NOW + 10, NOW + 20, E1, NOW + 1000),
        StepAttempt(sid("charge"), 2, "failed", NOW + 1005, NOW + 1040, E2, NOW + 3000),
        StepAttempt(sid("charge"), 3, "completed", NOW + 3002, NOW + 3050, None, None),
    ]
    (step,) = await store.list_steps(run_id)
    assert (step.started_at, step.ended_at, step.attempts, step.status) == (NOW + 10, NOW + 3050, 3, "completed")


async def test_a_final_failure_after_retries_is_an_attempt(store: Store) -> None:
    c = await start_and_claim(store)
    first = update("s", "retrying", attempts=1, error=E1, wake_at=NOW + 100, started_at=NOW + 1)
    assert await suspend(store, c.run.id, first, now=NOW + 2) == "ok"
    await store.claim_runs("w1", [c.run.function_id], NOW + 100, 10, 60_000)
    last = update("s", "failed", attempts=2, error=E2, started_at=NOW + 101)
    await store.record_step(c.run.id, "w1", last, MATCH, NOW + 150)
    attempts = await store.list_step_attempts(c.run.id)
    assert [(a.attempt, a.status, a.error, a.retry_at) for a in attempts] == [
        (1, "failed", E1, NOW + 100),
        (2, "failed", E2, None),
    ]


async def test_attempts_are_pruned_with_their_run(store: Store) -> None:
    old = await start_and_claim(store)
    first = update("s", "retrying", attempts=1, error=E1, wake_at=NOW + 100, started_at=NOW + 1)
    assert await suspend(store, old.run.id, first, now=NOW + 2) == "ok"
    await store.claim_runs("w1", [old.run.function_id], NOW + 100, 10, 60_000)
    await store.finish_run(old.run.id, "w1", RunFinish("failed", error=E1), MATCH, NOW + 200)
    assert len(await store.list_step_attempts(old.run.id)) == 1
    result = await store.prune(NOW + 3 * DAY, NOW + DAY, {})
    assert result.runs == 1
    assert await store.list_step_attempts(old.run.id) == []


async def test_the_runs_a_run_invoked_are_listed_with_their_step(store: Store) -> None:
    c = await start_and_claim(store)
    child_event = event("stepline/function.invoked", {"_inngest": {"fn_id": OTHER_FN}}, received_at=NOW + 1)
    child = new_run(child_event, OTHER_FN, created_at=NOW + 1, due_at=NOW + 1, parent=(c.run.id, sid("call")))
    step = update("call", "invoking", "invoke", wake_at=NOW + HOUR, invoke=IngestBatch([child_event], [child]))
    assert await suspend(store, c.run.id, step, now=NOW + 1, reason={"kind": "invoking"}) == "ok"
    [listed] = await store.list_child_runs(c.run.id)
    assert (listed.run_id, listed.parent_step_id) == (child.id, sid("call"))
    assert await store.list_child_runs(child.id) == []


async def test_a_run_held_by_a_gate_keeps_what_held_it_from_its_creation_to_its_first_claim(store: Store) -> None:
    ev, queued_ev = event(data={"n": 1}, received_at=NOW), event(data={"n": 2}, received_at=NOW)
    await ingest(store, [ev, queued_ev], [])
    held = new_run(ev, created_at=NOW, due_at=NOW + 1500)
    await store.create_run(held, [], NOW, idle_reason={"kind": "paused", "message": "Function paused"})
    queued = new_run(queued_ev, created_at=NOW, due_at=NOW + 1500)
    await store.create_run(queued, [], NOW, idle_reason={"kind": "queued"})  # no gate
    assert await store.get_run_wait(held.id) is None, "not started yet"
    claimed = await store.claim_runs("w1", [FN], NOW + 1500, 10, 60_000)
    assert {c.run.id for c in claimed} == {held.id, queued.id}
    assert await store.get_run_wait(held.id) == RunWait("paused", NOW, NOW + 1500)
    assert (await store.get_run_wait(held.id)).duration_ms == 1500  # type: ignore[union-attr]
    assert await store.get_run_wait(queued.id) is None
    assert await store.list_run_waits([held.id, queued.id, "no-such-run"]) == {
        held.id: RunWait("paused", NOW, NOW + 1500)
    }
    assert await store.list_run_waits([]) == {}
    # a later claim of the same run (its lease lapsed) is no start: the wait stays as it was
    await store.claim_runs("w2", [FN], NOW + 70_000, 10, 60_000)
    assert await store.get_run_wait(held.id) == RunWait("paused", NOW, NOW + 1500)
    await store.finish_run(held.id, "w2", RunFinish("completed", output=1), MATCH, NOW + 80_000)
    await store.finish_run(queued.id, "w2", RunFinish("completed", output=1), MATCH, NOW + 80_000)
    assert (await store.prune(NOW + 3 * DAY, NOW + DAY, {})).runs == 2
    assert await store.get_run_wait(held.id) is None, "pruned with its run"
