"""Function definitions: what users declare with ``@client.function`` and the stored config engines share.

``FunctionDef`` holds the handler (only the process that defines it can run it). ``FunctionSpec`` is the
part every process needs to route events: triggers, idempotency, cancellation and timeouts. It is stored as
JSON in the functions table so a process that only sends events still starts the right runs.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stepline.core.backoff import Backoff
from stepline.core.durations import parse_duration
from stepline.core.events import FUNCTION_FAILED, canonical_event_name
from stepline.core.expressions import Bindings, ExpressionError, compile_expression
from stepline.core.flow import FlowSpec, normalize_flow
from stepline.core.triggers import CronTrigger, EventTrigger, Trigger
from stepline.storage.records import FunctionRecord

DEFAULT_RETRIES = 4
MAX_RETRIES = 20
DEFAULT_WAIT_TIMEOUT = dt.timedelta(days=365)
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")

TriggerInput = str | Trigger | Mapping[str, Any]
Handler = Callable[..., Any]


@dataclass(frozen=True)
class CancelOn:
    """Cancel a run when ``event`` arrives and ``if_exp`` (over ``event`` and ``async``) is true."""

    event: str
    if_exp: str | None = None
    timeout: str | int | float | dt.timedelta | None = None
    match: str | None = None  # shorthand: "data.user_id" means event.data.user_id == async.data.user_id


@dataclass(frozen=True)
class Timeouts:
    """``start``: longest a run may stay queued; ``finish``: longest it may take once started."""

    start: str | int | float | dt.timedelta | None = None
    finish: str | int | float | dt.timedelta | None = None


def _ms(value: str | int | float | dt.timedelta) -> int:
    return int(parse_duration(value).total_seconds() * 1000)


def _parse_trigger(fn_id: str, raw: TriggerInput) -> Trigger:
    if isinstance(raw, EventTrigger | CronTrigger):
        trig = raw
    elif isinstance(raw, str):
        trig = EventTrigger(event=raw)
    elif isinstance(raw, Mapping):
        if "cron" in raw:
            trig = CronTrigger(cron=str(raw["cron"]), jitter=raw.get("jitter"))
        else:
            expression = raw.get("if_exp", raw.get("if", raw.get("expression")))
            trig = EventTrigger(event=str(raw.get("event", "")), expression=expression)
    else:
        raise ValueError(f"function {fn_id!r}: a trigger must be an event name, EventTrigger or CronTrigger")
    if isinstance(trig, EventTrigger) and trig.event != canonical_event_name(trig.event):
        trig = EventTrigger(event=canonical_event_name(trig.event), expression=trig.expression)
    return trig


def _cancel_expression(c: CancelOn) -> str | None:
    from stepline.core.expressions import match_to_expression

    parts = [p for p in (c.if_exp, match_to_expression(c.match) if c.match else None) if p]
    return " && ".join(f"({p})" for p in parts) or None


@dataclass(frozen=True)
class FunctionSpec:
    """The routing part of a function, parsed from its stored config."""

    id: str
    app_id: str
    slug: str
    name: str
    triggers: tuple[Trigger, ...]
    retries: int = DEFAULT_RETRIES
    idempotency: str | None = None
    cancel: tuple[tuple[str, str | None, int], ...] = ()  # (event name, expression, timeout ms)
    start_timeout_ms: int | None = None
    finish_timeout_ms: int | None = None
    retention_ms: int | None = None  # keep ended runs this long (None: the store-wide default)
    config: dict[str, Any] = field(default_factory=dict)
    flow: FlowSpec | None = None  # concurrency, throttle, rate limit, debounce, priority, batch, singleton
    # Stored expressions that no longer compile or pass the limits (stored by an older version, or before a limit
    # was lowered): reported on the function and its app, never evaluated. A trigger among them never fires; a
    # key among them fails the runs that need it; a cancel condition among them never matches.
    problems: tuple[str, ...] = ()
    isolated: bool = False  # some expression has comprehensions (evaluated on a budget, off the event loop)

    @classmethod
    def from_record(cls, rec: FunctionRecord) -> FunctionSpec:
        c = rec.config
        triggers: list[Trigger] = []
        problems: list[str] = []
        isolated = False

        def check(place: str, expression: str | None) -> bool:
            nonlocal isolated
            if not expression:
                return True
            try:
                isolated |= compile_expression(expression).isolated
            except ValueError as exc:
                problems.append(f"{place}: {exc}")
                return False
            return True

        for t in c.get("triggers", []):
            if "cron" in t:
                try:
                    triggers.append(CronTrigger(cron=t["cron"], jitter=t.get("jitter")))
                except ValueError:
                    continue  # stored before crons were validated: never fires, routes nothing else
            elif check(f"trigger {t.get('event')!r} if", t.get("expression")):
                triggers.append(EventTrigger(event=t["event"], expression=t.get("expression")))
        check("idempotency", c.get("idempotency"))
        for x in c.get("cancel", []):
            check(f"cancel_on {x.get('event')!r} if", x.get("expression"))
        flow = FlowSpec.from_config(c.get("flow"))
        for place, expression in flow.expressions if flow is not None else ():
            check(place, expression)
        timeouts = c.get("timeouts") or {}
        return cls(
            id=rec.id,
            app_id=rec.app_id,
            slug=rec.slug,
            name=rec.name,
            triggers=tuple(triggers),
            retries=int(c.get("retries", DEFAULT_RETRIES)),
            idempotency=c.get("idempotency"),
            cancel=tuple((x["event"], x.get("expression"), int(x["timeout_ms"])) for x in c.get("cancel", [])),
            start_timeout_ms=timeouts.get("start_ms"),
            finish_timeout_ms=timeouts.get("finish_ms"),
            retention_ms=c.get("retention_ms"),
            config=c,
            flow=flow,
            problems=tuple(problems),
            isolated=isolated,
        )

    @property
    def has_if(self) -> bool:
        """Some event trigger has a CEL ``if`` (matching needs the event bound for CEL)."""
        return any(isinstance(t, EventTrigger) and t.expression for t in self.triggers)

    @property
    def gates_claims(self) -> bool:
        """Runs are claimed through flow control (concurrency or priority)."""
        return self.flow is not None and self.flow.gates_claims

    @property
    def captures_logs(self) -> bool:
        """Stepline keeps the run's log lines (in-process functions; an HTTP app logs in its own process)."""
        return self.config.get("runtime") != "http"

    def matching_trigger(self, event: dict[str, Any], failures: list[tuple[str, str, str]] | None = None,
                         bindings: Bindings | None = None) -> bool:  # fmt: skip
        """Whether one of the event triggers fires for ``event``. A trigger whose ``if`` fails for another reason
        than a missing field does not fire, and is added to ``failures`` as (place, expression, error).
        ``bindings``: the event bound as ``event`` once for every expression over it."""
        for t in self.triggers:
            if not isinstance(t, EventTrigger):
                continue
            try:
                if t.check(event, bindings):
                    return True
            except ExpressionError as exc:
                if failures is not None and t.expression is not None:
                    failures.append((f"trigger {t.event!r} if", t.expression, str(exc)))
        return False


@dataclass
class FunctionDef:
    """A function a process can execute: its handler plus its options."""

    app_id: str
    slug: str
    handler: Handler
    triggers: tuple[Trigger, ...]
    name: str
    retries: int = DEFAULT_RETRIES
    backoff: Backoff = field(default_factory=Backoff)
    idempotency: str | None = None
    cancel_on: tuple[CancelOn, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    failure_of: str | None = None  # for on_failure handlers: the composite id of the function they serve
    retention: dt.timedelta | None = None  # how long ended runs are kept (default: the worker's setting)
    flow: dict[str, Any] = field(default_factory=dict)  # normalised flow control (core/flow.py)

    @property
    def id(self) -> str:
        return f"{self.app_id}-{self.slug}"

    @functools.cached_property
    def finish_timeout_ms(self) -> int | None:
        """``timeouts.finish`` in milliseconds (parsed once: the executor reads it for every run)."""
        return None if self.timeouts.finish is None else _ms(self.timeouts.finish)

    @property
    def gates_claims(self) -> bool:
        """Runs are claimed through flow control (concurrency or priority)."""
        return FlowSpec(self.flow).gates_claims

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    def config(self) -> dict[str, Any]:
        triggers: list[dict[str, Any]] = []
        for t in self.triggers:
            if isinstance(t, CronTrigger):
                triggers.append({"cron": t.cron, **({"jitter": t.jitter} if t.jitter_ms else {})})
            else:
                triggers.append({"event": t.event, **({"expression": t.expression} if t.expression else {})})
        cancel = [
            {"event": canonical_event_name(c.event), "expression": _cancel_expression(c),
             "timeout_ms": _ms(c.timeout) if c.timeout is not None else _ms(DEFAULT_WAIT_TIMEOUT)}
            for c in self.cancel_on
        ]  # fmt: skip
        timeouts = {
            k: v
            for k, v in (
                ("start_ms", _ms(self.timeouts.start) if self.timeouts.start is not None else None),
                ("finish_ms", _ms(self.timeouts.finish) if self.timeouts.finish is not None else None),
            )
            if v is not None
        }
        out: dict[str, Any] = {"triggers": triggers, "retries": self.retries, "runtime": "in-process"}
        if self.idempotency:
            out["idempotency"] = self.idempotency
        if cancel:
            out["cancel"] = cancel
        if timeouts:
            out["timeouts"] = timeouts
        if self.failure_of:
            out["failure_of"] = self.failure_of
        if self.retention is not None:
            out["retention_ms"] = int(self.retention.total_seconds() * 1000)
        if self.flow:
            out["flow"] = self.flow
        return out

    def record(self) -> FunctionRecord:
        return FunctionRecord(self.id, self.app_id, self.slug, self.name, self.config())


def build_function(
    *,
    app_id: str,
    slug: str,
    handler: Handler,
    trigger: TriggerInput | Sequence[TriggerInput] | None,
    name: str | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff: Backoff | None = None,
    idempotency: str | None = None,
    cancel_on: Sequence[CancelOn | Mapping[str, Any]] = (),
    timeouts: Timeouts | Mapping[str, Any] | None = None,
    failure_of: str | None = None,
    retention: str | int | float | dt.timedelta | None = None,
    flow: Mapping[str, Any] | None = None,
) -> FunctionDef:
    """Validate options and build a FunctionDef. Every problem raises ValueError naming function and field."""
    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise ValueError(f"function id {slug!r} must be non-empty and use letters, digits, '-', '_', '.', ':'")
    if not callable(handler):
        raise ValueError(f"function {slug!r}: handler is not callable")
    raw_triggers: list[TriggerInput]
    if trigger is None:
        raw_triggers = []
    elif isinstance(trigger, str | EventTrigger | CronTrigger | Mapping):
        raw_triggers = [trigger]
    else:
        raw_triggers = list(trigger)
    if not raw_triggers and failure_of is None:
        raise ValueError(f"function {slug!r}: at least one trigger is required (an event name or a cron)")
    try:
        triggers = tuple(_parse_trigger(slug, t) for t in raw_triggers)
    except ValueError as exc:
        raise ValueError(f"function {slug!r}: invalid trigger: {exc}") from None
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"function {slug!r}: retries must be an integer from 0 to {MAX_RETRIES}, got {retries!r}")
    if idempotency is not None:
        try:
            compile_expression(idempotency)
        except ValueError as exc:
            raise ValueError(f"function {slug!r}: invalid idempotency expression: {exc}") from None
    cancels: list[CancelOn] = []
    for c in cancel_on:
        item = c if isinstance(c, CancelOn) else CancelOn(**dict(c))
        try:
            expr = _cancel_expression(item)
            if expr:
                compile_expression(expr)
            if item.timeout is not None:
                parse_duration(item.timeout)
        except ValueError as exc:
            raise ValueError(f"function {slug!r}: invalid cancel_on {item!r}: {exc}") from None
        cancels.append(item)
    t = timeouts if isinstance(timeouts, Timeouts) else Timeouts(**dict(timeouts or {}))
    for label, value in (("start", t.start), ("finish", t.finish)):
        if value is not None:
            try:
                parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"function {slug!r}: invalid timeouts.{label}: {exc}") from None
    keep: dt.timedelta | None = None
    if retention is not None:
        try:
            keep = parse_duration(retention)
        except ValueError as exc:
            raise ValueError(f"function {slug!r}: invalid retention: {exc}") from None
        if keep < dt.timedelta(hours=1):
            raise ValueError(f"function {slug!r}: retention must be at least 1h, got {retention!r}")
    flow_config = normalize_flow(slug, {k: v for k, v in (flow or {}).items() if v is not None})
    return FunctionDef(
        flow=flow_config,
        retention=keep,
        app_id=app_id,
        slug=slug,
        handler=handler,
        triggers=triggers,
        name=name or slug,
        retries=retries,
        backoff=backoff or Backoff(),
        idempotency=idempotency,
        cancel_on=tuple(cancels),
        timeouts=t,
        failure_of=failure_of,
    )


def failure_function(parent: FunctionDef, handler: Handler) -> FunctionDef:
    """The on_failure handler as its own function, triggered by the parent's failure event (as Inngest)."""
    fn = build_function(
        app_id=parent.app_id,
        slug=f"{parent.slug}-failure",
        handler=handler,
        trigger=EventTrigger(event=FUNCTION_FAILED, expression=f"event.data.function_id == '{parent.id}'"),
        name=f"{parent.name} (failure)",
        retries=0,
        backoff=parent.backoff,
        failure_of=parent.id,
    )
    return fn
