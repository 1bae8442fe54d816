"""Rerun a run: a new run of the same function with the same trigger event (and batch).

A plain rerun executes everything again. A rerun from a step copies the original run's memo of the steps
recorded *before* that step, so the new run replays those and executes that step and everything after it.
Reruns bypass idempotency (the trigger event's key is held by the original run) and stand alone: a rerun of an
invoked run does not answer the parent's invoke again.
"""

from __future__ import annotations

import dataclasses

from stepline.core.engine import Engine, new_run
from stepline.core.errors import SteplineError
from stepline.storage.records import IngestBatch, RunFlow, StepRecord
from stepline.storage.states import IdleReason

__all__ = ["RerunError", "RerunNotPossibleError", "RunNotFoundError", "StepNotFoundError", "rerun"]


class RerunError(SteplineError, ValueError):
    """A run that cannot be rerun as asked."""


class RunNotFoundError(RerunError, LookupError):
    """No run has this id."""


class StepNotFoundError(RerunError, LookupError):
    """The original run recorded no step with this id."""


class RerunNotPossibleError(RerunError):
    """The run exists but cannot start again: its function is no longer registered, or its event is gone."""


async def rerun(engine: Engine, run_id: str, from_step_id: str | None = None) -> str:
    """Start a new run of ``run_id``'s function with its trigger event (and batch); returns the new run's id.

    ``from_step_id`` is the hashed id of one of the original run's steps (its display id, ``"fetch"`` or
    ``"fetch:1"``, is accepted too): the new run starts with a copy of the completed and failed steps recorded
    before it, so it resumes at that step and executes it and every later step again.
    """
    store = engine.store
    original = await store.get_run(run_id)
    if original is None:
        raise RunNotFoundError(f"run {run_id!r} not found")
    spec = await engine.find_function(original.function_id)
    if spec is None:
        raise RerunNotPossibleError(
            f"cannot rerun run {run_id!r}: its function {original.function_id!r} is no longer registered"
        )
    event_ids = [original.event_id, *(original.batch or ())]
    for event_id in dict.fromkeys(event_ids):
        if await store.get_event(event_id) is None:
            raise RerunNotPossibleError(f"cannot rerun run {run_id!r}: its event {event_id!r} is no longer stored")
    memo: list[StepRecord] = []
    reason: IdleReason = {"kind": "rerun", "run_id": run_id}
    if from_step_id is not None:
        recorded = await store.list_steps(run_id)
        index = next((i for i, s in enumerate(recorded) if s.step_id == from_step_id), None)
        if index is None:
            index = next((i for i, s in enumerate(recorded) if s.display_id == from_step_id), None)
        if index is None:
            raise StepNotFoundError(f"run {run_id!r} has no step with id {from_step_id!r}")
        memo = [s for s in recorded[:index] if s.is_memo]
        reason["from_step"] = recorded[index].display_id
    now = engine.clock.now_ms()
    trigger = await store.get_event(original.event_id)
    if trigger is not None:
        run = engine.plan_run(spec, trigger, now)
    else:
        run = new_run(spec, original.event_id, now)
    if run.flow is not None:  # a rerun is started by hand: only the claim-time limits (concurrency, priority) apply
        run = dataclasses.replace(run, flow=RunFlow(run.flow.concurrency, run.flow.priority_ms,
                                                    gates_claims=run.flow.gates_claims))  # fmt: skip
    run = dataclasses.replace(run, batch=tuple(original.batch or ()))
    if run.failure is not None:  # a key expression fails for this event: the rerun fails at once, saying why
        await store.ingest(IngestBatch([], [run]), engine.matcher, now)
        engine.notify()
        return run.id
    await store.create_run(run, memo, now, idle_reason=reason)
    engine.notify()
    return run.id
