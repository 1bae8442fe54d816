"""The engine: turns events into runs (fan-out, idempotency, waits), and ends runs with their system events.

One ``Engine`` per process and store. It is shared by the client (sending events), the worker (executing
runs) and the CLI. All state lives in the store; the engine only caches the function registry.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stepline.core.clock import Clock, SystemClock
from stepline.core.errors import EventValidationError, UnknownFunctionError
from stepline.core.events import (
    FUNCTION_CANCELLED,
    FUNCTION_FAILED,
    FUNCTION_FINISHED,
    FUNCTION_INVOKED,
    MAX_EVENTS_PER_SEND,
    Event,
    StoredEvent,
    validate_event,
)
from stepline.core.expressions import Bindings, compile_expression
from stepline.core.function import FunctionSpec
from stepline.core.ids import new_ulid
from stepline.storage.base import Store
from stepline.storage.records import (
    FunctionRecord,
    IngestBatch,
    IngestResult,
    NewRun,
    PruneResult,
    RunFinish,
    RunRecord,
    WaitSpec,
)

log = logging.getLogger("stepline.engine")
DEFAULT_RETENTION = dt.timedelta(days=30)
EventInput = Event | Mapping[str, Any]


def match_wait(expression: str | None, trigger: dict[str, Any], candidate: dict[str, Any]) -> bool:
    """Does ``candidate`` satisfy a wait or cancellation set up by a run triggered by ``trigger``?"""
    if expression is None:
        return True
    return compile_expression(expression).matches({"event": trigger, "async": candidate})


RUN_END_EVENTS = frozenset({FUNCTION_FINISHED, FUNCTION_FAILED, FUNCTION_CANCELLED})


def _ends_a_run_started_by_a_run_end(ev: StoredEvent) -> bool:
    """The end of a run that was itself started by the end of a run starts nothing.

    Functions triggered by run ends (``on_failure`` handlers, auditors, ``*`` wildcards) would otherwise feed each
    other forever; one level is what users mean by "when a function finishes/fails, do X".
    """
    if ev.name not in RUN_END_EVENTS:
        return False
    trigger = ev.data.get("event")
    return isinstance(trigger, dict) and trigger.get("name") in RUN_END_EVENTS


def new_run(
    spec: FunctionSpec,
    event_id: str,
    now: int,
    *,
    idempotency_key: str | None = None,
    parent_run_id: str | None = None,
    parent_step_id: str | None = None,
    event: dict[str, Any] | None = None,
) -> NewRun:
    """A run of ``spec`` for an event, with the function's start timeout and cancel_on waits, and (given the
    trigger ``event``) its flow-control keys."""
    return NewRun(
        id=new_ulid(),
        function_id=spec.id,
        event_id=event_id,
        idempotency_key=idempotency_key,
        created_at=now,
        due_at=now,
        start_deadline=now + spec.start_timeout_ms if spec.start_timeout_ms else None,
        cancel_waits=tuple(WaitSpec(name, expr, now + timeout) for name, expr, timeout in spec.cancel),
        parent_run_id=parent_run_id,
        parent_step_id=parent_step_id,
        flow=spec.flow.plan(spec.id, event) if spec.flow is not None and event is not None else None,
    )


class Engine:
    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.matcher = match_wait
        self._specs: dict[str, FunctionSpec] = {}
        self._version = -1
        self._checked_at = 0.0
        self._listeners: list[Callable[[], None]] = []

    # --- registry ---
    async def register(self, app_id: str, records: list[FunctionRecord]) -> None:
        await self.store.register_functions(app_id, records, self.clock.now_ms())
        await self.refresh_registry(force=True)

    async def refresh_registry(self, force: bool = False) -> dict[str, FunctionSpec]:
        """The function registry, re-read when its version changed. The version itself is checked at most every
        ``store.registry_check_seconds`` (0 on SQLite, where the read is local; 1 s on PostgreSQL), so a function
        registered by another node routes events within that delay."""
        now = time.monotonic()
        if not force and self._version >= 0 and now - self._checked_at < self.store.registry_check_seconds:
            return self._specs
        version = await self.store.registry_version()
        self._checked_at = now
        if force or version != self._version:
            records = await self.store.list_functions()
            self._specs = {r.id: FunctionSpec.from_record(r) for r in records}
            self._version = version
        return self._specs

    async def find_function(self, function_id: str, default_app: str | None = None) -> FunctionSpec | None:
        specs = await self.refresh_registry()
        if function_id in specs:
            return specs[function_id]
        if default_app is not None:
            return specs.get(f"{default_app}-{function_id}")
        return None

    async def require_function(self, function_id: str) -> FunctionSpec:
        spec = await self.find_function(function_id)
        if spec is None:
            known = ", ".join(sorted(self._specs)) or "none"
            raise UnknownFunctionError(f"no registered function has id {function_id!r} (registered: {known})")
        return spec

    # --- notifications (wake local workers at once instead of waiting for their next poll) ---
    def add_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def notify(self) -> None:
        for cb in list(self._listeners):
            cb()

    # --- events in ---
    def stored_event(self, event: Event, now: int, internal_id: str | None = None) -> StoredEvent:
        internal_id = internal_id or new_ulid()
        return StoredEvent(
            internal_id=internal_id,
            id=event.id or internal_id,
            name=event.name,
            data=event.data,
            user=event.user if isinstance(event.user, dict) else {},
            ts=event.ts or now,
            v=event.v,
            received_at=now,
        )

    async def plan_ingest(
        self,
        events: EventInput | Sequence[EventInput],
        *,
        allow_reserved: bool = False,
        internal_ids: Sequence[str] | None = None,
    ) -> IngestBatch:
        """Validate events and decide which runs they start. Raises EventValidationError, storing nothing.

        ``internal_ids`` (the event API's seeded ids) makes a retried request idempotent: each event keeps the
        same internal id, an event without an ``id`` takes it as its ``id``, so its runs' idempotency keys are
        already held the second time and nothing new starts."""
        items = [events] if isinstance(events, Event | Mapping) else list(events)
        if not items:
            raise EventValidationError("no events to send")
        if len(items) > MAX_EVENTS_PER_SEND:
            raise EventValidationError(f"{len(items)} events in one send; the limit is {MAX_EVENTS_PER_SEND}")
        now = self.clock.now_ms()
        validated = []
        for i, raw in enumerate(items):
            try:
                validated.append(validate_event(raw, allow_reserved=allow_reserved))
            except EventValidationError as exc:
                prefix = f"event {i} of {len(items)}: " if len(items) > 1 else ""
                raise EventValidationError(f"{prefix}{exc}") from None
        if internal_ids is not None:
            if len(internal_ids) != len(validated):
                raise ValueError("internal_ids must give one id per event")
            stored = [self.stored_event(e, now, i) for e, i in zip(validated, internal_ids, strict=True)]
            user_ids: list[str | None] = [s.id for s in stored]
        else:
            stored = [self.stored_event(e, now) for e in validated]
            user_ids = [e.id for e in validated]
        return IngestBatch(stored, await self._plan_runs(stored, user_ids, now))

    async def _plan_runs(self, events: list[StoredEvent], user_ids: list[str | None], now: int) -> list[NewRun]:
        specs = await self.refresh_registry()
        runs: list[NewRun] = []
        for ev, user_id in zip(events, user_ids, strict=True):
            if _ends_a_run_started_by_a_run_end(ev):
                continue  # bounded cascades: see _ends_a_run_started_by_a_run_end
            as_dict = ev.as_dict()
            bindings: Bindings | None = None
            system_source = ev.data.get("function_id") if ev.name.startswith("stepline/function.") else None
            for spec in specs.values():
                if spec.id == system_source:
                    continue  # a run's own end never re-triggers its function (no self-feeding loops)
                if not spec.matching_trigger(as_dict):
                    continue
                key: str | None = None
                if spec.idempotency:
                    bindings = bindings or Bindings({"event": as_dict})
                    try:
                        key = "expr:" + str(compile_expression(spec.idempotency).evaluate(bindings))
                    except ValueError as exc:
                        log.warning("function %s: idempotency expression failed for event %s: %s",
                                    spec.id, ev.internal_id, exc)  # fmt: skip
                elif user_id:
                    key = "event:" + user_id
                runs.append(new_run(spec, ev.internal_id, now, idempotency_key=key, event=as_dict))
        return runs

    async def ingest(
        self, events: EventInput | Sequence[EventInput], *, internal_ids: Sequence[str] | None = None
    ) -> IngestResult:
        """Store events and start the runs they trigger, atomically."""
        batch = await self.plan_ingest(events, internal_ids=internal_ids)
        result = await self.store.ingest(batch, self.matcher, self.clock.now_ms())
        if result.cancelled_run_ids:
            await self.announce_cancellations(result.cancelled_run_ids)
        self.notify()
        return result

    async def announce_cancellations(self, run_ids: Sequence[str]) -> None:
        """Emit ``stepline/function.finished`` and ``.cancelled`` for runs a ``cancel_on`` event just cancelled.

        Stored right after the cancelling transaction (the cancellation itself is already durable)."""
        events: list[StoredEvent] = []
        runs: list[NewRun] = []
        for run_id in run_ids:
            run = await self.store.get_run(run_id)
            trigger = None if run is None else await self.store.get_event(run.event_id)
            if run is None or trigger is None:
                continue
            finish = RunFinish("cancelled", error=run.error)
            await self.follow_up(run, trigger, finish)
            events += finish.follow_up.events
            runs += finish.follow_up.runs
        if events:
            result = await self.store.ingest(IngestBatch(events, runs), self.matcher, self.clock.now_ms())
            await self.announce_cancellations(result.cancelled_run_ids)  # their end events may cancel more

    async def invoke_now(self, function_id: str, data: dict[str, Any] | None = None) -> str:
        """Start a run of one function directly (CLI and API), whatever its triggers. Returns the run id."""
        spec = await self.require_function(function_id)
        now = self.clock.now_ms()
        ev = self.stored_event(validate_event(Event(name=FUNCTION_INVOKED, data=data or {}),
                                              allow_reserved=True), now)  # fmt: skip
        run = new_run(spec, ev.internal_id, now, event=ev.as_dict() if spec.flow is not None else None)
        result = await self.store.ingest(IngestBatch([ev], [run]), self.matcher, now)
        await self.announce_cancellations(result.cancelled_run_ids)
        self.notify()
        return run.id

    # --- runs out ---
    async def follow_up(self, run: RunRecord, trigger: StoredEvent, finish: RunFinish) -> None:
        """Attach the system events of a run's end (and the runs they trigger) to ``finish``."""
        now = self.clock.now_ms()
        data: dict[str, Any] = {
            "function_id": run.function_id,
            "run_id": run.id,
            "event": trigger.as_dict(),
            "status": finish.status,
        }
        if finish.status == "completed":
            data["result"] = finish.output
        else:
            data["error"] = finish.error
        if trigger.name == FUNCTION_INVOKED:
            corr = (trigger.data.get("_inngest") or {}).get("correlation_id")
            if corr:
                data["correlation_id"] = corr
        names = [FUNCTION_FINISHED]
        if finish.status == "failed":
            names.append(FUNCTION_FAILED)
        elif finish.status == "cancelled":
            names.append(FUNCTION_CANCELLED)
        events = [self.stored_event(Event(name=n, data=dict(data)), now) for n in names]
        finish.follow_up = IngestBatch(events, await self._plan_runs(events, [None] * len(events), now))

    def plan_invoke(
        self,
        spec: FunctionSpec,
        parent_run_id: str,
        step_id: str,
        source_fn_id: str,
        data: dict[str, Any],
        expires_at: int,
        now: int,
    ) -> IngestBatch:
        """The ``function.invoked`` event and the child run of an invoke step (in-process and HTTP alike); the
        child's end completes the parent's step (``correlation_id``, ``parent_run_id``/``parent_step_id``)."""
        payload = dict(data)
        payload["_inngest"] = {"fn_id": spec.id, "correlation_id": f"{parent_run_id}.{step_id}",
                               "source_fn_id": source_fn_id, "source_run_id": parent_run_id,
                               "expire": expires_at}  # fmt: skip
        ev = self.stored_event(Event(name=FUNCTION_INVOKED, data=payload), now)
        child = new_run(spec, ev.internal_id, now, parent_run_id=parent_run_id, parent_step_id=step_id,
                        event=ev.as_dict() if spec.flow is not None else None)  # fmt: skip
        return IngestBatch([ev], [child])

    async def end_run(self, run: RunRecord, trigger: StoredEvent, owner: str | None, finish: RunFinish) -> None:
        """Finish a run with its system events (and the runs they start), then announce what that cancelled."""
        await self.follow_up(run, trigger, finish)
        outcome = await self.store.finish_run(run.id, owner, finish, self.matcher, self.clock.now_ms())
        await self.announce_cancellations(outcome.cancelled_run_ids)
        self.notify()

    async def prune(self, default_retention: dt.timedelta = DEFAULT_RETENTION, batch_size: int = 1000) -> PruneResult:
        """Delete ended runs (and their steps), unreferenced events and expired idempotency keys older than
        the retention: the function's ``retention`` option, else ``default_retention``."""
        now = self.clock.now_ms()
        specs = await self.refresh_registry()
        cutoffs = {s.id: now - s.retention_ms for s in specs.values() if s.retention_ms is not None}
        default_cutoff = now - int(default_retention.total_seconds() * 1000)
        return await self.store.prune(now, default_cutoff, cutoffs, batch_size)

    async def cancel_run(self, run_id: str, reason: str = "cancelled by API") -> bool:
        """Cancel a queued or running run. Returns False if it had already ended (or does not exist)."""
        run = await self.store.get_run(run_id)
        if run is None or run.status not in ("queued", "running"):
            return False
        trigger = await self.store.get_event(run.event_id)
        finish = RunFinish("cancelled", error={"name": "Cancelled", "message": reason})
        if trigger is not None:
            await self.follow_up(run, trigger, finish)
        outcome = await self.store.finish_run(run_id, None, finish, self.matcher, self.clock.now_ms())
        await self.announce_cancellations(outcome.cancelled_run_ids)
        self.notify()
        return outcome.status == "ok"
