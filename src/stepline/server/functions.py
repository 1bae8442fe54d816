"""Function configs as the Inngest SDKs register them, turned into Stepline's stored function records.

Every option the SDKs send is kept verbatim under ``config["inngest"]``; the ones the engine routes or runs by
(triggers, retries, cancel, timeouts, idempotency, flow control) are parsed into the same keys in-process functions
use, so both kinds of function look alike to the engine. Flow control (``concurrency``, ``throttle``, ``rateLimit``,
``debounce``, ``priority``, ``batchEvents``, ``singleton``) goes through ``core.flow.normalize_flow`` into
``config["flow"]``, with the errors naming Inngest's fields. Options not enforced yet (none today) are listed in
``config["unenforced"]`` and reported at sync, never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stepline.core.cron import parse_cron
from stepline.core.durations import parse_duration
from stepline.core.events import canonical_event_name
from stepline.core.expressions import compile_expression
from stepline.core.flow import normalize_flow
from stepline.core.function import DEFAULT_RETRIES, DEFAULT_WAIT_TIMEOUT, MAX_RETRIES, FunctionSpec
from stepline.core.triggers import CronTrigger
from stepline.storage.records import FunctionRecord

# Options the SDKs may register that the engine does not enforce yet: stored, reported at sync (none today).
NOT_YET_ENFORCED: tuple[str, ...] = ()
# Inngest's flow-control options -> (Stepline's option in core/flow.py, {Inngest field: Stepline field}).
FLOW_OPTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "throttle": ("throttle", {"limit": "limit", "period": "period", "burst": "burst", "key": "key"}),
    "rateLimit": ("rate_limit", {"limit": "limit", "period": "period", "key": "key"}),
    "debounce": ("debounce", {"period": "period", "key": "key", "timeout": "timeout"}),
    "priority": ("priority", {"run": "run"}),
    "batchEvents": ("batch", {"maxSize": "max_size", "timeout": "timeout", "key": "key", "if": "if"}),
    "singleton": ("singleton", {"mode": "mode", "key": "key"}),
}
_DURATION_FIELDS = frozenset({"period", "timeout"})
# Stepline's names in normalize_flow's messages -> Inngest's, so that an error names the field the app wrote.
_INNGEST_NAMES = {"rate_limit": "rateLimit", "batch": "batchEvents", "max_size": "maxSize", "if_exp": "if"}
_LEADING_PATH = re.compile(r"^(rate_limit|batch)\b(?:\.(\w+))?")
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

    @property
    def gates_claims(self) -> bool:
        return self.spec.gates_claims

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
            if not isinstance(t["cron"], str):
                raise FunctionConfigError(f"function {fn_id!r}: triggers[{i}].cron must be a string, got {t['cron']!r}")
            try:
                parse_cron(t["cron"])
            except ValueError as exc:
                raise FunctionConfigError(f"function {fn_id!r}: invalid triggers[{i}].cron: {exc}") from None
            jitter = t.get("jitter")
            try:
                CronTrigger(cron=t["cron"], jitter=jitter if isinstance(jitter, str) or jitter is None else "?")
            except ValueError as exc:
                raise FunctionConfigError(f"function {fn_id!r}: invalid triggers[{i}].jitter: {exc}") from None
            out.append({"cron": t["cron"], **({"jitter": jitter} if jitter else {})})
        elif isinstance(t.get("event"), str) and t["event"]:
            item: dict[str, Any] = {"event": canonical_event_name(t["event"])}
            expr = _expression(fn_id, f"triggers[{i}].expression", t.get("expression"))
            if expr:
                item["expression"] = expr
            out.append(item)
        else:
            raise FunctionConfigError(f"function {fn_id!r}: triggers[{i}] needs an event name or a cron")
    return out


def _flow_error(fn_id: str, exc: ValueError, label: str | None = None) -> FunctionConfigError:
    """normalize_flow's error, naming the field as the app registered it (``rateLimit.limit``, ``batchEvents.maxSize``,
    ``concurrency[1].scope``)."""
    prefix = f"function {fn_id!r}: "
    detail = str(exc).removeprefix(prefix)
    if label is not None:
        detail = label + detail.removeprefix("concurrency")
    detail = _LEADING_PATH.sub(
        lambda m: _INNGEST_NAMES[m[1]] + (f".{_INNGEST_NAMES.get(m[2], m[2])}" if m[2] else ""), detail
    )
    return FunctionConfigError(prefix + detail)


def _concurrency(fn_id: str, raw: Any) -> list[dict[str, Any]]:
    """Inngest's ``concurrency``: a limit (JS), one ``{limit, key?, scope?}`` (JS) or a list of them (JS, Python).
    A limit of 0 means no limit (the SDKs' documented meaning, as Inngest's server reads it): that entry is dropped.
    Scopes ``env`` and ``account`` need a key, as on Inngest."""
    if isinstance(raw, bool) or not isinstance(raw, int | Mapping | list):
        raise FunctionConfigError(
            f"function {fn_id!r}: concurrency must be a number, an object or a list of objects, got {raw!r}"
        )
    items: list[Any] = [{"limit": raw}] if isinstance(raw, int) else [raw] if isinstance(raw, Mapping) else raw
    limits: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        label = f"concurrency[{i}]" if isinstance(raw, list) else "concurrency"
        if not isinstance(item, Mapping):
            raise FunctionConfigError(f"function {fn_id!r}: {label} must be an object {{limit, key?, scope?}}, "
                                      f"got {item!r}")  # fmt: skip
        limit = item.get("limit")
        if limit == 0 and isinstance(limit, int) and not isinstance(limit, bool):
            continue
        entry = {"limit": limit, "key": item.get("key"), "scope": item.get("scope")}
        try:
            normalize_flow(fn_id, {"concurrency": entry})
        except ValueError as exc:
            raise _flow_error(fn_id, exc, label) from None
        scope = entry["scope"] or "fn"
        if scope != "fn" and not entry["key"]:
            raise FunctionConfigError(f"function {fn_id!r}: {label}.key is required for a limit with scope {scope!r}")
        limits.append(entry)
    return limits


def _flow(fn_id: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Inngest's flow-control options, validated and normalised as ``core.flow`` stores them (``config["flow"]``)."""
    options: dict[str, Any] = {}
    if raw.get("concurrency") is not None and (limits := _concurrency(fn_id, raw["concurrency"])):
        options["concurrency"] = limits
    for name, (ours, fields) in FLOW_OPTIONS.items():
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise FunctionConfigError(f"function {fn_id!r}: {name} must be an object, got {value!r}")
        converted: dict[str, Any] = {}
        for theirs, mine in fields.items():
            field = value.get(theirs)
            if field is None or (field == "" and (theirs, name) in {("timeout", "debounce"), ("run", "priority")}):
                continue  # absent (Python sends null); an empty optional duration or priority is none, as on Inngest
            if theirs in _DURATION_FIELDS and not isinstance(field, str):
                raise FunctionConfigError(f"function {fn_id!r}: {name}.{theirs} must be a duration string like '30s' "
                                          f"or '1h30m', got {field!r}")  # fmt: skip
            converted[mine] = field
        if name == "priority" and "run" not in converted:
            continue  # no expression: every run has the default priority
        options[ours] = converted
    try:
        return normalize_flow(fn_id, options)
    except ValueError as exc:
        raise _flow_error(fn_id, exc) from None


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
    flow = _flow(fn_id, raw)
    if flow:
        config["flow"] = flow
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
        if len(r.id) > MAX_ID_CHARS or len(r.name) > MAX_ID_CHARS:
            raise FunctionConfigError(f"function {r.id[:80]!r}: its id and name may have at most {MAX_ID_CHARS} "
                                      "characters")  # fmt: skip
        seen.add(r.id)
    return records


MAX_ID_CHARS = 512  # function ids and names (ids are indexed)
