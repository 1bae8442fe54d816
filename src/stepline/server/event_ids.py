"""Internal event ids for the event API: seeded from the SDK's ``x-inngest-event-id-seed`` header.

Both SDKs send ``"<unix_ms>,<base64 of 10 random bytes>"`` once per ``send()`` and keep it across their retries.
Event *i* of the request (1-based) gets the ULID of ``unix_ms`` and the 10 bytes with *i* added (mod 2**32) to
the big-endian uint32 in bytes 6..10, so a retried request gets the same ids and, the engine being idempotent on
them, starts no extra run. A missing or invalid seed gives fresh random ULIDs, as the Go server does.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from stepline.core.ids import new_ulid, ulid_from

__all__ = ["EVENT_ID_SEED_HEADER", "EventIdSeed", "event_ids", "parse_event_id_seed"]

EVENT_ID_SEED_HEADER = "x-inngest-event-id-seed"

_ENTROPY_BYTES = 10
_MAX_ULID_MS = 2**48 - 1
_U32 = 2**32


@dataclass(frozen=True, slots=True)
class EventIdSeed:
    ms: int  # unix milliseconds, 1 .. 2**48-1
    entropy: bytes  # exactly 10 bytes

    def ulid(self, i: int) -> str:
        """The internal id of event ``i`` (1-based) of the request."""
        counter = (int.from_bytes(self.entropy[6:10], "big") + i) % _U32
        return ulid_from(self.ms, self.entropy[:6] + counter.to_bytes(4, "big"))


def parse_event_id_seed(value: str | None) -> EventIdSeed | None:
    """The seed in a header value, or None when absent or invalid (the Go server's rules: two comma-separated
    parts, a positive integer of milliseconds that fits a ULID, and standard padded base64 of exactly 10 bytes)."""
    if not value:
        return None
    parts = value.split(",")
    if len(parts) != 2:
        return None
    ms_text, b64 = parts[0].strip(), parts[1].strip()
    if not ms_text.isascii() or not ms_text.isdigit():
        return None
    ms = int(ms_text)
    if not 0 < ms <= _MAX_ULID_MS:
        return None
    try:
        entropy = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(entropy) != _ENTROPY_BYTES:
        return None
    return EventIdSeed(ms, entropy)


def event_ids(seed_header: str | None, count: int) -> list[str]:
    """One internal ULID per event of a request, in order: seeded when the header is valid, else fresh."""
    if count < 0:
        raise ValueError(f"invalid event count {count}")
    seed = parse_event_id_seed(seed_header)
    if seed is None:
        return [new_ulid() for _ in range(count)]
    return [seed.ulid(i) for i in range(1, count + 1)]
