"""``stepline dev`` is open (no keys) because it listens on loopback; this keeps web pages from using that.

A page the developer visits can make their browser send requests to ``http://127.0.0.1:8288`` (simple POSTs with
a ``text/plain`` body need no preflight), or point a name it controls at 127.0.0.1 (DNS rebinding) and then read
the answers as its own. So, in dev mode:

- the ``Host`` header must be a loopback name (``localhost``, ``*.localhost``, ``127.0.0.1``, ``[::1]``) or one given
  by ``--allowed-host`` / ``STEPLINE_ALLOWED_HOSTS``: a rebound name is refused (403) on every request;
- a state-changing request (any method but GET, HEAD and OPTIONS) whose ``Sec-Fetch-Site`` says it comes from
  another site, or whose ``Origin`` is not this server's own, is refused (403). Browsers send these headers; the
  official SDKs, the CLI and scripts send neither, and the dashboard's own forms are same-origin. The decision
  never depends on the Content-Type (the npm SDK labels some JSON bodies ``text/plain``).

``stepline start`` authenticates every request instead (keys, the dashboard's session and CSRF tokens).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["LOOPBACK_HOSTS", "DevGuard"]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_READ = frozenset({b"host", b"sec-fetch-site", b"origin"})  # ASGI header names are lowercase


def _host_name(host: str) -> str:
    """``example.com:8288`` -> ``example.com``; ``[::1]:8288`` -> ``::1``."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class DevGuard:
    """ASGI middleware: the checks above, for every HTTP request of a dev server."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allowed = frozenset(_host_name(h) for h in allowed_hosts if h.strip())

    def host_allowed(self, host: str) -> bool:
        name = _host_name(host)
        return name in LOOPBACK_HOSTS or name.endswith(".localhost") or name in self.allowed or "*" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, str] = {}  # only the three headers read below (this runs for every request)
        for k, v in scope["headers"]:
            if k in _READ:
                headers[k] = v.decode("latin-1")
        host = headers.get(b"host", "")
        if scope["type"] == "websocket":  # the realtime WebSocket: its token is checked by the endpoint
            if self.host_allowed(host):
                await self.app(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})  # refused before the handshake: 403
            return
        if not self.host_allowed(host):
            await _refuse(
                send,
                f"Host {host[:200]!r} is not allowed by this dev server (it answers loopback names "
                "only, against DNS rebinding): add it with --allowed-host or STEPLINE_ALLOWED_HOSTS",
            )
            return
        if scope["method"] not in SAFE_METHODS:
            site = headers.get(b"sec-fetch-site")
            origin = headers.get(b"origin")
            if site is not None and site not in ("same-origin", "none"):
                await _refuse(send, f"cross-site request refused (Sec-Fetch-Site: {site}): a web page cannot act "
                                    "on the dev server")  # fmt: skip
                return
            if origin is not None and not _same_origin(origin, host):
                await _refuse(send, f"cross-origin request refused (Origin: {origin[:200]}): a web page cannot act "
                                    "on the dev server")  # fmt: skip
                return
        await self.app(scope, receive, send)


def _same_origin(origin: str, host: str) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps({"error": message, "status": 403}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})
