from __future__ import annotations

import base64
import hashlib
import threading
from typing import Any

import pytest
import ulid

from stepline.core import ids
from stepline.core.ids import StepIdCounter, hash_step_id, new_ulid, seeded_event_ids, ulid_from

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_new_ulid_is_valid_and_unique() -> None:
    ids = [new_ulid() for _ in range(200)]
    assert len(set(ids)) == 200
    for value in ids:
        assert len(value) == 26
        assert set(value) <= CROCKFORD
        assert str(ulid.ULID.from_str(value)) == value


def test_new_ulid_carries_the_current_time_and_sorts_by_it() -> None:
    import time

    before = int(time.time() * 1000)
    value = new_ulid()
    after = int(time.time() * 1000)
    assert before - 1 <= ulid.ULID.from_str(value).milliseconds <= after + 1
    assert value[:10] > ulid_from(before - 1, bytes(10))[:10]  # the timestamp part orders ids by creation time
    # every character position takes every value it can (the encoding uses all 128 bits)
    many = [_fresh_ulid() for _ in range(3000)]
    assert {v[-1] for v in many} == CROCKFORD
    assert {v[11] for v in many} == CROCKFORD


def _fresh_ulid() -> str:
    """A ULID with fresh randomness (the first of its millisecond: not the previous one plus one)."""
    ids._last_ulid = 0
    return new_ulid()


def test_new_ulids_made_in_order_sort_in_order_even_within_a_millisecond() -> None:
    """Runs, steps and events made in one transaction share a millisecond; listing and claiming by id must keep the
    order they were made in (a batch's full run before the one still filling)."""
    many = [new_ulid() for _ in range(5000)]
    assert many == sorted(many) and len(set(many)) == len(many)
    in_threads: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_ulid() for _ in range(2000))

    workers = [threading.Thread(target=make, args=(out,)) for out in in_threads]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for out in in_threads:
        assert out == sorted(out)
    assert len({v for out in in_threads for v in out}) == 8000


def test_ulid_from_encodes_timestamp_and_entropy() -> None:
    entropy = bytes(range(1, 11))
    value = ulid_from(1_700_000_000_000, entropy)
    parsed = ulid.ULID.from_str(value)
    assert parsed.milliseconds == 1_700_000_000_000
    assert bytes(parsed)[6:] == entropy
    assert bytes(parsed)[:6] == (1_700_000_000_000).to_bytes(6, "big")


def test_ulid_from_known_values() -> None:
    assert ulid_from(0, bytes(10)) == "0" * 26
    assert ulid_from(2**48 - 1, b"\xff" * 10) == "7" + "Z" * 25


def test_ulid_from_is_sortable_by_time() -> None:
    assert ulid_from(1, b"\xff" * 10) < ulid_from(2, bytes(10))


@pytest.mark.parametrize(("ms", "entropy"), [(-1, bytes(10)), (2**48, bytes(10)), (0, bytes(9)), (0, bytes(11))])
def test_ulid_from_validates(ms: int, entropy: bytes) -> None:
    with pytest.raises(ValueError, match="invalid ULID"):
        ulid_from(ms, entropy)


def _seed(ms: int, entropy: bytes) -> str:
    return f"{ms},{base64.b64encode(entropy).decode()}"


def test_seeded_event_ids_increment_bytes_6_to_10() -> None:
    entropy = bytes([10, 11, 12, 13, 14, 15, 0, 0, 0, 5])
    ids = seeded_event_ids(_seed(1_700_000_000_123, entropy), 3)
    assert ids == [
        ulid_from(1_700_000_000_123, bytes([10, 11, 12, 13, 14, 15, 0, 0, 0, 6])),
        ulid_from(1_700_000_000_123, bytes([10, 11, 12, 13, 14, 15, 0, 0, 0, 7])),
        ulid_from(1_700_000_000_123, bytes([10, 11, 12, 13, 14, 15, 0, 0, 0, 8])),
    ]
    for value in ids:
        assert ulid.ULID.from_str(value).milliseconds == 1_700_000_000_123


def test_seeded_event_ids_carry_and_wrap() -> None:
    carry = bytes([1, 2, 3, 4, 5, 6, 0, 0, 0, 0xFF])
    assert seeded_event_ids(_seed(5, carry), 1) == [ulid_from(5, bytes([1, 2, 3, 4, 5, 6, 0, 0, 1, 0]))]
    wrap = bytes([1, 2, 3, 4, 5, 6, 0xFF, 0xFF, 0xFF, 0xFE])
    assert seeded_event_ids(_seed(5, wrap), 3) == [
        ulid_from(5, bytes([1, 2, 3, 4, 5, 6, 0xFF, 0xFF, 0xFF, 0xFF])),
        ulid_from(5, bytes([1, 2, 3, 4, 5, 6, 0, 0, 0, 0])),
        ulid_from(5, bytes([1, 2, 3, 4, 5, 6, 0, 0, 0, 1])),
    ]


def test_seeded_event_ids_are_deterministic_and_unique() -> None:
    seed = _seed(1_234, b"abcdefghij")
    first = seeded_event_ids(seed, 50)
    assert first == seeded_event_ids(seed, 50)
    assert len(set(first)) == 50
    assert seeded_event_ids(seed, 0) == []
    assert seeded_event_ids(seed, 2) == first[:2]


@pytest.mark.parametrize(
    "seed",
    [
        "",
        "12345",
        "abc," + base64.b64encode(bytes(10)).decode(),
        "-5," + base64.b64encode(bytes(10)).decode(),
        "12345,not base64!",
        "12345," + base64.b64encode(bytes(9)).decode(),
        "12345," + base64.b64encode(bytes(11)).decode(),
        f"{2**48}," + base64.b64encode(bytes(10)).decode(),
    ],
)
def test_seeded_event_ids_reject_malformed_seed(seed: str) -> None:
    with pytest.raises(ValueError, match="invalid event id seed") as info:
        seeded_event_ids(seed, 1)
    assert repr(seed) in str(info.value)


@pytest.mark.parametrize("count", [-1, True, 1.5])
def test_seeded_event_ids_reject_bad_count(count: Any) -> None:
    with pytest.raises(ValueError, match="invalid event count"):
        seeded_event_ids(_seed(1, bytes(10)), count)


def test_hash_step_id_known_value() -> None:
    assert hash_step_id("my-step-id") == "e7d8a2f140845095749d60246ff1110c9d01d76a"


def test_hash_step_id_uses_utf8() -> None:
    assert hash_step_id("größe") == hashlib.sha1("größe".encode()).hexdigest()
    assert hash_step_id("") == "da39a3ee5e6b4b0d3255bfef95601890afd80709"


def test_step_id_counter_sequence() -> None:
    counter = StepIdCounter()
    assert counter.next("x") == ("x", hash_step_id("x"))
    assert counter.next("x") == ("x:1", hash_step_id("x:1"))
    assert counter.next("y") == ("y", hash_step_id("y"))
    assert counter.next("x") == ("x:2", hash_step_id("x:2"))


def test_step_id_counter_is_per_instance() -> None:
    a = StepIdCounter()
    b = StepIdCounter()
    a.next("x")
    assert b.next("x") == ("x", hash_step_id("x"))


def test_step_id_counter_resolves_collisions() -> None:
    counter = StepIdCounter()
    ids = [counter.next(name)[0] for name in ["x:1", "x", "x", "x", "x:1", "x:2"]]
    assert ids == ["x:1", "x", "x:2", "x:3", "x:1:1", "x:2:1"]
    assert len(set(ids)) == len(ids)


def test_step_id_counter_is_thread_safe() -> None:
    counter = StepIdCounter()
    results: list[str] = []
    results_lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        local = [counter.next("step")[0] for _ in range(250)]
        with results_lock:
            results.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2000
    assert set(results) == {"step"} | {f"step:{n}" for n in range(1, 2000)}
