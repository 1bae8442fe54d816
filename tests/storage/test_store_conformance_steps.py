"""Store conformance: recording steps, suspending on sleeps / waits / invokes, finishing runs, step order."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from stepline.core.ids import new_ulid
from stepline.storage.base import Store
from stepline.storage.records import IngestBatch, RunFinish, RunRecord, SignalConflict, StepUpdate

from .builders import (
    FN,
    HOUR,
    LEASE,
    MATCH,
    MIN,
    NOW,
    OTHER_FN,
    event,
    ingest,
    memo,
    new_run,
    sid,
    sleeping,
    start_and_claim,
    update,
    waiting,
)

Reopen = Callable[[Store], AbstractAsyncContextManager[Store]]


async def run_of(store: Store, run_id: str) -> RunRecord:
    run = await store.get_run(run_id)
    assert run is not None
    return run


async def suspend(store: Store, run_id: str, *pending: StepUpdate, now: int = NOW + 1, owner: str = "w1",
                  reason: dict[str, Any] | None = None, max_due_at: int | None = None) -> str:  # fmt: skip
    outcome = await store.suspend_run(run_id, owner, list(pending), reason or {"kind": "test"}, MATCH, now,
                                      max_due_at=max_due_at)  # fmt: skip
    return outcome.status


# --- record_step ---------------------------------------------------------------------------------------------


async def test_record_step_stores_a_memo(store: Store) -> None:
    c = await start_and_claim(store)
    outcome = await store.record_step(c.run.id, "w1", memo("fetch", {"rows": [1, "ü", None]}, attempts=2),
                                      MATCH, NOW + 5)  # fmt: skip
    assert outcome.status == "ok"
    step = outcome.step
    assert step is not None
    assert (step.run_id, step.step_id, step.display_id, step.kind) == (c.run.id, sid("fetch"), "fetch", "run")
    assert (step.status, step.attempts, step.output, step.error) == ("completed", 2, {"rows": [1, "ü", None]}, None)
    assert (step.started_at, step.ended_at, step.wake_at) == (NOW + 5, NOW + 5, None)
    assert step.is_memo
    assert await store.list_steps(c.run.id) == [step]


async def test_record_step_stores_a_failed_memo_with_its_error(store: Store) -> None:
    c = await start_and_claim(store)
    error = {"name": "ValueError", "message": "bad", "stack": "Traceback..."}
    outcome = await store.record_step(c.run.id, "w1", update("s", "failed", attempts=4, error=error), MATCH, NOW)
    assert outcome.status == "ok" and outcome.step is not None
    assert (outcome.step.status, outcome.step.error, outcome.step.output) == ("failed", error, None)


async def test_memos_are_first_write_wins(store: Store) -> None:
    c = await start_and_claim(store)
    await store.record_step(c.run.id, "w1", memo("s", "first"), MATCH, NOW + 1)
    second = await store.record_step(c.run.id, "w1", memo("s", "second"), MATCH, NOW + 2)
    assert second.status == "ok"
    assert second.step is not None and (second.step.output, second.step.ended_at) == ("first", NOW + 1)
    failed = await store.record_step(c.run.id, "w1", update("s", "failed", error={"name": "E"}), MATCH, NOW + 3)
    assert failed.step is not None and (failed.step.status, failed.step.output) == ("completed", "first")
    (stored,) = await store.list_steps(c.run.id)
    assert (stored.status, stored.output, stored.error) == ("completed", "first", None)


async def test_a_pending_step_is_replaced_by_its_memo(store: Store) -> None:
    c = await start_and_claim(store)
    retry_at = NOW + MIN
    error = {"name": "Error", "message": "flaky"}
    await suspend(store, c.run.id, update("s", "retrying", attempts=1, error=error, wake_at=retry_at))
    (pending,) = await store.list_steps(c.run.id)
    assert (pending.status, pending.attempts, pending.wake_at, pending.is_memo) == ("retrying", 1, retry_at, False)
    (again,) = await store.claim_runs("w1", [FN], retry_at, 10, LEASE)
    assert again.steps[sid("s")].status == "retrying"
    outcome = await store.record_step(c.run.id, "w1", memo("s", 42, attempts=2), MATCH, retry_at + 1)
    assert outcome.step is not None
    assert (outcome.step.status, outcome.step.output, outcome.step.attempts) == ("completed", 42, 2)
    assert (outcome.step.wake_at, outcome.step.ended_at) == (None, retry_at + 1)
    assert len(await store.list_steps(c.run.id)) == 1


async def test_record_step_on_an_ended_or_unknown_run_reports_cancelled(store: Store) -> None:
    c = await start_and_claim(store)
    await store.finish_run(c.run.id, None, RunFinish("cancelled"), MATCH, NOW + 1)
    outcome = await store.record_step(c.run.id, "w1", memo("s", 1), MATCH, NOW + 2)
    assert outcome.status == "cancelled"
    assert await store.list_steps(c.run.id) == []
    assert (await store.record_step(new_ulid(), "w1", memo("s", 1), MATCH, NOW)).status == "cancelled"


async def test_record_step_by_a_lost_owner_still_stores_a_first_memo(store: Store) -> None:
    c = await start_and_claim(store, "w1")
    await store.claim_runs("w2", [FN], NOW + LEASE + 1, 10, LEASE)  # w2 took over
    outcome = await store.record_step(c.run.id, "w1", memo("s", "from w1"), MATCH, NOW + LEASE + 2)
    assert outcome.status == "lost"
    assert outcome.step is not None and outcome.step.output == "from w1"
    # w2 executing the same step finds w1's result: first write wins, whoever wrote it
    mine = await store.record_step(c.run.id, "w2", memo("s", "from w2"), MATCH, NOW + LEASE + 3)
    assert mine.status == "ok"
    assert mine.step is not None and mine.step.output == "from w1"
    # and a later memo by the lost owner does not replace w2's
    await store.record_step(c.run.id, "w2", memo("t", "from w2"), MATCH, NOW + LEASE + 4)
    late = await store.record_step(c.run.id, "w1", memo("t", "from w1"), MATCH, NOW + LEASE + 5)
    assert late.status == "lost" and late.step is not None and late.step.output == "from w2"
    run = await run_of(store, c.run.id)
    assert run.lease_owner == "w2"


async def test_record_step_by_a_lost_owner_does_not_write_pending_states(store: Store) -> None:
    c = await start_and_claim(store, "w1")
    await store.claim_runs("w2", [FN], NOW + LEASE + 1, 10, LEASE)
    wake = NOW + HOUR
    outcome = await store.record_step(c.run.id, "w1", sleeping("nap", wake), MATCH, NOW + LEASE + 2)
    assert outcome.status == "lost"
    assert await store.list_steps(c.run.id) == []


async def test_emitted_events_are_stored_with_the_memo_and_start_runs(store: Store) -> None:
    c = await start_and_claim(store)
    sent = event("order/shipped", {"id": 9}, received_at=NOW + 1)
    child = new_run(sent, OTHER_FN, created_at=NOW + 1, due_at=NOW + 1)
    ids = [sent.internal_id]
    outcome = await store.record_step(c.run.id, "w1", memo("send", ids, kind="send_event",
                                      emit=IngestBatch([sent], [child])), MATCH, NOW + 1)  # fmt: skip
    assert outcome.status == "ok" and outcome.step is not None and outcome.step.output == ids
    assert await store.get_event(sent.internal_id) == sent
    (claimed,) = await store.claim_runs("w2", [OTHER_FN], NOW + 1, 10, LEASE)
    assert claimed.run.id == child.id and claimed.event == sent


async def test_a_duplicate_send_event_memo_does_not_emit_again(store: Store) -> None:
    c = await start_and_claim(store)
    first, again = event("e", received_at=NOW + 1), event("e", received_at=NOW + 2)
    await store.record_step(c.run.id, "w1", memo("send", [first.internal_id], kind="send_event",
                            emit=IngestBatch([first], [new_run(first, OTHER_FN)])), MATCH, NOW + 1)  # fmt: skip
    dup = await store.record_step(c.run.id, "w1", memo("send", [again.internal_id], kind="send_event",
                                  emit=IngestBatch([again], [new_run(again, OTHER_FN)])), MATCH, NOW + 2)  # fmt: skip
    assert dup.step is not None and dup.step.output == [first.internal_id]
    assert [e.internal_id for e in await store.list_events("e", 10)] == [first.internal_id]
    assert len(await store.claim_runs("w2", [OTHER_FN], NOW + 5, 10, LEASE)) == 1


async def test_emitted_events_resolve_waits_of_other_runs(store: Store) -> None:
    waiter = await start_and_claim(store, "w1", OTHER_FN)
    since = await store.event_cursor()
    await suspend(store, waiter.run.id, waiting("w", "ping", since=since, timeout_at=NOW + HOUR))
    sender = await start_and_claim(store, "w2", FN, now=NOW + 2)
    ping = event("ping", received_at=NOW + 3)
    await store.record_step(sender.run.id, "w2", memo("send", [ping.internal_id], emit=IngestBatch([ping], [])),
                            MATCH, NOW + 3)  # fmt: skip
    (step,) = await store.list_steps(waiter.run.id)
    assert (step.status, step.output) == ("completed", ping.as_dict())
    assert (await run_of(store, waiter.run.id)).due_at == NOW + 3


# --- suspend_run: sleeping ------------------------------------------------------------------------------------


async def test_suspend_on_a_sleep_schedules_the_wake_and_drops_the_lease(store: Store) -> None:
    c = await start_and_claim(store)
    wake = NOW + HOUR
    reason = {"kind": "sleeping", "step": "nap", "until": wake}
    assert await suspend(store, c.run.id, sleeping("nap", wake), reason=reason) == "ok"
    run = await run_of(store, c.run.id)
    assert (run.status, run.due_at, run.idle_reason) == ("running", wake, reason)
    assert (run.lease_owner, run.lease_expires_at) == (None, None)
    (step,) = await store.list_steps(c.run.id)
    assert (step.display_id, step.kind, step.status, step.wake_at, step.ended_at) == ("nap", "sleep", "sleeping",
                                                                                        wake, None)  # fmt: skip
    assert await store.claim_runs("w2", [FN], wake - 1, 10, LEASE) == []
    assert len(await store.claim_runs("w2", [FN], wake, 10, LEASE)) == 1


async def test_suspend_is_due_at_the_earliest_wake_capped_by_max_due_at(store: Store) -> None:
    c = await start_and_claim(store)
    await suspend(store, c.run.id, sleeping("long", NOW + 2 * HOUR), sleeping("short", NOW + HOUR))
    assert (await run_of(store, c.run.id)).due_at == NOW + HOUR

    assert len(await store.claim_runs("w1", [FN], NOW + HOUR, 10, LEASE)) == 1
    await suspend(store, c.run.id, sleeping("long", NOW + 2 * HOUR), now=NOW + HOUR, max_due_at=NOW + HOUR + MIN)
    assert (await run_of(store, c.run.id)).due_at == NOW + HOUR + MIN  # e.g. the run's finish timeout

    assert len(await store.claim_runs("w1", [FN], NOW + HOUR + MIN, 10, LEASE)) == 1
    await suspend(store, c.run.id, sleeping("long", NOW + 2 * HOUR), now=NOW + HOUR + MIN, max_due_at=NOW + 3 * HOUR)
    assert (await run_of(store, c.run.id)).due_at == NOW + 2 * HOUR  # the cap only ever brings it forward


async def test_suspend_by_a_non_owner_or_on_an_ended_run_changes_nothing(store: Store) -> None:
    c = await start_and_claim(store, "w1")
    assert await suspend(store, c.run.id, sleeping("nap", NOW + HOUR), owner="w2") == "lost"
    assert await store.list_steps(c.run.id) == []
    run = await run_of(store, c.run.id)
    assert (run.lease_owner, run.due_at) == ("w1", NOW)
    await store.finish_run(c.run.id, None, RunFinish("cancelled"), MATCH, NOW + 2)
    assert await suspend(store, c.run.id, sleeping("nap", NOW + HOUR), now=NOW + 3) == "cancelled"
    assert await store.list_steps(c.run.id) == []
    assert (await run_of(store, c.run.id)).due_at is None


async def test_suspend_with_a_step_already_resolved_resumes_at_once(store: Store) -> None:
    c = await start_and_claim(store)
    await store.record_step(c.run.id, "w1", memo("w", {"done": True}, kind="wait_for_event"), MATCH, NOW + 1)
    # a stale worker view still thinks the step is pending
    await suspend(store, c.run.id, update("w", "waiting", "wait_for_event", wake_at=NOW + HOUR), now=NOW + 2)
    run = await run_of(store, c.run.id)
    assert run.due_at == NOW + 2
    (step,) = await store.list_steps(c.run.id)
    assert (step.status, step.output) == ("completed", {"done": True})


# --- suspend_run: waiting for events ---------------------------------------------------------------------------


async def waiting_run(store: Store, expression: str | None = None, *, name: str = "approval",
                      timeout_at: int = NOW + HOUR) -> tuple[str, int]:  # fmt: skip
    """A run triggered by {"id": 1} suspended on waiting for ``name``; returns (run id, since)."""
    c = await start_and_claim(store, data={"id": 1})
    since = await store.event_cursor()
    reason = {"kind": "waiting", "step": "w", "event": name, "until": timeout_at}
    status = await suspend(store, c.run.id, waiting("w", name, expression, since=since, timeout_at=timeout_at),
                           reason=reason)  # fmt: skip
    assert status == "ok"
    run = await run_of(store, c.run.id)
    assert (run.due_at, run.idle_reason, run.lease_owner) == (timeout_at, reason, None)
    return c.run.id, since


async def test_a_matching_event_completes_the_wait_and_wakes_the_run(store: Store) -> None:
    run_id, _ = await waiting_run(store, "async.data.id == event.data.id && async.data.ok")
    ev = event("approval", {"id": 1, "ok": True}, received_at=NOW + MIN)
    result = await ingest(store, [ev], [], NOW + MIN)
    assert result.woken_run_ids == [run_id]
    (step,) = await store.list_steps(run_id)
    assert (step.status, step.output, step.ended_at, step.wake_at) == ("completed", ev.as_dict(), NOW + MIN, None)
    run = await run_of(store, run_id)
    assert (run.due_at, run.idle_reason, run.status) == (NOW + MIN, None, "running")
    (resumed,) = await store.claim_runs("w2", [FN], NOW + MIN, 10, LEASE)
    assert resumed.steps[sid("w")].output == ev.as_dict()
    # the wait is used up: another matching event does nothing
    assert (await ingest(store, [event("approval", {"id": 1, "ok": True})], [], NOW + 2 * MIN)).woken_run_ids == []


async def test_a_non_matching_event_leaves_the_run_waiting(store: Store) -> None:
    run_id, _ = await waiting_run(store, "async.data.id == event.data.id")
    others = [event("approval", {"id": 2}), event("other", {"id": 1}), event("approval", {})]
    result = await ingest(store, others, [], NOW + MIN)
    assert result.woken_run_ids == []
    (step,) = await store.list_steps(run_id)
    assert (step.status, step.output) == ("waiting", None)
    assert (await run_of(store, run_id)).due_at == NOW + HOUR
    # still listening
    assert (await ingest(store, [event("approval", {"id": 1})], [], NOW + 2 * MIN)).woken_run_ids == [run_id]


async def test_a_wait_without_expression_matches_any_event_of_that_name(store: Store) -> None:
    run_id, _ = await waiting_run(store)
    assert (await ingest(store, [event("approval", {"anything": 1})], [], NOW + MIN)).woken_run_ids == [run_id]


async def test_a_wait_stops_matching_once_it_times_out(store: Store) -> None:
    run_id, _ = await waiting_run(store, timeout_at=NOW + HOUR)
    result = await ingest(store, [event("approval", received_at=NOW + HOUR)], [], NOW + HOUR)
    assert result.woken_run_ids == []
    (step,) = await store.list_steps(run_id)
    assert step.status == "waiting"
    assert len(await store.claim_runs("w2", [FN], NOW + HOUR, 10, LEASE)) == 1  # due for its timeout


async def test_one_event_wakes_every_matching_run(store: Store) -> None:
    first, _ = await waiting_run(store)
    second, _ = await waiting_run(store, "async.data.id == event.data.id")
    result = await ingest(store, [event("approval", {"id": 1})], [], NOW + MIN)
    assert sorted(result.woken_run_ids) == sorted([first, second])


async def test_an_event_stored_after_since_is_found_at_suspend_time(store: Store) -> None:
    c = await start_and_claim(store, data={"id": 1})
    since = await store.event_cursor()
    # the event arrives while the run is still executing, before its suspend is written
    early = event("approval", {"id": 1}, received_at=NOW + 1)
    assert (await ingest(store, [early], [], NOW + 1)).woken_run_ids == []
    expr = "async.data.id == event.data.id"
    status = await suspend(store, c.run.id, waiting("w", "approval", expr, since=since, timeout_at=NOW + HOUR),
                           now=NOW + 2, reason={"kind": "waiting"})  # fmt: skip
    assert status == "ok"
    (step,) = await store.list_steps(c.run.id)
    assert (step.status, step.output) == ("completed", early.as_dict())
    run = await run_of(store, c.run.id)
    assert (run.due_at, run.idle_reason, run.lease_owner) == (NOW + 2, None, None)
    # nothing is left waiting
    assert (await ingest(store, [event("approval", {"id": 1})], [], NOW + 3)).woken_run_ids == []


async def test_an_event_stored_before_since_is_not_matched(store: Store) -> None:
    c = await start_and_claim(store, data={"id": 1})
    old = event("approval", {"id": 1})
    await ingest(store, [old], [], NOW + 1)
    since = await store.event_cursor()  # the step starts waiting after that event
    await suspend(store, c.run.id, waiting("w", "approval", since=since, timeout_at=NOW + HOUR), now=NOW + 2)
    (step,) = await store.list_steps(c.run.id)
    assert step.status == "waiting"
    assert (await run_of(store, c.run.id)).due_at == NOW + HOUR


async def test_a_pre_suspend_event_must_match_the_expression(store: Store) -> None:
    c = await start_and_claim(store, data={"id": 1})
    since = await store.event_cursor()
    await ingest(store, [event("approval", {"id": 2})], [], NOW + 1)
    await suspend(store, c.run.id, waiting("w", "approval", "async.data.id == event.data.id", since=since,
                                           timeout_at=NOW + HOUR), now=NOW + 2)  # fmt: skip
    (step,) = await store.list_steps(c.run.id)
    assert step.status == "waiting"


async def test_a_finished_run_stops_waiting(store: Store) -> None:
    run_id, _ = await waiting_run(store)
    await store.finish_run(run_id, None, RunFinish("cancelled"), MATCH, NOW + 2)
    assert (await ingest(store, [event("approval")], [], NOW + 3)).woken_run_ids == []
    (step,) = await store.list_steps(run_id)
    assert step.status == "waiting"
    assert (await run_of(store, run_id)).due_at is None


# --- suspend_run: invoking -----------------------------------------------------------------------------------


async def invoking_parent(store: Store, timeout_at: int = NOW + HOUR) -> tuple[str, str, str]:
    """A parent run of FN suspended on invoking OTHER_FN; returns (parent id, child id, child event id)."""
    c = await start_and_claim(store)
    child_event = event("stepline/function.invoked", {"x": 1, "_inngest": {"fn_id": OTHER_FN}}, received_at=NOW + 1)
    child = new_run(child_event, OTHER_FN, created_at=NOW + 1, due_at=NOW + 1, parent=(c.run.id, sid("call")))
    step = update("call", "invoking", "invoke", wake_at=timeout_at, invoke=IngestBatch([child_event], [child]))
    assert await suspend(store, c.run.id, step, now=NOW + 1, reason={"kind": "invoking"}) == "ok"
    return c.run.id, child.id, child_event.internal_id


async def test_suspend_on_invoke_creates_the_child_run(store: Store) -> None:
    parent_id, child_id, child_event_id = await invoking_parent(store)
    child = await run_of(store, child_id)
    assert (child.status, child.function_id, child.event_id) == ("queued", OTHER_FN, child_event_id)
    assert (child.parent_run_id, child.parent_step_id) == (parent_id, sid("call"))
    assert await store.get_event(child_event_id) is not None
    (step,) = await store.list_steps(parent_id)
    assert (step.kind, step.status, step.wake_at) == ("invoke", "invoking", NOW + HOUR)
    assert (await run_of(store, parent_id)).due_at == NOW + HOUR
    (claimed,) = await store.claim_runs("w2", [OTHER_FN], NOW + 1, 10, LEASE)
    assert claimed.run.id == child_id and claimed.event.data["x"] == 1


async def test_a_completed_child_completes_the_parent_invoke_step(store: Store) -> None:
    parent_id, child_id, _ = await invoking_parent(store)
    await store.claim_runs("w2", [OTHER_FN], NOW + 1, 10, LEASE)
    done = NOW + MIN
    assert (await store.finish_run(child_id, "w2", RunFinish("completed", {"sum": 3}), MATCH, done)).status == "ok"
    (step,) = await store.list_steps(parent_id)
    assert (step.status, step.output, step.error, step.ended_at) == ("completed", {"sum": 3}, None, done)
    parent = await run_of(store, parent_id)
    assert (parent.due_at, parent.idle_reason, parent.status) == (done, None, "running")
    (resumed,) = await store.claim_runs("w1", [FN], done, 10, LEASE)
    assert resumed.steps[sid("call")].output == {"sum": 3}


@pytest.mark.parametrize("status", ["failed", "cancelled"])
async def test_a_failed_or_cancelled_child_fails_the_parent_invoke_step(store: Store, status: str) -> None:
    parent_id, child_id, _ = await invoking_parent(store)
    error = {"name": "ChildError", "message": "nope"}
    finish = RunFinish(status, error=error)  # type: ignore[arg-type]
    assert (await store.finish_run(child_id, None, finish, MATCH, NOW + MIN)).status == "ok"
    (step,) = await store.list_steps(parent_id)
    assert (step.status, step.error, step.output) == ("failed", error, None)
    assert (await run_of(store, parent_id)).due_at == NOW + MIN


async def test_a_child_finishing_after_the_invoke_timed_out_changes_nothing(store: Store) -> None:
    parent_id, child_id, _ = await invoking_parent(store, timeout_at=NOW + MIN)
    await store.claim_runs("w1", [FN], NOW + MIN, 10, LEASE)
    timeout = {"name": "InvokeTimeoutError", "message": "timed out"}
    await store.record_step(parent_id, "w1", update("call", "failed", "invoke", error=timeout), MATCH, NOW + MIN)
    await store.finish_run(parent_id, "w1", RunFinish("failed", error=timeout), MATCH, NOW + MIN + 1)
    await store.finish_run(child_id, None, RunFinish("completed", 1), MATCH, NOW + HOUR)
    (step,) = await store.list_steps(parent_id)
    assert (step.status, step.error) == ("failed", timeout)
    parent = await run_of(store, parent_id)
    assert (parent.status, parent.due_at) == ("failed", None)


# --- finish_run ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "output", "error"),
    [
        (RunFinish("completed", output={"total": 12}), {"total": 12}, None),
        (RunFinish("completed", output=None), None, None),
        (RunFinish("failed", error={"name": "E", "message": "x"}), None, {"name": "E", "message": "x"}),
        (RunFinish("cancelled", error={"name": "Cancelled", "message": "api"}), None,
         {"name": "Cancelled", "message": "api"}),
    ],
    ids=["completed", "completed-none", "failed", "cancelled"],
)  # fmt: skip
async def test_finish_records_the_outcome(store: Store, finish: RunFinish, output: Any, error: Any) -> None:
    c = await start_and_claim(store)
    assert (await store.finish_run(c.run.id, "w1", finish, MATCH, NOW + 9)).status == "ok"
    run = await run_of(store, c.run.id)
    assert (run.status, run.output, run.error, run.ended_at) == (finish.status, output, error, NOW + 9)
    assert (run.due_at, run.lease_owner, run.lease_expires_at, run.idle_reason) == (None, None, None, None)
    assert run.started_at == NOW
    assert await store.next_due_at([FN]) is None
    assert await store.claim_runs("w1", [FN], NOW + HOUR, 10, LEASE) == []


async def test_a_second_finish_is_refused_and_changes_nothing(store: Store) -> None:
    c = await start_and_claim(store)
    await store.finish_run(c.run.id, "w1", RunFinish("completed", "first"), MATCH, NOW + 1)
    again = await store.finish_run(c.run.id, None, RunFinish("failed", error={"name": "E"}), MATCH, NOW + 2)
    assert again.status == "cancelled"
    owned = await store.finish_run(c.run.id, "w1", RunFinish("completed", "second"), MATCH, NOW + 3)
    assert owned.status == "cancelled"
    run = await run_of(store, c.run.id)
    assert (run.status, run.output, run.error, run.ended_at) == ("completed", "first", None, NOW + 1)


async def test_finish_by_a_non_owner_is_refused(store: Store) -> None:
    c = await start_and_claim(store, "w1")
    assert (await store.finish_run(c.run.id, "w2", RunFinish("completed", 1), MATCH, NOW + 1)).status == "lost"
    run = await run_of(store, c.run.id)
    assert (run.status, run.lease_owner, run.ended_at) == ("running", "w1", None)


async def test_finish_without_owner_ends_the_run_whoever_holds_it(store: Store) -> None:
    c = await start_and_claim(store, "w1")
    finish = RunFinish("cancelled", error={"name": "Cancelled", "message": "by API"})
    assert (await store.finish_run(c.run.id, None, finish, MATCH, NOW + 1)).status == "ok"
    run = await run_of(store, c.run.id)
    assert (run.status, run.lease_owner, run.ended_at) == ("cancelled", None, NOW + 1)
    assert (await store.record_step(c.run.id, "w1", memo("s", 1), MATCH, NOW + 2)).status == "cancelled"
    assert await store.renew_leases("w1", [c.run.id], NOW + 2, LEASE) == [c.run.id]


async def test_finish_without_owner_ends_a_queued_run(store: Store) -> None:
    ev = event()
    run = new_run(ev)
    await ingest(store, [ev], [run])
    assert (await store.finish_run(run.id, None, RunFinish("cancelled"), MATCH, NOW + 1)).status == "ok"
    got = await run_of(store, run.id)
    assert (got.status, got.started_at, got.ended_at) == ("cancelled", None, NOW + 1)


async def test_finish_of_an_unknown_run_is_refused(store: Store) -> None:
    assert (await store.finish_run(new_ulid(), None, RunFinish("cancelled"), MATCH, NOW)).status == "cancelled"


async def test_finish_stores_follow_up_events_and_starts_their_runs(store: Store) -> None:
    c = await start_and_claim(store)
    finished = event("stepline/function.finished", {"run_id": c.run.id}, received_at=NOW + 1)
    on_finish = new_run(finished, OTHER_FN, created_at=NOW + 1, due_at=NOW + 1)
    finish = RunFinish("completed", 5, follow_up=IngestBatch([finished], [on_finish]))
    assert (await store.finish_run(c.run.id, "w1", finish, MATCH, NOW + 1)).status == "ok"
    assert await store.get_event(finished.internal_id) == finished
    (claimed,) = await store.claim_runs("w2", [OTHER_FN], NOW + 1, 10, LEASE)
    assert claimed.run.id == on_finish.id and claimed.event == finished


async def test_a_refused_finish_stores_no_follow_up(store: Store) -> None:
    c = await start_and_claim(store)
    await store.finish_run(c.run.id, "w1", RunFinish("completed", 1), MATCH, NOW + 1)
    finished = event("stepline/function.finished", received_at=NOW + 2)
    late = RunFinish("completed", 2, follow_up=IngestBatch([finished], [new_run(finished, OTHER_FN)]))
    assert (await store.finish_run(c.run.id, None, late, MATCH, NOW + 2)).status == "cancelled"
    assert await store.get_event(finished.internal_id) is None
    assert await store.claim_runs("w2", [OTHER_FN], NOW + 2, 10, LEASE) == []


# --- list_steps order ------------------------------------------------------------------------------------------


async def test_list_steps_in_the_order_first_recorded(store: Store) -> None:
    c = await start_and_claim(store)
    await store.record_step(c.run.id, "w1", memo("b", 1), MATCH, NOW + 1)
    await suspend(store, c.run.id, update("a", "retrying", attempts=1, wake_at=NOW + MIN), sleeping("c", NOW + HOUR),
                  now=NOW + 2)  # fmt: skip
    await store.claim_runs("w1", [FN], NOW + MIN, 10, LEASE)
    await store.record_step(c.run.id, "w1", memo("d", 4), MATCH, NOW + MIN)
    await store.record_step(c.run.id, "w1", memo("a", 2, attempts=2), MATCH, NOW + MIN + 1)  # updated, not moved
    assert [s.display_id for s in await store.list_steps(c.run.id)] == ["b", "a", "c", "d"]


async def test_list_steps_order_survives_a_takeover_by_another_process(store: Store, reopen: Reopen) -> None:
    async with reopen(store) as other_process:  # both workers are up before any step is recorded
        c = await start_and_claim(store, "w1")
        for i, name in enumerate(["a", "b", "c"]):
            await store.record_step(c.run.id, "w1", memo(name, i), MATCH, NOW + i)
        (taken,) = await other_process.claim_runs("w2", [FN], NOW + LEASE + 1, 10, LEASE)  # w1 died
        await other_process.record_step(taken.run.id, "w2", memo("d", 3), MATCH, NOW + LEASE + 2)
        expected = ["a", "b", "c", "d"]
        assert [s.display_id for s in await other_process.list_steps(c.run.id)] == expected
        assert [s.display_id for s in await store.list_steps(c.run.id)] == expected


async def test_a_steps_race_is_kept_from_its_first_record_to_its_result(store: Store) -> None:
    """The race a step was started in (parallelMode race) is stored with it, kept when later writes omit it, and
    read back with the run's steps when it is claimed again."""
    claimed = await start_and_claim(store, "w1")
    run_id = claimed.run.id
    nap = StepUpdate(sid("nap"), "nap", "sleep", "sleeping", wake_at=NOW + MIN, race="r1")
    retry = StepUpdate(sid("call"), "call", "run", "retrying", 1, error={"name": "E", "message": "x"},
                       wake_at=NOW + MIN, race="r1")  # fmt: skip
    await store.suspend_run(run_id, "w1", [nap, retry], {"kind": "multiple"}, MATCH, NOW + 1)
    (again,) = await store.claim_runs("w2", [FN], NOW + MIN, 10, LEASE)
    assert {s.display_id: s.race for s in again.steps.values()} == {"nap": "r1", "call": "r1"}
    outcome = await store.record_step(run_id, "w2", memo("call", "done"), MATCH, NOW + MIN)  # no race given
    assert outcome.step is not None and (outcome.step.status, outcome.step.race) == ("completed", "r1")
    await store.record_step(run_id, "w2", memo("plain", 1), MATCH, NOW + MIN)
    assert {s.display_id: s.race for s in await store.list_steps(run_id)} == {"nap": "r1", "call": "r1",
                                                                              "plain": None}  # fmt: skip


# --- signals -----------------------------------------------------------------------------------------------------
def signal_wait(display_id: str, wake_at: int) -> StepUpdate:
    return StepUpdate(sid(display_id), display_id, "wait_for_signal", "waiting", wake_at=wake_at)


async def test_a_signal_resumes_the_run_that_waits_for_it_once(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    run_id = claimed.run.id
    assert await store.send_signal("order-7", {"early": True}, NOW) is None  # nobody waits yet: nothing kept
    outcome = await store.wait_for_signal(run_id, "w1", signal_wait("sig", NOW + HOUR), "order-7", False, NOW + 1)
    assert outcome.status == "ok" and outcome.step is not None and outcome.step.status == "waiting"
    await store.suspend_run(run_id, "w1", [signal_wait("sig", NOW + HOUR)], {"kind": "waiting"}, MATCH, NOW + 2)
    assert (await run_of(store, run_id)).due_at == NOW + HOUR
    assert await store.send_signal("order-7", {"paid": 42}, NOW + 10) == run_id
    run = await run_of(store, run_id)
    assert (run.due_at, run.idle_reason) == (NOW + 10, None)  # due now
    [step] = await store.list_steps(run_id)
    assert (step.status, step.output) == ("completed", {"signal": "order-7", "data": {"paid": 42}})
    assert await store.send_signal("order-7", {"again": True}, NOW + 11) is None  # consumed


async def test_a_signal_sent_while_the_run_still_executes_is_not_lost(store: Store) -> None:
    """Registered at once, so a signal that arrives before the run suspends completes the step: the suspension
    then finds the result and the run is due at once."""
    claimed = await start_and_claim(store, "w1")
    run_id = claimed.run.id
    await store.wait_for_signal(run_id, "w1", signal_wait("sig", NOW + HOUR), "s", False, NOW + 1)
    assert await store.send_signal("s", 1, NOW + 2) == run_id
    await store.suspend_run(run_id, "w1", [signal_wait("sig", NOW + HOUR)], {"kind": "waiting"}, MATCH, NOW + 3)
    run = await run_of(store, run_id)
    assert run.due_at == NOW + 3 and run.lease_owner is None
    [step] = await store.list_steps(run_id)
    assert step.output == {"signal": "s", "data": 1}


async def test_one_run_waits_for_a_signal_conflicts_fail_or_replace(store: Store) -> None:
    first = await start_and_claim(store, "w1")
    await store.wait_for_signal(first.run.id, "w1", signal_wait("sig", NOW + HOUR), "shared", False, NOW)
    second = await start_and_claim(store, "w2")
    with pytest.raises(SignalConflict) as conflict:
        await store.wait_for_signal(second.run.id, "w2", signal_wait("sig", NOW + HOUR), "shared", False, NOW + 1)
    assert conflict.value.run_id == first.run.id
    assert await store.list_steps(second.run.id) == []  # nothing of the refused wait was stored
    # The same step registering again (a replay) is no conflict.
    again = await store.wait_for_signal(first.run.id, "w1", signal_wait("sig", NOW + HOUR), "shared", False, NOW + 2)
    assert again.status == "ok"
    await store.wait_for_signal(second.run.id, "w2", signal_wait("sig", NOW + HOUR), "shared", True, NOW + 3)
    assert await store.send_signal("shared", "x", NOW + 4) == second.run.id  # the replacing wait gets it
    [kept] = await store.list_steps(first.run.id)
    assert (kept.status, kept.wake_at) == ("waiting", NOW + HOUR)  # the replaced one waits for its timeout


async def test_an_expired_or_ended_runs_signal_wait_matches_nothing(store: Store) -> None:
    claimed = await start_and_claim(store, "w1")
    await store.wait_for_signal(claimed.run.id, "w1", signal_wait("sig", NOW + MIN), "late", False, NOW)
    assert await store.send_signal("late", None, NOW + MIN) is None  # at its timeout: expired
    other = await start_and_claim(store, "w2")
    await store.wait_for_signal(other.run.id, "w2", signal_wait("sig", NOW + HOUR), "ended", False, NOW)
    await store.finish_run(other.run.id, None, RunFinish("cancelled"), MATCH, NOW + 1)
    assert await store.send_signal("ended", None, NOW + 2) is None
    # An event with the same name as a signal is not a signal.
    waiting = await start_and_claim(store, "w3")
    await store.wait_for_signal(waiting.run.id, "w3", signal_wait("sig", NOW + HOUR), "paid", False, NOW)
    await ingest(store, [event("paid")], [])
    [step] = await store.list_steps(waiting.run.id)
    assert step.status == "waiting"
