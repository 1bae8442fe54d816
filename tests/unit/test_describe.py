"""Function settings in words (core/describe.py): what the dashboard's functions pages say."""

from __future__ import annotations

import datetime as dt

import pytest

from stepline.core.describe import cron_text, duration_words, flow_words, next_fire_times
from stepline.core.flow import normalize_flow

NOON_MINUS = int(dt.datetime(2026, 12, 7, 11, 20, tzinfo=dt.UTC).timestamp() * 1000)  # Monday 11:20 UTC


def words(**options: object) -> list[tuple[str, str]]:
    return flow_words({"flow": normalize_flow("f", options)})


def test_concurrency_per_key_and_scope() -> None:
    assert words(concurrency={"limit": 1, "key": "event.data.customer"}) == [
        ("Concurrency", "1 at a time per event.data.customer")
    ]
    assert words(concurrency=[{"limit": 5}, {"limit": 2, "key": "event.data.t", "scope": "account"}]) == [
        ("Concurrency", "5 at a time"),
        ("Concurrency", "2 at a time per event.data.t across the account"),
    ]


def test_throttle_rate_limit_debounce_batch_singleton_priority() -> None:
    assert words(throttle={"limit": 2, "period": "1s"}) == [("Throttle", "2 runs per second; the rest wait their turn")]
    assert words(throttle={"limit": 1, "period": "5s", "burst": 3, "key": "event.data.u"}) == [
        ("Throttle", "1 run per 5 seconds per event.data.u, bursts of 3 more; the rest wait their turn")
    ]
    assert words(rate_limit={"limit": 10, "period": "1h"}) == [
        ("Rate limit", "at most 10 runs per hour; more events start no run")
    ]
    assert words(debounce={"period": "5s", "timeout": "1m", "key": "event.data.id"}) == [
        ("Debounce", "starts 5 seconds after the last event per event.data.id, at most 1 minute after the first")
    ]
    assert words(batch={"max_size": 100, "timeout": "5s"}) == [("Batch", "up to 100 events per run or after 5 seconds")]
    assert words(singleton={"mode": "cancel", "key": "event.data.u"}) == [
        ("Singleton", "1 run at a time per event.data.u; a new event cancels the running one")
    ]
    assert words(priority={"run": "event.data.vip ? 120 : 0"}) == [
        ("Priority", "runs first by event.data.vip ? 120 : 0")
    ]
    assert flow_words({"triggers": []}) == []


def test_duration_words_picks_the_largest_exact_unit() -> None:
    assert [duration_words(ms) for ms in (1000, 90_000, 120_000, 7_200_000, 86_400_000, 1500)] == [
        "1 second",
        "90 seconds",
        "2 minutes",
        "2 hours",
        "1 day",
        "1500 milliseconds",
    ]


@pytest.mark.parametrize(("cron", "text"), [
    ("0 * * * *", "every hour at :00 UTC, next 12:00, 13:00, 14:00"),
    ("*/15 * * * *", "every 15 minutes UTC, next 11:30, 11:45, 12:00"),
    ("30 9 * * *", "every day at 09:30 UTC, next 2026-12-08 09:30, 2026-12-09 09:30, 2026-12-10 09:30"),
    ("0 9 * * MON-FRI", "every weekday at 09:00 UTC, next 2026-12-08 09:00, 2026-12-09 09:00, 2026-12-10 09:00"),
    ("0 8 1 * *", "on day 1 of every month at 08:00 UTC, next 2027-01-01 08:00, 2027-02-01 08:00, "
                  "2027-03-01 08:00"),
    ("TZ=Europe/Paris 0 13 * * SUN", "every Sunday at 13:00 Europe/Paris, next 2026-12-13 13:00, "
                                    "2026-12-20 13:00, 2026-12-27 13:00"),
    ("5 */2 * * *", "every 2 hours at :05 UTC, next 12:05, 14:05, 16:05"),
    ("0 0 29 2 1", "cron 0 0 29 2 1 UTC, next 2027-02-01 00:00, 2027-02-08 00:00, 2027-02-15 00:00"),
])  # fmt: skip
def test_cron_in_words_with_next_times(cron: str, text: str) -> None:
    assert cron_text(cron, NOON_MINUS) == text


def test_next_fire_times_are_the_schedules() -> None:
    assert next_fire_times("0 * * * *", NOON_MINUS, 2) == [NOON_MINUS + 40 * 60_000, NOON_MINUS + 100 * 60_000]
    assert next_fire_times("not a cron", NOON_MINUS) == []
