"""Inngest request signing and SDK authentication (protocol section 6).

Three mechanisms share the signing key ``signkey-<env>-<hex>``:

- **Server -> app requests** carry ``X-Inngest-Signature: t=<unix s>&s=<hex HMAC-SHA256>``. The HMAC key is the
  ASCII text of the hex remainder (not the decoded bytes) and the message is the **JCS (RFC 8785) canonical form**
  of the body followed by ``str(t)``. Both SDKs re-canonicalise what they receive before verifying, so the server
  must send exactly the JCS bytes it signed: use :func:`sign_json`, which returns both.
- **App -> server responses** (cloud mode) are signed the same way over the *raw* response bytes (no JCS).
- **SDK -> server API calls** carry ``Authorization: Bearer <h>`` with ``h = hex(sha256(bytes.fromhex(hex)))``;
  the JS SDK prefixes ``signkey-<env>-``, the Python SDK does not. :func:`bearer_matches` accepts both, and the
  raw signing key (for people calling the REST API by hand).

Every secret comparison is constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import rfc8785

__all__ = [
    "SIGNATURE_HEADER",
    "SignedBody",
    "bearer_matches",
    "canonical_json",
    "canonicalize_json_bytes",
    "hashed_signing_key",
    "hmac_key",
    "parse_signature_header",
    "sign",
    "sign_json",
    "signing_key_prefix",
    "strip_signing_key_prefix",
    "verify_response_signature",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Inngest-Signature"
DEFAULT_MAX_SKEW_S = 5 * 60  # the JS SDK rejects request signatures older (or newer) than 5 minutes

_PREFIX = re.compile(r"^signkey-\w+-")
_SAFE_INT = 2**53 - 1


# --- keys ---
def signing_key_prefix(key: str) -> str:
    """``"signkey-prod-"`` for ``"signkey-prod-ab12"``; ``""`` for a bare key."""
    m = _PREFIX.match(key)
    return m.group(0) if m else ""


def strip_signing_key_prefix(key: str) -> str:
    """The key without its ``signkey-<env>-`` prefix (the hex remainder)."""
    return key[len(signing_key_prefix(key)) :]


def hmac_key(key: str) -> bytes:
    """The HMAC key for signing with ``key``: the ASCII (UTF-8) bytes of the hex remainder, *not* its decoded bytes."""
    return strip_signing_key_prefix(key).encode("utf-8")


def hashed_signing_key(key: str, *, keep_prefix: bool = False) -> str:
    """The bearer token an SDK sends for ``key``: ``hex(sha256(bytes.fromhex(remainder)))``.

    Bare by default (the Python SDK's form); ``keep_prefix=True`` gives the JS SDK's ``signkey-<env>-<hash>``.
    Raises ValueError if the remainder is not an even-length hex string.
    """
    remainder = strip_signing_key_prefix(key)
    try:
        raw = bytes.fromhex(remainder)
    except ValueError:
        raise ValueError("signing key is not hex after its 'signkey-<env>-' prefix") from None
    digest = hashlib.sha256(raw).hexdigest()
    return signing_key_prefix(key) + digest if keep_prefix else digest


# --- JSON canonicalisation ---
def _jcs_ready(value: Any) -> Any:
    """Integers outside IEEE-754's exact range become floats, as every other party (Go, JS, the Python SDK's
    ``jcs``) parses JSON numbers to float64 before canonicalising; ``rfc8785`` would refuse them instead."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        if -_SAFE_INT <= value <= _SAFE_INT:
            return value
        try:
            as_float = float(value)
        except OverflowError:
            raise ValueError(f"an integer of {value.bit_length()} bits is too large for a JSON number") from None
        return as_float
    if isinstance(value, Mapping):
        return {k: _jcs_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jcs_ready(v) for v in value]
    return value  # let rfc8785 reject what it cannot encode


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) canonical UTF-8 bytes of a JSON value (dict, list, str, int, float, bool, None).

    Raises ValueError for values JSON cannot represent (NaN, infinities, non-string keys, other types).
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not representable in JSON")
    try:
        return rfc8785.dumps(_jcs_ready(value))
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(f"cannot canonicalise JSON: {exc}") from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"cannot canonicalise JSON: {exc}") from None


def canonicalize_json_bytes(raw: bytes) -> bytes:
    """Parse JSON text and return its JCS form (what an SDK signs and verifies). Empty stays empty."""
    if not raw:
        return raw

    def _no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    return canonical_json(json.loads(raw, parse_constant=_no_constants))


# --- signatures ---
def _mac(key: str, message: bytes, t: int) -> str:
    mac = hmac.new(hmac_key(key), message, hashlib.sha256)
    mac.update(str(t).encode("ascii"))
    return mac.hexdigest()


def sign(body: bytes, key: str, now_s: int) -> str:
    """``t=<now_s>&s=<hmac>`` over ``body`` **as given**, byte for byte.

    For requests to apps, ``body`` must be the canonical bytes from :func:`canonical_json` and must be sent
    unchanged (prefer :func:`sign_json`). For responses (signed over raw bytes) pass the raw body.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"sign() takes the body bytes that will be sent, got {type(body).__name__}; "
                        "use sign_json() for a JSON value")  # fmt: skip
    return f"t={int(now_s)}&s={_mac(key, bytes(body), int(now_s))}"


@dataclass(frozen=True, slots=True)
class SignedBody:
    """A request body to send to an app: send exactly ``body`` with ``X-Inngest-Signature: <signature>``."""

    body: bytes  # the JCS canonical JSON bytes that were signed
    signature: str  # the X-Inngest-Signature header value

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", SIGNATURE_HEADER: self.signature}


def sign_json(value: Any, key: str, now_s: int) -> SignedBody:
    """Canonicalise a parsed JSON value and sign it: what the server does for every request to an app."""
    body = canonical_json(value)
    return SignedBody(body=body, signature=sign(body, key, now_s))


def parse_signature_header(header: str | None) -> tuple[int, str] | None:
    """``(t, s)`` from ``t=<unix s>&s=<hex>``, or None if the header is missing or malformed."""
    if not header:
        return None
    parsed = urllib.parse.parse_qs(header.strip(), keep_blank_values=False)
    ts, ss = parsed.get("t"), parsed.get("s")
    if not ts or not ss or len(ts) != 1 or len(ss) != 1:
        return None
    t_text, s = ts[0].strip(), ss[0].strip()
    if not t_text.isascii() or not t_text.isdigit() or not s:
        return None
    return int(t_text), s


def verify_signature(
    message: bytes,
    header: str | None,
    keys: Sequence[str],
    now_s: int,
    *,
    max_skew_s: int | None = DEFAULT_MAX_SKEW_S,
) -> str | None:
    """The key (of ``keys``, tried in order: primary then fallback) whose HMAC of ``message`` matches ``header``,
    or None. ``message`` is used as given (JCS bytes for requests, raw bytes for responses). With ``max_skew_s``
    set, a ``t`` further than that from ``now_s`` fails (the JS SDK's rule); the Python SDK checks no time."""
    parsed = parse_signature_header(header)
    if parsed is None:
        return None
    t, s = parsed
    if max_skew_s is not None and abs(int(now_s) - t) > max_skew_s:
        return None
    given = s.lower().encode("ascii", "replace")
    found: str | None = None
    for key in keys:  # every key is compared, so timing does not reveal which one matched
        if hmac.compare_digest(given, _mac(key, message, t).encode("ascii")) and found is None:
            found = key
    return found


def verify_response_signature(
    raw_body: bytes,
    header: str | None,
    keys: Sequence[str],
    now_s: int,
    *,
    max_skew_s: int | None = DEFAULT_MAX_SKEW_S,
) -> str | None:
    """Check an SDK response's ``X-Inngest-Signature`` (HMAC over the raw response bytes ‖ t). Returns the key
    that verified, or None. Optional in the protocol: cloud-mode SDKs sign responses, dev-mode SDKs do not."""
    return verify_signature(raw_body, header, keys, now_s, max_skew_s=max_skew_s)


# --- SDK -> server bearer auth ---
def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None  # JS sends "Bearer " when it has no key


def bearer_matches(authorization: str | None, signing_keys: Sequence[str]) -> bool:
    """Does an ``Authorization`` header authenticate with one of ``signing_keys``?

    Accepted tokens, each compared after removing any ``signkey-<env>-`` prefix: the hashed key (JS sends it
    prefixed, Python bare) or the raw signing key. The env part of a prefix is not checked (it is no secret;
    the Go server strips it too). All candidates are compared in constant time.
    """
    token = _bearer_token(authorization)
    if token is None or not signing_keys:
        return False
    given = strip_signing_key_prefix(token).encode("utf-8")
    if not given:
        return False
    ok = False
    for key in signing_keys:
        if not strip_signing_key_prefix(key):
            continue  # an empty key authenticates nobody
        candidates = [strip_signing_key_prefix(key).encode("utf-8")]
        try:
            candidates.append(hashed_signing_key(key).encode("ascii"))
        except ValueError:
            pass  # a non-hex key has no hashed form; only the raw key can match it
        for candidate in candidates:
            ok |= hmac.compare_digest(given, candidate)
    return ok
