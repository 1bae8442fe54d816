"""Steps: the memoised units of a run, and the driver that plans, records and suspends them.

A ``StepDriver`` belongs to one execution of one run in this process. Each step call first *plans*
(look up the memo by its deterministic id: return the recorded result, or decide to execute / suspend),
then, for ``run`` steps, the caller executes the user's callable and *finishes* (record the result durably,
or schedule a retry). The async and sync facades in ``context.py`` share this driver: async code awaits it on
the event loop, sync code (in a worker thread) calls it through the loop with ``run_coroutine_threadsafe``.

Suspension (sleep, wait, invoke, a retry later) adds a pending ``StepUpdate`` and raises ``Suspend``; the
executor waits until no step is in flight, then writes every pending update in one transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepline.core.clock import from_ms
from stepline.core.durations import parse_duration, to_utc
from stepline.core.errors import (
    LeaseLost,
    NonRetriableError,
    ReplayRun,
    RetryAfterError,
    RunCancelled,
    RunPaused,
    SerializationError,
    StepError,
    StepIdConflictError,
    Suspend,
    _RunSignal,
    serialize_error,
)
from stepline.core.events import StoredEvent, canonical_event_name, to_json_value
from stepline.core.expressions import compile_expression, match_to_expression
from stepline.core.function import DEFAULT_WAIT_TIMEOUT, FunctionDef
from stepline.core.ids import StepIdCounter
from stepline.core.json_checks import text_problem
from stepline.core.run_logs import RunLogCapture, enter_step, leave_step
from stepline.observability import hooks, runlog
from stepline.realtime.messages import PublishError, new_message
from stepline.storage.records import SignalConflict, StepRecord, StepUpdate, WaitSpec, WriteOutcome
from stepline.storage.states import IdleReason, retrying_reason

if TYPE_CHECKING:
    from stepline.core.engine import Engine
    from stepline.observability.tracing import RunTrace


def new_span_id() -> int:
    from stepline.observability.tracing import new_span_id as new

    return new()


MAX_SLEEP = dt.timedelta(days=366)  # a sleep, or a wait's timeout, may last at most this long (as Inngest since 2026)
MAX_SLEEP_MS = int(MAX_SLEEP.total_seconds() * 1000)
CONFLICTS = ("fail", "replace")


def sleep_too_long(raw: Any) -> str:
    """Inngest's words for a sleep beyond ``MAX_SLEEP`` (the run fails at once, without retries)."""
    return f'The sleep "{raw}" ends more than one year in the future; sleeps may last at most one year.'


def wait_too_long(raw: Any) -> str:
    return (f'The wait-for-event timeout "{raw}" expires more than one year in the future; timeouts may last '
            "at most one year.")  # fmt: skip


MAX_SIGNAL_CHARS = 1024


def check_signal(signal: Any) -> str:
    """A signal's name as given, or ValueError saying what is wrong with it (it is stored and matched as text)."""
    if not isinstance(signal, str) or not signal:
        raise ValueError(f"a signal must be a non-empty string, got {signal!r:.80}")
    if len(signal) > MAX_SIGNAL_CHARS:
        raise ValueError(f"a signal name has at most {MAX_SIGNAL_CHARS} characters, got {len(signal)}")
    problem = text_problem(signal, "the signal name")
    if problem is not None:
        raise ValueError(problem)
    return signal


def signal_reason(step: str, signal: str, until: int) -> IdleReason:
    """A signal wait's idle reason (in-process and HTTP runs alike), with its words."""
    at = dt.datetime.fromtimestamp(until / 1000, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"kind": "waiting", "step": step, "signal": signal, "until": until,
            "message": f"waiting for signal {signal!r} until {at}"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Memo:
    """A step already has its result."""

    value: Any


@dataclass(frozen=True, slots=True)
class Execute:
    """A ``run`` step must execute now, at this (0-based) attempt."""

    display_id: str
    step_id: str
    attempt: int
    started: float = 0.0  # time.perf_counter() when it was planned (step metrics)
    span_id: int = 0  # the attempt's span when the run is traced
    started_at: int | None = None  # the engine's clock (ms) when it was planned: the attempt's start


class StepDriver:
    def __init__(self, engine: Engine, fn: FunctionDef, run_id: str, owner: str, memo: dict[str, StepRecord],
                 trigger: StoredEvent) -> None:  # fmt: skip
        self.engine = engine
        self.fn = fn
        self.run_id = run_id
        self.owner = owner
        self.memo = memo
        self.trigger = trigger
        self.ids = StepIdCounter()
        self.pending: list[StepUpdate] = []
        self.reasons: list[IdleReason] = []
        self.fatal: BaseException | None = None  # a non-determinism error: fails the run whatever user code does
        self.stop: BaseException | None = None  # set once the run was cancelled or its lease lost
        self.closed = False
        self.deadline_ms: int | None = None  # timeouts.finish
        self.lease_until: int | None = None  # this worker's lease, as last claimed or renewed
        self.timed_out = False
        # Inngest's retry rule: each stretch of code between two steps gets the function's full retries. Set once
        # this execution recorded a step's result or reached a new sleep, wait or invoke: the code after that is a
        # new stretch, whose function-level attempt starts at 0 (``on_new_stretch`` tells ``ctx``).
        self.stretch_ended = False
        self.on_new_stretch: Callable[[], None] | None = None
        # A step's result held back until the run's next write (see ``finish_run``), and that write in progress.
        self.unwritten: list[StepUpdate] = []
        self._flushing: asyncio.Future[None] | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._lock = threading.Lock()
        # Replaying while a step recorded by an earlier execution is still ahead (and no new step was planned):
        # log records emitted meanwhile were captured the first time, so the capture drops them.
        self._replayed: set[str] = set(memo)
        self.logs = RunLogCapture(engine.clock.now_ms, replaying=bool(memo))
        self.trace: RunTrace | None = None  # the run's trace when it is sampled (observability/tracing.py)

    # --- bookkeeping ---
    def _now(self) -> int:
        return self.engine.clock.now_ms()

    def _end_stretch(self) -> None:
        if not self.stretch_ended:
            self.stretch_ended = True
            if self.on_new_stretch is not None:
                self.on_new_stretch()

    def _begin(self, kind: str, user_id: str) -> tuple[str, str, StepRecord | None]:
        if self.stop is not None:
            raise self.stop
        if self.closed:
            raise LeaseLost()
        now = self._now()
        if self.lease_until is not None and now >= self.lease_until:
            # The lease may have passed to another worker (this process stalled): run no more step code.
            self.stop = LeaseLost()
            raise self.stop
        if self.deadline_ms is not None and now >= self.deadline_ms:
            self.timed_out = True
            self.stop = RunCancelled()
            raise self.stop
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"a step id must be a non-empty string, got {user_id!r}")
        display_id, step_id = self.ids.next(user_id)
        rec = self.memo.get(step_id)
        if self.logs.replaying:
            self._replayed.discard(step_id)
            self.logs.replaying = rec is not None and bool(self._replayed)
        if rec is not None and rec.kind != kind:
            err = StepIdConflictError(
                f"step {display_id!r} was recorded as a {rec.kind!r} step, but the code now uses it as a "
                f"{kind!r} step: step ids must keep their meaning across deploys of a running function"
            )
            self.fatal = err
            raise err
        return display_id, step_id, rec

    def pending_with_logs(self) -> list[StepUpdate]:
        """The pending updates, the last one carrying the log lines captured since the last write."""
        if not self.pending:
            return self.pending  # nothing to carry them: the lines wait for the run's next write
        logs = self.logs.take()
        if logs is None:
            return self.pending
        return [*self.pending[:-1], dataclasses.replace(self.pending[-1], logs=logs)]

    def _suspend(self, update: StepUpdate, reason: IdleReason, new_step: bool = False) -> Suspend:
        if new_step:  # a sleep, wait or invoke reached for the first time: its end starts a new stretch
            self._end_stretch()
        with self._lock:
            self.pending.append(update)
            self.reasons.append(reason)
        return Suspend()

    async def wait_idle(self) -> None:
        while self._inflight:
            self._idle.clear()
            await self._idle.wait()

    async def flush(self) -> None:
        """Write the step result held back by ``finish_run``: before any other step begins or the run writes.

        Callers that arrive while it is being written wait for the same write, in the order they arrived.
        """
        if self._flushing is None:
            if not self.unwritten:
                return
            self._flushing = asyncio.ensure_future(self._write_unwritten())
        await asyncio.shield(self._flushing)

    async def _write_unwritten(self) -> None:
        try:
            while self.unwritten:
                update = self.unwritten[0]
                try:
                    rec = await self._write(update)
                except _RunSignal:
                    self.unwritten.clear()  # the run stopped (cancelled, lease lost): nothing more to write
                    raise
                del self.unwritten[0]  # (an error leaves it for the next write to try again)
                if (rec.status, rec.output) != (update.status, update.output):
                    # The code went on with a value that is not the recorded one: only a replay sees the truth.
                    self.stop = ReplayRun()
                    raise self.stop
        finally:
            self._flushing = None

    async def _flush_before(self, rec: StepRecord | None) -> None:
        """Before a step goes on (its id is taken first, so parallel steps keep the order they began in): the
        held-back result is durable, unless this step only returns a recorded result."""
        if rec is not None and rec.is_memo:
            return
        await self.flush()
        if self.stop is not None:
            raise self.stop

    def _hold_back(self, update: StepUpdate) -> StepRecord:
        """Keep a completed step's result for the run's next write instead of writing it now.

        The run's code goes on at once; the result becomes durable with whatever the run writes next (the next
        step flushes it first, the run's end writes it in the same transaction). No step's code starts before
        it is durable, and a crash before then runs the step again, as a crash before its own write would.
        """
        logs = self.logs.take()
        if logs is not None:
            update = dataclasses.replace(update, logs=logs)
        self.unwritten.append(update)
        self._end_stretch()
        now = self._now()
        rec = StepRecord(self.run_id, update.step_id, update.display_id, update.kind, update.status,
                         update.attempts, update.output, None, None, now, now)  # fmt: skip
        self.memo[rec.step_id] = rec
        return rec

    async def _record(self, update: StepUpdate) -> StepRecord:
        await self.flush()
        logs = self.logs.take()
        if logs is not None:
            update = dataclasses.replace(update, logs=logs)
        return await self._write(update)

    async def _write(self, update: StepUpdate) -> StepRecord:
        outcome: WriteOutcome = await self.engine.store.record_step(
            self.run_id, self.owner, update, self.engine.matcher, self._now()
        )
        if outcome.cancelled_run_ids:
            await self.engine.announce_cancellations(outcome.cancelled_run_ids)
        if outcome.status == "cancelled":
            self.stop = RunCancelled()
            raise self.stop
        assert outcome.step is not None
        rec = outcome.step
        self.memo[rec.step_id] = rec
        if rec.is_memo:
            self._end_stretch()
        if outcome.status == "lost":
            self.stop = LeaseLost()
            raise self.stop
        return rec

    def _memo_value(self, rec: StepRecord) -> Any:
        if rec.status == "failed":
            err = rec.error or {}
            raise StepError(rec.display_id, err.get("name", "Error"), err.get("message", ""), err.get("stack"))
        return rec.output

    # --- step.run ---
    async def plan_run(self, user_id: str) -> Memo | Execute:
        display_id, step_id, rec = self._begin("run", user_id)
        await self._flush_before(rec)
        if rec is not None:
            if rec.is_memo:
                return Memo(self._memo_value(rec))
            if rec.status == "retrying" and rec.wake_at is not None and rec.wake_at > self._now():
                raise self._suspend(
                    StepUpdate(step_id, display_id, "run", "retrying", rec.attempts, error=rec.error,
                               wake_at=rec.wake_at),
                    retrying_reason(display_id, rec.wake_at, rec.error),
                )  # fmt: skip
        if self.fn.id in self.engine.paused:  # paused: no new step code runs (memoized steps still replay)
            self.stop = RunPaused()
            raise self.stop
        self._inflight += 1
        self._idle.clear()
        span = 0 if self.trace is None else new_span_id()
        return Execute(display_id, step_id, rec.attempts if rec is not None else 0, time.perf_counter(), span,
                       self._now())  # fmt: skip

    def enter(self, plan: Execute) -> tuple[Any, Any]:
        """The step's code starts (in the thread or task that runs it): its log records belong to the step, and with
        tracing the step's span is the current span (the code's own spans nest under it)."""
        step = enter_step(plan.step_id)
        if self.trace is None:
            return step, None
        from opentelemetry import context

        return step, context.attach(self.trace.context(plan.span_id))

    def leave(self, tokens: tuple[Any, Any]) -> None:
        step, span = tokens
        if span is not None:
            from opentelemetry import context

            context.detach(span)
        leave_step(step)

    def abandon(self, plan: Execute) -> None:
        """The step's code did not finish (cancelled, or the process is stopping): record nothing."""
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()

    async def finish_run(self, plan: Execute, value: Any = None, error: BaseException | None = None) -> Any:
        try:
            if error is None:
                try:
                    output = to_json_value(value, f"the result of step {plan.display_id!r}")
                except SerializationError as exc:
                    error = exc
            if error is None:
                if hooks.current is not None or self.trace is not None:  # (nothing to report otherwise)
                    self._attempted(plan, "completed")
                update = StepUpdate(plan.step_id, plan.display_id, "run", "completed", plan.attempt + 1, output=output,
                                    started_at=plan.started_at)  # fmt: skip
                if self._inflight == 1 and not self.unwritten and self._flushing is None:
                    return self._hold_back(update).output  # no parallel step in flight: see _hold_back
                return self._memo_value(await self._record(update))
            now = self._now()
            retriable = not isinstance(error, NonRetriableError | SerializationError)
            if retriable and plan.attempt < self.fn.retries:
                if isinstance(error, RetryAfterError):
                    wake = int(error.earliest(from_ms(now)).timestamp() * 1000)
                else:
                    wake = now + int(self.fn.backoff.delay(plan.attempt).total_seconds() * 1000)
                self._attempted(plan, "retrying", error, wake)
                raise self._suspend(
                    StepUpdate(plan.step_id, plan.display_id, "run", "retrying", plan.attempt + 1,
                               error=serialize_error(error), wake_at=wake, started_at=plan.started_at),
                    retrying_reason(plan.display_id, wake, serialize_error(error)),
                )  # fmt: skip
            self._attempted(plan, "failed", error)
            rec = await self._record(StepUpdate(plan.step_id, plan.display_id, "run", "failed", plan.attempt + 1,
                                                error=serialize_error(error), started_at=plan.started_at))  # fmt: skip
            return self._memo_value(rec)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    def _attempted(self, plan: Execute, outcome: str, error: BaseException | None = None,
                   retry_at: int | None = None) -> None:  # fmt: skip
        """A run step's attempt ended (completed, retrying, failed): the terminal line when its code raised, the step
        metrics and, when traced, its span."""
        seconds = time.perf_counter() - plan.started
        serialized = serialize_error(error) if error is not None else None
        if serialized is not None:
            runlog.attempt_failed(self.fn.id, self.run_id, plan.display_id, plan.attempt, serialized, retry_at)
        if (obs := hooks.current) is not None:
            obs.step_attempt(self.fn.id, "run", outcome, seconds)
        if self.trace is not None:
            end = time.time_ns()
            self.trace.step(f"step {plan.display_id}", plan.span_id, end - int(seconds * 1e9), end,
                            {"stepline.step.id": plan.display_id, "stepline.step.attempt": plan.attempt,
                             "stepline.step.outcome": outcome},
                            serialized)  # fmt: skip

    # --- step.sleep / sleep_until ---
    async def sleep(self, user_id: str, until: int | None, duration: Any = None) -> None:
        display_id, step_id, rec = self._begin("sleep", user_id)
        await self._flush_before(rec)
        now = self._now()
        if rec is not None:
            if rec.is_memo:
                return None
            wake = rec.wake_at or now
        else:
            if until is None:
                until = now + int(parse_duration(duration).total_seconds() * 1000)
            if until - now > MAX_SLEEP_MS:
                raise NonRetriableError(
                    f"step {display_id!r}: {sleep_too_long(duration or from_ms(until).isoformat())}"
                )
            wake = until
        if wake <= now:
            await self._record(StepUpdate(step_id, display_id, "sleep", "completed", 1, output=None))
            return None
        raise self._suspend(
            StepUpdate(step_id, display_id, "sleep", "sleeping", wake_at=wake),
            {"kind": "sleeping", "step": display_id, "until": wake},
            new_step=rec is None,
        )

    async def _wait_again(self, rec: StepRecord, reason: IdleReason) -> dict[str, Any] | None:
        """A wait step (for an event or a signal) reached again: its result, ``None`` if it timed out (recorded
        now), or still waiting (suspends the run again)."""
        if not rec.is_memo and rec.wake_at is not None and rec.wake_at <= self._now():
            rec = await self._record(StepUpdate(rec.step_id, rec.display_id, rec.kind, "completed", 1))
        if rec.is_memo:
            value = self._memo_value(rec)
            return value if isinstance(value, dict) else None
        raise self._suspend(StepUpdate(rec.step_id, rec.display_id, rec.kind, "waiting", wake_at=rec.wake_at), reason)

    # --- step.wait_for_event ---
    async def wait_for_event(
        self, user_id: str, event: str, if_exp: str | None, match: str | None, timeout: Any
    ) -> dict[str, Any] | None:
        display_id, step_id, rec = self._begin("wait_for_event", user_id)
        await self._flush_before(rec)
        now = self._now()
        if rec is not None:
            return await self._wait_again(rec, {"kind": "waiting", "step": display_id, "event": event,
                                                "until": rec.wake_at})  # fmt: skip
        if not isinstance(event, str) or not event:
            raise ValueError(f"step {display_id!r}: wait_for_event needs an event name")
        if if_exp is not None and match is not None:
            raise ValueError(f"step {display_id!r}: give either if_exp or match, not both")
        expression = if_exp if if_exp is not None else (match_to_expression(match) if match else None)
        if expression is not None:
            compile_expression(expression)
        delta = parse_duration(timeout if timeout is not None else DEFAULT_WAIT_TIMEOUT)
        if delta > MAX_SLEEP:
            raise NonRetriableError(f"step {display_id!r}: {wait_too_long(timeout)}")
        since = await self.engine.store.event_cursor()
        wake = now + int(delta.total_seconds() * 1000)
        name = canonical_event_name(event)
        raise self._suspend(
            StepUpdate(step_id, display_id, "wait_for_event", "waiting", wake_at=wake,
                       wait=WaitSpec(name, expression, wake), since=since),
            {"kind": "waiting", "step": display_id, "event": name, "until": wake},
            new_step=True,
        )  # fmt: skip

    # --- step.wait_for_signal ---
    async def wait_for_signal(self, user_id: str, signal: str, timeout: Any, on_conflict: str) -> dict[str, Any] | None:
        display_id, step_id, rec = self._begin("wait_for_signal", user_id)
        await self._flush_before(rec)
        now = self._now()
        if rec is not None:
            return await self._wait_again(rec, signal_reason(display_id, signal, rec.wake_at or now))
        try:
            check_signal(signal)
        except ValueError as exc:
            raise ValueError(f"step {display_id!r}: wait_for_signal: {exc}") from None
        if on_conflict not in CONFLICTS:
            raise ValueError(f"step {display_id!r}: on_conflict must be 'fail' or 'replace', got {on_conflict!r}")
        delta = parse_duration(timeout if timeout is not None else DEFAULT_WAIT_TIMEOUT)
        wake = now + int(delta.total_seconds() * 1000)
        update = StepUpdate(step_id, display_id, "wait_for_signal", "waiting", wake_at=wake)
        try:  # registered at once: a signal sent from now on is not lost (see Store.wait_for_signal)
            outcome = await self.engine.store.wait_for_signal(self.run_id, self.owner, update, signal,
                                                              on_conflict == "replace", now)  # fmt: skip
        except SignalConflict as exc:
            raise NonRetriableError(f"step {display_id!r}: signal conflict: {exc} (wait with on_conflict='replace' "
                                    "to take it over)") from None  # fmt: skip
        if outcome.status == "cancelled":
            self.stop = RunCancelled()
            raise self.stop
        if outcome.status == "lost":
            self.stop = LeaseLost()
            raise self.stop
        assert outcome.step is not None
        if outcome.step.is_memo:
            self.memo[step_id] = outcome.step
            value = self._memo_value(outcome.step)
            return value if isinstance(value, dict) else None
        raise self._suspend(update, signal_reason(display_id, signal, wake), new_step=True)

    # --- step.invoke ---
    async def invoke(self, user_id: str, function: FunctionDef | str, data: Any, timeout: Any) -> Any:
        display_id, step_id, rec = self._begin("invoke", user_id)
        await self._flush_before(rec)
        now = self._now()
        if rec is not None:
            if rec.is_memo:
                return self._memo_value(rec)
            if rec.wake_at is not None and rec.wake_at <= now:
                rec = await self._record(StepUpdate(step_id, display_id, "invoke", "failed", 1, error={
                    "name": "InvokeTimeoutError",
                    "message": "Timed out waiting for invoked function to complete"}))  # fmt: skip
                return self._memo_value(rec)
            raise self._suspend(
                StepUpdate(step_id, display_id, "invoke", "invoking", wake_at=rec.wake_at),
                {"kind": "invoking", "step": display_id, "until": rec.wake_at},
            )
        target_id = function.id if isinstance(function, FunctionDef) else str(function)
        spec = await self.engine.find_function(target_id, default_app=self.fn.app_id)
        if spec is None:
            rec = await self._record(StepUpdate(step_id, display_id, "invoke", "failed", 1, error={
                "name": "UnknownFunctionError",
                "message": f"step.invoke: no registered function has id {target_id!r}"}))  # fmt: skip
            return self._memo_value(rec)
        payload = to_json_value(data if data is not None else {}, f"the data of step {display_id!r}")
        if not isinstance(payload, dict):
            raise ValueError(f"step {display_id!r}: invoke data must be a JSON object")
        delta = parse_duration(timeout if timeout is not None else DEFAULT_WAIT_TIMEOUT)
        wake = now + int(delta.total_seconds() * 1000)
        batch = self.engine.plan_invoke(spec, self.run_id, step_id, self.fn.id, payload, wake, now)
        raise self._suspend(
            StepUpdate(step_id, display_id, "invoke", "invoking", wake_at=wake, invoke=batch),
            {"kind": "invoking", "step": display_id, "function": spec.id, "run_id": batch.runs[0].id, "until": wake},
            new_step=True,
        )

    # --- step.send_event ---
    async def send_event(self, user_id: str, events: Any) -> list[str]:
        display_id, step_id, rec = self._begin("send_event", user_id)
        await self._flush_before(rec)
        if rec is not None and rec.is_memo:
            return list(self._memo_value(rec) or [])
        batch = await self.engine.plan_ingest(events)
        ids = [e.internal_id for e in batch.events]
        await self._record(StepUpdate(step_id, display_id, "send_event", "completed", 1, output=ids, emit=batch))
        self.engine.notify()
        return ids

    # --- realtime: ctx.publish and ctx.step.publish's code ---
    async def publish(self, channel: str, topic: str, data: Any) -> int | None:
        """Publish a message for this run; None when the code is being replayed before a recorded step (the first
        execution published it). Raises PublishError when the run's execution is over or the message is bad."""
        if self.closed or self.stop is not None:
            raise PublishError(f"run {self.run_id} has ended (or stopped executing here): ctx.publish works only "
                               "while the run executes, from its function body or a step", 409)  # fmt: skip
        if self.logs.replaying:
            return None
        msg = new_message(channel, topic, data, self._now(), run_id=self.run_id)
        [message_id] = await self.engine.realtime.publish([msg])
        return message_id


def sleep_until_ms(when: dt.datetime | str) -> int:
    return int(to_utc(when).timestamp() * 1000)
