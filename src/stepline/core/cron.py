"""Cron schedules: ``[TZ=Zone ]minute hour day-of-month month day-of-week``, as Inngest accepts them.

Parsing and field matching come from ``croniter``, always on *naive wall-clock* times; the time zone is
applied here, so daylight-saving changes follow one documented rule:

- a wall-clock time that does not exist (the clock jumps forward over it) fires once, at the instant the jump
  happens (``30 2 * * *`` in Europe/Paris fires at 03:00 CEST on the last Sunday of March);
- a wall-clock time that happens twice (the clock goes back) fires once, at its first occurrence.

Every time is returned as unix milliseconds. Without a ``TZ=`` (or ``CRON_TZ=``) prefix the zone is UTC.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import zoneinfo
from dataclasses import dataclass

from croniter import croniter
from croniter.croniter import CroniterError

__all__ = ["CronSchedule", "parse_cron"]

_UTC = dt.UTC
_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_RANGES = ("0-59", "0-23", "1-31", "1-12 or JAN-DEC", "0-7 or SUN-SAT")
_FIELD_CHARS = re.compile(r"^[0-9A-Za-z*,/?-]+$")
_NAMES = re.compile(r"[A-Za-z]+")
_MONTH_NAMES = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"}
_DAY_NAMES = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"}
_MAX_STEPS = 10_000  # bound on the iterations of one search (a 5-field cron matches at least every ~4 years)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)


class CronError(ValueError):
    """A cron expression that does not parse; the message names the field."""


def _check_field(expr: str, index: int, text: str) -> None:
    name = _FIELDS[index]
    if not _FIELD_CHARS.match(text):
        raise CronError(f"invalid cron {expr!r}: {name} field {text!r} has characters cron does not allow")
    allowed = _MONTH_NAMES if index == 3 else _DAY_NAMES if index == 4 else set()
    for word in _NAMES.findall(text):
        if word.upper() not in allowed:
            hint = f" (use {_RANGES[index]})" if allowed else f" (use numbers {_RANGES[index]})"
            raise CronError(f"invalid cron {expr!r}: {name} field {text!r}: {word!r} is not supported{hint}")
    probe = " ".join(text if i == index else "*" for i in range(5))
    try:
        croniter(probe, _EPOCH_NAIVE)
    except (CroniterError, ValueError, KeyError, IndexError) as exc:
        raise CronError(
            f"invalid cron {expr!r}: {name} field {text!r} is not valid ({_RANGES[index]}): {exc}"
        ) from None


@dataclass(frozen=True)
class CronSchedule:
    """A parsed cron expression: ``next_after`` / ``latest_at_or_before`` give its fire times in unix ms."""

    expression: str  # as given (the stored trigger, the event's ``data.cron``)
    fields: str  # the five fields
    zone: zoneinfo.ZoneInfo | None  # None: UTC

    # --- wall clock <-> instants ---
    def _wall(self, ms: int) -> dt.datetime:
        """The naive wall-clock time in the schedule's zone at instant ``ms`` (seconds dropped)."""
        instant = dt.datetime.fromtimestamp(ms // 1000, _UTC)
        local = instant if self.zone is None else instant.astimezone(self.zone)
        return local.replace(tzinfo=None, second=0, microsecond=0, fold=0)

    def _instant(self, wall: dt.datetime) -> int:
        """The instant (ms) a matching wall-clock time fires at, by the rules in the module docstring."""
        if self.zone is None:
            return int(wall.replace(tzinfo=_UTC).timestamp()) * 1000
        first = wall.replace(tzinfo=self.zone, fold=0)
        if first.astimezone(_UTC).astimezone(self.zone).replace(tzinfo=None) == wall:
            return int(first.timestamp()) * 1000  # exists (if it happens twice, fold=0 is the first time)
        probe = wall  # in a gap: fire when the clock lands after it, i.e. at the first wall minute that exists
        for _ in range(24 * 60):
            probe += dt.timedelta(minutes=1)
            aware = probe.replace(tzinfo=self.zone, fold=0)
            if aware.astimezone(_UTC).astimezone(self.zone).replace(tzinfo=None) == probe:
                return int(aware.timestamp()) * 1000
        raise CronError(f"cron {self.expression!r}: no valid time after {wall.isoformat()} in {self.zone}")

    def _offset_drop(self, ms: int) -> dt.timedelta:
        """How far the zone's clock went back in the 6 hours before ``ms`` (zero if it did not)."""
        if self.zone is None:
            return dt.timedelta(0)
        at = dt.datetime.fromtimestamp(ms // 1000, _UTC)
        now_off = at.astimezone(self.zone).utcoffset() or dt.timedelta(0)
        before_off = (at - dt.timedelta(hours=6)).astimezone(self.zone).utcoffset() or dt.timedelta(0)
        return max(dt.timedelta(0), before_off - now_off)

    # --- fire times ---
    def next_after(self, ms: int) -> int:
        """The first fire time strictly after ``ms``."""
        it = croniter(self.fields, self._wall(ms))
        for _ in range(_MAX_STEPS):
            at = self._instant(it.get_next(dt.datetime))
            if at > ms:
                return at
        raise CronError(f"cron {self.expression!r}: no fire time found after {ms}")  # pragma: no cover

    def latest_at_or_before(self, ms: int) -> int:
        """The most recent fire time at or before ``ms``."""
        # Start late enough that wall times of a repeated hour (which map to earlier instants) are seen.
        start = self._wall(ms) + self._offset_drop(ms) + dt.timedelta(minutes=1)
        it = croniter(self.fields, start)
        for _ in range(_MAX_STEPS):
            at = self._instant(it.get_prev(dt.datetime))
            if at <= ms:
                return at
        raise CronError(f"cron {self.expression!r}: no fire time found before {ms}")  # pragma: no cover

    def count_between(self, after: int, before: int, limit: int = _MAX_STEPS) -> int:
        """How many fire times lie strictly between ``after`` and ``before`` (at most ``limit``)."""
        count = 0
        at = after
        while count < limit:
            at = self.next_after(at)
            if at >= before:
                break
            count += 1
        return count


@functools.lru_cache(maxsize=1024)
def parse_cron(expression: str) -> CronSchedule:
    """Parse ``[TZ=Zone ]m h dom mon dow``. Raises CronError (a ValueError) naming the field that is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise CronError(f"a cron expression must be a non-empty string, got {expression!r}")
    parts = expression.split()
    zone: zoneinfo.ZoneInfo | None = None
    if parts and parts[0].upper().startswith(("TZ=", "CRON_TZ=")):
        name = parts.pop(0).split("=", 1)[1]
        if not name:
            raise CronError(f"invalid cron {expression!r}: TZ= needs an IANA time zone name (TZ=Europe/Paris)")
        try:
            zone = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise CronError(f"invalid cron {expression!r}: unknown time zone {name!r} (use an IANA name)") from None
        if name.upper() in ("UTC", "ETC/UTC", "Z"):
            zone = None
    if parts and parts[0].startswith("@"):
        raise CronError(
            f"invalid cron {expression!r}: macros like {parts[0]!r} are not supported (as with Inngest); "
            "write the five fields, e.g. '0 0 * * *' for @daily"
        )
    if len(parts) != 5:
        raise CronError(
            f"invalid cron {expression!r}: expected 5 fields (minute hour day-of-month month day-of-week) "
            f"after the optional TZ=, got {len(parts)}"
        )
    for i, text in enumerate(parts):
        _check_field(expression, i, text)
    fields = " ".join(parts)
    schedule = CronSchedule(expression=expression, fields=fields, zone=zone)
    try:
        schedule.next_after(0)
    except (CroniterError, CronError):
        raise CronError(f"invalid cron {expression!r}: it never fires (no such date)") from None
    return schedule
