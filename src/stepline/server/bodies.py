"""Reading request bodies: bounded while they are read, on a deadline, and parsed as strict JSON.

Every route that reads a body goes through ``read_body`` with the limit that fits it (``docs/security.md`` lists
them): a body over its limit is refused as soon as its ``Content-Length`` says so or the bytes read pass it,
without reading the rest, and a body that trickles in slower than ``BODY_TIMEOUT_SECONDS`` in all is cut off.
``parse_json`` turns JSON that Python's parser would answer with an exception other than ValueError (nesting past
the recursion limit) into the same clean refusal as any other bad JSON.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "BODY_TIMEOUT_SECONDS",
    "BodyTimeout",
    "BodyTooLarge",
    "InvalidBody",
    "parse_json",
    "read_body",
    "stream_body",
]

BODY_TIMEOUT_SECONDS = 60.0


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes")
        self.limit = limit


class BodyTimeout(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s")
        self.seconds = seconds


class ClientGone(BodyTimeout):
    """The client went away before its body arrived (nobody reads the answer)."""

    def __init__(self) -> None:
        Exception.__init__(self, "the client went away before its request body arrived")


class InvalidBody(ValueError):
    """The body is not acceptable JSON; the message is returned to the client."""


async def read_body(request: Request, limit: int, *, timeout: float = BODY_TIMEOUT_SECONDS) -> bytes:
    """The request body, read chunk by chunk; raises BodyTooLarge as soon as it exceeds ``limit`` bytes (or at
    once, when ``Content-Length`` says so) and BodyTimeout when it takes longer than ``timeout`` seconds."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > limit:
                    raise BodyTooLarge(limit)
    except TimeoutError:
        raise BodyTimeout(timeout) from None
    except ClientDisconnect:
        raise ClientGone() from None
    return bytes(buf)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes, what: str = "request body", *, allow_nul: bool = False) -> Any:
    """Strict JSON (no NaN/Infinity); raises InvalidBody with a readable reason. A NUL character (``\\u0000``) is
    refused unless ``allow_nul`` (event data may hold one; names, ids, URLs and configs are stored where
    PostgreSQL refuses it)."""
    if not raw.strip():
        raise InvalidBody(f"{what} is empty")
    if not allow_nul and b"\\u0000" in raw:
        raise InvalidBody(f"{what} contains a NUL character (\\u0000)")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidBody(f"{what} is nested too deeply to be parsed") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidBody(f"{what} is not valid JSON: {exc}") from None


async def stream_body(request: Request, limit: int, *, idle_timeout: float = BODY_TIMEOUT_SECONDS
                      ) -> AsyncIterator[bytes]:  # fmt: skip
    """The request body chunk by chunk as it arrives (a streamed publish), for bodies meant to be read while they
    come: raises BodyTooLarge once more than ``limit`` bytes came (or at once, when ``Content-Length`` says so) and
    BodyTimeout when no byte came for ``idle_timeout`` seconds."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    total = 0
    chunks = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyTimeout(idle_timeout) from None
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(limit)
        if chunk:
            yield chunk


class RefuseNul:
    """ASGI middleware: a request whose path or query string holds a NUL character gets a 400 before any route
    reads it (ids, names and filters go to columns where PostgreSQL refuses NUL)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]
                                        or b"\x00" in scope["query_string"]):  # fmt: skip
            body = b'{"error":"NUL characters are not allowed in paths and query strings","status":400}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
