"""Seeded event ids (protocol section 2): ``x-inngest-event-id-seed: "<unix_ms>,<base64(10 bytes)>"``."""

from __future__ import annotations

import base64

import pytest
import ulid
from hypothesis import given
from hypothesis import strategies as st
from inngest._internal.client_lib import client as py_sdk_client

from stepline.core.ids import seeded_event_ids, ulid_from
from stepline.server.event_ids import EVENT_ID_SEED_HEADER, event_ids, parse_event_id_seed

millis = st.integers(min_value=1, max_value=2**48 - 1)
entropies = st.binary(min_size=10, max_size=10)
counts = st.integers(min_value=0, max_value=300)


def seed(ms: int, entropy: bytes) -> str:
    return f"{ms},{base64.b64encode(entropy).decode()}"


@given(millis, entropies, counts)
def test_the_same_seed_gives_the_same_ids(ms: int, entropy: bytes, count: int) -> None:
    assert event_ids(seed(ms, entropy), count) == event_ids(seed(ms, entropy), count)


@given(millis, entropies, counts)
def test_distinct_events_get_distinct_ids(ms: int, entropy: bytes, count: int) -> None:
    ids = event_ids(seed(ms, entropy), count)
    assert len(ids) == count
    assert len(set(ids)) == count


@given(millis, entropies, counts)
def test_event_i_adds_i_to_bytes_6_to_10(ms: int, entropy: bytes, count: int) -> None:
    ids = event_ids(seed(ms, entropy), count)
    counter = int.from_bytes(entropy[6:], "big")
    for i, value in enumerate(ids, start=1):
        raw = bytes(ulid.ULID.from_str(value))
        assert raw[:6] == ms.to_bytes(6, "big")
        assert raw[6:12] == entropy[:6]
        assert int.from_bytes(raw[12:], "big") == (counter + i) % 2**32
    assert ids == seeded_event_ids(seed(ms, entropy), count)  # the same scheme as stepline.core.ids


@given(millis, millis, entropies, entropies, st.integers(min_value=1, max_value=20))
def test_ids_sort_by_their_milliseconds(ms1: int, ms2: int, e1: bytes, e2: bytes, count: int) -> None:
    ids1, ids2 = event_ids(seed(ms1, e1), count), event_ids(seed(ms2, e2), count)
    if ms1 < ms2:
        assert max(ids1) < min(ids2)
    elif ms1 > ms2:
        assert min(ids1) > max(ids2)
    assert all(ulid.ULID.from_str(v).milliseconds == ms1 for v in ids1)


def test_the_counter_wraps_around_32_bits() -> None:
    entropy = bytes([9, 8, 7, 6, 5, 4]) + b"\xff\xff\xff\xfe"
    assert event_ids(seed(1000, entropy), 3) == [
        ulid_from(1000, bytes([9, 8, 7, 6, 5, 4]) + b"\xff\xff\xff\xff"),
        ulid_from(1000, bytes([9, 8, 7, 6, 5, 4]) + b"\x00\x00\x00\x00"),
        ulid_from(1000, bytes([9, 8, 7, 6, 5, 4]) + b"\x00\x00\x00\x01"),
    ]


def test_the_python_sdk_seed_is_accepted() -> None:
    header = py_sdk_client._seed()
    parsed = parse_event_id_seed(header)
    assert parsed is not None
    assert event_ids(header, 2) == event_ids(header, 2)
    assert EVENT_ID_SEED_HEADER == "x-inngest-event-id-seed"


def test_a_known_vector() -> None:
    # 1743130137367,eii2YKXRVTJPuA== is the example in the Go server's SeededIDFromString doc comment
    entropy = base64.b64decode("eii2YKXRVTJPuA==")
    first = event_ids("1743130137367,eii2YKXRVTJPuA==", 1)[0]
    assert first == ulid_from(1743130137367, entropy[:6] + (int.from_bytes(entropy[6:], "big") + 1).to_bytes(4, "big"))
    assert ulid.ULID.from_str(first).milliseconds == 1743130137367


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "1743130137367",
        "1743130137367,eii2YKXRVTJPuA==,x",
        "abc,eii2YKXRVTJPuA==",
        "0,eii2YKXRVTJPuA==",
        "-5,eii2YKXRVTJPuA==",
        f"{2**48},eii2YKXRVTJPuA==",
        "1743130137367,not base64!",
        "1743130137367,eii2YKXRVTJPuA",  # missing padding
        "1743130137367," + base64.b64encode(b"123456789").decode(),  # 9 bytes
        "1743130137367," + base64.b64encode(b"12345678901").decode(),  # 11 bytes
    ],
)
def test_an_invalid_seed_gives_fresh_ids(header: str | None) -> None:
    assert parse_event_id_seed(header) is None
    first, second = event_ids(header, 3), event_ids(header, 3)
    assert len(set(first + second)) == 6
    assert all(len(v) == 26 for v in first)


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        event_ids(None, -1)
