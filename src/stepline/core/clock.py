"""Clocks: the real system clock and a controllable fake for tests."""

from __future__ import annotations

import asyncio
import datetime
import math
import re
import threading
import time
from typing import Protocol

__all__ = ["EPOCH", "Clock", "FakeClock", "SystemClock", "from_ms", "parse_rfc3339_ms", "sleep_until", "to_ms"]

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_ONE_MS = datetime.timedelta(milliseconds=1)
_DEFAULT_START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _require_aware(dt: datetime.datetime, what: str) -> datetime.datetime:
    if not isinstance(dt, datetime.datetime):
        raise ValueError(f"invalid {what} {dt!r}: expected a datetime")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"invalid {what} {dt.isoformat()!r}: timezone-aware datetimes are required")
    return dt.astimezone(datetime.UTC)


def to_ms(dt: datetime.datetime) -> int:
    """Milliseconds since the unix epoch (floored) for an aware datetime."""
    return (_require_aware(dt, "datetime") - EPOCH) // _ONE_MS


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))")
_CYCLE_MS = 146_097 * 86_400_000  # 400 Gregorian years


def parse_rfc3339_ms(text: str) -> int | None:
    """Unix milliseconds of an RFC 3339 date-time (any year 0000-9999, a leap second read as the second before,
    fractions cut to milliseconds), or None when ``text`` is not one."""
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and hour <= 23 and minute <= 59 and second <= 60):
        return None
    shift = 0
    if year == 0:  # before datetime's range: the same day 400 years later, one Gregorian cycle back
        year, shift = 400, _CYCLE_MS
    try:
        day_start = datetime.datetime(year, month, day, tzinfo=datetime.UTC)
    except ValueError:
        return None
    offset = 0
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        offset = (oh * 60 + om) * 60_000 * (1 if m.group(9) == "+" else -1)
    millis = int((m.group(7) or ".0")[1:4].ljust(3, "0"))
    seconds = hour * 3600 + minute * 60 + min(second, 59)
    return to_ms(day_start) + seconds * 1000 + millis - offset - shift


def from_ms(ms: int) -> datetime.datetime:
    """The aware UTC datetime ``ms`` milliseconds after the unix epoch."""
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise ValueError(f"invalid millisecond timestamp {ms!r}: expected an integer")
    return EPOCH + datetime.timedelta(milliseconds=ms)


class Clock(Protocol):
    """A source of the current time."""

    def now(self) -> datetime.datetime:
        """The current time as an aware UTC datetime."""
        ...

    def now_ms(self) -> int:
        """The current time in milliseconds since the unix epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep_until(self, at_ms: int) -> None:
        """Sleep until the wall clock reads ``at_ms``. Long sleeps wake every minute to look at the clock again,
        so a wall-clock change (NTP step, suspend) delays a deadline by at most a minute."""
        while (left := at_ms - self.now_ms()) > 0:
            await asyncio.sleep(min(left / 1000, 60.0))

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A manually driven, thread-safe clock that never moves backwards."""

    def __init__(self, start: datetime.datetime = _DEFAULT_START) -> None:
        self._now = _require_aware(start, "start time")
        self._lock = threading.Lock()
        self._sleepers: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def now(self) -> datetime.datetime:
        with self._lock:
            return self._now

    def now_ms(self) -> int:
        return to_ms(self.now())

    def advance(self, delta: datetime.timedelta | float) -> datetime.datetime:
        """Move forward by ``delta`` (a timedelta or seconds) and return the new time."""
        if isinstance(delta, bool):
            raise ValueError(f"invalid clock advance {delta!r}: expected a timedelta or seconds")
        if isinstance(delta, int | float):
            if not math.isfinite(delta):
                raise ValueError(f"invalid clock advance {delta!r}: must be finite")
            try:
                step = datetime.timedelta(seconds=delta)
            except OverflowError as exc:
                raise ValueError(f"invalid clock advance {delta!r}: too large") from exc
        elif isinstance(delta, datetime.timedelta):
            step = delta
        else:
            raise ValueError(f"invalid clock advance {delta!r}: expected a timedelta or seconds")
        if step < datetime.timedelta(0):
            raise ValueError(f"invalid clock advance {delta!r}: the clock cannot move backwards")
        with self._lock:
            self._now = self._now + step
            now = self._now
        self._wake_sleepers()
        return now

    def set(self, dt: datetime.datetime) -> None:
        """Jump to ``dt``; raises ValueError if that is earlier than the current time."""
        target = _require_aware(dt, "clock time")
        with self._lock:
            if target < self._now:
                raise ValueError(
                    f"cannot set clock to {target.isoformat()}: it is earlier than the current time "
                    f"{self._now.isoformat()} and the clock never moves backwards"
                )
            self._now = target
        self._wake_sleepers()

    async def sleep_until(self, at_ms: int) -> None:
        """Return once ``advance``/``set`` (from any thread) has moved the clock to ``at_ms`` or later."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (at_ms, loop, fut)
        with self._lock:
            if to_ms(self._now) >= at_ms:
                return
            self._sleepers.append(entry)
        try:
            await fut
        finally:
            with self._lock:
                if entry in self._sleepers:
                    self._sleepers.remove(entry)

    def _wake_sleepers(self) -> None:
        with self._lock:
            now = to_ms(self._now)
            due = [e for e in self._sleepers if e[0] <= now]
            self._sleepers = [e for e in self._sleepers if e[0] > now]
        for _, loop, fut in due:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def sleep_until(clock: Clock, at_ms: int) -> None:
    """Sleep until ``clock`` reads ``at_ms``: a FakeClock wakes the sleeper when a test advances it; a clock
    without a ``sleep_until`` of its own is slept on in real time."""
    own = getattr(clock, "sleep_until", None)
    if own is not None:
        await own(at_ms)
        return
    while (left := at_ms - clock.now_ms()) > 0:
        await asyncio.sleep(min(left / 1000, 60.0))
