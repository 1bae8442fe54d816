"""A function's settings in words, for people: flow control ("1 at a time per event.data.customer", "2 runs per
second") and cron schedules ("every hour at :00 UTC", with the next times). Pure functions over the stored
config (``FunctionSpec.config()``, the ``flow`` dict of ``core/flow.py``); no I/O, the caller passes ``now``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from stepline.core.cron import CronError, parse_cron

__all__ = ["cron_text", "duration_words", "flow_words", "next_fire_times"]

_UNITS = ((7 * 86_400_000, "week"), (86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute"), (1000, "second"))
_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_DAY_NAMES = {name[:3].upper(): i for i, name in enumerate(_DAYS)}
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")  # fmt: skip
_MONTH_NAMES = {name[:3].upper(): i + 1 for i, name in enumerate(_MONTHS)}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def duration_words(ms: int) -> str:
    """``5 seconds``, ``1 minute``, ``90 seconds``, ``2 hours``: the largest unit that divides the duration."""
    for size, unit in _UNITS:
        if ms >= size and ms % size == 0:
            return _plural(ms // size, unit)
    return _plural(ms, "millisecond")


def _per(ms: int) -> str:
    """``per second``, ``per 5 seconds``."""
    words = duration_words(ms)
    return f"per {words[2:]}" if words.startswith("1 ") else f"per {words}"


def _key(raw: Any) -> str:
    return f" per {raw}" if isinstance(raw, str) and raw else ""


def flow_words(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Each flow-control setting of a function config as ``(setting, sentence)``, in a fixed order."""
    flow = config.get("flow")
    if not isinstance(flow, Mapping):
        return []
    out: list[tuple[str, str]] = []
    conc = flow.get("concurrency")
    for item in conc if isinstance(conc, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("limit"), int):
            scope = {"env": " across the environment", "account": " across the account"}.get(str(item.get("scope")), "")
            out.append(("Concurrency", f"{item['limit']} at a time{_key(item.get('key'))}{scope}"))
    if isinstance(thr := flow.get("throttle"), Mapping) and isinstance(thr.get("period_ms"), int):
        burst = thr.get("burst") or 0
        extra = f", bursts of {burst} more" if burst else ""
        out.append(("Throttle", f"{_plural(thr.get('limit', 1), 'run')} {_per(thr['period_ms'])}"
                                f"{_key(thr.get('key'))}{extra}; the rest wait their turn"))  # fmt: skip
    if isinstance(rl := flow.get("rate_limit"), Mapping) and isinstance(rl.get("period_ms"), int):
        out.append(("Rate limit", f"at most {_plural(rl.get('limit', 1), 'run')} {_per(rl['period_ms'])}"
                                  f"{_key(rl.get('key'))}; more events start no run"))  # fmt: skip
    if isinstance(deb := flow.get("debounce"), Mapping) and isinstance(deb.get("period_ms"), int):
        cap = f", at most {duration_words(deb['timeout_ms'])} after the first" if deb.get("timeout_ms") else ""
        out.append(("Debounce", f"starts {duration_words(deb['period_ms'])} after the last event"
                                f"{_key(deb.get('key'))}{cap}"))  # fmt: skip
    if isinstance(pri := flow.get("priority"), Mapping) and pri.get("run"):
        out.append(("Priority", f"runs first by {pri['run']}"))
    if isinstance(bat := flow.get("batch"), Mapping) and isinstance(bat.get("max_size"), int):
        cond = f", only events where {bat['if']}" if bat.get("if") else ""
        wait = f" or after {duration_words(bat['timeout_ms'])}" if bat.get("timeout_ms") else ""
        out.append(("Batch", f"up to {_plural(bat['max_size'], 'event')} per run{wait}{_key(bat.get('key'))}{cond}"))
    if isinstance(sin := flow.get("singleton"), Mapping) and sin.get("mode"):
        then = "a new event starts no run" if sin["mode"] == "skip" else "a new event cancels the running one"
        out.append(("Singleton", f"1 run at a time{_key(sin.get('key'))}; {then}"))
    return out


# --- cron --------------------------------------------------------------------------------------------------------


def _number(text: str, names: Mapping[str, int]) -> int | None:
    if text.isdigit():
        return int(text)
    return names.get(text.upper())


def _list(text: str, names: Mapping[str, int]) -> list[int] | None:
    """``1,3,5`` or ``MON-FRI`` or a single value as numbers; None for steps and other shapes."""
    values: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        a, b = _number(low, names), _number(high, names) if high else None
        if a is None or (high and b is None):
            return None
        values += list(range(a, (b if b is not None else a) + 1))
    return values


def _joined(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _schedule_words(fields: list[str]) -> str | None:
    """The five fields in words for the common shapes; None for the others (shown as the raw expression)."""
    minute, hour, dom, month, dow = fields
    if (dom, month) != ("*", "*") and dow not in ("*", "?"):
        return None
    minutes = _list(minute, {}) if minute != "*" else None
    if minute == "*" and hour == "*":
        base = "every minute"
    elif minute.startswith("*/") and minute[2:].isdigit() and hour == "*":
        base = f"every {_plural(int(minute[2:]), 'minute')}"
    elif minutes is not None and hour == "*":
        base = "every hour at " + _joined([f":{m:02d}" for m in minutes])
    elif minutes is not None and hour.startswith("*/") and hour[2:].isdigit():
        base = f"every {_plural(int(hour[2:]), 'hour')} at " + _joined([f":{m:02d}" for m in minutes])
    elif minutes is not None and (hours := _list(hour, {})) is not None:
        base = "at " + _joined([f"{h:02d}:{m:02d}" for h in hours for m in minutes])
    else:
        return None
    if base.startswith("at "):
        if dow not in ("*", "?"):
            days = _list(dow, _DAY_NAMES)
            if days is None:
                return None
            names = [_DAYS[d % 7] for d in days]
            base = ("every weekday " if names == list(_DAYS[1:6]) else f"every {_joined(names)} ") + base
        elif dom != "*":
            dates = _list(dom, {})
            months = _list(month, _MONTH_NAMES) if month != "*" else None
            if dates is None or (month != "*" and months is None):
                return None
            where = f"of {_joined([_MONTHS[m - 1] for m in months or []])}" if months else "of every month"
            base = f"on day {_joined([str(d) for d in dates])} {where} " + base
        else:
            base = "every day " + base
    elif any(f not in ("*", "?") for f in (dom, month, dow)):
        return None
    return base


def next_fire_times(cron: str, now: int, count: int = 3) -> list[int]:
    """The next ``count`` scheduled times strictly after ``now`` (unix ms); [] for an expression that does not
    parse."""
    try:
        schedule = parse_cron(cron)
    except CronError:
        return []
    out: list[int] = []
    at = now
    for _ in range(count):
        at = schedule.next_after(at)
        out.append(at)
    return out


def cron_text(cron: str, now: int, count: int = 3) -> str:
    """``every hour at :00 UTC, next 12:00, 13:00, 14:00``: the schedule in words (the raw expression when its
    shape has no sentence here), its zone, and the next times in that zone (with the date when not today)."""
    try:
        schedule = parse_cron(cron)
    except CronError as exc:
        return str(exc)
    zone_name = "UTC" if schedule.zone is None else schedule.zone.key
    words = _schedule_words(schedule.fields.split()) or f"cron {schedule.fields}"
    zone = dt.UTC if schedule.zone is None else schedule.zone
    today = dt.datetime.fromtimestamp(now / 1000, zone).date()
    shown = []
    for at in next_fire_times(cron, now, count):
        local = dt.datetime.fromtimestamp(at / 1000, zone)
        shown.append(local.strftime("%H:%M") if local.date() == today else local.strftime("%Y-%m-%d %H:%M"))
    return f"{words} {zone_name}, next {', '.join(shown)}" if shown else f"{words} {zone_name}"
