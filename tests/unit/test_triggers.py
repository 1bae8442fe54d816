from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from stepline.core.expressions import ExpressionError
from stepline.core.triggers import CronTrigger, EventTrigger, Trigger, event_name_matches


def make_event(name: str = "app/order.created", **data: Any) -> dict[str, Any]:
    return {"name": name, "id": "01HX", "ts": 1_700_000_000_000, "v": "1", "user": {}, "data": data}


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("app/user.created", "app/user.created", True),
        ("app/user.created", "app/user.deleted", False),
        ("app/user.created", "app/user.created.v2", False),
        ("app/user.created", "App/user.created", False),
        ("app/*", "app/user.created", True),
        ("app/*", "app/a/b", True),
        ("app/*", "app/", True),
        ("app/*", "app", False),
        ("app/*", "other/app/x", False),
        ("*", "anything/at.all", True),
        ("*", "", True),
        ("*.created", "app/user.created", True),
        ("*.created", "app/user.created.not", False),
        ("app/*.created", "app/user.created", True),
        ("app/*.created", "app/user.deleted", False),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "acb", False),
        # Regex metacharacters in patterns are literal.
        ("app/user.created", "app/userXcreated", False),
        ("app/(x)+*", "app/(x)+y", True),
        ("app/(x)+*", "app/xx", False),
        ("app/*", "app/line\nbreak", True),
    ],
)
def test_event_name_matches(pattern: str, name: str, expected: bool) -> None:
    assert event_name_matches(pattern, name) is expected


def test_event_trigger_matches_name_only() -> None:
    trigger = EventTrigger("app/order.created")
    assert trigger.matches(make_event())
    assert not trigger.matches(make_event("app/order.paid"))


def test_event_trigger_wildcard() -> None:
    trigger = EventTrigger("app/order.*")
    assert trigger.matches(make_event("app/order.created"))
    assert trigger.matches(make_event("app/order.paid"))
    assert not trigger.matches(make_event("app/user.created"))


def test_event_trigger_expression_filters() -> None:
    trigger = EventTrigger("app/order.created", expression="event.data.amount > 100")
    assert trigger.matches(make_event(amount=150))
    assert trigger.matches(make_event(amount=100.5))
    assert not trigger.matches(make_event(amount=100))
    assert not trigger.matches(make_event(amount=1.0))


def test_event_trigger_expression_missing_field_does_not_match() -> None:
    trigger = EventTrigger("app/order.created", expression="event.data.amount > 100")
    assert not trigger.matches(make_event())
    assert not trigger.matches(make_event(amount="lots"))


def test_event_trigger_checks_name_before_expression() -> None:
    trigger = EventTrigger("app/order.created", expression="event.data.amount > 100")
    assert not trigger.matches(make_event("app/order.paid", amount=150))


def test_event_trigger_int_float_equality() -> None:
    trigger = EventTrigger("app/*", expression="event.data.n == 1")
    assert trigger.matches(make_event(n=1))
    assert trigger.matches(make_event(n=1.0))
    assert not trigger.matches(make_event(n=1.5))


@pytest.mark.parametrize("event", [{}, {"name": None}, {"name": 5}, {"data": {}}])
def test_event_trigger_rejects_events_without_a_string_name(event: dict[str, Any]) -> None:
    assert not EventTrigger("*").matches(event)


@pytest.mark.parametrize("name", ["", "   "])
def test_event_trigger_requires_an_event_name(name: str) -> None:
    with pytest.raises(ValueError, match="non-empty event name"):
        EventTrigger(name)


def test_event_trigger_invalid_expression_fails_at_construction() -> None:
    with pytest.raises(ExpressionError, match=r"'event\.data\.amount >'"):
        EventTrigger("app/order.created", expression="event.data.amount >")
    with pytest.raises(ExpressionError, match="empty"):
        EventTrigger("app/order.created", expression="")


def test_event_trigger_is_a_frozen_value() -> None:
    trigger = EventTrigger("app/a", expression="event.data.x == 1")
    assert trigger == EventTrigger("app/a", expression="event.data.x == 1")
    assert hash(trigger) == hash(EventTrigger("app/a", expression="event.data.x == 1"))
    assert trigger != EventTrigger("app/a")
    assert repr(trigger) == "EventTrigger(event='app/a', expression='event.data.x == 1')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        trigger.event = "app/b"  # type: ignore[misc]
    replaced = dataclasses.replace(trigger, expression="event.data.x == 2")
    assert replaced.matches(make_event("app/a", x=2))
    assert not replaced.matches(make_event("app/a", x=1))


def test_cron_trigger_holds_its_schedule() -> None:
    trigger: Trigger = CronTrigger("*/5 * * * *")
    assert isinstance(trigger, CronTrigger)
    assert trigger.cron == "*/5 * * * *"
    assert trigger == CronTrigger("*/5 * * * *")


@pytest.mark.parametrize("cron", ["", "  "])
def test_cron_trigger_requires_a_schedule(cron: str) -> None:
    with pytest.raises(ValueError, match="non-empty cron"):
        CronTrigger(cron)
