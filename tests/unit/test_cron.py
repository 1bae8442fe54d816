"""Cron schedules (core/cron.py): parsing with a TZ= prefix, fire times in unix ms, DST rules, clear errors."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from stepline import FakeClock
from stepline.core.clock import from_ms, sleep_until, to_ms
from stepline.core.cron import parse_cron
from stepline.core.function import FunctionSpec, build_function
from stepline.core.scheduler import SCHEDULED_TIMER, scheduled_batch, timer_event_id
from stepline.core.triggers import CronTrigger

PARIS = "Europe/Paris"


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return to_ms(dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC))


def iso(at: int) -> str:
    return from_ms(at).strftime("%Y-%m-%d %H:%M")


def fires(cron: str, start: int, count: int) -> list[str]:
    sched = parse_cron(cron)
    out = []
    for _ in range(count):
        start = sched.next_after(start)
        out.append(iso(start))
    return out


def test_next_times_in_utc() -> None:
    assert fires("*/15 * * * *", ms(2026, 1, 1, 0, 7), 2) == ["2026-01-01 00:15", "2026-01-01 00:30"]
    assert fires("0 9 * * 1-5", ms(2026, 1, 2, 10), 2) == ["2026-01-05 09:00", "2026-01-06 09:00"]  # Fri -> Mon
    assert fires("0 0 1 JAN *", ms(2026, 6, 1), 1) == ["2027-01-01 00:00"]
    assert fires("0 12 * * MON-FRI", ms(2026, 1, 3), 1) == ["2026-01-05 12:00"]


def test_next_after_is_strict_and_latest_at_or_before_is_inclusive() -> None:
    sched = parse_cron("0 * * * *")
    at = ms(2026, 1, 1, 9)
    assert sched.next_after(at) == ms(2026, 1, 1, 10)
    assert sched.next_after(at - 1) == at
    assert sched.latest_at_or_before(at) == at
    assert sched.latest_at_or_before(at - 1) == ms(2026, 1, 1, 8)
    assert sched.latest_at_or_before(at + 59 * 60_000 + 59_999) == at
    assert sched.count_between(ms(2026, 1, 1, 0), ms(2026, 1, 1, 5)) == 4  # 01..04, both ends excluded


def test_a_tz_prefix_schedules_in_that_zone() -> None:
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer, on weekdays only.
    assert fires(f"TZ={PARIS} 0 9 * * 1-5", ms(2026, 1, 2, 12), 2) == ["2026-01-05 08:00", "2026-01-06 08:00"]
    assert fires(f"TZ={PARIS} 0 9 * * 1-5", ms(2026, 7, 3, 12), 1) == ["2026-07-06 07:00"]
    assert fires("CRON_TZ=America/New_York 30 17 * * *", ms(2026, 1, 1), 1) == ["2026-01-01 22:30"]
    assert parse_cron("TZ=UTC 0 9 * * *").next_after(ms(2026, 1, 1)) == ms(2026, 1, 1, 9)


def test_dst_spring_forward_fires_a_skipped_time_once_when_the_clock_jumps() -> None:
    # 2026-03-29: Paris clocks jump from 02:00 to 03:00 (01:00 UTC). 02:30 does not exist that day.
    assert fires(f"TZ={PARIS} 30 2 * * *", ms(2026, 3, 28, 12), 3) == [
        "2026-03-29 01:00", "2026-03-30 00:30", "2026-03-31 00:30"]  # fmt: skip
    # Hourly: 02:00 does not exist; it fires at the jump (03:00 local), not twice.
    assert fires(f"TZ={PARIS} 0 * * * *", ms(2026, 3, 28, 23, 30), 4) == [
        "2026-03-29 00:00", "2026-03-29 01:00", "2026-03-29 02:00", "2026-03-29 03:00"]  # fmt: skip


def test_dst_fall_back_fires_a_repeated_time_once() -> None:
    # 2026-10-25: Paris clocks go back from 03:00 to 02:00 (01:00 UTC); 02:30 happens twice.
    assert fires(f"TZ={PARIS} 30 2 * * *", ms(2026, 10, 24, 12), 2) == ["2026-10-25 00:30", "2026-10-26 01:30"]
    every_30 = fires(f"TZ={PARIS} */30 * * * *", ms(2026, 10, 24, 23, 50), 4)
    assert every_30 == ["2026-10-25 00:00", "2026-10-25 00:30", "2026-10-25 02:00", "2026-10-25 02:30"]
    # During the second pass of the repeated hour, the latest fire time is the first pass's 02:30.
    assert iso(parse_cron(f"TZ={PARIS} */30 * * * *").latest_at_or_before(ms(2026, 10, 25, 1, 15))) == (
        "2026-10-25 00:30"
    )


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week) after the optional TZ=, got 4"),
        ("0 0 * * * *", "expected 5 fields"),
        ("61 * * * *", "minute field '61' is not valid (0-59)"),
        ("0 24 * * *", "hour field '24' is not valid (0-23)"),
        ("0 0 32 * *", "day-of-month field '32' is not valid (1-31)"),
        ("0 0 * 13 *", "month field '13' is not valid"),
        ("0 0 * * 8", "day-of-week field '8' is not valid"),
        ("*/0 * * * *", "minute field '*/0' is not valid"),
        ("0 0 L * *", "day-of-month field 'L': 'L' is not supported"),
        ("0 0 * * 1#2", "day-of-week field '1#2' has characters cron does not allow"),
        ("0 0 * * MONDAY", "day-of-week field 'MONDAY': 'MONDAY' is not supported"),
        ("@daily", "macros like '@daily' are not supported"),
        ("TZ=Mars/Olympus 0 9 * * *", "unknown time zone 'Mars/Olympus'"),
        ("TZ= 0 9 * * *", "TZ= needs an IANA time zone name"),
        ("0 0 30 2 *", "it never fires"),
        ("", "a cron expression must be a non-empty string"),
    ],
)
def test_bad_crons_name_the_field(cron: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cron(cron)
    assert message in str(info.value)


def test_bad_cron_fails_function_registration_naming_function_and_field() -> None:
    with pytest.raises(ValueError) as info:
        build_function(app_id="a", slug="nightly", handler=lambda ctx: None, trigger={"cron": "0 25 * * *"})
    assert str(info.value).startswith("function 'nightly': invalid trigger: invalid cron '0 25 * * *': hour field")
    with pytest.raises(ValueError, match="unknown time zone"):
        CronTrigger(cron="TZ=Nowhere/Land 0 9 * * *")


def test_timer_event_and_run_are_derived_from_function_and_scheduled_time() -> None:
    fn = build_function(app_id="a", slug="nightly", handler=lambda ctx: None, trigger=CronTrigger("0 9 * * *"))
    spec = FunctionSpec.from_record(fn.record())
    at = ms(2026, 1, 5, 9)
    one, two = scheduled_batch(spec, "0 9 * * *", at, at + 5), scheduled_batch(spec, "0 9 * * *", at, at + 900)
    [ev] = one.events
    data = {"cron": "0 9 * * *", "scheduledAt": "2026-01-05T09:00:00Z", "fireAt": "2026-01-05T09:00:00Z"}
    assert (ev.name, ev.id, ev.data, ev.ts) == (SCHEDULED_TIMER, "2026-01-05T09:00:00Z", data, at)
    assert ev.internal_id == two.events[0].internal_id  # deterministic: a retried fire stores nothing twice
    [run] = one.runs
    assert (run.function_id, run.event_id, run.idempotency_key) == ("a-nightly", ev.internal_id, "cron:" + ev.id)
    other = scheduled_batch(FunctionSpec.from_record(fn.record().__class__("a-other", "a", "other", "o", fn.config())),
                            "0 9 * * *", at, at)  # fmt: skip
    assert other.events[0].internal_id != ev.internal_id
    assert timer_event_id(at + 123) == "2026-01-05T09:00:00Z"


async def test_fake_clock_sleep_until_wakes_when_advanced() -> None:
    clock = FakeClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    target = clock.now_ms() + 60_000
    sleeper = asyncio.create_task(sleep_until(clock, target))
    await asyncio.sleep(0.01)
    clock.advance(30)
    await asyncio.sleep(0.01)
    assert not sleeper.done()
    clock.advance(30)
    await asyncio.wait_for(sleeper, 1)
    await asyncio.wait_for(sleep_until(clock, target - 1), 1)  # already past: returns at once


async def test_fake_clock_sleep_can_be_cancelled_and_is_forgotten() -> None:
    clock = FakeClock()
    sleeper = asyncio.create_task(clock.sleep_until(clock.now_ms() + 1000))
    await asyncio.sleep(0.01)
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert clock._sleepers == []
    clock.advance(5)


def test_a_jitter_delays_each_scheduled_run_deterministically_within_its_bounds() -> None:
    fn = build_function(app_id="a", slug="spread", handler=lambda ctx: None,
                        trigger=CronTrigger("0 * * * *", jitter="2m"))  # fmt: skip
    spec = FunctionSpec.from_record(fn.record())
    delays = []
    for hour in range(24):
        at = ms(2026, 1, 5, hour)
        batch = scheduled_batch(spec, "0 * * * *", at, at + 5)
        again = scheduled_batch(spec, "0 * * * *", at, at + 900)
        [run], [ev] = batch.runs, batch.events
        assert run.due_at == again.runs[0].due_at  # the same on every worker and every retry of the fire
        delays.append(run.due_at - at)
        assert ev.data["fireAt"] == timer_event_id(run.due_at) and ev.data["scheduledAt"] == timer_event_id(at)
    assert all(1_000 <= d <= 120_000 for d in delays) and len(set(delays)) > 12, delays
    for bad in ("10m", "500ms", "soon"):
        with pytest.raises(ValueError, match="jitter"):
            CronTrigger("0 * * * *", jitter=bad)
