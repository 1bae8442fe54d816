from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepline.core.durations import DurationError, format_duration, parse_duration, to_utc

td = datetime.timedelta


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", td(seconds=30)),
        ("1h30m", td(hours=1, minutes=30)),
        ("1d", td(days=1)),
        ("2w", td(weeks=2)),
        ("1.5h", td(hours=1, minutes=30)),
        ("500ms", td(milliseconds=500)),
        ("1m500ms", td(minutes=1, milliseconds=500)),
        ("1w2d3h4m5s6ms", td(weeks=1, days=2, hours=3, minutes=4, seconds=5, milliseconds=6)),
        (".5s", td(milliseconds=500)),
        ("0.25ms", td(microseconds=250)),
        ("0s", td(0)),
        ("0", td(0)),
        ("  45s  ", td(seconds=45)),
        ("1h1h", td(hours=2)),
    ],
)
def test_parse_duration_strings(text: str, expected: datetime.timedelta) -> None:
    assert parse_duration(text) == expected


def test_parse_duration_numbers_are_seconds() -> None:
    assert parse_duration(90) == td(minutes=1, seconds=30)
    assert parse_duration(0) == td(0)
    assert parse_duration(1.5) == td(seconds=1, milliseconds=500)
    assert parse_duration(0.1) == td(milliseconds=100)


def test_parse_duration_timedelta_passes_through() -> None:
    value = td(hours=3, microseconds=7)
    assert parse_duration(value) is value


@pytest.mark.parametrize("text", ["5 minutes", "30", "1x", "1h 30m", "h", "1.2.3s", "1H", "1s-2s", "abc"])
def test_parse_duration_rejects_malformed_strings(text: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    message = str(info.value)
    assert repr(text) in message
    assert "expected a number followed by a unit (ms, s, m, h, d, w)" in message


def test_parse_duration_error_message_exact() -> None:
    with pytest.raises(DurationError) as info:
        parse_duration("5 minutes")
    assert str(info.value) == (
        "invalid duration '5 minutes': expected a number followed by a unit (ms, s, m, h, d, w), like '30s' or '1h30m'"
    )


@pytest.mark.parametrize("text", ["", "   "])
def test_parse_duration_rejects_empty(text: str) -> None:
    with pytest.raises(DurationError, match="empty"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["-5s", -1, -0.5, td(seconds=-1)])
def test_parse_duration_rejects_negative(value: Any) -> None:
    with pytest.raises(DurationError, match="must not be negative") as info:
        parse_duration(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_parse_duration_rejects_non_finite(value: float) -> None:
    with pytest.raises(DurationError, match="finite"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_rejects_bool(value: bool) -> None:
    with pytest.raises(DurationError, match="bool") as info:
        parse_duration(value)
    assert repr(value) in str(info.value)


def test_parse_duration_rejects_other_types() -> None:
    bad: Any = [1]
    with pytest.raises(DurationError, match="not list"):
        parse_duration(bad)


@pytest.mark.parametrize("value", ["99999999999w", 10**15, 1e18])
def test_parse_duration_rejects_too_large(value: Any) -> None:
    with pytest.raises(DurationError, match="too large"):
        parse_duration(value)


def test_duration_error_is_value_error() -> None:
    assert issubclass(DurationError, ValueError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (td(hours=1, minutes=30), "1h30m"),
        (td(seconds=45), "45s"),
        (td(milliseconds=250), "250ms"),
        (td(0), "0s"),
        (td(days=9), "1w2d"),
        (td(days=1, seconds=1), "1d1s"),
        (td(seconds=1, milliseconds=500), "1.5s"),
        (td(microseconds=1500), "1.5ms"),
        (td(microseconds=1), "0.001ms"),
        (td(minutes=2, microseconds=10), "2m0.01ms"),
        (td(minutes=2, seconds=3, microseconds=10), "2m3.00001s"),
    ],
)
def test_format_duration(value: datetime.timedelta, expected: str) -> None:
    assert format_duration(value) == expected


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(DurationError, match="must not be negative"):
        format_duration(td(seconds=-1))


@given(st.timedeltas(min_value=td(0)))
def test_format_parse_round_trip(value: datetime.timedelta) -> None:
    text = format_duration(value)
    assert parse_duration(text) == value


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=10_000), st.sampled_from(["ms", "s", "m", "h", "d", "w"])),
        min_size=1,
        max_size=6,
    )
)
def test_parse_sum_of_parts(parts: list[tuple[int, str]]) -> None:
    sizes = {
        "ms": td(milliseconds=1),
        "s": td(seconds=1),
        "m": td(minutes=1),
        "h": td(hours=1),
        "d": td(days=1),
        "w": td(weeks=1),
    }
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == sum((sizes[unit] * n for n, unit in parts), td(0))


UTC = datetime.UTC


def test_to_utc_converts_aware_datetimes() -> None:
    plus_five = datetime.timezone(td(hours=5))
    value = datetime.datetime(2026, 1, 1, 5, 30, tzinfo=plus_five)
    result = to_utc(value)
    assert result == datetime.datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    assert result.utcoffset() == td(0)
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-04T05:06:07Z", datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
        ("2026-03-04T05:06:07.123Z", datetime.datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)),
        ("2026-03-04T07:06:07+02:00", datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
        ("2026-03-03T21:06:07-08:00", datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
    ],
)
def test_to_utc_parses_iso_strings(text: str, expected: datetime.datetime) -> None:
    result = to_utc(text)
    assert result == expected
    assert result.tzinfo is UTC


def test_to_utc_rejects_naive_datetime() -> None:
    with pytest.raises(DurationError, match="timezone-aware datetimes are required") as info:
        to_utc(datetime.datetime(2026, 1, 1, 12, 0))
    assert "2026-01-01T12:00:00" in str(info.value)


def test_to_utc_rejects_string_without_offset() -> None:
    with pytest.raises(DurationError, match="timezone-aware") as info:
        to_utc("2026-01-01T12:00:00")
    assert "'2026-01-01T12:00:00'" in str(info.value)


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01T00:00:00Z"])
def test_to_utc_rejects_garbage(text: str) -> None:
    with pytest.raises(DurationError, match="ISO-8601") as info:
        to_utc(text)
    assert repr(text) in str(info.value)
