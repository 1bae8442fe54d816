from __future__ import annotations

from typing import Any

import pytest

from stepline.core.errors import SteplineError
from stepline.core.expressions import (
    Bindings,
    Expression,
    ExpressionError,
    compile_expression,
    match_to_expression,
)


def make_event(**data: Any) -> dict[str, Any]:
    return {
        "name": "app/order.created",
        "id": "01HX0000000000000000000000",
        "ts": 1_700_000_000_000,
        "v": "2024-01-01.1",
        "user": {"id": "u1"},
        "data": data,
    }


ORDER = make_event(
    amount=150,
    price=9.5,
    user={"id": "u1", "email": "a@example.com"},
    tags=["x", "y"],
    user_id="u1",
    name="hello world",
    nothing=None,
    items=[{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("event.data.amount > 100", True),
        ("event.data.amount > 200", False),
        ("event.data.amount > 100.5", True),
        ("event.data.price > 9", True),
        ("event.data.user.id == 'u1'", True),
        ("event.data.user.id == 'u2'", False),
        ("event.data.tags.exists(t, t == 'x')", True),
        ("event.data.tags.exists(t, t == 'z')", False),
        ("event.data.items.all(i, i.qty > 0)", True),
        ("event.data.items[1].sku == 'b'", True),
        ("has(event.data.amount)", True),
        ("has(event.data.x)", False),
        ("event.data.name.startsWith('hello')", True),
        ("event.data.name.endsWith('hello')", False),
        ("event.data.name.contains('o w')", True),
        ("size(event.data.tags) == 2", True),
        ("event.data.tags.size() == 2", True),
        ("event.data.nothing == null", True),
        ("event.data.user.id in ['u1', 'u2']", True),
        ("event.name.matches('^app/order\\\\.')", True),
        ("event.user.id == event.data.user_id", True),
    ],
)
def test_evaluates_typical_filters(source: str, expected: bool) -> None:
    expression = compile_expression(source)
    assert expression.evaluate({"event": ORDER}) is expected
    assert expression.matches({"event": ORDER}) is expected


def test_async_binding_compares_two_events() -> None:
    expression = compile_expression("async.data.user_id == event.data.user_id")
    assert expression.matches({"event": ORDER, "async": make_event(user_id="u1")})
    assert not expression.matches({"event": ORDER, "async": make_event(user_id="u2")})


@pytest.mark.parametrize("value", [1, 1.0])
@pytest.mark.parametrize(
    "source",
    ["event.data.n == 1", "event.data.n == 1.0", "event.data.n in [1, 2]", "event.data.n + 1 == 2"],
)
def test_json_numbers_compare_equal_whether_int_or_float(source: str, value: float) -> None:
    assert compile_expression(source).matches({"event": make_event(n=value)})


def test_whole_floats_are_bound_as_ints_and_fractions_stay_floats() -> None:
    assert compile_expression("event.data.n").evaluate({"event": make_event(n=3.0)}) == 3
    assert type(compile_expression("event.data.n").evaluate({"event": make_event(n=3.0)})) is int
    assert compile_expression("event.data.n").evaluate({"event": make_event(n=2.5)}) == 2.5
    assert compile_expression("event.data.n == 2").matches({"event": make_event(n=2.5)}) is False
    assert compile_expression("event.data.n > 2").matches({"event": make_event(n=2.5)}) is True
    # Too large for int64: left as a double rather than becoming an out-of-range int.
    assert compile_expression("event.data.n > 1.0").matches({"event": make_event(n=1e300)})


def test_booleans_are_not_numbers() -> None:
    assert compile_expression("event.data.b == true").matches({"event": make_event(b=True)})
    assert not compile_expression("event.data.b == 1").matches({"event": make_event(b=True)})


def test_evaluate_returns_plain_python_values() -> None:
    bindings = {"event": ORDER}
    assert compile_expression("event.data.items").evaluate(bindings) == ORDER["data"]["items"]
    assert compile_expression("event.data").evaluate(bindings) == ORDER["data"]
    assert compile_expression("event.data.nothing").evaluate(bindings) is None
    assert compile_expression("event.ts").evaluate(bindings) == 1_700_000_000_000
    assert compile_expression("event.data.amount / 2").evaluate(bindings) == 75
    assert compile_expression("event.data.tags.map(t, t + '!')").evaluate(bindings) == ["x!", "y!"]
    assert compile_expression("optional.of(7)").evaluate(bindings) == 7
    assert compile_expression("optional.none()").evaluate(bindings) is None
    assert compile_expression("[optional.of({'k': 1})]").evaluate(bindings) == [{"k": 1}]


def test_evaluate_missing_field_raises_with_expression_and_key() -> None:
    expression = compile_expression("event.data.missing == 1")
    with pytest.raises(ExpressionError) as info:
        expression.evaluate({"event": ORDER})
    message = str(info.value)
    assert "event.data.missing == 1" in message
    assert "'missing'" in message


@pytest.mark.parametrize(
    "source",
    [
        "event.data.missing == 1",
        "event.data.nothing.x == 1",
        "event.data.name > 1",
        "event.data.amount / 0 == 1",
        "undefined_name == 1",
        "event.data.name.matches('[')",
    ],
)
def test_evaluation_errors_are_not_matches(source: str) -> None:
    expression = compile_expression(source)
    assert expression.matches({"event": ORDER}) is False
    with pytest.raises(ExpressionError, match="failed"):
        expression.evaluate({"event": ORDER})


@pytest.mark.parametrize("source", ["event.data.amount", "'true'", "1 == 1 ? 1 : 0", "[true]", "null"])
def test_matches_requires_exactly_boolean_true(source: str) -> None:
    assert compile_expression(source).matches({"event": ORDER}) is False


def test_or_short_circuits_over_missing_field() -> None:
    assert compile_expression("has(event.data.x) && event.data.x == 1").matches({"event": ORDER}) is False
    assert compile_expression("event.data.missing == 1 || event.data.amount > 100").matches({"event": ORDER})


@pytest.mark.parametrize("source", ["event.data.x ==", "event.data.amount > > 1", "(event.data.x", "1 +"])
def test_invalid_syntax_raises_with_expression_and_position(source: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(source)
    message = str(info.value)
    assert repr(source) in message
    assert "<input>:1:" in message


@pytest.mark.parametrize("source", ["", "   ", "\n"])
def test_empty_expression_is_rejected(source: str) -> None:
    with pytest.raises(ExpressionError, match="empty"):
        compile_expression(source)


def test_non_string_expression_is_rejected() -> None:
    with pytest.raises(ExpressionError, match="string"):
        compile_expression(42)  # type: ignore[arg-type]


def test_expression_error_is_a_value_error_and_a_stepline_error() -> None:
    assert issubclass(ExpressionError, ValueError)
    assert issubclass(ExpressionError, SteplineError)


def test_compile_is_cached_by_source() -> None:
    first = compile_expression("event.data.amount > 41")
    assert isinstance(first, Expression)
    assert first.source == "event.data.amount > 41"
    assert compile_expression("event.data.amount > 41") is first
    assert compile_expression("event.data.amount > 42") is not first


def test_prepared_bindings_give_the_same_results_and_are_a_snapshot() -> None:
    data: dict[str, Any] = {"n": 2.0, "tags": ["x"]}
    prepared = Bindings({"event": make_event(**data)})
    assert compile_expression("event.data.n == 2").matches(prepared)
    assert compile_expression("event.data.n + 1").evaluate(prepared) == 3
    assert compile_expression("'x' in event.data.tags").matches(prepared)
    assert not compile_expression("event.data.missing").matches(prepared)
    data["n"] = 5
    assert compile_expression("event.data.n == 2").matches(prepared)


def test_bindings_do_not_mutate_the_callers_data() -> None:
    event = make_event(n=1.0, nested={"m": [2.0]})
    compile_expression("event.data.n == 1").evaluate({"event": event})
    Bindings({"event": event})
    assert type(event["data"]["n"]) is float
    assert type(event["data"]["nested"]["m"][0]) is float


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("data.user_id", "event.data.user_id == async.data.user_id"),
        ("event.data.user_id", "event.data.user_id == async.data.user_id"),
        ("async.data.user_id", "event.data.user_id == async.data.user_id"),
        ("  data.order.id ", "event.data.order.id == async.data.order.id"),
        ("name", "event.name == async.name"),
        ("data.in", 'event.data["in"] == async.data["in"]'),
    ],
)
def test_match_shorthand(field: str, expected: str) -> None:
    assert match_to_expression(field) == expected


def test_match_shorthand_evaluates_against_both_events() -> None:
    expression = compile_expression(match_to_expression("data.user_id"))
    assert expression.matches({"event": make_event(user_id="u1"), "async": make_event(user_id="u1")})
    assert not expression.matches({"event": make_event(user_id="u1"), "async": make_event(user_id="u2")})
    assert not expression.matches({"event": make_event(user_id="u1"), "async": make_event()})


@pytest.mark.parametrize(
    "field",
    ["", "event.", "data.", ".data", "data..id", "data.user-id", "data[0]", "data.x == 1", "1data", "data.é"],
)
def test_match_shorthand_rejects_non_paths(field: str) -> None:
    with pytest.raises(ExpressionError, match="invalid match field"):
        match_to_expression(field)
