"""CEL expressions: trigger filters, ``wait_for_event``/cancellation conditions and the ``match`` shorthand.

Library: common-expression-language 0.10 (``cel``, Rust), not cel-python 0.5 (``celpy``). Compiled once, on
one realistic event: cel 17k evals/s from a dict (mostly dict conversion; 470k/s on a reused context, hence
``Bindings``), celpy 2.8k-4.9k/s (4k-11k pre-converted); cel compiles 10x faster. celpy fails ``1.0 == 1``
and ``150 > 100.5`` (no matching overload); cel got all the probed filters right.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import cel

from stepline.core.errors import SteplineError

__all__ = [
    "Bindings",
    "Expression",
    "ExpressionError",
    "compile_expression",
    "match_to_expression",
]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_PARSE_PREFIX = re.compile(r"^Failed to parse expression '.*?': ", re.DOTALL)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# CEL's reserved words cannot be used as ``a.field`` selectors; such path segments use ``a["field"]``.
_RESERVED = frozenset(
    "true false null in as break const continue else for function if import let loop package "
    "namespace return var void while".split()
)


class ExpressionError(SteplineError, ValueError):
    """An expression that does not compile, or whose evaluation failed."""


def _normalize(value: Any) -> Any:
    """Copy JSON-like data for binding, turning whole floats into ints.

    CEL has no implicit int/double arithmetic (``1.0 + 1`` is an error), and JSON producers write ``1``
    or ``1.0`` for the same number, so ``1.0`` is bound as the int ``1``.
    """
    kind = type(value)
    # Exact-type checks first: this runs on every evaluation, and isinstance chains are 3x slower.
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return {key: _normalize(item) for key, item in value.items()}
    if kind is list:
        return [_normalize(item) for item in value]
    if isinstance(value, float):
        if value.is_integer() and _INT64_MIN <= value <= _INT64_MAX:
            return int(value)
        return value
    if isinstance(value, Mapping):
        return {key: _normalize(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalize(item) for item in value]
    return value


def _to_python(value: Any) -> Any:
    """Plain Python values from a CEL result (optionals become their value or None)."""
    if isinstance(value, cel.OptionalValue):
        return _to_python(value.value()) if value.has_value() else None
    if isinstance(value, dict):
        return {_to_python(key): _to_python(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_python(item) for item in value]
    return value


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return f"no such key: {exc.args[0]!r}"
    if isinstance(exc, RecursionError):
        return "bindings are nested too deeply"
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class Bindings:
    """Bindings converted once, for evaluating several expressions against the same values.

    Converting a realistic event to CEL values costs far more than evaluating a typical expression;
    pass a ``Bindings`` instead of a mapping to pay that once. The values are copied: later changes to
    the mapping are not seen.
    """

    __slots__ = ("_context",)

    def __init__(self, bindings: Mapping[str, Any]) -> None:
        try:
            self._context = cel.Context(_normalize(bindings))
        except Exception as exc:
            raise ExpressionError(f"cannot bind values for CEL: {_describe(exc)}") from exc


class Expression:
    """A compiled CEL expression; obtain one with :func:`compile_expression`."""

    __slots__ = ("_program", "source")

    def __init__(self, source: str, program: cel.Program) -> None:
        self.source = source
        self._program = program

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def _execute(self, bindings: Mapping[str, Any] | Bindings) -> Any:
        try:
            if isinstance(bindings, Bindings):
                return self._program.execute(bindings._context)
            return self._program.execute(_normalize(bindings))
        except Exception as exc:
            raise ExpressionError(f"evaluating CEL expression {self.source!r} failed: {_describe(exc)}") from exc

    def evaluate(self, bindings: Mapping[str, Any] | Bindings) -> Any:
        """The expression's value as plain Python data; ExpressionError if evaluation fails."""
        return _to_python(self._execute(bindings))

    def matches(self, bindings: Mapping[str, Any] | Bindings) -> bool:
        """True only if the expression evaluates to boolean true; evaluation errors count as no match."""
        try:
            return self._execute(bindings) is True
        except ExpressionError:
            return False


@functools.lru_cache(maxsize=4096)
def _compile_cached(source: str) -> Expression:
    if not source.strip():
        raise ExpressionError("CEL expression is empty")
    try:
        program = cel.compile(source)
    except Exception as exc:
        detail = _PARSE_PREFIX.sub("", str(exc), count=1).strip() or type(exc).__name__
        raise ExpressionError(f"invalid CEL expression {source!r}: {detail}") from exc
    return Expression(source, program)


def compile_expression(source: str) -> Expression:
    """Compile ``source`` (cached by source text); ExpressionError if it is empty or not valid CEL."""
    if not isinstance(source, str):
        raise ExpressionError(f"a CEL expression must be a string, got {type(source).__name__}")
    return _compile_cached(source)


def match_to_expression(field: str) -> str:
    """Inngest's ``match`` shorthand: ``"data.user_id"`` -> ``event.data.user_id == async.data.user_id``.

    A leading ``event.`` or ``async.`` is accepted and ignored.
    """
    if not isinstance(field, str):
        raise ExpressionError(f"a match field must be a string, got {type(field).__name__}")
    segments = field.strip().split(".")
    if len(segments) > 1 and segments[0] in ("event", "async"):
        segments = segments[1:]
    if not all(_IDENTIFIER.fullmatch(segment) for segment in segments):
        raise ExpressionError(
            f"invalid match field {field!r}: expected a dotted path of identifiers such as 'data.user_id'"
        )
    path = "".join(f'["{segment}"]' if segment in _RESERVED else f".{segment}" for segment in segments)
    expression = f"event{path} == async{path}"
    compile_expression(expression)
    return expression
