"""Function configs as the Inngest SDKs register them, turned into Stepline's stored function records.

Every option the SDKs send is kept verbatim under ``config["inngest"]``; the ones the engine routes or runs by
(triggers, retries, cancel, timeouts, idempotency) are parsed into the same keys in-process functions use, so
both kinds of function look alike to the engine. Options not enforced yet are listed in ``config["unenforced"]``
and reported at sync, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stepline.core.durations import parse_duration
from stepline.core.events import canonical_event_name
from stepline.core.expressions import compile_expression
from stepline.core.function import DEFAULT_RETRIES, DEFAULT_WAIT_TIMEOUT, MAX_RETRIES, FunctionSpec
from stepline.storage.records import FunctionRecord

# Flow-control options the SDKs may register that the engine does not enforce yet (issue 5).
NOT_YET_ENFORCED = ("concurrency", "throttle", "rateLimit", "debounce", "priority", "batchEvents", "singleton")
MAX_TIMEOUT_MS = 366 * 24 * 3600 * 1000


class FunctionConfigError(ValueError):
    """A registered function's config is invalid; the message names the function and the field."""


@dataclass(frozen=True)
class HttpFunction:
    """A function served by an app over HTTP: where to call it and how often to retry."""

    spec: FunctionSpec
    url: str  # the step runtime URL as registered (with fnId and stepId=step)
    max_attempts: int  # retries + 1

    @property
    def id(self) -> str:
        return self.spec.id

    def call_url(self, step_id: str = "step") -> str:
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "stepId"]
        query.append(("stepId", step_id))
        return urlunsplit(parts._replace(query=urlencode(query)))

    @classmethod
    def from_spec(cls, spec: FunctionSpec) -> HttpFunction | None:
        if spec.config.get("runtime") != "http" or not spec.config.get("url"):
            return None
        return cls(spec=spec, url=str(spec.config["url"]), max_attempts=spec.retries + 1)


def _ms(fn_id: str, field: str, value: Any) -> int:
    try:
        ms = int(parse_duration(value).total_seconds() * 1000)
    except (ValueError, TypeError) as exc:
        raise FunctionConfigError(f"function {fn_id!r}: invalid {field}: {exc}") from None
    if ms > MAX_TIMEOUT_MS:
        raise FunctionConfigError(f"function {fn_id!r}: {field} {value!r} is longer than a year")
    return ms


def _expression(fn_id: str, field: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FunctionConfigError(f"function {fn_id!r}: {field} must be a CEL expression string, got {value!r}")
    try:
        compile_expression(value)
    except ValueError as exc:
        raise FunctionConfigError(f"function {fn_id!r}: invalid CEL in {field}: {exc}") from None
    return value


def _triggers(fn_id: str, raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise FunctionConfigError(f"function {fn_id!r}: triggers must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, t in enumerate(raw):
        if not isinstance(t, Mapping):
            raise FunctionConfigError(f"function {fn_id!r}: triggers[{i}] must be an object")
        if t.get("cron"):
            out.append({"cron": str(t["cron"])})
        elif isinstance(t.get("event"), str) and t["event"]:
            item: dict[str, Any] = {"event": canonical_event_name(t["event"])}
            expr = _expression(fn_id, f"triggers[{i}].expression", t.get("expression"))
            if expr:
                item["expression"] = expr
            out.append(item)
        else:
            raise FunctionConfigError(f"function {fn_id!r}: triggers[{i}] needs an event name or a cron")
    return out


def _runtime(fn_id: str, steps: Any) -> tuple[str, int]:
    if not isinstance(steps, Mapping) or not steps:
        raise FunctionConfigError(f"function {fn_id!r}: steps must map a step name to its runtime")
    step = next(iter(steps.values()))
    runtime = step.get("runtime") if isinstance(step, Mapping) else None
    url = runtime.get("url") if isinstance(runtime, Mapping) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise FunctionConfigError(f"function {fn_id!r}: steps.*.runtime.url must be an http(s) URL, got {url!r}")
    retries = DEFAULT_RETRIES
    raw_retries = step.get("retries") if isinstance(step, Mapping) else None
    if isinstance(raw_retries, Mapping) and raw_retries.get("attempts") is not None:
        attempts = raw_retries["attempts"]
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 0 <= attempts <= MAX_RETRIES:
            raise FunctionConfigError(
                f"function {fn_id!r}: retries.attempts must be an integer from 0 to {MAX_RETRIES}, got {attempts!r}"
            )
        retries = attempts  # Inngest counts retries here: max attempts = attempts + 1
    return url, retries


def function_record(app_id: str, raw: Mapping[str, Any]) -> FunctionRecord:
    """Parse one function of a ``/fn/register`` body. Raises FunctionConfigError."""
    fn_id = raw.get("id")
    if not isinstance(fn_id, str) or not fn_id:
        raise FunctionConfigError(f"a function of app {app_id!r} has no id")
    slug = fn_id[len(app_id) + 1 :] if fn_id.startswith(app_id + "-") else fn_id
    name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else slug
    url, retries = _runtime(fn_id, raw.get("steps"))
    config: dict[str, Any] = {
        "triggers": _triggers(fn_id, raw.get("triggers")),
        "retries": retries,
        "runtime": "http",
        "url": url,
        "inngest": dict(raw),
    }
    cancels = []
    for i, c in enumerate(raw.get("cancel") or []):
        if not isinstance(c, Mapping) or not isinstance(c.get("event"), str) or not c["event"]:
            raise FunctionConfigError(f"function {fn_id!r}: cancel[{i}] needs an event name")
        timeout = c.get("timeout")
        cancels.append({
            "event": canonical_event_name(c["event"]),
            "expression": _expression(fn_id, f"cancel[{i}].if", c.get("if")),
            "timeout_ms": _ms(fn_id, f"cancel[{i}].timeout", timeout) if timeout else _ms(
                fn_id, "cancel timeout", DEFAULT_WAIT_TIMEOUT),
        })  # fmt: skip
    if cancels:
        config["cancel"] = cancels
    timeouts = raw.get("timeouts") or {}
    if not isinstance(timeouts, Mapping):
        raise FunctionConfigError(f"function {fn_id!r}: timeouts must be an object")
    parsed = {f"{k}_ms": _ms(fn_id, f"timeouts.{k}", timeouts[k]) for k in ("start", "finish") if timeouts.get(k)}
    if parsed:
        config["timeouts"] = parsed
    idem = _expression(fn_id, "idempotency", raw.get("idempotency"))
    if idem:
        config["idempotency"] = idem
    unenforced = [k for k in NOT_YET_ENFORCED if raw.get(k) not in (None, [], {})]
    if unenforced:
        config["unenforced"] = unenforced
    for t in config["triggers"]:
        if "expression" in t and t["event"] == "stepline/function.failed" and fn_id.endswith("-failure"):
            config["failure_of"] = fn_id[: -len("-failure")]
    return FunctionRecord(fn_id, app_id, slug, str(name), config)


def function_records(app_id: str, functions: Any) -> list[FunctionRecord]:
    if not isinstance(functions, list):
        raise FunctionConfigError("functions must be a list")
    records = [function_record(app_id, f if isinstance(f, Mapping) else {}) for f in functions]
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise FunctionConfigError(f"function {r.id!r} is registered twice")
        seen.add(r.id)
    return records
