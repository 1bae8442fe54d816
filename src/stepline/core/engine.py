"""The engine: turns events into runs (fan-out, idempotency, waits), and ends runs with their system events.

One ``Engine`` per process and store. It is shared by the client (sending events), the worker (executing
runs) and the CLI. All state lives in the store; the engine only caches the function registry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stepline.core.clock import Clock, SystemClock
from stepline.core.errors import EventValidationError, UnknownFunctionError, run_end_error
from stepline.core.events import (
    FUNCTION_CANCELLED,
    FUNCTION_FAILED,
    FUNCTION_FINISHED,
    FUNCTION_INVOKED,
    MAX_EVENTS_PER_SEND,
    Event,
    StoredEvent,
    to_json_value,
    validate_event,
)
from stepline.core.expressions import Bindings, ExpressionError, compile_expression
from stepline.core.flow import KeyExpressionFailed, evaluate_key, short_key
from stepline.core.function import FunctionSpec
from stepline.core.ids import new_ulid
from stepline.core.json_checks import json_problem
from stepline.core.steps import check_signal
from stepline.core.waiting import RunWaiters
from stepline.observability import hooks, runlog
from stepline.observability.tracing import current_traceparent, send_traceparent
from stepline.realtime.hub import RealtimeHub
from stepline.storage.base import Store
from stepline.storage.records import (
    ExpressionFailure,
    FunctionRecord,
    IngestBatch,
    IngestResult,
    NewRun,
    PruneResult,
    RunFinish,
    RunRecord,
    StaleRegistryError,
    WaitSpec,
)
from stepline.storage.states import IdleReason

log = logging.getLogger("stepline.engine")
DEFAULT_RETENTION = dt.timedelta(days=30)
PAUSE_CHECK_SECONDS = 1.0  # how stale a node's view of the paused functions may be (``Engine.refresh_paused``)
PAUSED_REASON: IdleReason = {"kind": "paused", "message": "Function paused: the run waits until it is resumed"}
EventInput = Event | Mapping[str, Any]


def match_wait(expression: str | None, trigger: dict[str, Any], candidate: dict[str, Any]) -> bool:
    """Does ``candidate`` satisfy a wait or cancellation set up by a run triggered by ``trigger``?

    A field missing from either event is no match. Any other failure (an expression that no longer compiles or
    passes the limits, a type error, an evaluation cut off by its budget) raises ExpressionError: the store then
    counts it as no match and writes it to the waiting run's log."""
    if expression is None:
        return True
    try:
        compiled = compile_expression(expression)
        last = getattr(_candidates, "last", None)
        if last is not None and last[0] is candidate:
            bindings = last[1]
        else:  # the store matches one event against every wait for its name: it is converted for CEL once
            bindings = Bindings({"async": candidate})
            _candidates.last = (candidate, bindings)
        bindings.set("event", trigger)
        return compiled.check(bindings)
    except ExpressionError as exc:
        if exc.missing_key:
            return False
        raise


_candidates = threading.local()  # (the candidate event, its bindings): the last one match_wait saw, per thread


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
    batched: bool | None = None,
    bindings: Bindings | None = None,
) -> NewRun:
    """A run of ``spec`` for an event, with the function's start timeout and cancel_on waits, and (given the
    trigger ``event``) its flow-control keys. Raises KeyExpressionFailed when a key cannot be evaluated."""
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
        flow=spec.flow.plan(spec.id, event, batched, bindings) if spec.flow is not None and event is not None else None,
    )


def run_end_data(function_id: str, run_id: str, trigger: dict[str, Any], finish: RunFinish) -> dict[str, Any]:
    """The data of a run's ``stepline/function.finished|failed|cancelled`` events."""
    data: dict[str, Any] = {"function_id": function_id, "run_id": run_id, "event": trigger, "status": finish.status}
    if finish.status == "completed":
        data["result"] = finish.output
    else:
        if finish.event_error is None:  # Inngest's {error, name, message, stack?}, also for a parent's invoke memo
            finish.event_error = run_end_error(finish.error)
        data["error"] = finish.event_error
    if trigger.get("name") == FUNCTION_INVOKED:
        corr = ((trigger.get("data") or {}).get("_inngest") or {}).get("correlation_id")
        if corr:
            data["correlation_id"] = corr
    return data


def run_end_names(status: str) -> list[str]:
    names = [FUNCTION_FINISHED]
    if status == "failed":
        names.append(FUNCTION_FAILED)
    elif status == "cancelled":
        names.append(FUNCTION_CANCELLED)
    return names


class _LazyBindings:
    """One event bound as ``event`` for CEL when the first expression needs it, then shared by all."""

    __slots__ = ("_bindings", "_event")

    def __init__(self, event: dict[str, Any]) -> None:
        self._event = event
        self._bindings: Bindings | None = None

    def get(self) -> Bindings:
        if self._bindings is None:
            self._bindings = Bindings({"event": self._event})
        return self._bindings


REPORT_EVERY_MS = 10_000  # an expression failure is stored at most this often per (function, place) and process


class Engine:
    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.matcher = match_wait
        self._specs: dict[str, FunctionSpec] = {}
        self._version = -1
        self._checked_at = 0.0
        self._listeners: list[Callable[[], None]] = []
        self._reported: dict[tuple[str, str], tuple[int, int]] = {}  # (function, place) -> (last stored, held)
        self.waiters = RunWaiters(store)  # waiting for runs to end (core/waiting.py)
        self.realtime = RealtimeHub(store, self.clock)  # realtime publish/subscribe (stepline/realtime/)
        self.paused: frozenset[str] = frozenset()  # paused functions, as last read (``refresh_paused``)
        self._paused_checked = -PAUSE_CHECK_SECONDS

    # --- registry ---
    async def register(self, app_id: str, records: list[FunctionRecord]) -> None:
        await self.store.register_functions(app_id, records, self.clock.now_ms())
        await self.refresh_registry(force=True)

    async def refresh_registry(self, force: bool = False) -> dict[str, FunctionSpec]:
        """The function registry, re-read when its version changed. The version itself is checked at most every
        ``store.registry_check_seconds`` (0 on SQLite, where the read is local; 1 s on PostgreSQL), so a function
        registered by another node is seen here within that delay. Sends do not read it first: their ingest
        transaction checks the version they were planned with (``ingest``)."""
        now = time.monotonic()
        if not force and self._version >= 0 and now - self._checked_at < self.store.registry_check_seconds:
            return self._specs
        version = await self.store.registry_version()
        self._checked_at = now
        if force or version != self._version:
            records = await self.store.list_functions()
            specs = {r.id: FunctionSpec.from_record(r) for r in records}
            for spec in specs.values():
                old = self._specs.get(spec.id)
                for problem in spec.problems if old is None or old.problems != spec.problems else ():
                    log.warning("function %s: a stored expression is refused and will not be evaluated: %s",
                                spec.id, problem)  # fmt: skip
            self._specs = specs
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

    # --- paused functions ---
    async def refresh_paused(self, force: bool = False) -> frozenset[str]:
        """The paused functions, read from the store at most every ``PAUSE_CHECK_SECONDS`` (at once on the node that
        pauses or resumes): a pause made on another node holds this node's claims within that delay."""
        now = time.monotonic()
        if force or now - self._paused_checked >= PAUSE_CHECK_SECONDS:
            self.paused = frozenset(await self.store.paused_functions())
            self._paused_checked = now
        return self.paused

    async def pause_function(self, function_id: str) -> bool:
        """Pause a registered function (every node): False if it was paused already."""
        await self.require_function(function_id)
        changed = await self.store.pause_function(function_id, self.clock.now_ms())
        await self.refresh_paused(force=True)
        return changed

    async def resume_function(self, function_id: str) -> bool:
        """Resume a paused function: its held runs are claimed in the order they fell due. False if not paused."""
        changed = await self.store.resume_function(function_id, self.clock.now_ms())
        await self.refresh_paused(force=True)
        self.notify()
        return changed

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
    def stored_event(
        self, event: Event, now: int, internal_id: str | None = None, traceparent: str | None = None
    ) -> StoredEvent:
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
            traceparent=traceparent,
        )

    async def plan_ingest(
        self,
        events: EventInput | Sequence[EventInput],
        *,
        allow_reserved: bool = False,
        internal_ids: Sequence[str] | None = None,
        traceparent: str | None = None,
        checked: bool = False,
        large: bool = False,
        cached_registry: bool = False,
    ) -> IngestBatch:
        """Validate events and decide which runs they start. Raises EventValidationError, storing nothing.

        ``cached_registry``: plan with the cached function registry without reading its version, and record the
        version it had in the batch for the store to check (``Store.registry_checked_in_ingest``).

        ``checked``: the events are dicts the event API already validated and normalised (``events_api``): they are
        not validated again. ``large``: the request was large, so the planning (binding events for CEL, matching)
        runs in a thread instead of holding the event loop.

        ``internal_ids`` (the event API's seeded ids) makes a retried request idempotent: each event keeps the
        same internal id, an event without an ``id`` takes it as its ``id``, so its runs' idempotency keys are
        already held the second time and nothing new starts.

        ``traceparent``: the W3C trace context of the sender (the event API's header); without it, that of the
        current OpenTelemetry span, if any (a traced web request, a step's code). It is stored with the events, and
        the runs they start continue that trace."""
        items = [events] if isinstance(events, Event | Mapping) else list(events)
        if not items:
            raise EventValidationError("no events to send")
        if len(items) > MAX_EVENTS_PER_SEND:
            raise EventValidationError(f"{len(items)} events in one send; the limit is {MAX_EVENTS_PER_SEND}")
        now = self.clock.now_ms()
        validated = []
        for i, raw in enumerate(items):
            if checked and isinstance(raw, Mapping):
                validated.append(Event.model_construct(**raw))
                continue
            try:
                validated.append(validate_event(raw, allow_reserved=allow_reserved))
            except EventValidationError as exc:
                prefix = f"event {i} of {len(items)}: " if len(items) > 1 else ""
                raise EventValidationError(f"{prefix}{exc}") from None
        traceparent = send_traceparent(traceparent, validated)
        if internal_ids is not None:
            if len(internal_ids) != len(validated):
                raise ValueError("internal_ids must give one id per event")
            stored = [self.stored_event(e, now, i, traceparent) for e, i in zip(validated, internal_ids, strict=True)]
            user_ids: list[str | None] = [s.id for s in stored]
        else:
            stored = [self.stored_event(e, now, None, traceparent) for e in validated]
            user_ids = [e.id for e in validated]
        if not cached_registry or self._version < 0:
            await self.refresh_registry()
        specs, version = self._specs, self._version  # together: a refresh may come while planning in a thread
        runs, failures = await self._plan_runs(specs, stored, user_ids, now, large)
        return IngestBatch(stored, runs, failures, registry_version=version if cached_registry else None)

    async def _plan_runs(
        self,
        specs: dict[str, FunctionSpec],
        events: list[StoredEvent],
        user_ids: list[str | None],
        now: int,
        large: bool = False,
    ) -> tuple[list[NewRun], list[ExpressionFailure]]:
        """The runs the events start, and the expression failures met deciding them. When a function's expressions
        have comprehensions (evaluated on a budget in the sandbox process), or the events are ``large``, the
        planning runs in a thread so the event loop keeps serving meanwhile."""
        if large or any(spec.isolated for spec in specs.values()):
            return await asyncio.to_thread(self._plan_runs_now, specs, events, user_ids, now)
        return self._plan_runs_now(specs, events, user_ids, now)

    def _plan_runs_now(
        self, specs: dict[str, FunctionSpec], events: list[StoredEvent], user_ids: list[str | None], now: int
    ) -> tuple[list[NewRun], list[ExpressionFailure]]:
        runs: list[NewRun] = []
        failures: list[ExpressionFailure] = []
        for ev, user_id in zip(events, user_ids, strict=True):
            if _ends_a_run_started_by_a_run_end(ev):
                continue  # bounded cascades: see _ends_a_run_started_by_a_run_end
            as_dict = ev.as_dict()
            bound = _LazyBindings(as_dict)  # the event converted for CEL once, for every expression over it
            system_source = ev.data.get("function_id") if ev.name.startswith("stepline/function.") else None
            for spec in specs.values():
                if spec.id == system_source:
                    continue  # a run's own end never re-triggers its function (no self-feeding loops)
                met: list[tuple[str, str, str]] = []
                try:
                    fired = spec.matching_trigger(as_dict, met, bound.get() if spec.has_if else None)
                except ExpressionError as exc:  # the event itself cannot be bound (nested past the recursion limit)
                    met.append(("trigger", "", str(exc)))
                    fired = False
                failures += self._reportable(spec.id, met, now)
                if not fired:
                    continue
                key: str | None = None
                try:
                    if spec.idempotency:
                        key = "expr:" + short_key(str(evaluate_key("idempotency", spec.idempotency, bound.get())))
                    elif user_id:
                        key = "event:" + user_id
                    batched = None
                    if spec.flow is not None:
                        try:
                            batched = spec.flow.batched(as_dict, bound.get())
                        except ExpressionError as exc:  # a failing batch `if`: the run goes alone, reported
                            batched = False
                            failures += self._reportable(spec.id, [("batch if", spec.flow.raw["batch"]["if"],
                                                                    str(exc))], now)  # fmt: skip
                    runs.append(new_run(spec, ev.internal_id, now, idempotency_key=key, event=as_dict,
                                        batched=batched, bindings=bound.get() if spec.flow else None))  # fmt: skip
                except KeyExpressionFailed as exc:
                    failures += self._reportable(spec.id, [(exc.place, exc.expression, str(exc))], now)
                    runs.append(self._failed_run(specs, spec, ev, key, now, str(exc)))
        return runs, failures

    def _failed_run(self, specs: dict[str, FunctionSpec], spec: FunctionSpec, ev: StoredEvent, key: str | None,
                    now: int, message: str, parent_run_id: str | None = None,
                    parent_step_id: str | None = None) -> NewRun:  # fmt: skip
        """A run that fails before it starts (a key expression failed), with its end events and what they start."""
        run_id = new_ulid()
        error = {"name": "ExpressionError", "message": message}
        data = run_end_data(spec.id, run_id, ev.as_dict(), RunFinish("failed", error=error))
        events = [self.stored_event(Event(name=n, data=dict(data)), now) for n in run_end_names("failed")]
        runs, failures = self._plan_runs_now(specs, events, [None] * len(events), now)
        return NewRun(id=run_id, function_id=spec.id, event_id=ev.internal_id, idempotency_key=key, created_at=now,
                      due_at=now, parent_run_id=parent_run_id, parent_step_id=parent_step_id, failure=error,
                      follow_up=IngestBatch(events, runs, failures))  # fmt: skip

    def plan_run(self, spec: FunctionSpec, ev: StoredEvent, now: int, *, idempotency_key: str | None = None,
                 parent_run_id: str | None = None, parent_step_id: str | None = None) -> NewRun:  # fmt: skip
        """A run of ``spec`` for ``ev`` started directly (invoke, cron, rerun): ``new_run`` with its flow keys, or,
        when a key expression cannot be evaluated, a run that fails at once with a clear error."""
        try:
            return new_run(spec, ev.internal_id, now, idempotency_key=idempotency_key, parent_run_id=parent_run_id,
                           parent_step_id=parent_step_id,
                           event=ev.as_dict() if spec.flow is not None else None)  # fmt: skip
        except KeyExpressionFailed as exc:
            return self._failed_run(self._specs, spec, ev, idempotency_key, now, str(exc), parent_run_id,
                                    parent_step_id)  # fmt: skip

    def _reportable(self, function_id: str, met: list[tuple[str, str, str]], now: int) -> list[ExpressionFailure]:
        """The failures to store now: each (function, place) at most every REPORT_EVERY_MS per process, with the
        count of the ones held back since; the others are counted and logged at debug level."""
        out: list[ExpressionFailure] = []
        for place, expression, message in met:
            slot = (function_id, place)
            last, held = self._reported.get(slot, (0, 0))
            if now - last < REPORT_EVERY_MS:
                self._reported[slot] = (last, held + 1)
                log.debug("function %s: %s failed again: %s", function_id, place, message)
                continue
            if len(self._reported) > 10_000:
                self._reported.clear()
            self._reported[slot] = (now, 0)
            log.warning("function %s: the %s expression failed: %s", function_id, place, message)
            out.append(ExpressionFailure(function_id, place, expression, message, count=held + 1))
        return out

    async def ingest(
        self,
        events: EventInput | Sequence[EventInput],
        *,
        internal_ids: Sequence[str] | None = None,
        traceparent: str | None = None,
        checked: bool = False,
        large: bool = False,
    ) -> IngestResult:
        """Store events and start the runs they trigger, atomically (``traceparent``, ``checked`` and ``large``: see
        ``plan_ingest``).

        Where the store checks the registry version in the ingest transaction, the send is planned with the cached
        registry (no read first) and planned again, with the registry read afresh, in the rare case that it changed.
        """
        cached = self.store.registry_checked_in_ingest
        while True:
            try:
                batch = await self.plan_ingest(events, internal_ids=internal_ids, traceparent=traceparent,
                                               checked=checked, large=large, cached_registry=cached)  # fmt: skip
            except EventValidationError:
                if (obs := hooks.current) is not None:
                    obs.events_received("invalid", 1 if isinstance(events, Event | Mapping) else len(events))
                raise
            try:
                result = await self.store.ingest(batch, self.matcher, self.clock.now_ms())
                break
            except StaleRegistryError:
                await self.refresh_registry(force=True)
                cached = False  # planned again with the version just read (checked again in the transaction)
        if (obs := hooks.current) is not None:
            obs.events_received("accepted", len(batch.events))
            if result.flow_skipped_run_ids:
                skipped = set(result.flow_skipped_run_ids)
                obs.runs_skipped([r.function_id for r in batch.runs if r.id in skipped])
        if result.cancelled_run_ids:
            await self.announce_cancellations(result.cancelled_run_ids)
        self.notify()
        return result

    async def announce_cancellations(self, run_ids: Sequence[str]) -> None:
        """Emit ``stepline/function.finished`` and ``.cancelled`` for runs a ``cancel_on`` event just cancelled.

        Stored right after the cancelling transaction (the cancellation itself is already durable)."""
        self.waiters.ended(run_ids)
        events: list[StoredEvent] = []
        runs: list[NewRun] = []
        for run_id in run_ids:
            run = await self.store.get_run(run_id)
            trigger = None if run is None else await self.store.get_event(run.event_id)
            if run is None or trigger is None:
                continue
            finish = RunFinish("cancelled", error=run.error)
            self._ended(run, trigger, finish, run.ended_at or self.clock.now_ms())
            await self.follow_up(run, trigger, finish)
            events += finish.follow_up.events
            runs += finish.follow_up.runs
        if events:
            result = await self.store.ingest(IngestBatch(events, runs), self.matcher, self.clock.now_ms())
            await self.announce_cancellations(result.cancelled_run_ids)  # their end events may cancel more

    async def send_signal(self, signal: str, data: Any = None) -> str | None:
        """Resume the run waiting for ``signal`` (``step.wait_for_signal``) with ``data``. Returns its run id, or None
        when no live run waits for that signal (nothing is kept for a later wait, as on Inngest)."""
        check_signal(signal)
        value = to_json_value(data, f"the data of signal {signal!r}")
        problem = json_problem(value, "data")
        if problem is not None:
            raise ValueError(f"the signal's {problem}")
        run_id = await self.store.send_signal(signal, value, self.clock.now_ms())
        if run_id is not None:
            self.notify()
        return run_id

    async def invoke_now(self, function_id: str, data: dict[str, Any] | None = None) -> str:
        """Start a run of one function directly (CLI and API), whatever its triggers. Returns the run id."""
        spec = await self.require_function(function_id)
        now = self.clock.now_ms()
        ev = self.stored_event(validate_event(Event(name=FUNCTION_INVOKED, data=data or {}),
                                              allow_reserved=True), now)  # fmt: skip
        run = self.plan_run(spec, ev, now)
        result = await self.store.ingest(IngestBatch([ev], [run]), self.matcher, now)
        await self.announce_cancellations(result.cancelled_run_ids)
        self.notify()
        return run.id

    # --- runs out ---
    async def follow_up(self, run: RunRecord, trigger: StoredEvent, finish: RunFinish) -> None:
        """Attach the system events of a run's end (and the runs they trigger) to ``finish``."""
        now = self.clock.now_ms()
        data = run_end_data(run.function_id, run.id, trigger.as_dict(), finish)
        # Traced: the runs these events start (on_failure handlers) continue the run's trace, under its span.
        obs = hooks.current
        traced = (
            None if obs is None or obs.tracing is None else obs.tracing.run_traceparent(run.id, trigger.traceparent)
        )
        events = [self.stored_event(Event(name=n, data=dict(data)), now, None, traced)
                  for n in run_end_names(finish.status)]  # fmt: skip
        extra = [self.stored_event(e, now) for e in finish.emit]
        specs = await self.refresh_registry()
        runs, failures = await self._plan_runs(specs, [*events, *extra], [None] * len(events) + [e.id for e in extra],
                                               now)  # fmt: skip
        finish.follow_up = IngestBatch([*events, *extra], runs, failures)

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
        ev = self.stored_event(Event(name=FUNCTION_INVOKED, data=payload), now, None, current_traceparent())
        child = self.plan_run(spec, ev, now, parent_run_id=parent_run_id, parent_step_id=step_id)
        return IngestBatch([ev], [child])

    async def end_run(self, run: RunRecord, trigger: StoredEvent, owner: str | None, finish: RunFinish) -> None:
        """Finish a run with its system events (and the runs they start), then announce what that cancelled."""
        await self.follow_up(run, trigger, finish)
        now = self.clock.now_ms()
        outcome = await self.store.finish_run(run.id, owner, finish, self.matcher, now)
        if outcome.status == "ok":
            self._ended(run, trigger, finish, now)
            self.waiters.ended((run.id,))
        await self.announce_cancellations(outcome.cancelled_run_ids)
        self.notify()

    def _ended(self, run: RunRecord, trigger: StoredEvent | None, finish: RunFinish, now: int) -> None:
        """A run ended: the terminal line (an error for a failure), and the metrics and the run's span."""
        runlog.run_ended(run.function_id, run.id, finish.status,
                         None if run.started_at is None else max(0, now - run.started_at), finish.error)  # fmt: skip
        if (obs := hooks.current) is not None:
            obs.run_ended(run, trigger, finish.status, finish.error, now)

    async def prune(self, default_retention: dt.timedelta = DEFAULT_RETENTION, batch_size: int = 1000,
                    progress: Callable[[PruneResult], None] | None = None) -> PruneResult:  # fmt: skip
        """Delete ended runs (and their steps), unreferenced events and expired idempotency keys older than
        the retention: the function's ``retention`` option, else ``default_retention``. ``progress`` gets the
        totals so far after each transaction."""
        now = self.clock.now_ms()
        specs = await self.refresh_registry()
        cutoffs = {s.id: now - s.retention_ms for s in specs.values() if s.retention_ms is not None}
        default_cutoff = now - int(default_retention.total_seconds() * 1000)
        return await self.store.prune(now, default_cutoff, cutoffs, batch_size, progress)

    async def cancel_run(self, run_id: str, reason: str = "cancelled by API") -> bool:
        """Cancel a queued or running run. Returns False if it had already ended (or does not exist)."""
        run = await self.store.get_run(run_id)
        if run is None or run.status not in ("queued", "running"):
            return False
        trigger = await self.store.get_event(run.event_id)
        finish = RunFinish("cancelled", error={"name": "Cancelled", "message": reason})
        if trigger is not None:
            await self.follow_up(run, trigger, finish)
        now = self.clock.now_ms()
        outcome = await self.store.finish_run(run_id, None, finish, self.matcher, now)
        if outcome.status == "ok":
            self._ended(run, trigger, finish, now)
            self.waiters.ended((run_id,))
        await self.announce_cancellations(outcome.cancelled_run_ids)
        self.notify()
        return outcome.status == "ok"
