"""Test your own functions without a worker or a database: ``await stepline.testing.run(fn, event=...)``.

The function runs in this process with a fake context whose steps behave as they do on a worker, minus the
waiting: a step's result goes through JSON as a replay would see it, a failing step is retried (``fn.retries``)
and then raises ``StepError`` into the function, and sleeps, retry backoffs and wait timeouts move a ``FakeClock``
forward instead of sleeping. An error outside any step runs the function again (as a new attempt, with the steps
that completed memoised), up to its retries.

What the outside world would do is given up front, by step id (a repeated id is ``"id:1"``, ``"id:2"``...):

- ``steps={"charge": {"ok": True}}``: the step returns this instead of running its code; an exception instance
  fails the step at once (``StepError`` in the function).
- ``events={"wait-id": {"name": ..., "data": ...}}``: what ``wait_for_event`` receives (``None``, or no entry: the
  wait times out).
- ``signals={"wait-id": data}``: ``wait_for_signal`` receives ``{"signal", "data"}`` (no entry: it times out).
- ``invokes={"step-id": output}``: ``invoke``'s result; without one, a ``FunctionDef`` target runs here too.

An id given for a step that never ran is an error (a typo would otherwise test nothing).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from stepline.core.clock import FakeClock
from stepline.core.context import AsyncStep, Context, SyncContext, SyncStep, new_context
from stepline.core.durations import parse_duration
from stepline.core.errors import (
    NonRetriableError,
    RetryAfterError,
    SerializationError,
    StepError,
    StepIdConflictError,
    Suspend,
    serialize_error,
)
from stepline.core.events import Event, StoredEvent, to_json_value, validate_event
from stepline.core.function import DEFAULT_WAIT_TIMEOUT, FunctionDef
from stepline.core.ids import StepIdCounter
from stepline.core.steps import Execute, Memo, check_signal
from stepline.realtime.messages import check_channel, check_topic
from stepline.serving.call import unwrap_signals

if TYPE_CHECKING:
    from stepline.core.steps import StepDriver

__all__ = ["RunResult", "StepCall", "run", "run_step"]

EventInput = Event | Mapping[str, Any]
_FINAL = (StepError, NonRetriableError, StepIdConflictError, SerializationError)  # no function retries


@dataclass
class StepCall:
    """One step the function reached, in order: ``kind`` is ``run``, ``sleep``, ``wait_for_event``,
    ``wait_for_signal``, ``invoke`` or ``send_event``."""

    id: str
    kind: str
    output: Any = None
    error: dict[str, Any] | None = None  # a failed step: {"name", "message", "stack"}
    attempts: int = 1
    mocked: bool = False


@dataclass
class RunResult:
    """What a run did: its ``output``, the steps it reached, the events it sent, the messages it published and
    its clock (``clock.now()`` is how much time its sleeps, backoffs and timeouts took)."""

    output: Any
    steps: dict[str, StepCall]
    sent: list[dict[str, Any]]
    published: list[tuple[str, str, Any]]
    clock: FakeClock
    attempts: int  # executions of the function (1 unless code outside a step raised and was retried)


def _stored(raw: EventInput, now: int, n: int) -> StoredEvent:
    event = validate_event(raw, allow_reserved=True)
    eid = event.id or f"test-event-{n}"
    user = event.user if isinstance(event.user, dict) else {}
    return StoredEvent(eid, eid, event.name, event.data, user, event.ts or now, event.v, now)


class _Driver:
    """What ``AsyncStep``/``SyncStep`` call on a worker's ``StepDriver``, answered in memory."""

    def __init__(self, fn: FunctionDef, retries: int, clock: FakeClock, mocks: _Mocks, run_id: str) -> None:
        self.fn = fn
        self.retries = retries
        self.clock = clock
        self.mocks = mocks
        self.run_id = run_id
        self.steps: dict[str, StepCall] = {}  # the memo: kept across the function's attempts
        self.sent: list[dict[str, Any]] = []
        self.published: list[tuple[str, str, Any]] = []
        self.ids = StepIdCounter()
        self.new_step = False  # a step completed in this attempt: the function's retries start again
        self.retrying: dict[str, int] = {}  # run steps that failed, and their next attempt
        self._numbers = itertools.count(1)

    def _now(self) -> int:
        return self.clock.now_ms()

    def _skip(self, until_ms: int) -> None:
        if until_ms > self._now():
            self.clock.advance((until_ms - self._now()) / 1000)

    def _memo(self, display_id: str) -> Any:
        call = self.steps[display_id]
        if call.error is not None:
            raise StepError(display_id, call.error.get("name", "Error"), call.error.get("message", ""),
                            call.error.get("stack"))  # fmt: skip
        return call.output

    def _record(self, call: StepCall) -> Any:
        self.steps[call.id] = call
        self.new_step = True
        return self._memo(call.id)

    # --- step.run: the facade runs the code between plan_run and finish_run ---
    async def plan_run(self, user_id: str) -> Memo | Execute:
        display_id, step_id = self.ids.next(user_id)
        if display_id not in self.steps:
            mock = self.mocks.take("steps", display_id)
            if mock is not _NONE:
                self._record(self._mocked(display_id, mock))
        if display_id in self.steps:
            return Memo(self._memo(display_id))
        return Execute(display_id, step_id, self.retrying.get(display_id, 0), 0.0)

    def enter(self, plan: Execute) -> None:
        return None

    def leave(self, tokens: None) -> None:
        return None

    def abandon(self, plan: Execute) -> None:
        return None

    async def finish_run(self, plan: Execute, value: Any = None, error: BaseException | None = None) -> Any:
        """A step's code ran: its result as a replay returns it, or (an error with retries left) the clock skips
        the backoff and the function runs again from the start, as a worker replays it."""
        if error is None:
            try:
                output = to_json_value(value, f"the result of step {plan.display_id!r}")
                return self._record(StepCall(plan.display_id, "run", output=output, attempts=plan.attempt + 1))
            except SerializationError as exc:
                error = exc
        retriable = not isinstance(error, NonRetriableError | SerializationError)
        if retriable and plan.attempt < self.retries and isinstance(error, Exception):
            self._backoff(error, plan.attempt)
            self.retrying[plan.display_id] = plan.attempt + 1
            raise Suspend()
        return self._record(StepCall(plan.display_id, "run", error=serialize_error(error), attempts=plan.attempt + 1))

    def _mocked(self, display_id: str, mock: Any) -> StepCall:
        if isinstance(mock, BaseException):
            return StepCall(display_id, "run", error=serialize_error(mock), mocked=True)
        return StepCall(display_id, "run", output=to_json_value(mock, f"the mocked result of step {display_id!r}"),
                        mocked=True)  # fmt: skip

    def _backoff(self, exc: Exception, attempt: int) -> None:
        if isinstance(exc, RetryAfterError):
            self._skip(int(exc.earliest(self.clock.now()).timestamp() * 1000))
        else:
            self.clock.advance(self.fn.backoff.delay(attempt, rand=lambda: 0.0))

    # --- sleeps and waits: the clock moves on ---
    async def sleep(self, user_id: str, until: int | None, duration: Any = None) -> None:
        display_id, _ = self.ids.next(user_id)
        if display_id not in self.steps:
            self._skip(until if until is not None else self._now() + _ms(duration))
            self._record(StepCall(display_id, "sleep"))
        return None

    def _timeout(self, display_id: str, timeout: Any) -> None:
        self._skip(self._now() + _ms(timeout if timeout is not None else DEFAULT_WAIT_TIMEOUT))

    async def wait_for_event(self, user_id: str, event: str, if_exp: str | None, match: str | None,
                             timeout: Any) -> dict[str, Any] | None:  # fmt: skip
        display_id, _ = self.ids.next(user_id)
        if display_id not in self.steps:
            if not isinstance(event, str) or not event:
                raise ValueError(f"step {display_id!r}: wait_for_event needs an event name")
            got = self.mocks.take("events", display_id)
            if got is _NONE or got is None:
                self._timeout(display_id, timeout)
                output = None
            else:
                output = _stored(got, self._now(), next(self._numbers)).as_dict()
            self._record(StepCall(display_id, "wait_for_event", output=output, mocked=output is not None))
        value = self._memo(display_id)
        return value if isinstance(value, dict) else None

    async def wait_for_signal(self, user_id: str, signal: str, timeout: Any,
                              on_conflict: str) -> dict[str, Any] | None:  # fmt: skip
        display_id, _ = self.ids.next(user_id)
        if display_id not in self.steps:
            check_signal(signal)
            got = self.mocks.take("signals", display_id)
            if got is _NONE:
                self._timeout(display_id, timeout)
                output = None
            else:
                output = {"signal": signal, "data": to_json_value(got, f"the signal data of step {display_id!r}")}
            self._record(StepCall(display_id, "wait_for_signal", output=output, mocked=output is not None))
        value = self._memo(display_id)
        return value if isinstance(value, dict) else None

    async def invoke(self, user_id: str, function: FunctionDef | str, data: Any, timeout: Any) -> Any:
        display_id, _ = self.ids.next(user_id)
        if display_id not in self.steps:
            got = self.mocks.take("invokes", display_id)
            if got is not _NONE:
                self._record(self._mocked(display_id, got))
            elif isinstance(function, FunctionDef):
                payload = {"name": "inngest/function.invoked", "data": to_json_value(data or {}, "invoke data")}
                try:
                    child = await run(function, payload, clock=self.clock)
                    self._record(StepCall(display_id, "invoke", output=child.output))
                except Exception as exc:
                    self._record(StepCall(display_id, "invoke", error=serialize_error(exc)))
            else:
                raise ValueError(f"step {display_id!r} invokes {function!r}: give its result in invokes="
                                 f"{{{display_id!r}: ...}} (or pass the FunctionDef to run it here)")  # fmt: skip
        return self._memo(display_id)

    async def send_event(self, user_id: str, events: Any) -> list[str]:
        display_id, _ = self.ids.next(user_id)
        if display_id not in self.steps:
            items: list[Any] = [events] if not isinstance(events, Sequence) or isinstance(events, str) else list(events)
            stored = [_stored(e, self._now(), next(self._numbers)) for e in items]
            self.sent.extend(e.as_dict() for e in stored)
            self._record(StepCall(display_id, "send_event", output=[e.internal_id for e in stored]))
        return list(self._memo(display_id))

    async def publish(self, channel: str, topic: str, data: Any) -> int | None:
        check_channel(channel)
        check_topic(topic)
        self.published.append((channel, topic, to_json_value(data, "a published message")))
        return len(self.published)


_NONE: Any = object()  # no mock given


class _Mocks:
    def __init__(self, **given: Mapping[str, Any] | None) -> None:
        self.given = {kind: dict(m or {}) for kind, m in given.items()}
        self.used: set[tuple[str, str]] = set()

    def take(self, kind: str, step_id: str) -> Any:
        table = self.given[kind]
        if step_id not in table:
            return _NONE
        self.used.add((kind, step_id))
        return table[step_id]

    def check_all_used(self, reached: Sequence[str]) -> None:
        for kind, table in self.given.items():
            unused = sorted(k for k in table if (kind, k) not in self.used)
            if unused:
                raise ValueError(f"{kind}= names steps the function never reached: {', '.join(map(repr, unused))} "
                                 f"(steps reached: {', '.join(map(repr, reached)) or 'none'})")  # fmt: skip


def _ms(duration: Any) -> int:
    return int(parse_duration(duration).total_seconds() * 1000)


async def run(
    fn: FunctionDef,
    event: EventInput | None = None,
    *,
    steps: Mapping[str, Any] | None = None,
    events: Mapping[str, EventInput | None] | None = None,
    signals: Mapping[str, Any] | None = None,
    invokes: Mapping[str, Any] | None = None,
    batch: Sequence[EventInput] | None = None,
    retries: int | None = None,
    clock: FakeClock | None = None,
    run_id: str = "test-run",
) -> RunResult:
    """Run ``fn`` (a function of a ``Stepline`` app) once to its end, in this process; see the module's doc.

    ``event`` is the triggering event (``{"name": ...}`` by default); ``batch`` the events of a batched run
    (``ctx.events``). ``retries`` overrides the function's (steps and the function alike): ``retries=0`` makes
    the first error final. Raises what the function raises once its retries are spent (a failed step it does
    not catch raises ``StepError``)."""
    clock = clock or FakeClock()
    retries = fn.retries if retries is None else retries
    trigger = _stored(event if event is not None else {"name": "test/event"}, clock.now_ms(), 0)
    batch_events = [_stored(e, clock.now_ms(), i) for i, e in enumerate(batch or (), 1)] or [trigger]
    mocks = _Mocks(steps=steps, events=events, signals=signals, invokes=invokes)
    driver = _Driver(fn, retries, clock, mocks, run_id)
    logger = logging.LoggerAdapter(logging.getLogger(f"stepline.fn.{fn.slug}"), {"run_id": run_id})
    loop = asyncio.get_running_loop()
    attempt = 0
    executions = 0
    while True:
        driver.ids = StepIdCounter()
        driver.new_step = False
        shim = cast("StepDriver", driver)  # _Driver provides every StepDriver method the step facades call
        step = AsyncStep(shim) if fn.is_async else SyncStep(shim, loop)
        ctx = new_context(step, event=trigger, events=batch_events, run_id=run_id, attempt=attempt,
                          function_id=fn.id, logger=logger)  # fmt: skip
        executions += 1
        try:
            if isinstance(ctx, Context):
                output = await fn.handler(ctx)
            else:
                assert isinstance(ctx, SyncContext)
                output = await loop.run_in_executor(None, fn.handler, ctx)
            output = to_json_value(output, f"the return value of function {fn.id!r}")
            break
        except BaseException as raised:
            exc = unwrap_signals(raised)
            if isinstance(exc, Suspend):
                continue  # a step is retried: the function runs again from the start, as on a worker
            attempt = 0 if driver.new_step else attempt
            if not isinstance(exc, Exception) or isinstance(exc, _FINAL) or attempt >= retries:
                raise
            driver._backoff(exc, attempt)
            attempt += 1
    mocks.check_all_used(list(driver.steps))
    return RunResult(output, driver.steps, driver.sent, driver.published, clock, executions)


async def run_step(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one step's code as ``ctx.step.run`` would, once: its result is returned as a replay sees it (through
    JSON: a tuple comes back as a list, a pydantic model as a dict), and a result that is not JSON-compatible
    raises ``SerializationError`` here rather than on a worker."""
    value = fn(*args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return to_json_value(value, f"the result of {getattr(fn, '__name__', 'the step')}")
