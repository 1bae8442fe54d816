"""Execute one claimed run in this process: call the function, then record how it ended.

Outcomes: completed (output stored), suspended (pending steps stored, run idle until due), retried (an error
outside any step with attempts left), failed, or cancelled (by API, event, or a timeout).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
from typing import Any

from stepline.core.clock import from_ms
from stepline.core.context import AsyncStep, SyncStep, new_context
from stepline.core.engine import PAUSED_REASON, Engine
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
from stepline.core.events import to_json_value
from stepline.core.function import FunctionDef
from stepline.core.run_logs import RunLogger, activate, deactivate
from stepline.core.steps import StepDriver
from stepline.observability import hooks, runlog
from stepline.storage.records import ClaimedRun, RunFinish, StepResultConflict
from stepline.storage.states import idle_of, start_expired

log = logging.getLogger("stepline.executor")
_FINAL_ERRORS = (StepError, NonRetriableError, StepIdConflictError, SerializationError)


def _unwrap_signals(error: BaseException | None) -> BaseException | None:
    """A TaskGroup wraps the signals of its steps in a BaseExceptionGroup: take the strongest one out."""
    if not isinstance(error, BaseExceptionGroup):
        return error
    found = [e for e in _leaves(error) if isinstance(e, _RunSignal)]
    for kind in (RunCancelled, LeaseLost, ReplayRun, RunPaused, Suspend):
        for e in found:
            if isinstance(e, kind):
                return e
    return error


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def _attach(ctx: Any) -> object:
    from opentelemetry import context

    return context.attach(ctx)


def _detach(token: Any) -> None:
    from opentelemetry import context

    context.detach(token)


class Executor:
    def __init__(
        self,
        engine: Engine,
        owner: str,
        threads: concurrent.futures.ThreadPoolExecutor,
        functions: dict[str, FunctionDef] | None = None,
    ) -> None:
        self.engine = engine
        self.functions = functions
        self.owner = owner
        self.threads = threads
        self.drivers: dict[str, StepDriver] = {}  # run id -> driver of the live execution

    def _forget(self, run_id: str, driver: StepDriver) -> None:
        if self.drivers.get(run_id) is driver:  # a newer execution of the same run may have replaced it
            del self.drivers[run_id]

    def _finish_deadline(self, fn: FunctionDef, claimed: ClaimedRun) -> int | None:
        started = claimed.run.started_at
        return None if started is None or fn.finish_timeout_ms is None else started + fn.finish_timeout_ms

    async def execute(self, fn: FunctionDef, claimed: ClaimedRun) -> None:
        run = claimed.run
        now = self.engine.clock.now_ms()
        if start_expired(run):
            await self._finish(claimed, RunFinish("cancelled", error={
                "name": "StartTimeout", "message": "the run did not start within timeouts.start"}))  # fmt: skip
            return
        deadline = self._finish_deadline(fn, claimed)
        if deadline is not None and now >= deadline:
            await self._finish(claimed, RunFinish("cancelled", error={
                "name": "FinishTimeout", "message": "the run did not finish within timeouts.finish"}))  # fmt: skip
            return
        driver = StepDriver(self.engine, fn, run.id, self.owner, claimed.steps, claimed.event)
        driver.deadline_ms = deadline
        driver.lease_until = run.lease_expires_at
        if (obs := hooks.current) is not None and obs.tracing is not None:
            driver.trace = obs.tracing.run_trace(claimed)
        self.drivers[run.id] = driver
        loop = asyncio.get_running_loop()
        ctx = new_context(
            AsyncStep(driver) if fn.is_async else SyncStep(driver, loop),
            event=claimed.event,
            events=claimed.events,
            run_id=run.id,
            attempt=run.attempt,
            function_id=fn.id,
            logger=RunLogger(logging.getLogger(f"stepline.fn.{fn.slug}"), {"run_id": run.id}),
        )

        def new_stretch() -> None:  # the code after a new step has all its retries again (as on Inngest)
            ctx.attempt = 0

        driver.on_new_stretch = new_stretch
        result: Any = None
        error: BaseException | None = None
        capturing = activate(driver.logs)  # this task's context, and the copy the thread pool gets
        traced = None if driver.trace is None else _attach(driver.trace.context())  # the run span is current
        try:
            if fn.is_async:
                result = await fn.handler(ctx)
            else:
                result = await loop.run_in_executor(self.threads, contextvars.copy_context().run, fn.handler, ctx)
        except asyncio.CancelledError:
            await driver.wait_idle()
            try:  # a stopping worker keeps what its steps finished: they need not run again elsewhere
                await driver.flush()
            except (RunCancelled, LeaseLost):
                pass
            driver.closed = True
            self._forget(run.id, driver)
            await self.engine.store.release_run(run.id, self.owner, self.engine.clock.now_ms())
            raise
        except BaseException as exc:
            error = exc
        finally:
            deactivate(capturing)
            if traced is not None:
                _detach(traced)
        await driver.wait_idle()
        driver.closed = True
        self._forget(run.id, driver)
        try:
            await self._conclude(fn, claimed, driver, result, error, deadline)
        except (RunCancelled, LeaseLost):
            pass
        finally:
            # Tasks the run's code started (a library's background task, a reader callback) keep the run's
            # context and so its capture: from now on their records go nowhere, instead of piling up.
            driver.logs.closed = True

    async def _conclude(self, fn: FunctionDef, claimed: ClaimedRun, driver: StepDriver, result: Any,
                        error: BaseException | None, deadline: int | None) -> None:  # fmt: skip
        run = claimed.run
        if driver.timed_out:
            await self._finish(claimed, RunFinish("cancelled", error={
                "name": "FinishTimeout", "message": "the run did not finish within timeouts.finish"},
                logs=driver.logs.take()))  # fmt: skip
            return
        if isinstance(driver.stop, RunCancelled | LeaseLost) or isinstance(error, RunCancelled | LeaseLost):
            return  # cancelled elsewhere, or another worker owns the run now: nothing more to write here
        if driver.fatal is not None:
            error = driver.fatal
        error = _unwrap_signals(error)
        if isinstance(error, RunCancelled | LeaseLost):
            return
        if isinstance(driver.stop, ReplayRun) or isinstance(error, ReplayRun):
            await self._replay(claimed, "a step's result lost to one recorded meanwhile")
            return
        if isinstance(driver.stop, RunPaused) or isinstance(error, RunPaused):
            await self._hold_paused(claimed, driver)
            return
        if driver.pending and (error is None or isinstance(error, Exception)):
            # Steps are waiting to be retried, sleeping or waiting, but the code went on (it swallowed the
            # signal: gather(return_exceptions=True), except BaseException, ...). Their state must be kept, and
            # the run resumes from the memo when they are due.
            error = Suspend()
        if error is None:
            try:
                output = to_json_value(result, f"the return value of function {fn.id!r}")
            except SerializationError as exc:
                error = exc
            else:
                await self._finish(claimed, RunFinish("completed", output=output), driver)
                return
        if isinstance(error, Suspend):
            now = self.engine.clock.now_ms()
            idle = idle_of(driver.reasons)
            cap = deadline if driver.pending else now
            await driver.flush()
            outcome = await self.engine.store.suspend_run(
                run.id, self.owner, driver.pending_with_logs(), idle, self.engine.matcher, now, max_due_at=cap,
                attempt=0 if driver.stretch_ended else None)  # fmt: skip
            await self.engine.announce_cancellations(outcome.cancelled_run_ids)
            self.engine.notify()
            return
        if not isinstance(error, Exception):
            raise error  # KeyboardInterrupt, SystemExit
        # The attempt of this stretch of code (between two steps): a step recorded in this execution began a new one.
        attempt = 0 if driver.stretch_ended else run.attempt
        if isinstance(error, _FINAL_ERRORS) or attempt >= fn.retries:
            await self._finish(claimed, RunFinish("failed", error=serialize_error(error)), driver)
            return
        now = self.engine.clock.now_ms()
        if isinstance(error, RetryAfterError):
            due = int(error.earliest(from_ms(now)).timestamp() * 1000)
        else:
            due = now + int(fn.backoff.delay(attempt).total_seconds() * 1000)
        serialized = serialize_error(error)
        runlog.attempt_failed(fn.id, run.id, None, attempt, serialized, due)
        if (obs := hooks.current) is not None:
            obs.run_retried(fn.id)
        await driver.flush()
        await self.engine.store.retry_run(run.id, self.owner, due, serialized, now, logs=driver.logs.take(),
                                          attempt=attempt + 1)  # fmt: skip

    async def _hold_paused(self, claimed: ClaimedRun, driver: StepDriver) -> None:
        """The function was paused before the run's next step: keep what it did, give it back due now with the
        reason "function paused"; no worker claims it until the function is resumed."""
        now = self.engine.clock.now_ms()
        await driver.flush()
        # Due a millisecond back, so due at once: the store drops the idle reason of a run due exactly now.
        await self.engine.store.suspend_run(claimed.run.id, self.owner, driver.pending_with_logs(), PAUSED_REASON,
                                            self.engine.matcher, now, max_due_at=now - 1)  # fmt: skip

    async def _finish(self, claimed: ClaimedRun, finish: RunFinish, driver: StepDriver | None = None) -> None:
        fn = self.functions.get(claimed.run.function_id) if self.functions else None
        if driver is not None:
            finish.logs = driver.logs.take()
            finish.steps = driver.unwritten
        if fn is not None and not fn.cancel_on and driver is not None:
            # Waits exist only for cancel_on and wait_for_event steps: without either there is nothing to delete.
            kinds = {s.kind for s in driver.memo.values()} | {u.kind for u in driver.pending}
            finish.may_have_waits = "wait_for_event" in kinds
        try:
            await self.engine.end_run(claimed.run, claimed.event, self.owner, finish)
        except StepResultConflict as exc:
            # A worker that lost this run's lease recorded one of its steps with another result (the end was not
            # written): replay the run from what is stored.
            await self._replay(claimed, str(exc))
        except Exception as exc:
            if not finish.steps:
                raise
            # The end failed with held-back step results in it: write them on their own (an error that is theirs
            # shows there), then end without them.
            await self._end_without_held_back(claimed, finish, exc)

    async def _replay(self, claimed: ClaimedRun, why: str) -> None:
        log.warning("run %s: %s; replaying it", claimed.run.id, why)
        await self.engine.store.release_run(claimed.run.id, self.owner, self.engine.clock.now_ms())
        self.engine.notify()

    async def _end_without_held_back(self, claimed: ClaimedRun, finish: RunFinish, first: Exception) -> None:
        steps, finish.steps = finish.steps, []
        run_id = claimed.run.id
        for u in steps:  # an error here is the step's own: it propagates, as when the step wrote by itself
            outcome = await self.engine.store.record_step(
                run_id, self.owner, u, self.engine.matcher, self.engine.clock.now_ms()
            )
            if outcome.status != "ok":
                return  # cancelled meanwhile, or another worker owns the run now
            if outcome.step is not None and (outcome.step.status, outcome.step.output) != (u.status, u.output):
                await self._replay(claimed, f"step {u.display_id!r} already has another result")
                return
        log.warning("run %s: its end failed once with its last step results (%s); ended without them", run_id, first)
        await self.engine.end_run(claimed.run, claimed.event, self.owner, finish)
