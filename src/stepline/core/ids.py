"""Identifiers: ULIDs, Inngest's seeded event ids, and deterministic step ids."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
import time

import ulid

__all__ = [
    "StepIdCounter",
    "hash_step_id",
    "new_ulid",
    "seeded_event_ids",
    "ulid_from",
]

_ENTROPY_BYTES = 10
_MAX_ULID_MS = 2**48 - 1
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> two characters


_last_ulid = 0  # the last ULID made in this process, as an integer (monotonic within a millisecond)
_ulid_lock = threading.Lock()


def new_ulid() -> str:
    """Return a new ULID string (26 Crockford base32 characters), greater than every one made before it in this
    process: the current unix milliseconds and 80 random bits, and within one millisecond (or if the clock steps
    back) the previous one plus one, so ids made in order sort in order (runs and steps are ordered by id).

    Encoded here rather than through ``ulid.ULID()``: every send makes two or three of them, and this is several
    times cheaper (same format; tests/unit/test_ids.py)."""
    global _last_ulid
    n = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    with _ulid_lock:
        if n >> 80 <= _last_ulid >> 80:
            n = _last_ulid + 1
        _last_ulid = n
    pairs = _PAIRS
    # 128 bits = one 3-bit character then 25 characters of 5 bits (in pairs of 10 bits, the last one alone)
    return (
        _CROCKFORD[n >> 125]
        + pairs[(n >> 115) & 1023] + pairs[(n >> 105) & 1023] + pairs[(n >> 95) & 1023] + pairs[(n >> 85) & 1023]
        + pairs[(n >> 75) & 1023] + pairs[(n >> 65) & 1023] + pairs[(n >> 55) & 1023] + pairs[(n >> 45) & 1023]
        + pairs[(n >> 35) & 1023] + pairs[(n >> 25) & 1023] + pairs[(n >> 15) & 1023] + pairs[(n >> 5) & 1023]
        + _CROCKFORD[n & 31]
    )  # fmt: skip


def ulid_from(ms: int, entropy: bytes) -> str:
    """Build a ULID string from a unix-millisecond timestamp and 10 bytes of randomness."""
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise ValueError(f"invalid ULID timestamp {ms!r}: expected an integer number of milliseconds")
    if not 0 <= ms <= _MAX_ULID_MS:
        raise ValueError(f"invalid ULID timestamp {ms}: must be between 0 and {_MAX_ULID_MS} milliseconds")
    if len(entropy) != _ENTROPY_BYTES:
        raise ValueError(f"invalid ULID entropy {entropy!r}: expected exactly 10 bytes, got {len(entropy)}")
    return str(ulid.ULID.from_bytes(ms.to_bytes(6, "big") + bytes(entropy)))


def _parse_seed(seed: str) -> tuple[int, bytes]:
    expected = "expected '<unix_ms>,<base64 of 10 random bytes>'"
    head, sep, tail = seed.partition(",")
    if not sep:
        raise ValueError(f"invalid event id seed {seed!r}: missing ','; {expected}")
    head = head.strip()
    if not head.isascii() or not head.isdigit():
        raise ValueError(f"invalid event id seed {seed!r}: timestamp {head!r} is not a number; {expected}")
    ms = int(head)
    if ms > _MAX_ULID_MS:
        raise ValueError(f"invalid event id seed {seed!r}: timestamp {ms} is too large for a ULID")
    try:
        entropy = base64.b64decode(tail.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"invalid event id seed {seed!r}: entropy is not valid base64; {expected}") from exc
    if len(entropy) != _ENTROPY_BYTES:
        raise ValueError(
            f"invalid event id seed {seed!r}: entropy decodes to {len(entropy)} bytes, expected 10; {expected}"
        )
    return ms, entropy


def seeded_event_ids(seed: str, count: int) -> list[str]:
    """Derive ``count`` deterministic event ids from an Inngest event-id seed header.

    The seed has the form ``"<unix_ms>,<base64(10 random bytes)>"``.  Event ``i`` (1-based) gets
    the ULID built from the timestamp and the entropy with ``i`` added (mod 2**32) to the
    big-endian uint32 in entropy bytes 6..10; the other bytes are kept.
    """
    if not isinstance(seed, str):
        raise ValueError(f"invalid event id seed {seed!r}: expected a string")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"invalid event count {count!r}: expected a non-negative integer")
    ms, entropy = _parse_seed(seed)
    prefix = entropy[:6]
    counter = int.from_bytes(entropy[6:10], "big")
    ids: list[str] = []
    for i in range(1, count + 1):
        bumped = ((counter + i) % 2**32).to_bytes(4, "big")
        ids.append(ulid_from(ms, prefix + bumped))
    return ids


def hash_step_id(user_id: str) -> str:
    """Return the hex SHA-1 of the UTF-8 encoded step id, as Inngest uses for step hashes."""
    return hashlib.sha1(user_id.encode("utf-8"), usedforsecurity=False).hexdigest()


class StepIdCounter:
    """Assigns deterministic, unique step ids within one execution of a function.

    The first use of ``"x"`` yields ``"x"``; the n-th repeat yields ``"x:n"``.  If ``"x:n"`` was
    already taken (for example because the user also named a step ``"x:1"``), ``n`` keeps
    increasing until an unused id is found.  Safe to call from several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repeats: dict[str, int] = {}
        self._used: set[str] = set()

    def next(self, user_id: str) -> tuple[str, str]:
        """Return ``(display_id, hashed_id)`` for the next step called ``user_id``."""
        with self._lock:
            display = user_id
            if display in self._used:
                n = self._repeats.get(user_id, 0)
                while True:
                    n += 1
                    display = f"{user_id}:{n}"
                    if display not in self._used:
                        break
                self._repeats[user_id] = n
            self._used.add(display)
        return display, hash_step_id(display)
