"""What an accepted event may hold, so that everything accepted can be stored, matched and read back.

Refused, each with the path of the offending value (``data.items[3].id``):

- nesting deeper than ``MAX_JSON_DEPTH`` levels (the REST API and dashboard serve what is stored; the JSON
  encoders and CEL recurse over it);
- integers outside the signed 64-bit range (CEL's ``int``; JavaScript clients lose precision past 2^53, which is
  their concern: Stepline keeps what it was sent);
- floats that are not finite;
- strings (keys included) with unpaired UTF-16 surrogates (``"\\ud800"``), which no UTF-8 store or answer can hold;
- more than ``MAX_JSON_VALUES`` values (numbers, strings, lists, maps...): 3 MB of ``[[],[],...]`` is a million of
  them, which cost seconds and gigabytes each time the event is parsed, matched or served.

``json_problem`` is on the hot path of every send, so it first looks at the serialised text (C-speed scans) and
walks the value only when the text shows something that could be a problem.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["INT64_MAX", "INT64_MIN", "MAX_JSON_DEPTH", "MAX_JSON_VALUES", "json_problem", "text_problem"]

MAX_JSON_DEPTH = 100
MAX_JSON_VALUES = 250_000
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_LONG_DIGITS = re.compile(r"\d{19,}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # in ASCII-escaped JSON text (emoji pairs match too)


def text_problem(text: str, what: str) -> str | None:
    """A problem with a string that is not JSON (a name, an id): NUL characters or unpaired surrogates."""
    if "\x00" in text:
        return f"{what} contains a NUL character"
    if _SURROGATE.search(text):
        return f"{what} contains an unpaired UTF-16 surrogate"
    return None


def _maybe_problematic(text: str) -> bool:
    """Whether ``text`` (the value serialised, with or without ``ensure_ascii``, NaN allowed) could hold a
    problem: deep nesting needs more than MAX_JSON_DEPTH brackets, a big integer a long run of digits, a
    surrogate its code point or escape, a non-finite float the word Infinity or NaN."""
    brackets = text.count("{") + text.count("[")
    return (
        brackets > MAX_JSON_DEPTH
        or brackets + text.count(",") >= MAX_JSON_VALUES  # an upper bound of the number of values
        or _LONG_DIGITS.search(text) is not None
        or _SURROGATE.search(text) is not None
        or _ESCAPED_SURROGATE.search(text) is not None
        or "Infinity" in text
        or "NaN" in text
    )


def json_problem(value: Any, where: str, text: str | None = None) -> str | None:
    """The first problem in JSON ``value`` as ``"<where>.<path>: <what>"``, or None. ``text``: the value already
    serialised (NaN allowed), if the caller has it: a clean text skips the walk."""
    if text is not None and not _maybe_problematic(text):
        return None
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    seen = 1
    while stack:
        item, path, depth = stack.pop()
        kind = type(item)
        if (kind is dict or kind is list or kind is tuple) and (seen := seen + len(item)) > MAX_JSON_VALUES:
            return f"{where}: holds more than {MAX_JSON_VALUES:,} values"
        if kind is dict:
            if depth >= MAX_JSON_DEPTH:
                return f"{_short(path)}: nested more than {MAX_JSON_DEPTH} levels deep"
            for key, child in item.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    return f"{_short(path)}: the key {key!r} contains an unpaired UTF-16 surrogate"
                stack.append((child, f"{path}.{key}" if _plain_key(key) else f"{path}[{key!r}]", depth + 1))
        elif kind is list or kind is tuple:
            if depth >= MAX_JSON_DEPTH:
                return f"{_short(path)}: nested more than {MAX_JSON_DEPTH} levels deep"
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        elif kind is int:
            if not INT64_MIN <= item <= INT64_MAX:
                digits = str(item) if abs(item) < 10**40 else f"an integer of {len(str(abs(item)))} digits"
                return (f"{_short(path)}: {digits} is outside the signed 64-bit integer range; send it as a string "
                        "(CEL compares 64-bit integers)")  # fmt: skip
        elif kind is float:
            if item != item or item in (float("inf"), float("-inf")):
                return f"{_short(path)}: {item} is not a finite number"
        elif kind is str:
            if _SURROGATE.search(item):
                return f"{_short(path)}: the string contains an unpaired UTF-16 surrogate"
    return None


def _short(path: str) -> str:
    return path if len(path) <= 160 else f"{path[:80]}…{path[-70:]}"


def _plain_key(key: object) -> bool:
    return isinstance(key, str) and key.isidentifier()
