from __future__ import annotations

import datetime
import threading
import time

import pytest

from stepline.core.clock import Clock, FakeClock, SystemClock, from_ms, to_ms

UTC = datetime.UTC
td = datetime.timedelta


def test_to_ms_and_from_ms() -> None:
    dt = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    assert to_ms(dt) == 1_767_225_600_000
    assert from_ms(1_767_225_600_000) == dt
    assert from_ms(0) == datetime.datetime(1970, 1, 1, tzinfo=UTC)
    assert from_ms(1_500).tzinfo is UTC


def test_to_ms_truncates_microseconds_and_converts_offsets() -> None:
    dt = datetime.datetime(1970, 1, 1, 0, 0, 1, 999_999, tzinfo=UTC)
    assert to_ms(dt) == 1_999
    plus_one = datetime.datetime(1970, 1, 1, 1, 0, tzinfo=datetime.timezone(td(hours=1)))
    assert to_ms(plus_one) == 0
    assert to_ms(datetime.datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC)) == -1


def test_to_ms_rejects_naive() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_ms(datetime.datetime(2026, 1, 1))


def test_ms_round_trip() -> None:
    for ms in (0, 1, 999, 1_767_225_600_123, -5):
        assert to_ms(from_ms(ms)) == ms


def test_system_clock() -> None:
    clock: Clock = SystemClock()
    before = time.time()
    now = clock.now()
    ms = clock.now_ms()
    after = time.time()
    assert now.tzinfo is UTC
    assert before - 1 <= now.timestamp() <= after + 1
    assert int(before * 1000) - 1000 <= ms <= int(after * 1000) + 1000


def test_fake_clock_default_start() -> None:
    clock: Clock = FakeClock()
    assert clock.now() == datetime.datetime(2026, 1, 1, tzinfo=UTC)
    assert clock.now().tzinfo is UTC
    assert clock.now_ms() == 1_767_225_600_000


def test_fake_clock_custom_start_converted_to_utc() -> None:
    start = datetime.datetime(2026, 6, 1, 12, tzinfo=datetime.timezone(td(hours=2)))
    clock = FakeClock(start)
    assert clock.now() == datetime.datetime(2026, 6, 1, 10, tzinfo=UTC)
    assert clock.now().utcoffset() == td(0)


def test_fake_clock_rejects_naive_start() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime.datetime(2026, 1, 1))


def test_fake_clock_advance() -> None:
    clock = FakeClock()
    assert clock.advance(td(minutes=5)) == datetime.datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    clock.advance(1.5)
    clock.advance(2)
    assert clock.now() == datetime.datetime(2026, 1, 1, 0, 5, 3, 500_000, tzinfo=UTC)
    assert clock.now_ms() == 1_767_225_600_000 + 303_500
    clock.advance(0)
    assert clock.now_ms() == 1_767_225_600_000 + 303_500


@pytest.mark.parametrize("delta", [td(seconds=-1), -0.001, float("nan"), float("inf"), True])
def test_fake_clock_advance_rejects_bad_delta(delta: td | float) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="invalid clock advance"):
        clock.advance(delta)
    assert clock.now() == datetime.datetime(2026, 1, 1, tzinfo=UTC)


def test_fake_clock_set() -> None:
    clock = FakeClock()
    target = datetime.datetime(2026, 2, 1, tzinfo=UTC)
    clock.set(target)
    assert clock.now() == target
    clock.set(target)  # same time is allowed
    assert clock.now() == target


def test_fake_clock_set_backwards_raises() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="never moves backwards") as info:
        clock.set(datetime.datetime(2025, 12, 31, tzinfo=UTC))
    assert "2025-12-31T00:00:00+00:00" in str(info.value)
    assert clock.now() == datetime.datetime(2026, 1, 1, tzinfo=UTC)


def test_fake_clock_set_rejects_naive() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock().set(datetime.datetime(2027, 1, 1))


def test_fake_clock_concurrent_advance() -> None:
    clock = FakeClock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(500):
            clock.advance(td(milliseconds=1))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clock.now() == datetime.datetime(2026, 1, 1, tzinfo=UTC) + td(seconds=4)
