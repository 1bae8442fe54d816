"""A run's states: its ``RunStatus``, the transitions the store may make between them, and its idle reason (why a
live run is not executing), with the one function that puts an idle reason into words (CLI and dashboard alike).

``docs/state_machine.md`` draws this table; ``tests/storage/test_run_transitions.py`` drives the engine on each
backend and checks every status change each store method makes against it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Required, TypedDict

if TYPE_CHECKING:
    from stepline.storage.records import RunRecord

RunStatus = Literal["queued", "running", "completed", "failed", "cancelled", "skipped"]
RUN_STATUSES: tuple[RunStatus, ...] = ("queued", "running", "completed", "failed", "cancelled", "skipped")
LIVE: tuple[RunStatus, ...] = ("queued", "running")
ENDED: tuple[RunStatus, ...] = ("completed", "failed", "cancelled", "skipped")

# Runs a transaction that stores events starts or ends: new runs (queued; skipped when a rate limit or singleton
# refuses them; failed when a key expression fails), and live runs cancelled (cancel_on, singleton "cancel").
_EVENTS: frozenset[tuple[RunStatus | None, RunStatus | None]] = frozenset(
    {(None, "queued"), (None, "skipped"), (None, "failed"), ("queued", "cancelled"), ("running", "cancelled")}
)

# (from, to) by the store method that makes the change; None is "no run" (created, or deleted by prune). A run
# that stays in its status (a claim of an idle running run, a suspend) makes no transition and is not listed.
TRANSITIONS: Mapping[str, frozenset[tuple[RunStatus | None, RunStatus | None]]] = {
    "ingest": _EVENTS,
    "fire_cron": frozenset({(None, "queued"), (None, "skipped")}),
    "create_run": frozenset({(None, "queued")}),  # a rerun
    "start_endpoint_run": frozenset({(None, "running")}),  # a durable endpoint's run, which its app runs
    # a queued run starts; one past its timeouts.start stays queued (leased), and finish_run cancels it
    "claim_runs": frozenset({("queued", "running")}),
    "record_step": _EVENTS,  # step.send_event's events
    "suspend_run": _EVENTS,  # step.invoke's child run
    "finish_run": _EVENTS
    | {("running", "completed"), ("running", "failed"), ("running", "cancelled"), ("queued", "cancelled")},
    "prune": frozenset({(s, None) for s in ENDED}),
}


def start_expired(claimed: RunRecord) -> bool:
    """A claimed run the claim did not start: it was queued past its ``timeouts.start`` (``claim_runs`` leaves it
    queued, with its lease), and its worker cancels it (queued -> cancelled)."""
    return claimed.status == "queued" and claimed.start_deadline is not None


def allowed(method: str, before: RunStatus | None, after: RunStatus | None) -> bool:
    """Whether ``method`` may change a run from ``before`` to ``after`` (staying put is always allowed)."""
    return before == after or (before, after) in TRANSITIONS.get(method, frozenset())


class IdleReason(TypedDict, total=False):
    """Why a live run has no work running (``runs.idle_reason``). ``kind`` says which; flow control's kinds
    (``throttled``, ``debounced``, ``batch``, ``concurrency``, ``rate_limited``, ``singleton``) carry their words in
    ``message``."""

    kind: Required[str]  # sleeping | waiting | invoking | retrying | multiple | queued | rerun | a flow-control kind
    step: str
    until: int | None  # unix ms
    event: str  # waiting for an event
    signal: str  # waiting for a signal
    function: str  # invoking
    run_id: str  # invoking: the child; rerun: the original; singleton: the live run
    from_step: str  # rerun
    memo_steps: int  # queued with a copied memo
    reasons: list[IdleReason]  # multiple (parallel steps)
    error: str  # retrying: the error the last attempt ended with ("Name: message", at most 200 characters)
    message: str
    key: str | None
    limit: int
    active: int
    period_ms: int
    size: int
    max_size: int


def idle_of(reasons: list[IdleReason]) -> IdleReason:
    """A suspended run's idle reason: its one pending step's, or ``multiple`` (parallel steps, earliest first)."""
    ordered = sorted(reasons, key=lambda r: r.get("until") or 0)
    return ordered[0] if len(ordered) == 1 else {"kind": "multiple", "reasons": ordered}


TimeFormat = Callable[[int], str]  # a unix-ms time in words (the CLI's utc, the dashboard's own)


def utc(ms: int | None) -> str:
    """``2026-01-01 12:00:03.250Z``."""
    if ms is None:
        return ""
    ms = max(-62_135_596_800_000, min(ms, 253_402_300_799_999))  # what datetime (and RFC 3339) can write
    stamp = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def duration(ms: int | float | None) -> str:
    """``350 ms``, ``2.50 s``, ``3 m 4 s``, ``5 h 6 m``, ``3 d 2 h``."""
    if ms is None:
        return ""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} m"
    return f"{hours // 24} d {hours % 24} h"


def retrying_reason(step: str | None, until: int, error: Mapping[str, Any] | None) -> IdleReason:
    """The idle reason of a run whose step (or, ``step`` None, whose function) waits for its next attempt: when,
    and after which error (``Name: message``, cut at 200 characters), as the dashboard and the REST API show it."""
    reason: IdleReason = {"kind": "retrying"}
    if step is not None:
        reason["step"] = step
    reason["until"] = until
    if error:
        text = f"{error.get('name') or 'Error'}: {error.get('message') or ''}".rstrip(": ")
        reason["error"] = text if len(text) <= 200 else text[:199] + "…"
    return reason


def _retry_text(reason: Mapping[str, Any], now: int | None, when_of: TimeFormat) -> str:
    """``Retrying step 'charge': next attempt at <time> (in 12 s), after RuntimeError: card declined``."""
    what = f"step {reason['step']!r}" if reason.get("step") else "the function"
    until = reason.get("until")
    when = ""
    if isinstance(until, int) and not isinstance(until, bool):
        left = None if now is None else until - now
        soon = "" if left is None else (f" (in {duration(left)})" if left > 0 else " (due now)")
        when = f": next attempt at {when_of(until)}{soon}"
    error = reason.get("error")
    after = f", after {error}" if isinstance(error, str) and error else ", after an error"
    return f"Retrying {what}{when}{after}"


def _until(reason: Mapping[str, Any], now: int | None, when_of: TimeFormat, word: str = "until") -> str:
    until = reason.get("until")
    if not isinstance(until, int) or isinstance(until, bool):
        return ""
    left = None if now is None else until - now
    return f" {word} {when_of(until)}" + (f" (in {duration(left)})" if left is not None and left > 0 else "")


def _field(key: str, value: Any, when_of: TimeFormat) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and (key.endswith("_at") or key == "until"):
        return when_of(value) if value > 10**11 else str(value)
    if isinstance(value, str):
        return value
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:79] + "…"


def describe_idle(reason: Mapping[str, Any] | None, now: int | None = None, when_of: TimeFormat | None = None) -> str:
    """Why a live run has no work running, in words (``""`` for none): a sentence for the kinds the engine writes,
    else the reason's ``message`` (flow control), else its fields. With ``now``, times say how far off they are."""
    fmt = when_of or utc
    if not reason:
        return ""
    kind = reason.get("kind")
    step = f" in step {reason['step']!r}" if reason.get("step") else ""
    if kind == "sleeping":
        return f"Sleeping{step}{_until(reason, now, fmt)}"
    if kind == "waiting" and reason.get("signal"):
        return f"Waiting for signal {reason['signal']!r}{step}{_until(reason, now, fmt)} (then it times out)"
    if kind == "waiting":
        return f"Waiting for event {reason.get('event', '?')!r}{step}{_until(reason, now, fmt)} (then it times out)"
    if kind == "invoking":
        target = f" {reason['function']!r}" if reason.get("function") else ""
        child = f" (run {reason['run_id']})" if reason.get("run_id") else ""
        return f"Waiting for the invoked function{target}{child} to finish{step}{_until(reason, now, fmt)}"
    if kind == "retrying":
        return _retry_text(reason, now, fmt)
    if kind == "rerun":
        origin = f" from step {reason['from_step']!r}" if reason.get("from_step") else ""
        return f"Rerun of run {reason.get('run_id', '?')}{origin}: queued to start"
    if kind == "queued":
        return "Queued to start"
    if kind == "multiple" and isinstance(reason.get("reasons"), list):
        return "; ".join(describe_idle(r, now, fmt) for r in reason["reasons"] if isinstance(r, Mapping))
    message = reason.get("message")
    if isinstance(message, str) and message:
        return message
    fields = ", ".join(f"{k}: {_field(k, v, fmt)}" for k, v in reason.items() if k != "kind")
    label = str(kind).replace("_", " ").capitalize() if kind else "Waiting"
    return f"{label} ({fields})" if fields else label
