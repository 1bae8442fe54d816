"""Parsing and formatting of Inngest-style durations, and UTC timestamp normalisation.

Durations are written as one or more ``<number><unit>`` parts concatenated, e.g. ``"30s"``,
``"1h30m"``, ``"1.5h"`` or ``"500ms"``.  Supported units are ``ms``, ``s``, ``m``, ``h``, ``d``
and ``w``.
"""

from __future__ import annotations

import datetime
import math
import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

__all__ = ["DurationError", "format_duration", "parse_duration", "to_utc"]

_UNIT_MICROSECONDS: dict[str, int] = {
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60 * 1_000_000,
    "h": 60 * 60 * 1_000_000,
    "d": 24 * 60 * 60 * 1_000_000,
    "w": 7 * 24 * 60 * 60 * 1_000_000,
}

# "ms" must come before "m" and "s" so the alternation picks the longest unit.
_PART = r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d|w)"
_PART_RE = re.compile(_PART)
_FULL_RE = re.compile(rf"(?:{_PART})+")

_EXPECTED = "expected a number followed by a unit (ms, s, m, h, d, w), like '30s' or '1h30m'"
_MAX_MICROSECONDS = datetime.timedelta.max // datetime.timedelta(microseconds=1)


class DurationError(ValueError):
    """Raised when a duration or timestamp cannot be interpreted."""


def _from_microseconds(total: int, shown: object) -> datetime.timedelta:
    if total > _MAX_MICROSECONDS:
        raise DurationError(f"invalid duration {shown!r}: too large (the maximum is {datetime.timedelta.max})")
    return datetime.timedelta(microseconds=total)


def _parse_string(value: str) -> datetime.timedelta:
    text = value.strip()
    if not text:
        raise DurationError(f"invalid duration {value!r}: the string is empty; {_EXPECTED}")
    if text == "0":
        # A bare zero needs no unit, as in Go's time.ParseDuration.
        return datetime.timedelta(0)
    if text.startswith("-"):
        raise DurationError(f"invalid duration {value!r}: durations must not be negative")
    if _FULL_RE.fullmatch(text) is None:
        raise DurationError(f"invalid duration {value!r}: {_EXPECTED}")
    total = Decimal(0)
    for number, unit in _PART_RE.findall(text):
        try:
            total += Decimal(number) * _UNIT_MICROSECONDS[unit]
        except InvalidOperation as exc:  # pragma: no cover - regex guarantees valid numbers
            raise DurationError(f"invalid duration {value!r}: {_EXPECTED}") from exc
    micros = int(total.to_integral_value(rounding=ROUND_HALF_EVEN))
    return _from_microseconds(micros, value)


def parse_duration(value: str | int | float | datetime.timedelta) -> datetime.timedelta:
    """Convert ``value`` to a non-negative :class:`datetime.timedelta`.

    Strings use the compact Inngest form (``"1h30m"``); ints and floats are seconds; timedeltas
    pass through unchanged.  Raises :class:`DurationError` for anything negative, empty,
    non-finite, malformed, or of an unsupported type (including ``bool``).
    """
    if isinstance(value, bool):
        raise DurationError(
            f"invalid duration {value!r}: expected a duration string, a number of seconds or a timedelta, not a bool"
        )
    if isinstance(value, datetime.timedelta):
        if value < datetime.timedelta(0):
            raise DurationError(f"invalid duration {value!r}: durations must not be negative")
        return value
    if isinstance(value, str):
        return _parse_string(value)
    if isinstance(value, int):
        if value < 0:
            raise DurationError(f"invalid duration {value!r}: durations must not be negative")
        return _from_microseconds(value * 1_000_000, value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DurationError(f"invalid duration {value!r}: the number of seconds must be finite")
        if value < 0:
            raise DurationError(f"invalid duration {value!r}: durations must not be negative")
        micros = int((Decimal(value) * 1_000_000).to_integral_value(rounding=ROUND_HALF_EVEN))
        return _from_microseconds(micros, value)
    raise DurationError(
        f"invalid duration {value!r}: expected a duration string, a number of seconds or a timedelta, "
        f"not {type(value).__name__}"
    )


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_duration(td: datetime.timedelta) -> str:
    """Render ``td`` in the compact form accepted by :func:`parse_duration`.

    Examples: ``"1h30m"``, ``"45s"``, ``"250ms"``, ``"1w2d"``, ``"1.5s"``; zero is ``"0s"``.
    The output always parses back to exactly ``td``.
    """
    if not isinstance(td, datetime.timedelta):
        raise DurationError(f"invalid duration {td!r}: expected a timedelta, not {type(td).__name__}")
    if td < datetime.timedelta(0):
        raise DurationError(f"invalid duration {td!r}: durations must not be negative")
    total = td // datetime.timedelta(microseconds=1)
    if total == 0:
        return "0s"
    parts: list[str] = []
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_MICROSECONDS[unit]
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    seconds, micros = divmod(total, 1_000_000)
    if seconds and micros:
        parts.append(f"{_decimal_text(Decimal(total) / 1_000_000)}s")
    elif seconds:
        parts.append(f"{seconds}s")
    elif micros:
        parts.append(f"{_decimal_text(Decimal(micros) / 1_000)}ms")
    return "".join(parts)


def to_utc(value: datetime.datetime | str) -> datetime.datetime:
    """Return ``value`` as an aware datetime in UTC.

    Accepts timezone-aware datetimes and ISO-8601 strings with an offset (a trailing ``Z`` is
    allowed).  Naive datetimes and strings without an offset raise :class:`DurationError`.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise DurationError(
                f"invalid timestamp {value!r}: expected an ISO-8601 string such as '2026-01-01T00:00:00Z'"
            ) from exc
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise DurationError(
                f"invalid timestamp {value!r}: the string has no timezone; timezone-aware timestamps are "
                "required, add an offset such as 'Z' or '+00:00'"
            )
        return parsed.astimezone(datetime.UTC)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise DurationError(
                f"invalid timestamp {value.isoformat()!r}: naive datetimes are ambiguous; timezone-aware "
                "datetimes are required, e.g. datetime.now(datetime.UTC)"
            )
        return value.astimezone(datetime.UTC)
    raise DurationError(
        f"invalid timestamp {value!r}: expected a timezone-aware datetime or an ISO-8601 string, "
        f"not {type(value).__name__}"
    )
