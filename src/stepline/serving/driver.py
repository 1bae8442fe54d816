"""The step driver of one SDK call: the same ``ctx.step`` API as in-process, answered from the call's memo.

A call (``POST ?fnId=&stepId=``) replays the function against the memo the server sent: a memoised step
returns its value (``{"data"}``) or raises ``StepError`` (``{"error"}``); the first *new* step ends the call.
``CallDriver`` duck-types what ``AsyncStep``/``SyncStep`` (core/context.py) call on ``StepDriver``.

New steps, by the kind of call:

- **Discovery** (``stepId=step``): the first new step waits for its parallel siblings to arrive (a few passes of
  the event loop; for sync functions, whose branches are threads, until no new step arrived for 5 ms). A single
  new ``step.run`` executes at once when immediate execution is allowed (``206 [StepRun]``); otherwise every new
  step is reported in one response: runs as ``StepPlanned`` (the server then calls each with its id), sleeps,
  waits and invokes as their own ops.
- **Targeted** (``stepId=<hashed id>``): that step executes; other new steps wait until it is done, then unwind.
  If it is not reached (the code changed), the call fails with a retriable 500, as the Inngest SDKs do.

Steps found later, while a step executes (e.g. after real I/O between steps in a parallel branch), are not
reported in this call: they unwind and the next discovery finds them, so parallel branches then progress one
step per call. Nested steps (a step called inside another step's code) fail the outer step: they cannot be
reported while it runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

from stepline.core.context import AsyncStep, SyncStep, new_context
from stepline.core.durations import format_duration, parse_duration
from stepline.core.errors import (
    NonRetriableError,
    RetryAfterError,
    SerializationError,
    StepError,
    StepIdConflictError,
    Suspend,
    serialize_error,
)
from stepline.core.events import canonical_event_name, to_json_value, validate_event
from stepline.core.expressions import compile_expression, match_to_expression
from stepline.core.function import DEFAULT_WAIT_TIMEOUT, FunctionDef
from stepline.core.ids import StepIdCounter
from stepline.core.run_logs import enter_step, leave_step
from stepline.core.steps import CONFLICTS, MAX_SLEEP, Execute, Memo, sleep_too_long
from stepline.realtime.messages import PublishError
from stepline.serving.call import CallRequest, CallResult, iso_ms, stored_event, unwrap_signals
from stepline.serving.config import wire_event_name

if TYPE_CHECKING:
    from stepline.core.steps import StepDriver

SETTLE_PASSES = 10  # event-loop passes for parallel branches (tasks) to reach their next step
SYNC_QUIET_S = 0.005  # sync functions: a new step counts as alone after this long without another
SYNC_QUIET_ROUNDS = 20
TARGET_GRACE_S = 1.0  # a targeted call waits this long for its step before failing (the code changed)
FINAL_ERRORS = (StepError, NonRetriableError, StepIdConflictError, SerializationError)  # no function retries

EventSender = Callable[[list[dict[str, Any]]], Awaitable[list[str]]]
# (channel, topic, data, run id) -> the message id: ctx.publish's code, posting to the server's realtime API
Publisher = Callable[[str, str, Any, str], Awaitable[int | None]]


def _caller() -> object:
    """Who makes a step call: the task (async functions) or the worker thread (sync functions)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return threading.get_ident()


@dataclass
class _Found:
    kind: str  # run | sleep | wait_for_event | wait_for_signal | invoke
    display_id: str
    step_id: str
    op: dict[str, Any]  # the op reporting it (for run steps: StepPlanned)


class CallDriver:
    def __init__(self, fn: FunctionDef, call: CallRequest, send_events: EventSender,
                 known_ids: frozenset[str] = frozenset(), publisher: Publisher | None = None) -> None:  # fmt: skip
        self.fn = fn
        self.run_id = call.run_id
        self.publisher = publisher
        self.memo = call.steps
        # Replaying while a memoised step is still ahead: ctx.publish sends nothing (an earlier call published).
        self._ahead = set(call.steps)
        self.replaying = bool(self._ahead)
        self.target = None if call.step_id == "step" else call.step_id
        self.immediate = self.target is None and not call.disable_immediate_execution
        self.attempt = call.attempt if self.target is not None else 0  # a new step in a discovery is at attempt 0
        self.max_attempts = call.max_attempts if call.max_attempts is not None else fn.retries + 1
        self.send_events = send_events
        self.known_ids = known_ids
        self.ids = StepIdCounter()
        self.found: list[_Found] = []
        self.ops: list[dict[str, Any]] = []
        self.retry_after: str | None = None
        self.claimed = False  # this call's step is decided (executing, or ops reported)
        self.executing: object | None = None  # the caller of the step being executed
        self.target_found = False
        self.missing_target = False
        self.ended = asyncio.Event()  # the call's answer is known: every other step call unwinds
        self._idle = asyncio.Event()
        self._idle.set()
        self._watchdog: asyncio.Task[None] | None = None

    # --- bookkeeping ---
    def _begin(self, user_id: str, caller: object) -> tuple[str, str]:
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"a step id must be a non-empty string, got {user_id!r}")
        if self.executing is not None and caller == self.executing:
            raise NonRetriableError(f"step {user_id!r} was called inside the code of another step: nested steps are "
                                    "not supported when a function is served over HTTP")  # fmt: skip
        display_id, step_id = self.ids.next(user_id)
        if self.replaying:
            self._ahead.discard(step_id)
            self.replaying = step_id in self.memo and bool(self._ahead)
        return display_id, step_id

    # --- realtime: ctx.publish and ctx.step.publish's code ---
    async def publish(self, channel: str, topic: str, data: Any) -> int | None:
        """Post the message to the server's realtime API; None while replaying before a memoised step."""
        if self.replaying:
            return None
        if self.ended.is_set() and self.executing is None:
            raise PublishError(f"run {self.run_id}: this call has ended: ctx.publish works only while the function "
                               "runs", 409)  # fmt: skip
        if self.publisher is None:
            raise PublishError("ctx.publish needs the server's realtime API: serve the function with stepline.serve")
        return await self.publisher(channel, topic, data, self.run_id)

    def _unwrap(self, display_id: str, memo: Any) -> Any:
        """``{"data": x}`` -> x; ``{"error": e}`` -> StepError; anything else as it is."""
        if isinstance(memo, dict):
            err = memo.get("error")
            if err is not None:
                err = err if isinstance(err, dict) else {"message": str(err)}
                raise StepError(display_id, str(err.get("name") or "Error"), str(err.get("message") or ""),
                                err.get("stack"))  # fmt: skip
            if "data" in memo:
                return memo["data"]
        return memo

    def _end(self) -> None:
        if self.executing is None:
            self.ended.set()

    async def _park(self) -> NoReturn:
        await self.ended.wait()
        raise Suspend()

    async def _settle(self) -> None:
        for _ in range(SETTLE_PASSES):
            await asyncio.sleep(0)
        if not self.fn.is_async:
            for _ in range(SYNC_QUIET_ROUNDS):
                seen = len(self.found)
                await asyncio.sleep(SYNC_QUIET_S)
                if len(self.found) == seen:
                    break

    async def _arrive(self, found: _Found, caller: object) -> None:
        """A new step was reached. Returns if it must execute now (run steps only); otherwise reports it (or not)
        and raises Suspend once the call's answer is known."""
        if self.claimed or self.ended.is_set():
            await self._park()
        if self.target is not None:
            if found.step_id != self.target:
                if self._watchdog is None:
                    self._watchdog = asyncio.get_running_loop().create_task(self._await_target())
                await self._park()
            self.claimed = self.target_found = True
            if found.kind == "run":
                self._start(caller)
                return
            self.ops.append(found.op)
            self._end()
            raise Suspend()
        self.found.append(found)
        if len(self.found) > 1:
            await self._park()
        await self._settle()
        self.claimed = True
        if len(self.found) == 1 and found.kind == "run" and self.immediate:
            self._start(caller)
            return
        self.ops.extend(f.op for f in self.found)
        self._end()
        raise Suspend()

    async def _await_target(self) -> None:
        await self._settle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TARGET_GRACE_S
        while not (self.target_found or self.ended.is_set()) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if not (self.target_found or self.ended.is_set()):
            self.missing_target = True
            self.ended.set()

    def _start(self, caller: object) -> None:
        self.executing = caller
        self._idle.clear()

    def _stop(self) -> None:
        self.executing = None
        self._idle.set()
        self.ended.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def close(self) -> None:
        self.ended.set()
        if self._watchdog is not None:
            self._watchdog.cancel()

    # --- step.run ---
    def plan_run(self, user_id: str) -> Coroutine[Any, Any, Memo | Execute]:
        return self._plan_run(user_id, _caller())

    async def _plan_run(self, user_id: str, caller: object) -> Memo | Execute:
        display_id, step_id = self._begin(user_id, caller)
        if step_id in self.memo:
            return Memo(self._unwrap(display_id, self.memo[step_id]))
        planned = {"op": "StepPlanned", "id": step_id, "name": display_id, "displayName": display_id}
        await self._arrive(_Found("run", display_id, step_id, planned), caller)
        return Execute(display_id, step_id, self.attempt)

    def enter(self, plan: Execute) -> Any:
        """The step's code starts (as ``StepDriver.enter``): its log records belong to the step."""
        return enter_step(plan.step_id)

    def leave(self, token: Any) -> None:
        leave_step(token)

    def abandon(self, plan: Execute) -> None:
        """The step's code did not finish (cancelled): report nothing for it."""
        self._stop()

    async def finish_run(self, plan: Execute, value: Any = None, error: BaseException | None = None) -> NoReturn:
        try:
            self.ops.append(self._run_op(plan, value, error))
        finally:
            self._stop()
        raise Suspend()

    def _run_op(self, plan: Execute, value: Any, error: BaseException | None) -> dict[str, Any]:
        op: dict[str, Any] = {"id": plan.step_id, "name": plan.display_id, "displayName": plan.display_id}
        if error is None:
            try:
                return {"op": "StepRun", **op, "data": to_json_value(value, f"the result of step {plan.display_id!r}")}
            except SerializationError as exc:
                error = exc
        retriable = not isinstance(error, NonRetriableError | SerializationError)
        if retriable and plan.attempt + 1 < self.max_attempts:
            if isinstance(error, RetryAfterError):
                self.retry_after = iso_ms(int(error.earliest(dt.datetime.now(dt.UTC)).timestamp() * 1000))
            return {"op": "StepError", **op, "error": serialize_error(error)}
        return {"op": "StepFailed", **op, "error": serialize_error(error)}

    # --- step.sleep / sleep_until ---
    def sleep(self, user_id: str, until: int | None, duration: Any = None) -> Coroutine[Any, Any, None]:
        return self._sleep(user_id, until, duration, _caller())

    async def _sleep(self, user_id: str, until: int | None, duration: Any, caller: object) -> None:
        display_id, step_id = self._begin(user_id, caller)
        if step_id in self.memo:
            self._unwrap(display_id, self.memo[step_id])
            return None
        if until is None:
            delta = parse_duration(duration)
            if delta > MAX_SLEEP:
                raise NonRetriableError(f"step {display_id!r}: {sleep_too_long(duration)}")
            name = format_duration(delta)
        else:
            name = iso_ms(until)
        op = {"op": "Sleep", "id": step_id, "name": name, "displayName": display_id}
        await self._arrive(_Found("sleep", display_id, step_id, op), caller)

    # --- step.wait_for_event ---
    def wait_for_event(self, user_id: str, event: str, if_exp: str | None, match: str | None,
                       timeout: Any) -> Coroutine[Any, Any, dict[str, Any] | None]:  # fmt: skip
        return self._wait_for_event(user_id, event, if_exp, match, timeout, _caller())

    async def _wait_for_event(self, user_id: str, event: str, if_exp: str | None, match: str | None, timeout: Any,
                              caller: object) -> dict[str, Any] | None:  # fmt: skip
        display_id, step_id = self._begin(user_id, caller)
        if step_id in self.memo:
            value = self.memo[step_id]
            if isinstance(value, dict) and set(value) == {"error"}:
                self._unwrap(display_id, value)
            return value if isinstance(value, dict) else None
        if not isinstance(event, str) or not event:
            raise ValueError(f"step {display_id!r}: wait_for_event needs an event name")
        if if_exp is not None and match is not None:
            raise ValueError(f"step {display_id!r}: give either if_exp or match, not both")
        expression = if_exp if if_exp is not None else (match_to_expression(match) if match else None)
        if expression is not None:
            compile_expression(expression)
        delta = parse_duration(timeout if timeout is not None else DEFAULT_WAIT_TIMEOUT)
        name = wire_event_name(canonical_event_name(event))
        opts: dict[str, Any] = {"event": name, "timeout": format_duration(delta)}
        if expression is not None:
            opts["if"] = expression
        op = {"op": "WaitForEvent", "id": step_id, "name": name, "displayName": display_id, "opts": opts}
        await self._arrive(_Found("wait_for_event", display_id, step_id, op), caller)
        return None  # unreachable: _arrive raises for every step but an executing run

    # --- step.wait_for_signal ---
    def wait_for_signal(self, user_id: str, signal: str, timeout: Any,
                        on_conflict: str) -> Coroutine[Any, Any, dict[str, Any] | None]:  # fmt: skip
        return self._wait_for_signal(user_id, signal, timeout, on_conflict, _caller())

    async def _wait_for_signal(self, user_id: str, signal: str, timeout: Any, on_conflict: str,
                               caller: object) -> dict[str, Any] | None:  # fmt: skip
        display_id, step_id = self._begin(user_id, caller)
        if step_id in self.memo:
            value = self._unwrap(display_id, self.memo[step_id])  # {"data": {signal, data}}, or null on timeout
            return value if isinstance(value, dict) else None
        if not isinstance(signal, str) or not signal:
            raise ValueError(f"step {display_id!r}: wait_for_signal needs a signal name")
        if on_conflict not in CONFLICTS:
            raise ValueError(f"step {display_id!r}: on_conflict must be 'fail' or 'replace', got {on_conflict!r}")
        delta = parse_duration(timeout if timeout is not None else DEFAULT_WAIT_TIMEOUT)
        opts = {"signal": signal, "timeout": format_duration(delta), "conflict": on_conflict}
        op = {"op": "WaitForSignal", "id": step_id, "name": signal, "displayName": display_id, "opts": opts}
        await self._arrive(_Found("wait_for_signal", display_id, step_id, op), caller)
        return None  # unreachable: _arrive raises for every step but an executing run

    # --- step.invoke ---
    def invoke(self, user_id: str, function: FunctionDef | str, data: Any, timeout: Any) -> Coroutine[Any, Any, Any]:
        return self._invoke(user_id, function, data, timeout, _caller())

    async def _invoke(self, user_id: str, function: FunctionDef | str, data: Any, timeout: Any,
                      caller: object) -> Any:  # fmt: skip
        display_id, step_id = self._begin(user_id, caller)
        if step_id in self.memo:
            return self._unwrap(display_id, self.memo[step_id])
        if isinstance(function, FunctionDef):
            target = function.id
        else:
            target = str(function)
            local = f"{self.fn.app_id}-{target}"
            target = local if local in self.known_ids else target  # a slug of this app -> its composite id
        payload = to_json_value(data if data is not None else {}, f"the data of step {display_id!r}")
        if not isinstance(payload, dict):
            raise ValueError(f"step {display_id!r}: invoke data must be a JSON object")
        opts: dict[str, Any] = {"function_id": target, "payload": {"data": payload}}
        if timeout is not None:
            opts["timeout"] = format_duration(parse_duration(timeout))
        op = {"op": "InvokeFunction", "id": step_id, "name": display_id, "displayName": display_id, "opts": opts}
        await self._arrive(_Found("invoke", display_id, step_id, op), caller)

    # --- step.send_event: a run step whose code posts the events to the event API ---
    def send_event(self, user_id: str, events: Any) -> Coroutine[Any, Any, list[str]]:
        return self._send_event(user_id, events, _caller())

    async def _send_event(self, user_id: str, events: Any, caller: object) -> list[str]:
        plan = await self._plan_run(user_id, caller)
        if isinstance(plan, Memo):
            return list(plan.value or [])
        try:
            items: list[Any] = [events] if not isinstance(events, Sequence) or isinstance(events, str) else list(events)
            wire = [validate_event(e).model_dump(exclude_none=True) for e in items]
        except BaseException:
            self.abandon(plan)  # bad input fails the function, as in-process; it is not a step failure
            raise
        try:
            ids = await self.send_events(wire)
        except Exception as exc:
            await self.finish_run(plan, error=exc)
        except BaseException:
            self.abandon(plan)
            raise
        await self.finish_run(plan, value=ids)

    # --- the call's answer ---
    def result(self, output: Any, error: BaseException | None) -> CallResult:
        error = unwrap_signals(error)
        if self.ops:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return CallResult(206, self.ops, headers)
        if self.target is not None and (
            self.missing_target or (not self.target_found and not isinstance(error, Exception))
        ):
            message = f"the targeted step {self.target} was not reached: the function's code no longer matches the run"
            return CallResult(500, {"name": "StepNotFound", "message": message})
        if error is None:
            try:
                return CallResult(200, to_json_value(output, f"the return value of function {self.fn.id!r}"))
            except SerializationError as exc:
                error = exc
        if not isinstance(error, Exception):
            return CallResult(500, {"name": "Error", "message": "the function stopped without reporting a step"})
        headers = {}
        if isinstance(error, FINAL_ERRORS):
            headers["X-Inngest-No-Retry"] = "true"
        elif isinstance(error, RetryAfterError):
            headers["Retry-After"] = iso_ms(int(error.earliest(dt.datetime.now(dt.UTC)).timestamp() * 1000))
        return CallResult(500, serialize_error(error), headers)


async def run_call(
    fn: FunctionDef,
    call: CallRequest,
    send_events: EventSender,
    known_ids: frozenset[str] = frozenset(),
    publisher: Publisher | None = None,
) -> CallResult:
    """Run the function once against the call's memo and say what the call answers."""
    driver = CallDriver(fn, call, send_events, known_ids, publisher)
    loop = asyncio.get_running_loop()
    shim = cast("StepDriver", driver)  # CallDriver provides every StepDriver method the step facades call
    event = stored_event(call.event)
    ctx = new_context(
        AsyncStep(shim) if fn.is_async else SyncStep(shim, loop),
        event=event,
        events=[stored_event(e) for e in call.events] or [event],
        run_id=call.run_id,
        attempt=call.attempt,
        function_id=fn.id,
        logger=logging.LoggerAdapter(logging.getLogger(f"stepline.fn.{fn.slug}"), {"run_id": call.run_id}),
    )
    output: Any = None
    error: BaseException | None = None
    try:
        if fn.is_async:
            output = await fn.handler(ctx)
        else:
            output = await loop.run_in_executor(None, fn.handler, ctx)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        driver.close()
        raise
    except BaseException as exc:
        error = exc
    await driver.wait_idle()
    driver.close()
    return driver.result(output, error)
