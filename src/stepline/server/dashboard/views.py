"""What the dashboard's templates show: the Jinja environment and the formatting of times, durations, JSON,
errors and the reasons a run is waiting. Pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2

from stepline.core.describe import cron_text, flow_words
from stepline.storage.states import LIVE as LIVE
from stepline.storage.states import RUN_STATUSES, describe_idle
from stepline.storage.states import duration as duration

STATUSES = RUN_STATUSES
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


def pretty_json(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False, default=str)
    if len(text) > MAX_JSON_CHARS:
        return text[:MAX_JSON_CHARS] + f"\n... ({len(text) - MAX_JSON_CHARS} more characters: see the REST API)"
    return text


def compact_json(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def idle_text(reason: Mapping[str, Any] | None, now: int) -> str:
    """Why a live run has no work running (the words the CLI prints too), with how far off its times are."""
    return describe_idle(reason, now, utc)


def app_of(function_id: str, apps: Mapping[str, str]) -> str | None:
    return apps.get(function_id)


def triggers_text(config: Mapping[str, Any], now: int) -> list[str]:
    """Each trigger as a line: the event (with its condition), or the cron schedule in words with its next times."""
    out = []
    for t in config.get("triggers") or []:
        if not isinstance(t, Mapping):
            continue
        if "cron" in t:
            jitter = f" (each run up to {t['jitter']} later)" if t.get("jitter") else ""
            out.append(cron_text(str(t["cron"]), now) + jitter)
        elif t.get("expression"):
            out.append(f"{t.get('event')} if {t['expression']}")
        else:
            out.append(str(t.get("event")))
    return out


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("stepline.server.dashboard", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(utc=utc, duration=duration, pretty_json=pretty_json, compact_json=compact_json)
    env.globals.update(idle_text=idle_text, triggers_text=triggers_text, flow_words=flow_words)
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
