"""Realtime tokens: JWTs in the form Inngest's server mints them (``pkg/execution/realtime/token.go``).

HS256, issuer ``rt.inngest.com``, ``sub`` (the account), ``iat``, ``exp`` (required), ``jti``, ``env`` and either
``topics`` (a subscription token: ``[{"kind": "run", "channel", "name", "env_id"}]``) or ``publish: true``. The
signing secret is the store's ``realtime_keys`` row (made at first use), so every server process and node on the
database, and any Stepline client with access to it, mint and accept the same tokens.

A subscription token grants exactly its (channel, topic) pairs; an invalid, forged or expired one is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from stepline.core.ids import new_ulid
from stepline.realtime.messages import PublishError, check_channel, check_topic

__all__ = ["DEFAULT_EXPIRY_S", "ISSUER", "MAX_EXPIRY_S", "Grant", "TokenError", "mint", "topics_of", "verify"]

ISSUER = "rt.inngest.com"
ACCOUNT = "00000000-0000-0000-0000-000000000000"  # Inngest's sub/env are UUIDs; one self-hosted server has one
DEFAULT_EXPIRY_S = 60  # Inngest's DefaultExpiry: a token is needed to connect, not to stay connected
MAX_EXPIRY_S = 24 * 3600
SECRET_NAME = "jwt"  # the realtime_keys row


class TokenError(Exception):
    """A token that is missing, malformed, forged or expired (401), or that does not grant what was asked (403)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: these (channel, topic) pairs, and publishing if ``publish``."""

    topics: frozenset[tuple[str, str]]
    publish: bool
    expires_at: int  # unix seconds


def topics_of(channel: str, topics: Iterable[str]) -> list[dict[str, str]]:
    """The claim for ``topics`` of ``channel`` (as the SDKs post them to ``/v1/realtime/token``)."""
    return [{"kind": "run", "channel": channel, "name": t, "env_id": ACCOUNT} for t in topics]


def mint(secret: str, now_s: int, *, topics: Sequence[dict[str, Any]] = (), publish: bool = False,
         expires_in: float = DEFAULT_EXPIRY_S) -> str:  # fmt: skip
    """A signed token for ``topics`` (dicts with ``channel`` and ``name``) or, with ``publish``, for publishing."""
    if not 0 < expires_in <= MAX_EXPIRY_S:
        raise ValueError(f"a realtime token expires within 1 to {MAX_EXPIRY_S} seconds, got {expires_in}")
    claims: dict[str, Any] = {"iss": ISSUER, "sub": ACCOUNT, "iat": now_s, "exp": now_s + int(expires_in),
                              "jti": new_ulid(), "env": ACCOUNT}  # fmt: skip
    if publish:
        claims["publish"] = True
    else:
        claims["topics"] = [_topic(t) for t in topics]
    return jwt.encode(claims, secret, algorithm="HS256")


def _topic(t: Any) -> dict[str, str]:
    if not isinstance(t, dict):
        raise PublishError(f"a topic must be an object with channel and name, got {type(t).__name__}")
    try:
        channel, name = check_channel(t.get("channel")), check_topic(t.get("name"))
    except PublishError as exc:
        raise PublishError(f"invalid topic {str(t)[:200]}: {exc}") from None
    kind = t.get("kind", "run")
    if kind != "run":
        raise PublishError(f'invalid topic kind {kind!r}: only "run" topics (a channel and a name) are supported')
    return {"kind": "run", "channel": channel, "name": name, "env_id": ACCOUNT}


def verify(secret: str, token: str, now_s: int) -> Grant:
    """The grant of a token; raises TokenError (401) if it is malformed, forged, expired or not a realtime token."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss"], "verify_iat": False, "verify_exp": False},
        )
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid realtime token: {exc}") from None
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now_s:
        raise TokenError("the realtime token has expired: get a new one")
    topics = set()
    for t in claims.get("topics") or []:
        if isinstance(t, dict) and isinstance(t.get("channel"), str) and isinstance(t.get("name"), str):
            topics.add((t["channel"], t["name"]))
    return Grant(frozenset(topics), claims.get("publish") is True, exp)
