"""The HTTP client for function calls to apps: the server's hot path (N + 1 POSTs for a run of N steps).

It is aiohttp, not the httpx client the server uses elsewhere (sync PUTs, discovery probes, alert webhooks):
a POST costs ~0.2 ms of client CPU with aiohttp against ~1.5 ms with httpx on a 2-core machine, and the calls,
not the engine, were most of the server's CPU (bench/README.md, "Where the time goes in the HTTP path").

``post`` returns the whole answer or raises one of three things: ``TimeoutError`` (connecting took longer than
``connect_timeout``; the whole-call deadline is the caller's ``asyncio.timeout``), ``ResponseTooLarge`` (declared
or streamed beyond the limit: reading stops there), or ``AppCallFailed`` (refused, reset, not HTTP, or a target the
outbound policy refuses: the function URLs come from the apps' own registrations, ``server/outbound.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import HttpVersion10
from aiohttp.http_parser import HttpResponseParserPy

from stepline.server.outbound import OutboundPolicy, OutboundRefused, PolicyResolver, proxy_for, unwrap_refusal


class ResponseTooLarge(Exception):
    pass


class AppCallFailed(Exception):
    """The call did not get an HTTP answer; ``str()`` names the underlying error's type and message."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def app_origin(url: str) -> str:
    """``scheme://host:port`` of an app URL: what calls in flight and claims are counted per. A URL that cannot be
    parsed (registration only checks the scheme) is its own origin."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"
    except ValueError:
        return url


class _Http10ResponseParser(HttpResponseParserPy):
    """aiohttp's Python response parser, for HTTP/1.0 answers: Transfer-Encoding does not exist in HTTP/1.0, so a
    ``chunked`` one is ignored and the body is read to the end of the connection (RFC 9112 section 6.1; Go's client,
    which Inngest's server uses, does the same). Some proxies answer HTTP/1.0 with that header and a plain body."""

    def parse_message(self, lines: list[bytes]) -> Any:
        msg = super().parse_message(lines)
        if msg.version > HttpVersion10 or not msg.chunked:
            return msg
        # (aiohttp's C message class when its extensions load, a NamedTuple otherwise: rebuilt field by field)
        return type(msg)(msg.version, msg.code, msg.reason, msg.headers, msg.raw_headers, msg.should_close,
                         msg.compression, msg.upgrade, False)  # fmt: skip


class _PerAnswerParser:
    """Looks at an answer's status line: HTTP/1.0 goes to ``_Http10ResponseParser``, anything else to aiohttp's
    own (C) parser, so the usual answers keep the fast path."""

    def __init__(self, fast: Any, http10: functools.partial[_Http10ResponseParser]) -> None:
        self._fast = fast
        self._http10 = http10
        self._chosen: Any = None
        self._head = b""

    def feed_data(self, data: bytes) -> Any:
        if self._chosen is None:
            self._head += data
            if len(self._head) < 9 and b"\n" not in self._head:
                return [], False, b""
            self._chosen = self._http10() if self._head.startswith(b"HTTP/1.0") else self._fast
            data, self._head = self._head, b""
        return self._chosen.feed_data(data)

    def feed_eof(self) -> Any:
        if self._chosen is None:
            self._chosen = self._fast
            if self._head:
                self._chosen.feed_data(self._head)
        return self._chosen.feed_eof()


class _CallProtocol(ResponseHandler):
    """aiohttp's connection protocol with ``_PerAnswerParser`` (aiohttp builds one parser per request)."""

    def set_response_params(self, **params: Any) -> None:
        super().set_response_params(**params)
        http10 = functools.partial(
            _Http10ResponseParser, self, self._loop, params.get("read_bufsize", 2**16), timer=params.get("timer"),
            payload_exception=aiohttp.ClientPayloadError, response_with_body=not params.get("skip_payload", False),
            read_until_eof=True, auto_decompress=params.get("auto_decompress", True),
        )  # fmt: skip
        self._parser = _PerAnswerParser(self._parser, http10)  # type: ignore[assignment]


class _CallConnector(aiohttp.TCPConnector):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = cast("functools.partial[ResponseHandler]", functools.partial(_CallProtocol, loop=self._loop))


class AppCalls:
    """One aiohttp session, opened on first use (it must be created inside the running loop) and closed by
    ``close``. Connections are kept alive per app; how many calls run at once is the caller's to limit.

    Proxies come from ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY``, as for the httpx client, looked up once per
    app origin (aiohttp's ``trust_env`` would look them up, and read ``~/.netrc``, on every call, and send that
    file's credentials to the apps)."""

    def __init__(self, connect_timeout: float = 10.0, policy: OutboundPolicy | None = None,
                 resolver: PolicyResolver | None = None) -> None:  # fmt: skip
        self.connect_timeout = connect_timeout
        self.policy = policy or OutboundPolicy()
        self.resolver = resolver or PolicyResolver(self.policy)
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str | None] = {}
        self._checked: dict[str, str | None] = {}  # origin -> why the policy refuses it (None: allowed)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # No limit here: the executor caps calls in flight per app. Idle connections are dropped after
                # 4 s, before the apps' servers drop them (uvicorn and Node close idle ones after 5 s): reusing a
                # connection the app is closing would fail the call. Names resolve through the outbound policy.
                connector=_CallConnector(limit=0, keepalive_timeout=4.0, resolver=self.resolver),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                trust_env=False,
            )
        return self._session

    def _refusal(self, url: str) -> str | None:
        """Why the policy refuses the URL's form or literal address (checked once per origin)."""
        origin = app_origin(url)
        if origin not in self._checked:
            try:
                self.policy.check_url(url)
                self._checked[origin] = None
            except OutboundRefused as exc:
                self._checked[origin] = str(exc)
        return self._checked[origin]

    async def post(self, url: str, body: bytes, headers: dict[str, str], limit: int) -> Answer:
        refusal = self._refusal(url)
        if refusal is not None:
            raise AppCallFailed(f"refused by the outbound policy: {refusal}")
        try:
            async with self._open().post(url, data=body, headers=headers, allow_redirects=False,
                                         proxy=proxy_for(url, self._proxies)) as resp:  # fmt: skip
                declared = resp.content_length
                if declared is not None and declared > limit:
                    raise ResponseTooLarge
                content = bytearray()
                async for chunk in resp.content.iter_any():
                    content += chunk
                    if len(content) > limit:
                        raise ResponseTooLarge
                return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, bytes(content))
        except TimeoutError:
            raise
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a URL or header aiohttp refuses to send
            refused = unwrap_refusal(exc)
            if refused is not None:
                raise AppCallFailed(f"refused by the outbound policy: {refused}") from None
            raise AppCallFailed(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
