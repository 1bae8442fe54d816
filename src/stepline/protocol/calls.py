"""The SDK call protocol: the request body the SDKs expect, and what their responses mean.

Pure functions, no I/O: ``call_body`` builds the JSON of one call from a run's memo, ``parse_response`` turns
an HTTP response into an outcome (the function completed, returned ops, or failed). See
``../shared/inngest-protocol.md`` section 5 for the facts these follow.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from stepline.storage.records import StepRecord, StoredEvent

MAX_RETRY_AFTER_MS = 24 * 3600 * 1000
INLINE_STATE_LIMIT = 4 * 1024 * 1024  # above this, the SDK fetches events and memos through the API (use_api)


def sdk_event_name(name: str) -> str:
    """Stepline's system events as the Inngest SDKs know them."""
    return "inngest/" + name[len("stepline/") :] if name.startswith("stepline/function.") else name


def sdk_event(ev: StoredEvent) -> dict[str, Any]:
    out = ev.as_dict()
    out["name"] = sdk_event_name(ev.name)
    out["user"] = ev.user or {}
    return out


def memo_value(rec: StepRecord) -> Any:
    """A recorded step as the SDKs expect it in ``steps``: ``{"data"}`` / ``{"error"}`` for run steps,
    ``null`` for a finished sleep, the raw event (or ``null``) for a wait, ``{"data"}`` / ``{"error"}`` for invoke."""
    if rec.status == "failed":
        return {"error": rec.error or {"name": "Error", "message": "step failed"}}
    if rec.kind == "sleep":
        return None
    if rec.kind == "wait_for_event":
        return rec.output
    if rec.kind == "wait_for_signal":  # {"data": {"signal", "data"}} as Inngest's executor writes it; null: timed out
        return None if rec.output is None else {"data": rec.output}
    return {"data": rec.output}  # run and invoke steps (an invoke step's output is the invoked run's output)


@dataclass
class CallState:
    """What one call tells the SDK about the run."""

    run_id: str
    event: StoredEvent
    events: list[StoredEvent]
    memo: dict[str, Any]  # hashed step id -> memo value
    stack: list[str]  # hashed ids in the order they were recorded
    attempt: int
    max_attempts: int
    disable_immediate_execution: bool = False
    # What the npm SDK needs to checkpoint (server/checkpoint_api.py): the function and the dispatch.
    fn_id: str | None = None
    qi_id: str | None = None
    defers: dict[str, Any] | None = None  # the run's defers: {hashed id: {"abortable"}} (server/defers.py)


def call_body(state: CallState) -> tuple[dict[str, Any], bool]:
    """The call's JSON body, and whether the state was too large to inline (``use_api``)."""
    events = [sdk_event(e) for e in state.events] or [sdk_event(state.event)]
    body: dict[str, Any] = {
        "event": sdk_event(state.event),
        "events": events,
        "steps": state.memo,
        "ctx": {
            "run_id": state.run_id,
            "attempt": state.attempt,
            "max_attempts": state.max_attempts,
            "disable_immediate_execution": state.disable_immediate_execution,
            "use_api": False,
            "stack": {"stack": list(state.stack), "current": len(state.stack)},
            **({"fn_id": state.fn_id, "qi_id": state.qi_id} if state.fn_id and state.qi_id else {}),
        },
        "version": -1,
        "use_api": False,
        **({"defers": state.defers} if state.defers else {}),
    }
    size = len(json.dumps(state.memo, separators=(",", ":"))) + len(json.dumps(events, separators=(",", ":")))
    if size <= INLINE_STATE_LIMIT:
        return body, False
    body["events"] = []
    body["steps"] = {}
    body["use_api"] = True
    body["ctx"]["use_api"] = True
    return body, True


@dataclass
class Op:
    op: str
    id: str
    name: str | None = None
    display_name: str | None = None
    opts: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    error: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """The user's step id, for display."""
        return self.display_name or self.name or self.id


@dataclass
class Outcome:
    kind: Literal["complete", "ops", "error"]
    output: Any = None
    ops: list[Op] = field(default_factory=list)
    error: dict[str, Any] | None = None
    retriable: bool = True
    retry_at: int | None = None  # unix ms from Retry-After
    status: int | None = None
    sdk: str | None = None  # the answer's X-Inngest-SDK ("js:v4.24.0", "py:v0.5.19")
    # Why an error answer counts as a failure, as Inngest's executor words it (``invalid status code: 500``, or
    # ``NonRetriableError`` with X-Inngest-No-Retry): the run-end events' ``data.error.error``.
    reason: str | None = None


def _error(message: str, *, name: str = "Error", status: int | None = None, retriable: bool = True) -> Outcome:
    return Outcome("error", error={"name": name, "message": message}, retriable=retriable, status=status)


def retry_after_ms(value: str | None, now_ms: int) -> int | None:
    """``Retry-After`` as seconds, an HTTP date or an ISO date; capped at 24 hours from now."""
    if not value:
        return None
    value = value.strip()
    at: int | None = None
    try:
        at = now_ms + int(float(value) * 1000)
    except ValueError:
        parsed: dt.datetime | None = None
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            try:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        at = int(parsed.timestamp() * 1000)
    return max(now_ms, min(at, now_ms + MAX_RETRY_AFTER_MS))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_storable(value: Any) -> None:
    """Values both stores keep and the SDKs read back: no lone surrogates, no NUL characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")
    except (UnicodeEncodeError, ValueError) as exc:
        raise ValueError(f"a string in the body is not valid Unicode: {exc}") from None
    if "\\u0000" in text or "\x00" in text:
        raise ValueError("a string in the body contains a NUL character (\\u0000), which cannot be stored")


STEP_OPS = frozenset({"StepRun", "Step", "StepError", "StepFailed", "StepPlanned", "Sleep", "WaitForEvent",
                      "InvokeFunction", "Gateway", "AIGateway", "WaitForSignal"})  # fmt: skip


def parse_op(raw: Any) -> Op | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("op"), str):
        return None
    opts = raw.get("opts")
    err = raw.get("error")
    userland = raw.get("userland")
    user_id = userland.get("id") if isinstance(userland, dict) else None
    display = raw.get("displayName")
    return Op(
        op=raw["op"],
        id=str(raw.get("id") or ""),
        name=raw.get("name") if isinstance(raw.get("name"), str) else None,
        # The user's step id: userland.id (JS), else displayName; `name` holds durations and event names.
        display_name=user_id if isinstance(user_id, str) and user_id else display if isinstance(display, str) else None,
        opts=opts if isinstance(opts, dict) else {},
        data=raw.get("data"),
        error=err if isinstance(err, dict) else ({"name": "Error", "message": str(err)} if err else None),
    )


def _header(headers: dict[str, str], name: str) -> str | None:
    return headers.get(name.lower())


def parse_response(status: int, headers: dict[str, str], body: bytes, now_ms: int) -> Outcome:
    """Interpret an SDK's answer to a call. ``headers`` must have lower-case names."""
    if status == 201:  # streaming: keep-alive whitespace, then {"status", "headers", "body"}
        try:
            wrapped = json.loads(body.strip() or b"null")
        except ValueError:
            return _error("the app's streamed response is not JSON", status=status)
        if not isinstance(wrapped, dict) or not isinstance(wrapped.get("status"), int):
            return _error("the app's streamed response has no status", status=status)
        inner_headers = {str(k).lower(): str(v) for k, v in (wrapped.get("headers") or {}).items()}
        inner = wrapped.get("body")
        inner_body = inner.encode() if isinstance(inner, str) else json.dumps(inner).encode()
        return parse_response(wrapped["status"], {**headers, **inner_headers}, inner_body, now_ms)
    no_retry = (_header(headers, "x-inngest-no-retry") or "").lower() == "true"
    retry_at = retry_after_ms(_header(headers, "retry-after"), now_ms)
    if 200 <= status < 300 and _header(headers, "x-inngest-sdk") is None:
        return _error(f"the app answered HTTP {status} without an X-Inngest-SDK header: not an Inngest SDK "
                      "response (is the URL right?)", status=status)  # fmt: skip
    try:
        payload = json.loads(body, parse_constant=_reject_constant) if body.strip() else None
        if 200 <= status < 300:
            check_storable(payload)
    except ValueError as exc:
        if 200 <= status < 300:
            return _error(f"the app answered HTTP {status} with a body that is not JSON ({exc}): {body[:200]!r}",
                          status=status)  # fmt: skip
        payload = None
    if status == 200:
        return Outcome("complete", output=payload, status=status)
    if status == 206:
        items = payload if isinstance(payload, list) else [payload] if isinstance(payload, dict) else None
        if items is None:
            return _error("the app answered 206 without a list of ops", status=status)
        ops = [parse_op(i) for i in items]
        if any(o is None for o in ops):
            return _error(f"the app answered 206 with an op that has no 'op' field: {body[:200]!r}", status=status)
        missing = [o.op for o in ops if o is not None and o.op in STEP_OPS and not o.id]
        if missing:
            return _error(f"the app answered 206 with a {missing[0]} op without a step id", status=status)
        return Outcome("ops", ops=[o for o in ops if o is not None], retry_at=retry_at, status=status,
                       sdk=_header(headers, "x-inngest-sdk"),
                       retriable=not no_retry)  # fmt: skip
    if isinstance(payload, dict) and (payload.get("name") or payload.get("message")) and _storable(payload):
        error = payload  # the SDK's error, stored and returned exactly as it sent it (a null stack stays null)
    else:
        error = {"name": "Error", "message": f"the app answered HTTP {status}: {body[:300].decode(errors='replace')}"}
    reason = "NonRetriableError" if no_retry else f"invalid status code: {status}"
    return Outcome("error", error=error, retriable=not no_retry, retry_at=retry_at, status=status, reason=reason)


def _storable(value: Any) -> bool:
    try:
        check_storable(value)
    except ValueError:
        return False
    return True
