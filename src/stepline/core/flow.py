"""Flow control options: concurrency, throttle, rate limit, debounce, priority, batching and singleton.

Users declare them on ``@client.function`` (the option classes below, or plain dicts), HTTP apps register them in
Inngest's shape (``server/functions.py`` converts those). Both end as one normalised, validated dict stored in the
function's config under ``"flow"`` (durations in milliseconds), so every process routes and gates runs the same
way. ``FlowSpec`` is that dict parsed, with its expressions compiled; ``FlowSpec.plan`` evaluates the keys of one
run from its trigger event and returns the ``RunFlow`` the store enforces:

- at ingest (one transaction with the event): rate limit (skip), singleton (skip / cancel the live run),
  debounce (the pending run takes the newest event and moves later), batching (events join an open batch run),
  throttle (GCRA: the run is due when the bucket admits it);
- at claim: concurrency (a run holds a slot while a worker leases it: sleeping and waiting runs hold none) and
  priority (the order of due runs under contention).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from stepline.core.durations import parse_duration
from stepline.core.expressions import Bindings, ExpressionError, compile_expression
from stepline.storage.records import (
    BatchKey,
    ConcurrencySlot,
    DebounceKey,
    RateLimitKey,
    RunFlow,
    SingletonKey,
    ThrottleKey,
)

__all__ = [
    "Batch",
    "Concurrency",
    "Debounce",
    "FlowSpec",
    "KeyExpressionFailed",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
    "normalize_flow",
    "short_key",
]

DurationInput = str | int | float | dt.timedelta
_SECOND = 1000
_DAY = 86_400_000
MAX_CONCURRENCY_LIMITS = 2
PRIORITY_RANGE_S = 600
# Allowed ranges (as Inngest's): throttle and debounce periods 1s..7d, rate limit 1s..24h, batch timeout 1s..60s.
THROTTLE_PERIOD = (_SECOND, 7 * _DAY)
RATE_LIMIT_PERIOD = (_SECOND, _DAY)
DEBOUNCE_PERIOD = (_SECOND, 7 * _DAY)
BATCH_TIMEOUT = (_SECOND, 60 * _SECOND)
MAX_BATCH_SIZE = 1000


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` runs executing at once (per value of ``key``, a CEL expression over ``event``).

    ``scope``: ``fn`` (this function's runs), ``env`` or ``account`` (every function using the same key shares the
    limit; Stepline has one environment, so both mean "across functions")."""

    limit: int
    key: str | None = None
    scope: Literal["fn", "env", "account"] = "fn"


@dataclass(frozen=True)
class Throttle:
    """At most ``limit`` run starts per ``period`` (plus ``burst`` at once), per ``key``; excess runs wait."""

    limit: int
    period: DurationInput
    burst: int = 0
    key: str | None = None


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` runs per ``period`` per ``key``; excess runs are skipped (recorded as skipped)."""

    limit: int
    period: DurationInput
    key: str | None = None


@dataclass(frozen=True)
class Debounce:
    """Start once ``period`` passes with no new event (per ``key``), with the last event; at most ``timeout``
    after the first."""

    period: DurationInput
    key: str | None = None
    timeout: DurationInput | None = None


@dataclass(frozen=True)
class Priority:
    """``run``: an expression giving seconds (-600..600) a run moves ahead (+) or behind (-) under contention."""

    run: str


@dataclass(frozen=True)
class Batch:
    """Up to ``max_size`` events in one run, started when full or ``timeout`` after the first event; per ``key``.
    Events for which ``if_exp`` is false run alone, at once."""

    max_size: int
    timeout: DurationInput
    key: str | None = None
    if_exp: str | None = None


@dataclass(frozen=True)
class Singleton:
    """One live run per ``key``: ``skip`` drops new runs while one is live, ``cancel`` cancels it for the new one."""

    mode: Literal["skip", "cancel"]
    key: str | None = None


class _Invalid(ValueError):
    pass


def _as_dict(value: Any, cls: type, field_name: str) -> dict[str, Any]:
    if isinstance(value, cls):
        return dict(value.__dict__)
    if isinstance(value, Mapping):
        return dict(value)
    raise _Invalid(f"{field_name} must be a {cls.__name__} or a mapping, got {type(value).__name__}")


def _int(raw: dict[str, Any], name: str, field_name: str, *, low: int, high: int | None = None,
         default: int | None = None) -> int:  # fmt: skip
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{field_name}.{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise _Invalid(f"{field_name}.{name} must be {bound}, got {value}")
    return value


def _duration_ms(raw: dict[str, Any], name: str, field_name: str, bounds: tuple[int, int], *,
                 ms_name: str | None = None, required: bool = True) -> int | None:  # fmt: skip
    ms_key = ms_name or f"{name}_ms"
    if raw.get(ms_key) is not None:
        value: Any = raw[ms_key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"{field_name}.{name} must be a duration, got {value!r}")
        ms = value
    elif raw.get(name) is not None:
        try:
            ms = int(parse_duration(raw[name]).total_seconds() * 1000)
        except ValueError as exc:
            raise _Invalid(f"{field_name}.{name}: {exc}") from None
    elif required:
        raise _Invalid(f"{field_name}.{name} is required")
    else:
        return None
    low, high = bounds
    if not low <= ms <= high:
        raise _Invalid(f"{field_name}.{name} must be from {_fmt(low)} to {_fmt(high)}, got {_fmt(ms)}")
    return ms


def _fmt(ms: int) -> str:
    if ms == 0:
        return "0s"
    if ms % _DAY == 0:
        return f"{ms // _DAY}d"
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def _expr(raw: dict[str, Any], name: str, field_name: str, *, required: bool = False) -> str | None:
    value = raw.get(name)
    if value is None or value == "":
        if required:
            raise _Invalid(f"{field_name}.{name} is required")
        return None
    if not isinstance(value, str):
        raise _Invalid(f"{field_name}.{name} must be a CEL expression string, got {value!r}")
    try:
        compile_expression(value)
    except ValueError as exc:
        raise _Invalid(f"{field_name}.{name}: invalid expression: {exc}") from None
    return value


def _no_extra(raw: dict[str, Any], allowed: set[str], field_name: str) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise _Invalid(f"{field_name}: unknown option(s) {', '.join(extra)} (allowed: {', '.join(sorted(allowed))})")


def _normalize(options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    conc = options.get("concurrency")
    if conc is not None:
        items: Sequence[Any]
        if isinstance(conc, bool):
            raise _Invalid(f"concurrency must be a limit, a Concurrency or a list of them, got {conc!r}")
        if isinstance(conc, int):
            items = [Concurrency(limit=conc)]
        elif isinstance(conc, Concurrency | Mapping):
            items = [conc]
        else:
            items = list(conc)
        if len(items) > MAX_CONCURRENCY_LIMITS:
            raise _Invalid(f"concurrency: at most {MAX_CONCURRENCY_LIMITS} limits per function, got {len(items)}")
        limits = []
        for i, item in enumerate(items):
            label = f"concurrency[{i}]" if len(items) > 1 else "concurrency"
            raw = _as_dict(item, Concurrency, label)
            _no_extra(raw, {"limit", "key", "scope"}, label)
            scope = raw.get("scope") or "fn"
            if scope not in ("fn", "env", "account"):
                raise _Invalid(f"{label}.scope must be 'fn', 'env' or 'account', got {scope!r}")
            if scope != "fn" and not raw.get("key"):
                raise _Invalid(f"{label}.key is required for a limit with scope {scope!r}")
            limits.append({"limit": _int(raw, "limit", label, low=1, high=100_000), "key": _expr(raw, "key", label),
                           "scope": scope})  # fmt: skip
        if limits:
            out["concurrency"] = limits
    if (thr := options.get("throttle")) is not None:
        raw = _as_dict(thr, Throttle, "throttle")
        _no_extra(raw, {"limit", "period", "period_ms", "burst", "key"}, "throttle")
        out["throttle"] = {"limit": _int(raw, "limit", "throttle", low=1, high=100_000),
                           "period_ms": _duration_ms(raw, "period", "throttle", THROTTLE_PERIOD),
                           "burst": _int(raw, "burst", "throttle", low=0, high=100_000, default=0),
                           "key": _expr(raw, "key", "throttle")}  # fmt: skip
    if (rl := options.get("rate_limit")) is not None:
        raw = _as_dict(rl, RateLimit, "rate_limit")
        _no_extra(raw, {"limit", "period", "period_ms", "key"}, "rate_limit")
        out["rate_limit"] = {"limit": _int(raw, "limit", "rate_limit", low=1, high=100_000),
                             "period_ms": _duration_ms(raw, "period", "rate_limit", RATE_LIMIT_PERIOD),
                             "key": _expr(raw, "key", "rate_limit")}  # fmt: skip
    if (deb := options.get("debounce")) is not None:
        raw = _as_dict(deb, Debounce, "debounce")
        _no_extra(raw, {"period", "period_ms", "key", "timeout", "timeout_ms"}, "debounce")
        period = _duration_ms(raw, "period", "debounce", DEBOUNCE_PERIOD)
        timeout = _duration_ms(raw, "timeout", "debounce", DEBOUNCE_PERIOD, required=False)
        if period is not None and timeout is not None and timeout < period:
            raise _Invalid(f"debounce.timeout ({_fmt(timeout)}) must not be shorter than debounce.period "
                           f"({_fmt(period)})")  # fmt: skip
        out["debounce"] = {"period_ms": period, "key": _expr(raw, "key", "debounce"), "timeout_ms": timeout}
    if (pri := options.get("priority")) is not None:
        raw = _as_dict(pri, Priority, "priority")
        _no_extra(raw, {"run"}, "priority")
        out["priority"] = {"run": _expr(raw, "run", "priority", required=True)}
    if (bat := options.get("batch")) is not None:
        raw = _as_dict(bat, Batch, "batch")
        if "if" in raw:
            raw["if_exp"] = raw.pop("if")
        _no_extra(raw, {"max_size", "timeout", "timeout_ms", "key", "if_exp"}, "batch")
        out["batch"] = {"max_size": _int(raw, "max_size", "batch", low=1, high=MAX_BATCH_SIZE),
                        "timeout_ms": _duration_ms(raw, "timeout", "batch", BATCH_TIMEOUT),
                        "key": _expr(raw, "key", "batch"), "if": _expr(raw, "if_exp", "batch")}  # fmt: skip
    if (sin := options.get("singleton")) is not None:
        raw = _as_dict(sin, Singleton, "singleton")
        _no_extra(raw, {"mode", "key"}, "singleton")
        mode = raw.get("mode")
        if mode not in ("skip", "cancel"):
            raise _Invalid(f"singleton.mode must be 'skip' or 'cancel', got {mode!r}")
        out["singleton"] = {"mode": mode, "key": _expr(raw, "key", "singleton")}
    if "batch" in out and ("debounce" in out or "singleton" in out or "priority" in out):
        other = next(k for k in ("debounce", "singleton", "priority") if k in out)
        raise _Invalid(f"batch cannot be combined with {other} (as in Inngest)")
    return out


def normalize_flow(fn_label: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate flow-control options (option objects, dicts, durations as strings/seconds/timedeltas) and return
    the normalised dict stored in the function config. Raises ValueError naming the function and the field."""
    try:
        return _normalize(options)
    except _Invalid as exc:
        raise ValueError(f"function {fn_label!r}: {exc}") from None


class KeyExpressionFailed(ValueError):
    """A key expression could not be evaluated for a run's event (not just a missing field): the run fails."""

    def __init__(self, place: str, expression: str, error: str) -> None:
        super().__init__(f"the {place} expression could not be evaluated for this run's event: {error}")
        self.place = place
        self.expression = expression


def evaluate_key(place: str, expression: str, bindings: Bindings | dict[str, Any]) -> Any:
    """A key expression's value. A field missing from the event gives ``None`` (as Inngest, where such runs share
    one key); any other failure raises KeyExpressionFailed."""
    try:
        return compile_expression(expression).evaluate(bindings)
    except ExpressionError as exc:
        if exc.missing_key:
            return None
        raise KeyExpressionFailed(place, expression, str(exc)) from None


MAX_KEY_CHARS = 200


def short_key(value: str) -> str:
    """A key's value as stored and indexed: one longer than MAX_KEY_CHARS becomes ``sha256:<hex>`` of it (the same
    value gives the same key; PostgreSQL refuses index entries past ~2.7 KB, and keys are indexed)."""
    if len(value) <= MAX_KEY_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _key_value(place: str, expression: str | None, bindings: Bindings | None) -> str:
    if expression is None or bindings is None:
        return ""
    return short_key(_key_text(evaluate_key(place, expression, bindings)))


def _key_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class FlowSpec:
    """The normalised ``"flow"`` config of one function."""

    raw: dict[str, Any]

    @classmethod
    def from_config(cls, flow: Mapping[str, Any] | None) -> FlowSpec | None:
        return cls(dict(flow)) if flow else None

    @property
    def gates_claims(self) -> bool:
        """Concurrency or priority: runs of this function are claimed one key at a time, in priority order."""
        return bool(self.raw.get("concurrency") or self.raw.get("priority"))

    def batched(self, event: dict[str, Any], bindings: Bindings | None = None) -> bool:
        """Whether ``event`` joins a batch (a batch ``if`` false: it runs alone). A batch ``if`` that fails for
        another reason than a missing field raises ExpressionError (the caller reports it; the run goes alone)."""
        batch = self.raw.get("batch")
        if not batch:
            return False
        if batch.get("if") is None:
            return True
        try:
            return compile_expression(batch["if"]).check(bindings if bindings is not None else {"event": event})
        except ExpressionError as exc:
            if exc.missing_key:
                return False
            raise

    @property
    def expressions(self) -> list[tuple[str, str]]:
        """(place, expression) of every expression in the options, as named in errors."""
        out: list[tuple[str, str]] = []
        for i, c in enumerate(self.raw.get("concurrency") or ()):
            if c.get("key"):
                out.append((f"concurrency[{i}] key" if i else "concurrency key", c["key"]))
        for name in ("throttle", "rate_limit", "debounce", "batch", "singleton"):
            opts = self.raw.get(name) or {}
            if opts.get("key"):
                out.append((f"{name} key", opts["key"]))
        if (self.raw.get("batch") or {}).get("if"):
            out.append(("batch if", self.raw["batch"]["if"]))
        if (self.raw.get("priority") or {}).get("run"):
            out.append(("priority run", self.raw["priority"]["run"]))
        return out

    def plan(self, function_id: str, event: dict[str, Any], batched: bool | None = None,
             shared: Bindings | None = None) -> RunFlow:  # fmt: skip
        """Evaluate the keys of a run triggered by ``event``. Raises KeyExpressionFailed when a key cannot be
        evaluated. ``batched``: the batch ``if`` already decided by the caller (else decided here). ``shared``: the
        event already bound as ``event`` (else bound here when a key needs it)."""
        raw = self.raw
        needs_bindings = any(
            (isinstance(v, dict) and (v.get("key") or v.get("run"))) or isinstance(v, list) for v in raw.values()
        )
        bindings = (shared or Bindings({"event": event})) if needs_bindings else None
        concurrency = []
        for c in raw.get("concurrency") or ():
            value = _key_value("concurrency key", c.get("key"), bindings)
            if c["scope"] == "fn":
                key = f"fn:{function_id}:{value}"
            else:  # env and account: shared by every function using the same key expression's value
                key = f"{c['scope']}:{c.get('key') or ''}:{value}"
            concurrency.append(ConcurrencySlot(key, int(c["limit"]), value or function_id))
        priority_ms = 0
        if (pri := raw.get("priority")) and bindings is not None:
            seconds = evaluate_key("priority run", pri["run"], bindings)
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                priority_ms = int(max(-PRIORITY_RANGE_S, min(PRIORITY_RANGE_S, seconds)) * 1000)
        thr = raw.get("throttle")
        rl = raw.get("rate_limit")
        deb = raw.get("debounce")
        bat = raw.get("batch") if (self.batched(event) if batched is None else batched) else None
        sin = raw.get("singleton")

        def bucket(kind: str, name: str, opts: dict[str, Any]) -> str:
            return f"{kind}:{function_id}:{_key_value(f'{name} key', opts.get('key'), bindings)}"

        return RunFlow(
            concurrency=tuple(concurrency),
            priority_ms=priority_ms,
            throttle=None if not thr else ThrottleKey(bucket("throttle", "throttle", thr), int(thr["limit"]),
                                                      int(thr["period_ms"]), int(thr.get("burst", 0))),
            rate_limit=None if not rl else RateLimitKey(bucket("rate", "rate_limit", rl), int(rl["limit"]),
                                                        int(rl["period_ms"])),
            debounce=None if not deb else DebounceKey(bucket("debounce", "debounce", deb), int(deb["period_ms"]),
                                                      deb.get("timeout_ms")),
            batch=None if not bat else BatchKey(bucket("batch", "batch", bat), int(bat["max_size"]),
                                                int(bat["timeout_ms"])),
            singleton=None if not sin else SingletonKey(bucket("singleton", "singleton", sin), str(sin["mode"])),
            gates_claims=self.gates_claims,
        )  # fmt: skip
