"""What the dashboard's templates show: the Jinja environment and the formatting of times, durations, JSON,
errors and the reasons a run is waiting. Pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2

from stepline.storage.records import RunRecord

LIVE = ("queued", "running")
STATUSES = ("queued", "running", "completed", "failed", "cancelled", "skipped")
MACROS = ("status", "when", "run_table", "action_form", "error_box")
MAX_JSON_CHARS = 20_000  # longer outputs are cut on the page (the REST API has them whole)


def utc(ms: int | None) -> str:
    """``2026-01-01 12:00:03Z``: every time on the dashboard (the page's script adds the browser's local time,
    with milliseconds, as the tooltip)."""
    if ms is None:
        return ""
    ms = max(-62_135_596_800_000, min(ms, 253_402_300_799_999))  # what datetime (and RFC 3339) can write
    stamp = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    return stamp.strftime("%Y-%m-%d %H:%M:%SZ")


def duration(ms: int | float | None) -> str:
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


def pretty_json(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False, default=str)
    if len(text) > MAX_JSON_CHARS:
        return text[:MAX_JSON_CHARS] + f"\n... ({len(text) - MAX_JSON_CHARS} more characters: see the REST API)"
    return text


def compact_json(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _until(reason: Mapping[str, Any], now: int) -> str:
    until = reason.get("until")
    if not isinstance(until, int):
        return ""
    left = until - now
    return f" until {utc(until)}" + (f" (in {duration(left)})" if left > 0 else "")


def idle_text(reason: Mapping[str, Any] | None, now: int) -> str:
    """Why a live run has no work running: the reason's ``message`` when it has one, else a sentence for the
    kinds the engine writes, else the fields as ``key: value``."""
    if not reason:
        return ""
    message = reason.get("message")
    if isinstance(message, str) and message:
        return message
    kind = reason.get("kind")
    step = f" in step {reason['step']!r}" if reason.get("step") else ""
    if kind == "sleeping":
        return f"Sleeping{step}{_until(reason, now)}"
    if kind == "waiting":
        return f"Waiting for event {reason.get('event', '?')!r}{step}{_until(reason, now)} (then it times out)"
    if kind == "invoking":
        target = f" {reason['function']!r}" if reason.get("function") else ""
        child = f" (run {reason['run_id']})" if reason.get("run_id") else ""
        return f"Waiting for the invoked function{target}{child} to finish{step}{_until(reason, now)}"
    if kind == "retrying":
        return _retry_text(reason, now)
    if kind == "rerun":
        origin = f" from step {reason['from_step']!r}" if reason.get("from_step") else ""
        return f"Rerun of run {reason.get('run_id', '?')}{origin}: queued to start"
    if kind == "queued":
        return "Queued to start"
    if kind == "multiple" and isinstance(reason.get("reasons"), list):
        return "; ".join(idle_text(r, now) for r in reason["reasons"] if isinstance(r, Mapping))
    fields = ", ".join(f"{k}: {_field(k, v)}" for k, v in reason.items() if k != "kind")
    label = str(kind).replace("_", " ").capitalize() if kind else "Waiting"
    return f"{label} ({fields})" if fields else label


def _retry_text(reason: Mapping[str, Any], now: int) -> str:
    """``Retrying step 'charge': next attempt at <time> (in 12 s), after RuntimeError: card declined``."""
    what = f"step {reason['step']!r}" if reason.get("step") else "the function"
    until = reason.get("until")
    when = ""
    if isinstance(until, int):
        left = until - now
        when = f": next attempt at {utc(until)}" + (f" (in {duration(left)})" if left > 0 else " (due now)")
    error = reason.get("error")
    after = f", after {error}" if isinstance(error, str) and error else ", after an error"
    return f"Retrying {what}{when}{after}"


def _field(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and (key.endswith("_at") or key == "until"):
        return utc(value) if value > 10**11 else str(value)
    return compact_json(value, 80) if not isinstance(value, str) else value


def idle_reason_shown(run: RunRecord, now: int) -> dict[str, Any] | None:
    """The run's idle reason when it is live and no worker is executing it (as the REST API shows it)."""
    executing = run.lease_owner is not None and (run.lease_expires_at or 0) > now
    return run.idle_reason if run.status in LIVE and not executing else None


def app_of(function_id: str, apps: Mapping[str, str]) -> str | None:
    return apps.get(function_id)


def triggers_text(config: Mapping[str, Any]) -> list[str]:
    out = []
    for t in config.get("triggers") or []:
        if not isinstance(t, Mapping):
            continue
        if "cron" in t:
            out.append(f"cron {t['cron']}")
        elif t.get("expression"):
            out.append(f"{t.get('event')} if {t['expression']}")
        else:
            out.append(str(t.get("event")))
    return out


def flow_text(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Flow-control settings (``flow`` in the function's config), one ``(name, value)`` per setting."""
    flow = config.get("flow")
    if not isinstance(flow, Mapping):
        return []
    rows = []
    for key, value in flow.items():
        if value in (None, [], {}):
            continue
        rows.append((str(key), value if isinstance(value, str) else compact_json(value, 200)))
    return rows


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("stepline.server.dashboard", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(utc=utc, duration=duration, pretty_json=pretty_json, compact_json=compact_json)
    env.globals.update(idle_text=idle_text, triggers_text=triggers_text, flow_text=flow_text)
    macros = env.get_template("_macros.html").module  # globals, so a page's live block renders on its own too
    env.globals.update({name: getattr(macros, name) for name in MACROS})
    return env


@dataclass(frozen=True)
class SpanRow:
    """A userland span (``POST /v1/traces/userland``) as the run page lists it."""

    name: str
    span_id: str
    parent_id: str
    took: str
    error: str  # the status message when the span failed, else ""
    attributes: list[tuple[str, str]]


_SDK_KEYS = ("sdk.", "sys.", "inngest.")  # what the SDK adds to every span: the run, app and function it belongs to


def userland_spans(spans: list[Any]) -> list[SpanRow]:
    """The spans an app sent for a run (``RunSpan``), in the order received, with their own attributes."""
    rows = []
    for s in spans:
        doc = s.span
        try:
            took = duration((int(doc.get("endTimeUnixNano", 0)) - int(doc.get("startTimeUnixNano", 0))) / 1e6)
        except (TypeError, ValueError):
            took = ""
        status = doc.get("status") or {}
        failed = status.get("code") in (2, "STATUS_CODE_ERROR")
        attrs = [(str(a.get("key")), _attr_value(a.get("value"))) for a in doc.get("attributes") or []
                 if isinstance(a, dict) and not str(a.get("key", "")).startswith(_SDK_KEYS)]  # fmt: skip
        rows.append(SpanRow(str(doc.get("name", "")), str(doc.get("spanId", "")), str(doc.get("parentSpanId", "")),
                            took, (status.get("message") or "error") if failed else "", attrs[:12]))  # fmt: skip
    return rows


def _attr_value(value: Any) -> str:
    if not isinstance(value, dict) or not value:
        return ""
    inner = next(iter(value.values()))
    return inner if isinstance(inner, str) else json.dumps(inner)[:200]
