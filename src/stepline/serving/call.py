"""One SDK call on the wire: the request body the server sends, and the answer the app gives."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from stepline.core.errors import RunSignal, Suspend
from stepline.core.events import StoredEvent, canonical_event_name


@dataclass
class CallRequest:
    """What one call says about the run (protocol section 5)."""

    fn_id: str
    step_id: str  # "step" for a discovery call, else the hashed id of the step to run
    event: dict[str, Any]
    events: list[dict[str, Any]]
    steps: dict[str, Any]  # hashed step id -> memo
    run_id: str
    attempt: int
    max_attempts: int | None
    disable_immediate_execution: bool
    use_api: bool


def parse_call(body: Any, fn_id: str, step_id: str) -> CallRequest:
    """Raises ValueError naming the first field that is missing or of the wrong type."""
    if not isinstance(body, dict):
        raise ValueError("the call body must be a JSON object")
    ctx = body.get("ctx")
    if not isinstance(ctx, dict):
        raise ValueError("the call body has no 'ctx' object")
    event = body.get("event")
    steps = body.get("steps")
    events = body.get("events")
    run_id = ctx.get("run_id")
    attempt = ctx.get("attempt", 0)
    max_attempts = ctx.get("max_attempts")
    if not isinstance(event, dict):
        raise ValueError("the call body has no 'event' object")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("ctx.run_id must be a non-empty string")
    if steps is not None and not isinstance(steps, dict):
        raise ValueError("'steps' must be an object (hashed step id -> memo)")
    if events is not None and not isinstance(events, list):
        raise ValueError("'events' must be a list")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValueError("ctx.attempt must be a non-negative integer")
    if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)):
        raise ValueError("ctx.max_attempts must be an integer")
    return CallRequest(
        fn_id=fn_id,
        step_id=step_id or "step",
        event=event,
        events=[e for e in events or [] if isinstance(e, dict)],
        steps=dict(steps or {}),
        run_id=run_id,
        attempt=attempt,
        max_attempts=max_attempts,
        disable_immediate_execution=bool(ctx.get("disable_immediate_execution")),
        use_api=bool(body.get("use_api") or ctx.get("use_api")),
    )


def stored_event(raw: dict[str, Any]) -> StoredEvent:
    """A wire event as user code sees it in-process (system event names as ``stepline/function.*``). The wire
    carries no internal id: ``internal_id`` is the event's ``id``."""
    eid = str(raw.get("id") or "")
    ts = raw.get("ts")
    ts_ms = ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
    data, user, v = raw.get("data"), raw.get("user"), raw.get("v")
    return StoredEvent(internal_id=eid, id=eid, name=canonical_event_name(str(raw.get("name") or "")),
                       data=data if isinstance(data, dict) else {}, user=user if isinstance(user, dict) else {},
                       ts=ts_ms, v=v if isinstance(v, str) else None, received_at=ts_ms)  # fmt: skip


@dataclass
class CallResult:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def iso_ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def unwrap_signals(error: BaseException | None) -> BaseException | None:
    """A TaskGroup wraps its branches' Suspends in a BaseExceptionGroup: a group of only signals is a signal."""
    if isinstance(error, BaseExceptionGroup):
        real = error.subgroup(lambda e: not isinstance(e, RunSignal | BaseExceptionGroup))
        if real is None:
            return Suspend()
        leaves = _leaves(real)
        return leaves[0] if len(leaves) == 1 else real
    return error


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out
