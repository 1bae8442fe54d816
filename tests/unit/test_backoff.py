from __future__ import annotations

import dataclasses
from datetime import timedelta as td

import pytest

from stepline.core.backoff import EXPONENTIAL_STEPS, INNGEST_SCHEDULE, Backoff


def test_inngest_schedule_values() -> None:
    assert INNGEST_SCHEDULE == (
        td(seconds=15),
        td(seconds=30),
        td(minutes=1),
        td(minutes=2),
        td(minutes=5),
        td(minutes=10),
        td(minutes=20),
        td(minutes=40),
        td(hours=1),
        td(hours=2),
    )


def test_default_backoff() -> None:
    backoff = Backoff()
    assert backoff.schedule == INNGEST_SCHEDULE
    assert backoff.jitter == td(seconds=30)


def test_delay_without_jitter_follows_schedule() -> None:
    backoff = Backoff()
    assert [backoff.delay(i, rand=lambda: 0.0) for i in range(10)] == list(INNGEST_SCHEDULE)


def test_delay_past_end_uses_last_value() -> None:
    backoff = Backoff()
    assert backoff.delay(10, rand=lambda: 0.0) == td(hours=2)
    assert backoff.delay(1000, rand=lambda: 0.0) == td(hours=2)


def test_delay_adds_scaled_jitter() -> None:
    backoff = Backoff()
    assert backoff.delay(0, rand=lambda: 0.5) == td(seconds=30)
    assert backoff.delay(0, rand=lambda: 1.0) == td(seconds=45)
    assert backoff.delay(2, rand=lambda: 0.1) == td(minutes=1, seconds=3)


def test_delay_with_default_rand_stays_in_range() -> None:
    backoff = Backoff()
    for _ in range(100):
        value = backoff.delay(1)
        assert td(seconds=30) <= value <= td(seconds=60)


def test_base_delay() -> None:
    assert Backoff().base_delay(3) == td(minutes=2)


@pytest.mark.parametrize("attempt", [-1, True])
def test_delay_rejects_bad_attempt(attempt: int) -> None:
    with pytest.raises(ValueError, match="invalid attempt"):
        Backoff().delay(attempt, rand=lambda: 0.0)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_delay_rejects_out_of_range_rand(value: float) -> None:
    with pytest.raises(ValueError, match="rand"):
        Backoff().delay(0, rand=lambda: value)


def test_backoff_is_frozen_and_schedule_is_tuple() -> None:
    backoff = Backoff(schedule=[td(seconds=1), td(seconds=2)], jitter=td(0))  # type: ignore[arg-type]
    assert backoff.schedule == (td(seconds=1), td(seconds=2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.jitter = td(seconds=1)  # type: ignore[misc]


def test_validation() -> None:
    with pytest.raises(ValueError, match="negative"):
        Backoff(schedule=(td(seconds=1), td(seconds=-1)))
    with pytest.raises(ValueError, match="negative"):
        Backoff(jitter=td(seconds=-1))
    with pytest.raises(ValueError, match="at least one"):
        Backoff(schedule=())


def test_exponential_schedule() -> None:
    backoff = Backoff.exponential(td(milliseconds=100), max_delay=td(seconds=1), jitter=td(0))
    assert len(backoff.schedule) == EXPONENTIAL_STEPS == 20
    assert backoff.schedule[:6] == (
        td(milliseconds=100),
        td(milliseconds=200),
        td(milliseconds=400),
        td(milliseconds=800),
        td(seconds=1),
        td(seconds=1),
    )
    assert backoff.schedule[-1] == td(seconds=1)
    assert backoff.jitter == td(0)
    assert backoff.delay(50, rand=lambda: 0.7) == td(seconds=1)


def test_exponential_custom_factor_and_jitter() -> None:
    backoff = Backoff.exponential(td(seconds=1), 3.0, max_delay=td(hours=1), jitter=td(seconds=2))
    assert backoff.schedule[:4] == (td(seconds=1), td(seconds=3), td(seconds=9), td(seconds=27))
    assert backoff.delay(1, rand=lambda: 0.5) == td(seconds=4)


def test_exponential_equals_explicit_schedule() -> None:
    made = Backoff.exponential(td(seconds=1), 1.0, max_delay=td(seconds=5), jitter=td(seconds=1))
    assert made == Backoff(schedule=(td(seconds=1),) * 20, jitter=td(seconds=1))


def test_exponential_huge_factor_does_not_overflow() -> None:
    backoff = Backoff.exponential(td(days=1), 1e300, max_delay=td(days=30), jitter=td(0))
    assert backoff.schedule[:3] == (td(days=1), td(days=30), td(days=30))


@pytest.mark.parametrize(
    ("base", "factor", "max_delay", "jitter", "match"),
    [
        (td(seconds=-1), 2.0, td(seconds=1), td(0), "base"),
        (td(seconds=1), -2.0, td(seconds=10), td(0), "factor"),
        (td(seconds=1), 0.5, td(seconds=10), td(0), "factor"),
        (td(seconds=1), float("nan"), td(seconds=10), td(0), "factor"),
        (td(seconds=1), 2.0, td(seconds=-1), td(0), "max_delay"),
        (td(seconds=5), 2.0, td(seconds=1), td(0), "max_delay"),
        (td(seconds=1), 2.0, td(seconds=10), td(seconds=-1), "jitter"),
    ],
)
def test_exponential_validation(base: td, factor: float, max_delay: td, jitter: td, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Backoff.exponential(base, factor, max_delay=max_delay, jitter=jitter)
