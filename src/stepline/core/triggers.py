"""Function triggers: an event name pattern with an optional CEL filter, or a cron schedule."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from stepline.core.cron import CronSchedule, parse_cron
from stepline.core.durations import parse_duration
from stepline.core.expressions import Bindings, Expression, ExpressionError, compile_expression

__all__ = ["CronTrigger", "EventTrigger", "Trigger", "event_name_matches"]

MIN_JITTER_MS, MAX_JITTER_MS = 1_000, 300_000  # Inngest's MinCronJitter and MaxCronJitter


@functools.lru_cache(maxsize=4096)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def event_name_matches(pattern: str, name: str) -> bool:
    """Whether event ``name`` matches ``pattern``: exactly, or with ``*`` matching any run of characters.

    ``app/*`` matches ``app/user.created`` and ``app/a/b``; ``*`` matches every name.
    """
    if "*" not in pattern:
        return pattern == name
    if pattern == "*":
        return True
    return _wildcard_regex(pattern).fullmatch(name) is not None


@dataclass(frozen=True)
class EventTrigger:
    """Run when an event whose name matches ``event`` arrives and, if set, ``expression`` is true for it.

    The expression sees the event as ``event`` (``event.data.amount > 100``). An invalid expression raises
    ExpressionError here, so bad configuration fails at registration rather than when events arrive.
    """

    event: str
    expression: str | None = None
    _compiled: Expression | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event.strip():
            raise ValueError(f"an event trigger needs a non-empty event name, got {self.event!r}")
        if self.expression is not None:
            object.__setattr__(self, "_compiled", compile_expression(self.expression))

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` (a dict with ``name``, ``data``, ...) fires this trigger; an expression that fails
        does not fire it."""
        try:
            return self.check(event)
        except ExpressionError:
            return False

    def check(self, event: Mapping[str, Any], bindings: Bindings | None = None) -> bool:
        """As ``matches``, but an expression that fails for another reason than a field missing from the event
        raises ExpressionError (so the caller can report it). ``bindings``: the event already bound as ``event``
        (shared by every expression evaluated over it)."""
        name = event.get("name")
        if not isinstance(name, str) or not event_name_matches(self.event, name):
            return False
        if self._compiled is None:
            return True
        try:
            return self._compiled.check(bindings if bindings is not None else {"event": event})
        except ExpressionError as exc:
            if exc.missing_key:
                return False
            raise


@dataclass(frozen=True)
class CronTrigger:
    """Run on a cron schedule: ``[TZ=Zone ]minute hour day-of-month month day-of-week`` (see ``core/cron.py``).

    An expression that does not parse raises ValueError here, naming the field, so a bad schedule fails at
    registration. Workers that define the function fire it once per scheduled time (``core/scheduler.py``).
    ``jitter`` (1 s to 5 min, as Inngest's): each scheduled run starts a deterministic random delay of up to this
    long after its time, so many functions on one schedule do not all start at the same second.
    """

    cron: str
    jitter: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cron, str) or not self.cron.strip():
            raise ValueError(f"a cron trigger needs a non-empty cron expression, got {self.cron!r}")
        parse_cron(self.cron)
        self.jitter_ms  # noqa: B018 - validates

    @property
    def jitter_ms(self) -> int:
        """The jitter in milliseconds (0: none); raises ValueError for a value out of range."""
        if self.jitter in (None, "", "0", "0s"):
            return 0
        try:
            ms = int(parse_duration(self.jitter).total_seconds() * 1000)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cron jitter {self.jitter!r} is not a duration: {exc}") from None
        if not MIN_JITTER_MS <= ms <= MAX_JITTER_MS:
            raise ValueError(f"cron jitter must be from 1s to 5m, got {self.jitter!r}")
        return ms

    @property
    def schedule(self) -> CronSchedule:
        return parse_cron(self.cron)


Trigger: TypeAlias = EventTrigger | CronTrigger
