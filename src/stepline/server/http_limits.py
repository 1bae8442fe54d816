"""The HTTP server's connection limits: how long a request head may take, how many connections are served.

uvicorn has a keep-alive timeout (idle connections between requests) but none for a request's head: a client
that opens connections and sends one header line every few seconds holds each of them forever. ``GuardedH11``
(uvicorn's h11 protocol with one timer more) closes a connection whose request line and headers have not all
arrived ``HEADER_TIMEOUT_SECONDS`` after its first byte (or after the connection opened, for one that sends
nothing), with a ``408``. Bodies have their own deadline, applied while they are read (``bodies.py``).

``uvicorn_config`` is how the CLI runs the server: these limits, at most ``max_connections`` connections at once
(beyond that, new requests get 503), and forwarded headers (``X-Forwarded-For``/``-Proto``) trusted only from the
proxies named by ``--forwarded-allow-ips`` (none by default; uvicorn would otherwise trust them from loopback).
WebSockets (the realtime API's ``/v1/realtime/connect``) use the ``websockets`` library's sans-I/O protocol: frames
from clients of at most ``WS_MAX_MESSAGE_BYTES`` (they only send subscribe/unsubscribe requests), pings every
``WS_PING_SECONDS``, and no per-message compression (a zlib context per connection costs more memory than realtime
messages save).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from stepline.server.bodies import BODY_TIMEOUT_SECONDS

__all__ = ["HEADER_TIMEOUT_SECONDS", "KEEP_ALIVE_SECONDS", "MAX_CONNECTIONS", "GuardedH11", "uvicorn_config"]

log = logging.getLogger("stepline.server")
HEADER_TIMEOUT_SECONDS = float(os.environ.get("STEPLINE_HEADER_TIMEOUT", "10") or 10)
KEEP_ALIVE_SECONDS = 5.0
MAX_CONNECTIONS = 1000
MAX_HEADER_BYTES = 64 * 1024
WS_MAX_MESSAGE_BYTES = 64 * 1024
WS_PING_SECONDS = 20.0


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request head takes longer than ``header_timeout`` or whose
    body takes longer than ``body_timeout``, and those answered before their body arrived."""

    header_timeout = HEADER_TIMEOUT_SECONDS
    body_timeout = BODY_TIMEOUT_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE and data:
            self._arm()  # a request head has begun (or the connection is new): it must complete in time
        else:
            self._disarm()
        if state is h11.SEND_BODY:
            if self._body_timer is None:  # the body must arrive in time, even once the request was answered
                self._body_timer = self.loop.call_later(self.body_timeout, self.transport.close)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            self.transport.close()  # answered (a refusal) before the body arrived: nothing more is read

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE:
            body = b"the request head did not arrive in time\n"
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        self.transport.close()


FD_RESERVE = 128  # descriptors kept for the database, app calls, logs and the sandbox


def connections_within_fd_limit(max_connections: int) -> int:
    """Raise this process's open-file limit to its hard limit (a systemd unit's default soft limit is 1,024) and
    return how many connections fit under it: a server that runs out of descriptors cannot even answer 503, and
    asyncio logs a traceback for every refused accept."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (ValueError, OSError):
        return max_connections
    room = soft - FD_RESERVE if soft != resource.RLIM_INFINITY else max_connections
    if max_connections > room:
        log.warning("--max-connections %d is above what the open-file limit (%d) leaves room for: serving at "
                    "most %d connections; raise the limit (LimitNOFILE=, ulimit -n)",
                    max_connections, soft, room)  # fmt: skip
        return max(10, room)
    return max_connections


def uvicorn_config(app: Any, *, forwarded_allow_ips: tuple[str, ...] = (), max_connections: int = MAX_CONNECTIONS,
                   **options: Any) -> uvicorn.Config:  # fmt: skip
    """The server's uvicorn settings (``options`` adds or overrides others, e.g. ``log_level``); the connection
    cap fits the process's open-file limit (``connections_within_fd_limit``)."""
    max_connections = connections_within_fd_limit(max_connections)
    settings: dict[str, Any] = {
        "http": GuardedH11,
        "ws": "websockets-sansio",
        "ws_max_size": WS_MAX_MESSAGE_BYTES,
        "ws_ping_interval": WS_PING_SECONDS,
        "ws_ping_timeout": WS_PING_SECONDS,
        "ws_per_message_deflate": False,
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "limit_concurrency": max_connections,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "proxy_headers": bool(forwarded_allow_ips),
        "forwarded_allow_ips": ",".join(forwarded_allow_ips) if forwarded_allow_ips else "",
        "server_header": False,
    }
    settings.update(options)
    return uvicorn.Config(app, **settings)


class QuietServer(uvicorn.Server):
    """uvicorn's server, ticking once a second instead of ten times (an idle node's CPU: issue 19's 0.5 % of a
    core), and stopping at once when asked: ``request_exit()`` or a signal ends the wait for the next tick.
    ``exit_requested`` is what the live requests and streams wait on to end at shutdown, without polling."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit_requested = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def request_exit(self) -> None:
        self.should_exit = True
        self.exit_requested.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:  # a signal handler: wake the loop through its self-pipe
            self._loop.call_soon_threadsafe(self.exit_requested.set)

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        should_exit = await self.on_tick(0)
        while not should_exit:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exit_requested.wait(), 1.0)
            should_exit = await self.on_tick(0)  # every tick is a second: the Date header, the notify callback
