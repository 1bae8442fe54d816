"""Signing and SDK auth, cross-checked against the official SDKs' own code.

The Python SDK (``inngest==0.5.19``) is imported directly: its verifier must accept what the server signs, and
what it sends as a bearer token must pass ``bearer_matches``. The JS SDK's vectors below were computed with
``inngest@4.24.0``'s ``hashSigningKey`` and ``signDataWithKey`` under node.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inngest._internal import net, server_lib, transforms

from stepline.protocol.signing import (
    SIGNATURE_HEADER,
    bearer_matches,
    canonical_json,
    canonicalize_json_bytes,
    hashed_signing_key,
    hmac_key,
    parse_signature_header,
    sign,
    sign_json,
    strip_signing_key_prefix,
    verify_response_signature,
    verify_signature,
)

HEX = hashlib.sha256(b"stepline-test-key").hexdigest()
KEY = f"signkey-test-{HEX}"
FALLBACK = "signkey-prod-" + hashlib.sha256(b"stepline-fallback-key").hexdigest()
OTHER = "signkey-test-" + hashlib.sha256(b"somebody else").hexdigest()
NOW = 1_700_000_000
CLOUD = server_lib.ServerKind.CLOUD

# inngest@4.24.0 (node): hashSigningKey(KEY), and signDataWithKey(JS_BODY, KEY, "1700000000")
JS_BEARER = "signkey-test-18692ad9d061267b103425580f1a2abde77a07fcad62f0abe752e4be4c155e20"
JS_BODY: dict[str, Any] = {"b": [1, 2.5, "é"], "a": {"z": None, "y": True}}
JS_SIGNATURE = "b3b8084a7206ea15fc40d1ead248e41ee1ef8847f26f6bc2d218a5eb6d1a93b4"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


def sdk_verifies(body: bytes, signature: str, key: str | None, fallback: str | None = None) -> bool:
    result = net.validate_request_sig(
        body=body, headers={"x-inngest-signature": signature}, mode=CLOUD, signing_key=key,
        signing_key_fallback=fallback,
    )  # fmt: skip
    return not isinstance(result, Exception)


# --- keys ---
def test_prefix_is_stripped_and_the_hmac_key_is_the_hex_text() -> None:
    assert strip_signing_key_prefix(KEY) == HEX
    assert strip_signing_key_prefix("signkey-branch_1-abcd") == "abcd"
    assert strip_signing_key_prefix(HEX) == HEX
    assert strip_signing_key_prefix(KEY) == transforms.remove_signing_key_prefix(KEY)
    assert hmac_key(KEY) == HEX.encode("ascii")  # not bytes.fromhex(HEX)


def test_hashed_signing_key_matches_both_sdks() -> None:
    assert hashed_signing_key(KEY) == transforms.hash_signing_key(KEY)
    assert hashed_signing_key(HEX) == transforms.hash_signing_key(KEY)
    assert hashed_signing_key(KEY, keep_prefix=True) == JS_BEARER
    assert hashed_signing_key(KEY) == hashlib.sha256(bytes.fromhex(HEX)).hexdigest()
    with pytest.raises(ValueError, match="not hex"):
        hashed_signing_key("signkey-test-not-hex!")


# --- canonical JSON ---
@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_json_matches_the_python_sdk(value: Any) -> None:
    ours = canonical_json(value)
    sdk = transforms.canonicalize(json.dumps(value).encode())
    assert not isinstance(sdk, Exception)
    assert ours == sdk
    assert canonicalize_json_bytes(json.dumps(value, indent=2).encode()) == ours
    assert canonical_json(json.loads(ours)) == ours  # idempotent: what the SDK re-canonicalises is what we sent


def test_canonical_json_known_forms() -> None:
    assert canonical_json({"b": 1, "a": [1.0, 2.5, -0.0, 1e21, 1e-7]}) == b'{"a":[1,2.5,0,1e+21,1e-7],"b":1}'
    assert canonical_json({"é": "\u2028\n"}) == '{"é":"\u2028\\n"}'.encode()
    assert canonical_json(2**53 + 1) == b"9007199254740992"  # as Go, JS and the SDK's jcs read it: a float64
    assert canonicalize_json_bytes(b"") == b""


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"a": float("nan")}, {1: 2}, object(), b"x", 10**400])
def test_canonical_json_rejects_what_json_cannot_hold(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)


def test_canonicalize_json_bytes_rejects_nan() -> None:
    with pytest.raises(ValueError):
        canonicalize_json_bytes(b'{"a": NaN}')


# --- server -> app request signatures ---
def test_sign_json_matches_the_js_sdk_vector() -> None:
    signed = sign_json(JS_BODY, KEY, NOW)
    assert signed.signature == f"t={NOW}&s={JS_SIGNATURE}"
    assert signed.body == b'{"a":{"y":true,"z":null},"b":[1,2.5,"\xc3\xa9"]}'
    assert signed.headers == {"Content-Type": "application/json", SIGNATURE_HEADER: signed.signature}


def test_sign_json_matches_the_python_sdk_signer() -> None:
    signed = sign_json(JS_BODY, KEY, NOW)
    assert signed.signature == net.sign_request(json.dumps(JS_BODY).encode(), KEY, NOW)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_the_python_sdk_accepts_what_the_server_signs(value: Any) -> None:
    signed = sign_json(value, KEY, NOW)
    assert sdk_verifies(signed.body, signed.signature, KEY)
    assert sdk_verifies(signed.body, signed.signature, HEX)  # an app configured with the bare key
    assert not sdk_verifies(signed.body, signed.signature, OTHER)


def test_the_python_sdk_accepts_a_signature_made_with_its_fallback_key() -> None:
    signed = sign_json({"event": {"name": "x"}}, FALLBACK, NOW)
    assert sdk_verifies(signed.body, signed.signature, OTHER, FALLBACK)
    assert not sdk_verifies(signed.body, signed.signature, OTHER, None)


def test_a_changed_body_or_timestamp_fails_verification() -> None:
    signed = sign_json({"a": 1}, KEY, NOW)
    assert not sdk_verifies(canonical_json({"a": 2}), signed.signature, KEY)
    forged_t = signed.signature.replace(f"t={NOW}", f"t={NOW + 1}")
    assert not sdk_verifies(signed.body, forged_t, KEY)


def test_the_python_sdk_does_not_check_the_signature_age() -> None:
    signed = sign_json({"a": 1}, KEY, NOW - 10 * 24 * 3600)
    assert sdk_verifies(signed.body, signed.signature, KEY)


def test_sign_takes_bytes_only() -> None:
    body = canonical_json({"a": 1})
    assert sign(body, KEY, NOW) == sign_json({"a": 1}, KEY, NOW).signature
    with pytest.raises(TypeError, match="sign_json"):
        sign({"a": 1}, KEY, NOW)  # type: ignore[arg-type]


# --- app -> server response signatures ---
def test_verify_response_signature_accepts_the_sdk_signature() -> None:
    raw = b'[{"op": "StepRun", "id": "abc"}]'  # raw bytes, not canonical: responses are signed as sent
    header = net.sign_response(raw, KEY, NOW)
    assert not isinstance(header, Exception)
    assert verify_response_signature(raw, header, [KEY], NOW + 60) == KEY
    assert verify_response_signature(raw, header, [OTHER, KEY], NOW) == KEY
    assert verify_response_signature(raw, header, [OTHER], NOW) is None
    assert verify_response_signature(raw + b" ", header, [KEY], NOW) is None


def test_verify_response_signature_checks_the_age_unless_told_not_to() -> None:
    raw = b'{"ok":true}'
    header = sign(raw, KEY, NOW)
    assert verify_response_signature(raw, header, [KEY], NOW + 301) is None
    assert verify_response_signature(raw, header, [KEY], NOW - 301) is None
    assert verify_response_signature(raw, header, [KEY], NOW + 300) == KEY
    assert verify_response_signature(raw, header, [KEY], NOW + 10**6, max_skew_s=None) == KEY


@pytest.mark.parametrize("header", [None, "", "s=abc", f"t={NOW}", "t=x&s=abc", f"t={NOW}&s=", "garbage"])
def test_malformed_signature_headers_verify_nothing(header: str | None) -> None:
    assert parse_signature_header(header) is None
    assert verify_signature(b"{}", header, [KEY], NOW) is None


def test_verify_signature_of_a_request_body_round_trips() -> None:
    signed = sign_json(JS_BODY, KEY, NOW)
    assert parse_signature_header(signed.signature) == (NOW, JS_SIGNATURE)
    assert verify_signature(canonicalize_json_bytes(json.dumps(JS_BODY).encode()), signed.signature, [KEY], NOW)


# --- SDK -> server bearer auth ---
def test_bearer_matches_the_python_sdk_form() -> None:
    assert bearer_matches(f"Bearer {transforms.hash_signing_key(KEY)}", [KEY])
    assert bearer_matches(f"Bearer {transforms.hash_signing_key(FALLBACK)}", [KEY, FALLBACK])


def test_bearer_matches_the_js_sdk_form() -> None:
    assert bearer_matches(f"Bearer {JS_BEARER}", [KEY])
    assert bearer_matches(f"Bearer {hashed_signing_key(FALLBACK, keep_prefix=True)}", (KEY, FALLBACK))


def test_bearer_matches_the_raw_key_for_people() -> None:
    assert bearer_matches(f"Bearer {KEY}", [KEY])
    assert bearer_matches(f"Bearer {HEX}", [KEY])
    assert bearer_matches(f"bearer {KEY}", [KEY])  # the scheme is case-insensitive
    assert bearer_matches(f"Bearer {HEX}", [HEX])


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",  # what the JS SDK sends when it has no key
        "Bearer signkey-test-",
        f"Basic {transforms.hash_signing_key(KEY)}",
        f"Bearer {transforms.hash_signing_key(OTHER)}",
        f"Bearer {OTHER}",
        f"Bearer {HEX[:-1]}",
        f"Bearer {hashlib.sha256(HEX.encode()).hexdigest()}",  # hashed over the text, not the decoded bytes
        "Bearer ünïcödé",
    ],
)
def test_bearer_rejects(authorization: str | None) -> None:
    assert not bearer_matches(authorization, [KEY, FALLBACK])


def test_bearer_with_no_keys_or_an_empty_key_accepts_nothing() -> None:
    assert not bearer_matches(f"Bearer {KEY}", [])
    assert not bearer_matches("Bearer signkey-test-", ["signkey-test-"])


def test_a_non_hex_key_only_matches_itself() -> None:
    key = "signkey-dev-not-hex"
    assert bearer_matches(f"Bearer {key}", [key])
    assert not bearer_matches("Bearer " + hashlib.sha256(b"not-hex").hexdigest(), [key])


@pytest.mark.parametrize(
    ("primary", "fallback", "status"),
    [(KEY, None, 200), (OTHER, KEY, 200), (HEX, None, 200), (OTHER, None, 401), (OTHER, FALLBACK, 401)],
)
def test_the_python_sdk_authenticates_through_its_own_fetch(primary: str, fallback: str | None, status: int) -> None:
    """The SDK's real request path (header building, fallback retry on 401) against bearer_matches."""
    seen: list[str] = []

    def server(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        authorization = environ.get("HTTP_AUTHORIZATION")
        seen.append(authorization or "")
        ok = bearer_matches(authorization, [KEY])
        start_response("200 OK" if ok else "401 Unauthorized", [("Content-Type", "application/json")])
        return [b"{}"]

    with httpx.Client(transport=httpx.WSGITransport(app=server), base_url="http://server") as http:
        request = http.build_request("GET", "/v0/runs/r1/actions")
        res = net.fetch_with_auth_fallback_sync(http, request, signing_key=primary, signing_key_fallback=fallback)
    assert not isinstance(res, Exception)
    assert res.status_code == status
    assert len(seen) == (2 if fallback is not None and primary == OTHER else 1)
