"""CEL expressions cannot crash, freeze or exhaust the process: static limits, panics, and the evaluation budget.

The expressions below crashed or froze a Stepline server before the limits (issue: hardening): a 15,000-term
sum segfaults the CEL library when evaluated, and nested comprehensions over a list of a few hundred elements
held the event loop for seconds per event.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from stepline.core import cel_limits, cel_sandbox
from stepline.core.expressions import ExpressionError, compile_expression

CRASHING_SUM = " + ".join(["1"] * 15_000) + " > 0"
NESTED_LOOPS = "event.data.l.map(x, event.data.l.filter(y, y > x).size()).size() > 0"


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        (CRASHING_SUM, "characters long; the limit is 16,384"),
        (" + ".join(["1"] * 3000) + " > 0", "more than 1000 operations"),
        (" + ".join(["1"] * 70) + " > 0", "more than 64 levels deep"),
        (" || ".join(f"event.data.a == {i}" for i in range(70)), "use 'in [...]'"),
        ("(" * 70 + "1" + ")" * 70 + " == 1", "nests brackets more than 64 deep"),
        ("-" * 70 + "1 == 1", "more than 64 levels deep"),
        (
            "event.data.l.map(a, event.data.l.map(b, event.data.l.filter(c, c > a + b).size()).size()).size() > 0",
            "nest more than 2 deep",
        ),
        ("true ? " * 70 + "1" + " : 2" * 70 + " == 1", "more than 64 levels deep"),
    ],
)
def test_over_the_limits_is_refused_when_compiled(source: str, refusal: str) -> None:
    with pytest.raises(ExpressionError, match="refused") as info:
        compile_expression(source)
    assert refusal in str(info.value)


@pytest.mark.parametrize(
    "source",
    [
        "event.data.amount > 100 && event.name == 'shop/order.paid'",
        "event.data.items.exists(i, i.sku == 'abc' && i.qty > 2)",
        "event.data['type'] in ['a', 'b', 'c'] ? 1 : 2",
        NESTED_LOOPS,
        " || ".join(f"event.data.a == {i}" for i in range(30)),
        "has(event.data.x) && size(event.data.x) > 0 && event.data.x.startsWith('ab')",
        "{'a': [1, 2.5, b'x', r'\\d', '''multi'line'''], 'b': -1}.a[0] == 1u || 0x10 > 1e3",
        "event.data.x // a comment\n  == async.data.x",
    ],
)
def test_ordinary_expressions_pass(source: str) -> None:
    compile_expression(source)


def test_syntax_errors_keep_the_libraries_message() -> None:
    with pytest.raises(ExpressionError, match=r"invalid CEL expression .*Syntax error"):
        compile_expression("event.data.x ==")


def test_shape_measures_depth_nodes_and_loops() -> None:
    shape = cel_limits.measure(NESTED_LOOPS)
    assert shape.loops == 2 and shape.has_loops
    plain = cel_limits.measure("event.data.a + event.data.b > 3")
    assert (plain.loops, plain.depth) == (0, 5)


def test_the_crashing_sum_would_crash_the_library_itself() -> None:
    """Why the limits exist: the same expression, given to the library directly, kills its process."""
    code = textwrap.dedent(f"""
        import cel
        cel.compile({CRASHING_SUM!r}).execute({{}})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode != 0


def test_a_panic_in_the_library_is_an_expression_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyo3 turns a Rust panic into ``PanicException``, a BaseException: it must not escape as one."""
    import cel

    class PanicException(BaseException):  # the name is what pyo3 gives it
        pass

    def panicking_compile(source: str) -> object:
        raise PanicException("index out of bounds")

    monkeypatch.setattr(cel, "compile", panicking_compile)
    with pytest.raises(ExpressionError, match="index out of bounds"):
        compile_expression("event.data.panics == 'for this test'")


def test_comprehensions_run_in_the_sandbox_on_a_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    cel_sandbox.shutdown()  # nothing held back from other tests
    monkeypatch.setenv("STEPLINE_CEL_BUDGET_MS", "200")
    expr = compile_expression(NESTED_LOOPS)
    assert expr.isolated
    assert expr.check({"event": {"data": {"l": list(range(20))}}}) is True  # cheap input: evaluated normally
    started = time.monotonic()
    with pytest.raises(ExpressionError, match="longer than its budget of 200 ms"):
        expr.check({"event": {"data": {"l": list(range(5000))}}})  # 25 million steps
    assert time.monotonic() - started < 2.0
    # Held back on inputs as large for a while (a flood of such events costs one budget), small ones still go.
    started = time.monotonic()
    with pytest.raises(ExpressionError, match="held back"):
        expr.check({"event": {"data": {"l": list(range(4000))}}})
    assert time.monotonic() - started < 0.1
    assert expr.check({"event": {"data": {"l": list(range(20))}}}) is True


def test_a_crash_inside_the_sandbox_is_an_error_not_a_dead_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever happens to the sandbox mid-evaluation (here its process is killed, as a crash in the library would
    end it), the caller gets an error at once and the next evaluation gets a fresh sandbox."""
    monkeypatch.setenv("STEPLINE_CEL_BUDGET_MS", "10000")
    expr = compile_expression("event.data.l.map(x, event.data.l.filter(y, y > x).size()).size() > 1")
    assert expr.check({"event": {"data": {"l": [1, 2, 3]}}})
    child = cel_sandbox._SANDBOX._child
    assert child is not None
    killer = threading.Timer(0.3, child.proc.kill)
    killer.start()
    started = time.monotonic()
    with pytest.raises(ExpressionError, match="crashed the expression sandbox"):
        expr.check({"event": {"data": {"l": list(range(20_000))}}})
    assert time.monotonic() - started < 5
    assert expr.check({"event": {"data": {"l": [1, 2, 3]}}})


def test_missing_fields_are_marked_as_such() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("event.data.amount > 1").evaluate({"event": {"data": {}}})
    assert info.value.missing_key
    with pytest.raises(ExpressionError) as other:
        compile_expression("event.data.amount > 1").evaluate({"event": {"data": {"amount": "many"}}})
    assert not other.value.missing_key
