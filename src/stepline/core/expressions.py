"""CEL expressions: trigger filters, ``wait_for_event``/cancellation conditions and the ``match`` shorthand.

Library: common-expression-language 0.10 (``cel``, Rust), not cel-python 0.5 (``celpy``). Compiled once, on
one realistic event: cel 17k evals/s from a dict (mostly dict conversion; 470k/s on a reused context, hence
``Bindings``), celpy 2.8k-4.9k/s (4k-11k pre-converted); cel compiles 10x faster. celpy fails ``1.0 == 1``
and ``150 > 100.5`` (no matching overload); cel got all the probed filters right.

The library can be crashed (a deep expression overflows its stack) and panics on some inputs, so nothing reaches
it unchecked: every expression is measured against static limits first (``cel_limits``), a panic is caught as
an error, and expressions with comprehensions, whose cost depends on the data, are evaluated on a time budget in
a child process (``cel_sandbox``). See ``docs/security.md``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stepline.core import cel_limits
from stepline.core.cel_sandbox import SandboxError, evaluate_isolated
from stepline.core.errors import SteplineError
from stepline.core.lazy import lazy_module

if TYPE_CHECKING:
    import cel
else:  # imported at the first expression: the library's package also loads its CLI (prompt_toolkit, ~0.2 s)
    cel = lazy_module("cel")

__all__ = [
    "Bindings",
    "Expression",
    "ExpressionError",
    "compile_expression",
    "match_to_expression",
]

DATA_COST_BUDGET = 20_000_000  # heavy operations squared x data weight evaluated in-process (a few ms at most)
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
    """An expression that does not compile, or whose evaluation failed.

    ``missing_key``: it failed only because the data lacks a field it reads (``event.data.amount`` of an event
    without ``amount``): for a filter that is an ordinary "no match", not a fault worth reporting."""

    def __init__(self, message: str, *, missing_key: bool = False) -> None:
        super().__init__(message)
        self.missing_key = missing_key


def _normalize(value: Any, weight: list[int]) -> Any:
    """Copy JSON-like data for binding, turning whole floats into ints, and add its size to ``weight[0]`` (the
    characters of its strings plus the items of its lists and maps: what ``data_cost`` weighs expressions by).

    CEL has no implicit int/double arithmetic (``1.0 + 1`` is an error), and JSON producers write ``1``
    or ``1.0`` for the same number, so ``1.0`` is bound as the int ``1``.
    """
    kind = type(value)
    # Exact-type checks first: this runs on every evaluation, and isinstance chains are 3x slower.
    if kind is str:
        weight[0] += len(value)
        return value
    if kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        weight[0] += len(value)
        return {key: _normalize(item, weight) for key, item in value.items()}
    if kind is list:
        weight[0] += len(value)
        return [_normalize(item, weight) for item in value]
    if isinstance(value, float):
        if value.is_integer() and _INT64_MIN <= value <= _INT64_MAX:
            return int(value)
        return value
    if isinstance(value, Mapping):
        weight[0] += len(value)
        return {key: _normalize(item, weight) for key, item in value.items()}
    if isinstance(value, list | tuple):
        weight[0] += len(value)
        return [_normalize(item, weight) for item in value]
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


def _is_panic(exc: BaseException) -> bool:
    """A Rust panic surfaces as pyo3's ``PanicException``, a BaseException that ``except Exception`` misses."""
    return type(exc).__name__ == "PanicException"


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

    __slots__ = ("_context", "_weights", "values")

    def __init__(self, bindings: Mapping[str, Any]) -> None:
        self._context: cel.Context | None = None
        self._weights: dict[str, int] = {}
        self.values: dict[str, Any] = {}
        for name, value in bindings.items():
            self.set(name, value)

    @property
    def weight(self) -> int:
        """The size of the bound data (characters of strings plus items of lists and maps)."""
        return sum(self._weights.values())

    def set(self, name: str, value: Any) -> None:
        """Bind (or re-bind) one name: the wait matcher binds each waiting run's trigger as ``event`` beside the
        same candidate ``async``, converted once."""
        weight = [0]
        try:
            self.values[name] = _normalize(value, weight)
            if self._context is not None:
                self._context.add_variable(name, self.values[name])
        except BaseException as exc:
            if not isinstance(exc, Exception) and not _is_panic(exc):
                raise
            raise ExpressionError(f"cannot bind values for CEL: {_describe(exc)}") from None
        self._weights[name] = weight[0]

    def context(self) -> cel.Context:
        """The values converted to CEL's, once (the sandbox path never needs them)."""
        if self._context is None:
            try:
                self._context = cel.Context(self.values)
            except BaseException as exc:
                if not isinstance(exc, Exception) and not _is_panic(exc):
                    raise
                raise ExpressionError(f"cannot bind values for CEL: {_describe(exc)}") from None
        return self._context


class Expression:
    """A compiled CEL expression; obtain one with :func:`compile_expression`.

    ``isolated``: it has comprehensions, so it is evaluated in the sandbox process on a time budget; the calling
    thread waits for at most that budget (callers on the event loop run such evaluations in a thread).
    """

    __slots__ = ("_program", "shape", "source")

    def __init__(self, source: str, program: cel.Program, shape: cel_limits.ExpressionShape) -> None:
        self.source = source
        self.shape = shape
        self._program = program

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    @property
    def isolated(self) -> bool:
        """Always evaluated in the sandbox (comprehensions: their cost depends on the data's lists)."""
        return self.shape.has_loops

    def heavy_for(self, weight: int) -> bool:
        """Whether evaluating over data of this weight could be expensive enough for the sandbox: the expression's
        data-scaling operations, squared (a chain of concatenations allocates each partial result), times the data's
        weight, over DATA_COST_BUDGET."""
        heavy = self.shape.heavy
        return heavy > 0 and heavy * heavy * weight > DATA_COST_BUDGET

    def _execute(self, bindings: Mapping[str, Any] | Bindings) -> Any:
        try:
            bound = bindings if isinstance(bindings, Bindings) else Bindings(bindings)
            if self.isolated or self.heavy_for(bound.weight):
                return evaluate_isolated(self.source, bound.values)
            return self._program.execute(bound.context())
        except ExpressionError:
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception) and not _is_panic(exc):
                raise
            detail = str(exc) if isinstance(exc, SandboxError) else _describe(exc)
            missing = isinstance(exc, KeyError) or detail.startswith("KeyError")
            raise ExpressionError(f"evaluating CEL expression {_short(self.source)} failed: {detail}",
                                  missing_key=missing) from None  # fmt: skip

    def evaluate(self, bindings: Mapping[str, Any] | Bindings) -> Any:
        """The expression's value as plain Python data; ExpressionError if evaluation fails."""
        return _to_python(self._execute(bindings))

    def check(self, bindings: Mapping[str, Any] | Bindings) -> bool:
        """True only if the expression evaluates to boolean true; ExpressionError if evaluation fails."""
        return self._execute(bindings) is True

    def matches(self, bindings: Mapping[str, Any] | Bindings) -> bool:
        """True only if the expression evaluates to boolean true; evaluation errors count as no match."""
        try:
            return self._execute(bindings) is True
        except ExpressionError:
            return False


def _short(source: str, limit: int = 120) -> str:
    """The expression as quoted in messages: whole when short, else its first 40 characters and its length."""
    if len(source) <= limit:
        return repr(source)
    return f"{source[:40]!r}... ({len(source):,} characters)"


def _cel_compile(source: str) -> cel.Program:
    try:
        return cel.compile(source)
    except BaseException as exc:
        if not isinstance(exc, Exception) and not _is_panic(exc):
            raise
        detail = _PARSE_PREFIX.sub("", str(exc), count=1).strip() or type(exc).__name__
        raise ExpressionError(f"invalid CEL expression {_short(source)}: {detail[:500]}") from None


@functools.lru_cache(maxsize=4096)
def _compile_cached(source: str) -> Expression:
    if not source.strip():
        raise ExpressionError("CEL expression is empty")
    try:
        shape = cel_limits.measure(source)
    except cel_limits.OverLimit as exc:
        raise ExpressionError(f"CEL expression {_short(source)} refused: {exc}") from None
    except cel_limits.LimitExceeded as exc:
        _cel_compile(source)  # not CEL: the library's own message says where (it is safe at this size)
        raise ExpressionError(f"CEL expression {_short(source)} refused: Stepline cannot check its shape "
                              f"({exc})") from None  # fmt: skip
    return Expression(source, _cel_compile(source), shape)


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
