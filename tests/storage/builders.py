"""Small builders for storage conformance tests: events, runs, step updates, and common setups."""

from __future__ import annotations

from typing import Any

from stepline.core.engine import match_wait
from stepline.core.events import StoredEvent
from stepline.core.ids import hash_step_id, new_ulid
from stepline.storage.base import Store
from stepline.storage.records import (
    ClaimedRun,
    FunctionRecord,
    IngestBatch,
    IngestResult,
    NewRun,
    StepStatus,
    StepUpdate,
    WaitSpec,
)

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z in unix ms
SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
LEASE = 30 * SEC

APP = "app"
FN = "app-fn"
OTHER_FN = "app-other"
EVENT = "test/event"

MATCH = match_wait  # the engine's matcher: CEL with `event` = the run's trigger, `async` = the candidate


def event(
    name: str = EVENT,
    data: dict[str, Any] | None = None,
    *,
    user: dict[str, Any] | None = None,
    received_at: int = NOW,
    user_id: str | None = None,
    v: str | None = None,
) -> StoredEvent:
    internal_id = new_ulid()
    return StoredEvent(
        internal_id=internal_id,
        id=user_id or internal_id,
        name=name,
        data=data if data is not None else {},
        user=user if user is not None else {},
        ts=received_at,
        v=v,
        received_at=received_at,
    )


def new_run(
    ev: StoredEvent,
    function_id: str = FN,
    *,
    key: str | None = None,
    created_at: int = NOW,
    due_at: int = NOW,
    cancel_on: tuple[WaitSpec, ...] = (),
    parent: tuple[str, str] | None = None,
    batch: tuple[str, ...] = (),
    run_id: str | None = None,
    start_deadline: int | None = None,
) -> NewRun:
    return NewRun(
        id=run_id or new_ulid(),
        function_id=function_id,
        event_id=ev.internal_id,
        idempotency_key=key,
        created_at=created_at,
        due_at=due_at,
        start_deadline=start_deadline,
        cancel_waits=cancel_on,
        parent_run_id=parent[0] if parent else None,
        parent_step_id=parent[1] if parent else None,
        batch=batch,
    )


def function(slug: str, app_id: str = APP, name: str | None = None, **config: Any) -> FunctionRecord:
    return FunctionRecord(f"{app_id}-{slug}", app_id, slug, name or slug.title(), dict(config))


def sid(display_id: str) -> str:
    """The hashed step id the engine stores for a display id."""
    return hash_step_id(display_id)


def update(display_id: str, status: StepStatus, kind: str = "run", **kw: Any) -> StepUpdate:
    return StepUpdate(sid(display_id), display_id, kind, status, **kw)


def memo(display_id: str, output: Any = None, **kw: Any) -> StepUpdate:
    kw.setdefault("attempts", 1)
    return update(display_id, "completed", output=output, **kw)


def sleeping(display_id: str, wake_at: int) -> StepUpdate:
    return update(display_id, "sleeping", "sleep", wake_at=wake_at)


def waiting(
    display_id: str, event_name: str, expression: str | None = None, *, since: int, timeout_at: int
) -> StepUpdate:
    return update(
        display_id,
        "waiting",
        "wait_for_event",
        wake_at=timeout_at,
        wait=WaitSpec(event_name, expression, timeout_at),
        since=since,
    )


async def ingest(store: Store, events: list[StoredEvent], runs: list[NewRun], now: int = NOW) -> IngestResult:
    return await store.ingest(IngestBatch(events, runs), MATCH, now)


async def start(
    store: Store,
    function_id: str = FN,
    data: dict[str, Any] | None = None,
    *,
    name: str = EVENT,
    now: int = NOW,
    due_at: int | None = None,
    cancel_on: tuple[WaitSpec, ...] = (),
) -> tuple[StoredEvent, str]:
    """Ingest one event and one run of ``function_id`` for it; returns (event, run id)."""
    ev = event(name, data, received_at=now)
    run = new_run(ev, function_id, created_at=now, due_at=now if due_at is None else due_at, cancel_on=cancel_on)
    result = await ingest(store, [ev], [run], now)
    assert result.created_run_ids == [run.id]
    return ev, run.id


async def start_and_claim(
    store: Store,
    owner: str = "w1",
    function_id: str = FN,
    data: dict[str, Any] | None = None,
    *,
    name: str = EVENT,
    now: int = NOW,
    cancel_on: tuple[WaitSpec, ...] = (),
) -> ClaimedRun:
    """A running run leased by ``owner`` (the only due run of ``function_id``)."""
    _, run_id = await start(store, function_id, data, name=name, now=now, cancel_on=cancel_on)
    claimed = await store.claim_runs(owner, [function_id], now, 10, LEASE)
    assert [c.run.id for c in claimed] == [run_id]
    return claimed[0]
