"""Execute one claimed run of an HTTP function by calling its app, as the Inngest SDK protocol says.

A claimed run is driven to its next resting point within one lease: settle the steps that fell due (sleeps
ended, waits and invokes timed out), call the app (a discovery call, or targeted calls for planned and
retried steps, in parallel), record each op's result as it comes back (one durable write per step, as
in-process), and repeat until the function completes or fails, or every remaining step has to wait
(sleep, wait for event, invoke, a retry later): then the run is suspended with those steps in one transaction.
Runs and steps are stored exactly as for in-process functions; only the memo's wire form differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from stepline.core.durations import parse_duration
from stepline.core.engine import PAUSED_REASON
from stepline.core.errors import run_end_error
from stepline.core.events import canonical_event_name
from stepline.core.expressions import compile_expression
from stepline.core.function import DEFAULT_WAIT_TIMEOUT
from stepline.core.steps import MAX_SLEEP_MS, check_signal, signal_reason, sleep_too_long, wait_too_long
from stepline.observability import hooks, runlog
from stepline.observability.tracing import new_span_id, untraced_traceparent
from stepline.protocol import calls, signing
from stepline.protocol.calls import CallState, Op, Outcome
from stepline.server import defers, gateway
from stepline.server.app_calls import AppCallFailed, ResponseTooLarge, app_origin
from stepline.server.checkpoint_api import dispatch_id
from stepline.server.defers import DEFER_KINDS, LAZY_OPS, defer_update
from stepline.server.functions import HttpFunction
from stepline.server.gateway import GATEWAY_OPS, GatewayResult
from stepline.server.state import ServerState
from stepline.storage.records import ClaimedRun, RunFinish, SignalConflict, StepRecord, StepUpdate, WaitSpec
from stepline.storage.states import IdleReason, idle_of, retrying_reason, start_expired

log = logging.getLogger("stepline.server.calls")
MAX_CALLS_PER_CLAIM = 10_000
SIGNAL_CONFLICT_ERROR = {"name": "Error", "message": "Signal conflict; signal wait already exists for another run"}
INVOKE_TIMEOUT_ERROR = {"name": "InngestInvokeTimeoutError",
                        "message": "Timed out waiting for invoked function to complete"}  # fmt: skip


DISCOVERY = "step"  # the stepId of a discovery call
GATEWAY_KINDS = frozenset(GATEWAY_OPS.values())


TIMEOUT_TOO_LONG = "InngestErrTimeoutTooLong"  # Inngest's name for a sleep or wait of more than a year


class _TooLong(Exception):
    """A sleep or wait beyond a year: the run fails at once (raised where no await is possible)."""


class _Stop(Exception):
    """The run was cancelled, its lease lost, or it ended: stop driving it."""


@dataclass
class _Answer:
    step_id: str  # the step the call targeted, or DISCOVERY
    outcome: Outcome
    since: int | str  # the event cursor when the call began: a wait it reports matches only later events
    checkpointing: bool = False  # the call offered the SDK to checkpoint (ctx.fn_id, ctx.qi_id)
    gateway: _GatewayDone | None = None  # not a call: a gateway step's request (step.fetch, step.ai.infer) ended


@dataclass
class _GatewayDone:
    kind: str  # "fetch" | "ai"
    label: str
    attempt: int
    result: GatewayResult


@dataclass
class Lease:
    """What the worker's lease renewal reads and writes for a run in flight (as StepDriver in-process)."""

    lease_until: int | None
    stop: BaseException | None = None


class HttpExecutor:
    def __init__(self, st: ServerState, owner: str) -> None:
        self.st = st
        self.owner = owner
        self.drivers: dict[str, Lease] = {}
        self.calls = 0
        self.dispatched = 0  # discovery calls offered checkpointing, numbering their dispatch ids (qi_id)
        self._slots: dict[str, asyncio.Semaphore] = {}  # per app origin: calls in flight

    def slots(self, url: str) -> asyncio.Semaphore:
        """At most ``max_calls_per_app`` calls in flight to one app: beyond that, queueing inside the HTTP client's
        connection pool costs more CPU than the calls (measured in bench/README.md)."""
        key = app_origin(url)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self.st.config.max_calls_per_app)
        return slots

    async def execute(self, fn: HttpFunction, claimed: ClaimedRun) -> None:
        lease = Lease(claimed.run.lease_expires_at)
        self.drivers[claimed.run.id] = lease
        execution = _Execution(self, fn, claimed, lease)
        try:
            await execution.drive()
        except _Stop:
            pass
        except Exception as exc:  # a bug or an answer nothing above foresaw: count an attempt, never loop silently
            log.exception("run %s of %s: the HTTP executor failed", claimed.run.id, fn.id)
            with contextlib.suppress(_Stop):
                await execution.function_error({"name": "InternalError", "message": (
                    f"Stepline could not process the app's answer: {type(exc).__name__}: {exc}")},
                    retriable=True, retry_at=None)  # fmt: skip
        finally:
            if self.drivers.get(claimed.run.id) is lease:
                del self.drivers[claimed.run.id]


def _signature_problem(header: str | None, now_s: int) -> str:
    if not header:
        return "the app's response is not signed: is the app running in cloud mode with the server's signing key?"
    parsed = signing.parse_signature_header(header)
    if parsed is None:
        return f"the app's response signature is malformed: {header[:80]!r}"
    skew = parsed[0] - now_s
    if abs(skew) > signing.DEFAULT_MAX_SKEW_S:
        return (f"the app's response is signed with a timestamp {abs(skew)} s in the "
                f"{'future' if skew > 0 else 'past'}: check the app's clock")  # fmt: skip
    return "the app's response is signed with another key: check that the app's INNGEST_SIGNING_KEY is the server's"


def _done_order(rec: StepRecord) -> int:
    return rec.ended_at if rec.ended_at is not None else rec.started_at


class _Execution:
    def __init__(self, ex: HttpExecutor, fn: HttpFunction, claimed: ClaimedRun, lease: Lease) -> None:
        self.ex = ex
        self.st = ex.st
        self.engine = ex.st.engine
        self.fn = fn
        self.claimed = claimed
        self.run = claimed.run
        self.lease = lease
        self.memo: dict[str, StepRecord] = dict(claimed.steps)  # (and the run's defers, server/defers.py)
        self.stack = [r.step_id for r in sorted((r for r in self.memo.values() if r.is_memo and r.kind not in
                                                 DEFER_KINDS), key=_done_order)]  # fmt: skip
        self.pending: dict[str, StepUpdate] = {}  # steps that must wait: written by the suspension
        self.reasons: dict[str, IdleReason] = {}
        self.labels: dict[str, str] = {}
        self.settled = False  # some step's time came when the run was claimed
        # Inngest's retry rule: the function-level attempt of the current stretch of code (between two steps),
        # sent as ctx.attempt in discovery calls; 0 again once a step ends or a new sleep, wait or invoke begins.
        self.attempt = claimed.run.attempt
        self.stretch_ended = False
        self.since: int | str = 0
        self.tasks: dict[asyncio.Task[_Answer], str] = {}  # calls in flight -> the step they target (or DISCOVERY)
        self.launched = 0
        self.rediscover = False  # a race step ended while a discovery was in flight: discover again after it
        self.not_found: dict[str, int] = {}  # targeted steps the app could not find, and how often
        self.gateway_retries: dict[str, int] = {}  # gateway steps whose retry is due: step id -> attempt
        # Races (parallelMode "race"): step id -> the key of the race it was started in (stored with its steps).
        self.race_of: dict[str, str] = {r.step_id: r.race for r in self.memo.values() if r.race}
        self.call_seconds: dict[str, float] = {}  # the last call's duration per targeted step id ("step": discovery)
        obs = hooks.current
        self.trace = obs.tracing.run_trace(claimed) if obs is not None and obs.tracing is not None else None
        # Not traced here: calls still carry the run's trace context, as Inngest's always do (the npm SDK's extended
        # traces record an app's spans only under one), sampled unless this process's sampler dropped the run.
        self.app_traceparent = None if self.trace is not None else untraced_traceparent(
            self.run.id, claimed.event.traceparent, sampled=obs is None or obs.tracing is None)  # fmt: skip
        started = self.run.started_at
        finish_ms = fn.spec.finish_timeout_ms
        self.deadline = None if started is None or finish_ms is None else started + finish_ms

    def now(self) -> int:
        return self.engine.clock.now_ms()

    # --- the loop ---
    async def drive(self) -> None:
        run = self.run
        if start_expired(run):
            await self.finish(RunFinish("cancelled", error={
                "name": "StartTimeout", "message": "the run did not start within timeouts.start"}))  # fmt: skip
        targets = await self.settle_due_steps()
        await self.settle_races()
        if not targets and not self.settled and self.pending:
            await self.suspend()  # claimed before any of its steps fell due (a lease expired): rest again
        try:
            for step_id in targets or [DISCOVERY]:
                await self.launch(step_id)
            while True:
                if len(self.tasks) == 1:  # the usual case (sequential steps): awaiting the task costs less than wait
                    [task] = self.tasks
                    answer = await task
                    del self.tasks[task]
                    await self.take(answer)
                else:
                    done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                    for task in [t for t in self.tasks if t in done]:  # in the order they were started
                        del self.tasks[task]
                        await self.take(task.result())
                if not self.tasks:
                    # Every call came back. Steps still waiting (a retry, sleep, wait, invoke) hold the next discovery
                    # (Inngest's default parallel mode: discover once all are done), unless a race step ended since.
                    if self.pending and not self.rediscover:
                        await self.suspend()
                    self.rediscover = False
                    await self.launch(DISCOVERY)
        finally:
            self.st.dispatches.end(self.run.id)
            for task in self.tasks:  # the run ended or rests: calls still in flight (race losers) are dropped
                task.cancel()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)

    async def launch(self, step_id: str) -> None:
        """Start a call: a discovery, or a targeted call for a planned or retried step."""
        if not self.tasks and self.fn.id in self.engine.paused:
            await self.suspend(paused=True)  # paused between two calls: no further step runs until resumed
        self.launched += 1
        if self.launched > MAX_CALLS_PER_CLAIM:
            await self.function_error({"name": "Error", "message": (
                f"more than {MAX_CALLS_PER_CLAIM} calls in one go")}, retriable=True, retry_at=None)  # fmt: skip
        if step_id == DISCOVERY:
            # Parallel steps still running elsewhere: the SDK must plan new steps, not run one inline. Otherwise the
            # call offers the SDK to checkpoint (npm 4.x: it runs step after step in this call, server/checkpoint_api).
            busy = any(s != DISCOVERY for s in self.tasks.values())
            qi_id = None
            if not busy:
                self.ex.dispatched += 1
                qi_id = dispatch_id(self.ex.owner, self.ex.dispatched)
            if qi_id is not None:
                self.st.dispatches.begin(self.run.id, qi_id)
            call = self.call(DISCOVERY, self.attempt, busy, qi_id)
        else:
            call = self.call(step_id, self.attempt_of(step_id), True)
        self.tasks[asyncio.ensure_future(call)] = step_id

    def in_flight(self, step_id: str) -> bool:
        return step_id in self.tasks.values()

    async def take(self, answer: _Answer) -> None:
        """Apply a call's answer, start the calls it plans, and in race mode ask for discovery at once."""
        targeted = None if answer.step_id == DISCOVERY else answer.step_id
        if answer.checkpointing:
            await self.take_checkpoints(answer.outcome)
        if answer.gateway is not None:
            await self.gateway_done(answer.step_id, answer.gateway)
        else:
            self.since = answer.since
            for step_id in await self.handle(answer.outcome, targeted):
                if not self.in_flight(step_id):
                    await self.launch(step_id)
        ended = targeted is not None and targeted in self.memo and self.memo[targeted].is_memo
        if ended and targeted in self.race_of:
            # Race mode: discover after each step ends, not after all (as Inngest), so the code past the race goes
            # on while the other racers still run.
            if self.in_flight(DISCOVERY):
                self.rediscover = True
            else:
                await self.launch(DISCOVERY)
        await self.settle_races()

    async def take_checkpoints(self, outcome: Outcome) -> None:
        """Steps the SDK checkpointed during the call (``/v1/checkpoint/{run}/async``) are part of the memo from now
        on: read them back when some were stored (in this process, or, when the answer comes from the npm SDK and
        needs another call, possibly through another node)."""
        took = self.st.dispatches.took(self.run.id)
        if not took and not (outcome.kind == "ops" and (outcome.sdk or "").startswith("js:")):
            return
        for rec in await self.engine.store.list_steps(self.run.id):  # in the order they were recorded
            known = self.memo.get(rec.step_id)
            if rec.is_memo and (known is None or not known.is_memo):
                self.memo[rec.step_id] = rec
                if rec.kind in DEFER_KINDS:
                    continue
                self.stack.append(rec.step_id)
                self.labels[rec.step_id] = rec.display_id
                self.pending.pop(rec.step_id, None)
                self.end_stretch()

    async def settle_races(self) -> None:
        """A race with a result is decided: its losing sleeps and waits resolve (a sleep as done, a wait as timed
        out, memo ``null``) instead of holding the run open until their deadlines (beyond Inngest, where the losers'
        pauses stay: inngest-js issue 1617). Losing ``step.run`` calls are not stopped; their results are kept."""
        if not self.race_of:
            return
        decided = {self.race_of[sid] for sid, rec in self.memo.items() if rec.is_memo and sid in self.race_of}
        for sid, update in list(self.pending.items()):
            if self.race_of.get(sid) in decided and update.kind in ("sleep", "wait_for_event"):
                del self.pending[sid]
                self.reasons.pop(sid, None)
                await self.record(StepUpdate(sid, update.display_id, update.kind, "completed", 1, output=None))

    async def settle_due_steps(self) -> list[str]:
        """Steps whose time came: finish sleeps and timed-out waits/invokes; return the retries due now."""
        now = self.now()
        targets: list[str] = []
        for rec in list(self.memo.values()):
            if rec.is_memo:
                continue
            self.labels[rec.step_id] = rec.display_id
            if rec.wake_at is not None and rec.wake_at > now:
                self.keep_pending(rec)
                continue
            self.settled = True
            if rec.status == "retrying" and rec.kind in GATEWAY_KINDS:
                self.gateway_retries[rec.step_id] = rec.attempts  # asked again by a discovery, which reports the op
            elif rec.status == "retrying":
                targets.append(rec.step_id)
            elif rec.status == "sleeping":
                await self.record(StepUpdate(rec.step_id, rec.display_id, "sleep", "completed", 1, output=None))
            elif rec.status == "waiting":  # timed out: wait_for_event or wait_for_signal, memo null
                await self.record(StepUpdate(rec.step_id, rec.display_id, rec.kind, "completed", 1))
            elif rec.status == "invoking":
                await self.record(StepUpdate(rec.step_id, rec.display_id, "invoke", "failed", 1,
                                             error=dict(INVOKE_TIMEOUT_ERROR)))  # fmt: skip
        return targets

    def end_stretch(self) -> None:
        self.stretch_ended = True
        self.attempt = 0

    def keep_pending(self, rec: StepRecord) -> None:
        self.pending[rec.step_id] = StepUpdate(rec.step_id, rec.display_id, rec.kind, rec.status,  # type: ignore[arg-type]
                                               rec.attempts, error=rec.error, wake_at=rec.wake_at)  # fmt: skip
        kind = {"sleeping": "sleeping", "waiting": "waiting", "invoking": "invoking"}.get(rec.status, "retrying")
        self.reasons[rec.step_id] = {"kind": kind, "step": rec.display_id, "until": rec.wake_at}

    def attempt_of(self, step_id: str) -> int:
        rec = self.memo.get(step_id)
        pending = self.pending.get(step_id)
        if pending is not None:
            return pending.attempts
        return rec.attempts if rec is not None and not rec.is_memo else 0

    # --- one call ---
    async def call(self, step_id: str, attempt: int, disable_immediate: bool, qi_id: str | None = None) -> _Answer:
        since = await self.engine.store.event_cursor()  # a wait reported by this call matches later events
        outcome = await self._call(step_id, attempt, disable_immediate, qi_id)
        return _Answer(step_id, outcome, since, checkpointing=qi_id is not None)

    async def _call(self, step_id: str, attempt: int, disable_immediate: bool, qi_id: str | None) -> Outcome:
        if self.lease.stop is not None:
            raise _Stop()
        now = self.now()
        if self.lease.lease_until is not None and now >= self.lease.lease_until:
            raise _Stop()  # another node may own the run now
        if self.deadline is not None and now >= self.deadline:
            await self.finish(RunFinish("cancelled", error={
                "name": "FinishTimeout", "message": "the run did not finish within timeouts.finish"}))  # fmt: skip
        memo = {sid: calls.memo_value(self.memo[sid]) for sid in self.stack}
        state = CallState(self.run.id, self.claimed.event, self.claimed.events, memo, list(self.stack), attempt,
                          self.fn.max_attempts, disable_immediate, self.fn.id if qi_id else None, qi_id,
                          defers.defers_map(self.memo))  # fmt: skip
        body, _ = calls.call_body(state)
        raw = signing.canonical_json(body)
        headers = {"Content-Type": "application/json", "User-Agent": "stepline", "X-Inngest-Step-ID": step_id,
                   "X-Run-ID": self.run.id}  # fmt: skip
        if self.st.config.signed and self.st.config.signing_keys:
            headers["X-Inngest-Signature"] = signing.sign(raw, self.st.config.signing_keys[0], now // 1000)
        elif "endpoint" in self.fn.spec.config:  # a durable endpoint takes a call for a request without it, as Go's
            headers["X-Inngest-Signature"] = ""
        self.ex.calls += 1
        limit = self.st.config.max_body_bytes
        too_large = Outcome("error", error={"name": "ResponseTooLarge", "message": (
            f"the app's response is larger than the limit of {limit} bytes")})  # fmt: skip
        span = 0
        if self.trace is not None:  # the app's spans nest under this call's (W3C trace context)
            span = new_span_id()
            headers["traceparent"] = self.trace.traceparent(span)
        elif self.app_traceparent is not None:
            headers["traceparent"] = self.app_traceparent
        started = time.perf_counter()
        try:
            async with self.ex.slots(self.fn.url), asyncio.timeout(self.st.config.call_timeout):  # the whole call
                answer = await self.st.calls.post(self.fn.call_url(step_id), raw, headers, limit)
        except ResponseTooLarge:
            return self.called(step_id, started, span, "too_large", too_large)
        except TimeoutError:
            late = Outcome("error", error={"name": "CallTimeout", "message": (
                f"the app did not answer within {self.st.config.call_timeout:g} s")})  # fmt: skip
            return self.called(step_id, started, span, "timeout", late)
        except AppCallFailed as exc:
            failed = Outcome("error", error={"name": "AppUnreachable", "message": (
                f"calling {self.fn.call_url(step_id)} failed: {exc}")})  # fmt: skip
            return self.called(step_id, started, span, "unreachable", failed)
        body_bytes, lower = answer.body, answer.headers
        if self.st.config.signed and "x-inngest-sdk" in lower and answer.status != 201:
            # A signed server only trusts answers signed with its key (the SDK signs with the key that verified). A
            # streamed answer (201, INNGEST_STREAMING) cannot be: the SDK sends its headers before the body exists
            # (the Python SDK signs "null" there), so it is taken on the strength of the signed request.
            header = lower.get("x-inngest-signature")
            checked_at = self.now() // 1000
            if signing.verify_response_signature(body_bytes, header, self.st.config.signing_keys, checked_at) is None:
                bad = Outcome("error", error={"name": "InvalidResponseSignature",
                                              "message": _signature_problem(header, checked_at)})  # fmt: skip
                return self.called(step_id, started, span, "bad_signature", bad)
        outcome = calls.parse_response(answer.status, lower, body_bytes, self.now())
        result = "function_error" if outcome.kind == "error" else "ok"
        return self.called(step_id, started, span, result, outcome)

    def called(self, step_id: str, started: float, span: int, result: str, outcome: Outcome) -> Outcome:
        """A call ended (``result`` for the call metrics): remember how long it took for the steps it ran; with
        tracing, write its span (named after the step it ran, when it ran one)."""
        seconds = self.call_seconds[step_id] = time.perf_counter() - started
        if (obs := hooks.current) is not None:
            obs.app_call(self.fn.spec.app_id, result, seconds)
        if self.trace is not None and span:
            end = time.time_ns()
            ran = [op for op in outcome.ops if op.op in ("StepRun", "Step", "StepError", "StepFailed")]
            label = self.labels.get(step_id) or (ran[0].label if len(ran) == 1 else None)
            name = f"step {label}" if label else f"call {self.fn.id}"
            attrs: dict[str, Any] = {"stepline.call.result": result}
            if label:
                attrs["stepline.step.id"] = label
                attrs["stepline.step.attempt"] = self.attempt_of(step_id if step_id != "step" else ran[0].id)
            if outcome.status is not None:
                attrs["http.response.status_code"] = outcome.status
            error = outcome.error if outcome.kind == "error" else next((op.error for op in ran if op.error), None)
            self.trace.step(name, span, end - int(seconds * 1e9), end, attrs, error, client=True)
        return outcome

    def call_started(self, targeted: str | None) -> int:
        """When the call that ran the step began (the attempt's start on the run's timeline)."""
        return self.now() - int(1000 * (self.call_seconds.get(targeted or "step") or 0.0))

    def attempted(self, op: Op, outcome: str, targeted: str | None, error: dict[str, Any] | None = None,
                  retry_at: int | None = None) -> None:  # fmt: skip
        """A step attempt the app reported: the step metrics, and the terminal line when it failed."""
        if outcome != "completed":
            runlog.attempt_failed(self.fn.id, self.run.id, self.labels[op.id], self.attempt_of(op.id), error,
                                  retry_at)  # fmt: skip
        if (obs := hooks.current) is not None:
            obs.step_attempt(self.fn.id, "run", outcome, self.call_seconds.get(targeted or "step"))

    # --- what a response means ---
    async def handle(self, outcome: Outcome, targeted: str | None) -> list[str]:
        """Apply a call's outcome; returns the steps to call next (planned). Raises _Stop when the run rests."""
        if outcome.kind == "complete":
            await self.finish(RunFinish("completed", output=outcome.output))
        not_found = targeted is not None and (
            (outcome.kind == "error" and (outcome.error or {}).get("requestedStep") == targeted)  # the npm SDK's 500
            or any(op.op == "StepNotFound" for op in outcome.ops)
        )  # the op of the SDK spec
        if not_found and targeted is not None and self.step_not_found(targeted):
            return []
        if outcome.kind == "error":
            await self.function_error(outcome.error or {}, outcome.retriable, outcome.retry_at, targeted,
                                      outcome.reason)  # fmt: skip
        planned: list[str] = []
        progressed = False
        for op in outcome.ops:  # lazy ops (defers) first: they ride on the others, a RunComplete may end the run
            if op.op in LAZY_OPS and (update := defer_update(op, self.memo, self.run.id)) is not None:
                await self.record(update)
        racers = sorted({op.id for op in outcome.ops if op.id and op.opts.get("parallelMode") == "race"}
                        - set(self.race_of))  # fmt: skip
        if racers:  # started together in race mode: one race, keyed by its steps
            key = hashlib.sha1(",".join(racers).encode()).hexdigest()[:16]
            self.race_of.update(dict.fromkeys(racers, key))
        for op in outcome.ops:
            if op.op in LAZY_OPS:
                progressed = True
                continue
            if op.id and op.id in self.memo and self.memo[op.id].is_memo:
                continue  # an early discovery re-reports finished or planned steps: ignore
            if op.id:
                self.labels.setdefault(op.id, op.label)
            try:
                progressed = await self.apply(op, outcome, targeted, planned) or progressed
            except _TooLong as exc:
                await self.finish(RunFinish("failed", error={"name": TIMEOUT_TOO_LONG, "message": str(exc)}))
            except (ValueError, TypeError) as exc:  # an unparsable duration, invalid CEL, ...
                await self.function_error({"name": "InvalidOp", "message": (
                    f"the app returned an invalid {op.op} op for step {op.label!r}: {exc}")},
                    retriable=True, retry_at=None)  # fmt: skip
        if not progressed and not planned and not self.pending and not any(s != DISCOVERY for s in self.tasks.values()):
            await self.function_error({"name": "Error", "message": "the app returned no op to act on (206 [])"},
                                      retriable=True, retry_at=None)  # fmt: skip
        return planned

    def step_not_found(self, step_id: str) -> bool:
        """The app no longer has the step a call targeted (its code changed): not a failure to retry, but a reason
        to ask the app again what it runs now (a discovery). Twice for one step is rediscovered; a third time is an
        error of that step (so a confused app cannot loop for ever)."""
        self.not_found[step_id] = self.not_found.get(step_id, 0) + 1
        if self.not_found[step_id] > 2:
            return False
        self.pending.pop(step_id, None)
        self.reasons.pop(step_id, None)
        self.rediscover = True
        return True

    async def apply(self, op: Op, outcome: Outcome, targeted: str | None, planned: list[str]) -> bool:
        kind = op.op
        if kind in ("StepRun", "Step"):
            self.attempted(op, "completed", targeted)
            await self.record(StepUpdate(op.id, self.labels[op.id], "run", "completed", self.attempt_of(op.id) + 1,
                                         output=op.data, started_at=self.call_started(targeted)))  # fmt: skip
            self.pending.pop(op.id, None)
            return True
        if kind == "StepError":
            attempt = self.attempt_of(op.id)
            error = op.error or {"name": "Error", "message": "step failed"}
            if outcome.retriable and attempt + 1 < self.fn.max_attempts:
                wake = outcome.retry_at or self.now() + int(
                    self.st.config.backoff.delay(attempt).total_seconds() * 1000
                )
                self.attempted(op, "retrying", targeted, error, wake)
                self.pending[op.id] = StepUpdate(op.id, self.labels[op.id], "run", "retrying", attempt + 1,
                                                 error=error, wake_at=wake,
                                                 started_at=self.call_started(targeted))  # fmt: skip
                self.reasons[op.id] = retrying_reason(self.labels[op.id], wake, error)
                return True
            self.attempted(op, "failed", targeted, error)
            await self.record(StepUpdate(op.id, self.labels[op.id], "run", "failed", attempt + 1, error=error,
                                         started_at=self.call_started(targeted)))  # fmt: skip
            self.pending.pop(op.id, None)
            return True
        if kind == "StepFailed":
            self.attempted(op, "failed", targeted, op.error or {"name": "Error", "message": "step failed"})
            await self.record(StepUpdate(op.id, self.labels[op.id], "run", "failed", self.attempt_of(op.id) + 1,
                                         error=op.error or {"name": "Error", "message": "step failed"}))  # fmt: skip
            self.pending.pop(op.id, None)
            return True
        if kind == "StepPlanned":
            if op.id in self.pending or op.id in planned or op.id == targeted or self.in_flight(op.id):
                return False
            planned.append(op.id)
            return True
        if op.id in self.pending:
            if kind == "WaitForSignal" and op.id in self.reasons and self.reasons[op.id]["kind"] == "waiting":
                self.reasons[op.id] = signal_reason(self.labels[op.id], self.signal_of(op), self.pending[op.id].wake_at
                                                    or self.now())  # fmt: skip
            return False  # a sleep, wait or invoke already registered: keep its original deadline
        if kind == "Sleep":
            return await self.sleep(op)
        if kind == "WaitForEvent":
            return self.wait_for_event(op)
        if kind == "InvokeFunction":
            return await self.invoke(op)
        if kind == "WaitForSignal":
            return await self.wait_for_signal(op)
        if kind in GATEWAY_OPS:
            return await self.gateway(op, GATEWAY_OPS[kind])
        if kind == "RunComplete":
            await self.finish(RunFinish("completed", output=op.data))
        if kind == "DiscoveryRequest":  # the SDK asks to be called again (its maxRuntime, a checkpoint it gave up)
            return True
        if kind == "StepNotFound":
            return False
        await self.record(StepUpdate(op.id or kind, op.label, "run", "failed", 1, error={
            "name": "UnsupportedOp", "message": f"Stepline does not support the {kind} op yet"}))  # fmt: skip
        return True

    async def sleep(self, op: Op) -> bool:
        now = self.now()
        raw = op.opts.get("duration") or op.name
        try:
            # No duration is a sleep of nothing, as Inngest reads it (the npm SDK sends "" for a sleep of 0 s).
            wake = now if raw in (None, "") else now + int(parse_duration(raw).total_seconds() * 1000)
        except (ValueError, TypeError):
            try:
                when = dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
            except ValueError:
                await self.record(
                    StepUpdate(
                        op.id,
                        self.labels[op.id],
                        "sleep",
                        "failed",
                        1,
                        error={
                            "name": "InvalidSleep",
                            "message": f"cannot read the sleep {raw!r}: a duration or ISO date",
                        },
                    )
                )
                return True
            wake = int((when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp() * 1000)
        if wake - now > MAX_SLEEP_MS:  # as Inngest since 2026: the run fails at once
            await self.finish(RunFinish("failed", error={"name": TIMEOUT_TOO_LONG, "message": sleep_too_long(raw)}))
        if wake <= now:
            await self.record(StepUpdate(op.id, self.labels[op.id], "sleep", "completed", 1, output=None))
            return True
        self.end_stretch()
        self.pending[op.id] = StepUpdate(op.id, self.labels[op.id], "sleep", "sleeping", wake_at=wake)
        self.reasons[op.id] = {"kind": "sleeping", "step": self.labels[op.id], "until": wake}
        return True

    def wait_for_event(self, op: Op) -> bool:
        name = op.opts.get("event") or op.name or ""
        timeout = op.opts.get("timeout") or DEFAULT_WAIT_TIMEOUT
        expression = op.opts.get("if") or None
        if expression is not None:
            compile_expression(expression)
        delta_ms = int(parse_duration(timeout).total_seconds() * 1000)
        if delta_ms > MAX_SLEEP_MS:  # as Inngest since 2026: the run fails at once
            raise _TooLong(wait_too_long(timeout))
        wake = self.now() + delta_ms
        event = canonical_event_name(str(name))
        self.end_stretch()
        self.pending[op.id] = StepUpdate(op.id, self.labels[op.id], "wait_for_event", "waiting", wake_at=wake,
                                         wait=WaitSpec(event, expression, wake), since=self.since)  # fmt: skip
        self.reasons[op.id] = {"kind": "waiting", "step": self.labels[op.id], "event": event, "until": wake}
        return True

    @staticmethod
    def signal_of(op: Op) -> str:
        return check_signal(op.opts.get("signal") or op.name)

    async def wait_for_signal(self, op: Op) -> bool:
        """``step.waitForSignal``: registered at once (``Store.wait_for_signal``), so a signal sent while the run is
        still executing is not lost; one run waits for a signal at a time (``conflict``: fail the run, or replace)."""
        now = self.now()
        signal = self.signal_of(op)
        timeout = op.opts.get("timeout") or DEFAULT_WAIT_TIMEOUT
        wake = now + int(parse_duration(timeout).total_seconds() * 1000)
        label = self.labels[op.id]
        update = self._raced(StepUpdate(op.id, label, "wait_for_signal", "waiting", wake_at=wake))
        try:
            outcome = await self.engine.store.wait_for_signal(self.run.id, self.ex.owner, update, signal,
                                                              op.opts.get("conflict") == "replace", now)  # fmt: skip
        except SignalConflict:
            # As Inngest: the run fails at once (no retry would help while the other run waits).
            await self.finish(RunFinish("failed", error=dict(SIGNAL_CONFLICT_ERROR)))
        if outcome.status != "ok" or outcome.step is None:
            raise _Stop()
        self.end_stretch()
        if outcome.step.is_memo:  # (a replay of a wait whose signal came already)
            self.memo[op.id] = outcome.step
            self.stack.append(op.id)
            return True
        self.memo[op.id] = outcome.step
        self.pending[op.id] = update
        self.reasons[op.id] = signal_reason(label, signal, wake)
        return True

    async def invoke(self, op: Op) -> bool:
        now = self.now()
        target = str(op.opts.get("function_id") or "")
        spec = await self.engine.find_function(target, default_app=self.fn.spec.app_id)
        if spec is None:
            await self.record(StepUpdate(op.id, self.labels[op.id], "invoke", "failed", 1, error={
                "name": "Error", "message": f"step.invoke: no registered function has id {target!r}"}))  # fmt: skip
            return True
        payload = op.opts.get("payload")
        raw_data = payload.get("data") if isinstance(payload, dict) else None
        data: dict[str, Any] = dict(raw_data) if isinstance(raw_data, dict) else {}
        timeout = op.opts.get("timeout") or DEFAULT_WAIT_TIMEOUT
        wake = now + int(parse_duration(timeout).total_seconds() * 1000)
        batch = self.engine.plan_invoke(spec, self.run.id, op.id, self.fn.id, data, wake, now)
        self.end_stretch()
        self.pending[op.id] = StepUpdate(op.id, self.labels[op.id], "invoke", "invoking", wake_at=wake, invoke=batch)
        self.reasons[op.id] = {"kind": "invoking", "step": self.labels[op.id], "function": spec.id,
                               "run_id": batch.runs[0].id, "until": wake}  # fmt: skip
        return True

    async def gateway(self, op: Op, kind: str) -> bool:
        """Start the request of a ``step.fetch`` / ``step.ai.infer`` op (a task beside the calls in flight)."""
        if self.in_flight(op.id):
            return False
        self.launched += 1
        attempt = self.gateway_retries.pop(op.id, 0)
        label = self.labels[op.id]
        cfg = self.st.config

        async def request() -> _Answer:
            result = await gateway.perform(self.st.outbound, kind, op.opts, cfg.gateway_timeout, cfg.gateway_max_bytes)
            return _Answer(op.id, Outcome("ops"), self.since, gateway=_GatewayDone(kind, label, attempt, result))

        self.tasks[asyncio.ensure_future(request())] = op.id
        return True

    async def gateway_done(self, step_id: str, done: _GatewayDone) -> None:
        """A gateway request ended: its result or final error is the step's memo; an error with attempts left is
        retried with backoff (as Inngest's queue retries the op)."""
        result = done.result
        if result.error is None:
            await self.record(StepUpdate(step_id, done.label, done.kind, "completed", done.attempt + 1,
                                         output=result.output))  # fmt: skip
            return
        if done.attempt + 1 < self.fn.max_attempts:
            wake = self.now() + int(self.st.config.backoff.delay(done.attempt).total_seconds() * 1000)
            self.pending[step_id] = StepUpdate(step_id, done.label, done.kind, "retrying", done.attempt + 1,
                                               error=result.error, wake_at=wake)  # fmt: skip
            self.reasons[step_id] = retrying_reason(done.label, wake, result.error)
            return
        await self.record(StepUpdate(step_id, done.label, done.kind, "failed", done.attempt + 1, error=result.error))

    # --- durable writes ---
    def _raced(self, update: StepUpdate) -> StepUpdate:
        key = self.race_of.get(update.step_id)
        return update if key is None or update.race == key else dataclasses.replace(update, race=key)

    async def record(self, update: StepUpdate) -> StepRecord:
        update = self._raced(update)
        outcome = await self.engine.store.record_step(self.run.id, self.ex.owner, update, self.engine.matcher,
                                                      self.now())  # fmt: skip
        if outcome.cancelled_run_ids:
            await self.engine.announce_cancellations(outcome.cancelled_run_ids)
        if outcome.status != "ok" or outcome.step is None:
            raise _Stop()
        rec = outcome.step
        if rec.kind in DEFER_KINDS:
            self.memo[rec.step_id] = rec
            return rec
        if rec.is_memo:
            self.end_stretch()
        if rec.step_id not in self.memo or not self.memo[rec.step_id].is_memo:
            self.stack.append(rec.step_id)
        self.memo[rec.step_id] = rec
        if update.emit is not None:
            self.engine.notify()
        return rec

    async def suspend(self, paused: bool = False) -> None:
        """Store the waiting steps and rest until the earliest is due; ``paused``: due now, held while paused."""
        now = self.now()
        idle = idle_of(list(self.reasons.values()))
        outcome = await self.engine.store.suspend_run(
            self.run.id, self.ex.owner, [self._raced(u) for u in self.pending.values()],
            PAUSED_REASON if paused else idle, self.engine.matcher, now,
            max_due_at=now - 1 if paused else self.deadline,  # paused: due at once, with its reason kept
            attempt=0 if self.stretch_ended else None)  # fmt: skip
        await self.engine.announce_cancellations(outcome.cancelled_run_ids)
        self.engine.notify()
        raise _Stop()

    async def function_error(self, error: dict[str, Any], retriable: bool, retry_at: int | None,
                             targeted: str | None = None, reason: str | None = None) -> None:  # fmt: skip
        """An error outside any op (the function's code threw, the app was down, answered garbage, ...).

        As on Inngest, it counts against the attempt of the unit of work that failed: a targeted call's step
        (retried as that step, with its attempt) or the current stretch of code (a discovery call). With no
        attempt left, or ``X-Inngest-No-Retry``, the run fails. ``reason``: why the answer counts as a failure
        (``invalid status code: 500``), for the run-end events' ``data.error``."""
        run = self.run
        now = self.now()
        if targeted is not None:
            attempt = self.attempt_of(targeted)
            if retriable and attempt + 1 < self.fn.max_attempts:
                wake = retry_at or now + int(self.st.config.backoff.delay(attempt).total_seconds() * 1000)
                label = self.labels.get(targeted, targeted)
                runlog.attempt_failed(self.fn.id, run.id, label, attempt, error, wake)
                self.pending[targeted] = StepUpdate(targeted, label, "run", "retrying", attempt + 1, error=error,
                                                    wake_at=wake, started_at=self.call_started(targeted))  # fmt: skip
                self.reasons[targeted] = retrying_reason(label, wake, error)
                return
        elif retriable and self.attempt + 1 < self.fn.max_attempts:
            due = retry_at or now + int(self.st.config.backoff.delay(self.attempt).total_seconds() * 1000)
            runlog.attempt_failed(self.fn.id, run.id, None, self.attempt, error, due)
            if (obs := hooks.current) is not None:
                obs.run_retried(self.fn.id)
            await self.engine.store.retry_run(run.id, self.ex.owner, due, error, now, attempt=self.attempt + 1)
            raise _Stop()
        await self.finish(RunFinish("failed", error=error, event_error=run_end_error(error, reason)))

    async def finish(self, finish: RunFinish) -> None:
        if finish.status in ("completed", "failed"):  # the run's defers start their functions now
            finish.emit = defers.schedule_events(self.memo, self.run.id, self.fn.id, self.fn.spec.app_id)
        await self.engine.end_run(self.run, self.claimed.event, self.ex.owner, finish)
        raise _Stop()
