"""Inngest's realtime API on the server (``pkg/execution/realtime/api.go``), on the process's ``RealtimeHub``.

- ``POST /v1/realtime/publish?channel=&topic=[&topic=...][&run_id=]``: a JSON body (anything else is sent as a
  string, as Inngest does) is one message per topic; a ``text/stream`` body is a stream: ``datastream-start`` (data:
  the stream id), 1 KB ``chunk`` messages as the body arrives, ``datastream-end``.
- ``POST /v1/realtime/publish/tee?channel=``: raw bytes to the channel's ``$stream`` topic, sent to subscribers as
  they are.
- ``POST /v1/realtime/token``: ``[{"channel", "name", "kind": "run"}]`` -> ``201 {"jwt"}``, a subscription token.
- ``GET /v1/realtime/sse?token=`` (server-sent events: ``id:``/``data:`` lines, ``:`` keepalives) and the WebSocket
  ``GET /v1/realtime/connect?token=`` (one JSON text frame per message; the client may send ``{"kind": "sub", "data":
  <token>}`` and ``{"kind": "unsub", "data": [topics]}``). Both take ``channel``/``topic`` to narrow the token's
  topics (a pair the token does not grant: 403) and ``since=<id>`` (or ``Last-Event-ID``) to replay the kept
  messages after that id first (``since=0``: all of them).

Auth: a token travels as ``Authorization: Bearer <jwt>`` or ``?token=``. Publishing and minting need the signing key
(``stepline start``) or, for publishing, a token with the ``publish`` claim; ``stepline dev`` is open. Subscribing
needs a token, except in dev from a non-browser client or a page of the server's own origin (channel and topic in
the query). Missing, forged or expired tokens: 401; a token that does not grant the topics asked for: 403.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from stepline.core.ids import new_ulid
from stepline.protocol.signing import bearer_matches
from stepline.realtime import tokens
from stepline.realtime.browser import browser_script
from stepline.realtime.hub import RealtimeHub, Subscription, SubscriptionClosed
from stepline.realtime.messages import (
    MAX_MESSAGE_BYTES,
    STREAM_TOPIC,
    Delivery,
    PublishError,
    check_channel,
    check_topic,
    closing_text,
    new_message,
)
from stepline.server.bodies import BodyTimeout, BodyTooLarge, InvalidBody, parse_json, read_body, stream_body
from stepline.server.errors import error_response
from stepline.server.state import ServerState, state_of
from stepline.storage.records import TERMINAL_STATUSES, NewRealtimeMessage

log = logging.getLogger("stepline.server.realtime")

CHUNK_BYTES = 1024  # Inngest's StreamingChunkSize
MAX_CHUNKS = 1000  # Inngest's MaxStreamingChunks: a stream carries at most this many chunks
MAX_STREAM_BYTES = CHUNK_BYTES * MAX_CHUNKS
TOKEN_BODY_LIMIT = 64 * 1024
STREAM_IDLE_SECONDS = 60.0  # a streamed publish that sends nothing for this long is cut off
KEEPALIVE_SECONDS = 15.0  # Inngest's KeepaliveInterval
SSE_MAX_SECONDS = 15 * 60  # Inngest's SSEConnectionTimeout: then the client reconnects (the browser script does)
SLOW_GRACE_SECONDS = 5.0  # a subscriber disconnected as slow gets this long to take the closing message
WS_CLIENT_MESSAGE_LIMIT = 64 * 1024
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Content-Type"}


class RealtimeHttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _hub(st: ServerState) -> RealtimeHub:
    return st.engine.realtime


def _token_of(headers: Any, query: Any) -> str | None:
    """A realtime JWT from ``Authorization: Bearer`` or ``?token=`` (a bearer that is no JWT is a signing key)."""
    auth = headers.get("authorization") or ""
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip().count(".") == 2:
        return value.strip()
    token = query.get("token")
    return token or None


def _signing_key_ok(st: ServerState, headers: Any) -> bool:
    return st.config.kind == "dev" or bearer_matches(headers.get("authorization"), st.config.signing_keys)


async def _grant(st: ServerState, token: str) -> tokens.Grant:
    try:
        return await _hub(st).verify(token)
    except tokens.TokenError as exc:
        raise RealtimeHttpError(exc.status, str(exc)) from None


async def _authorize_publish(st: ServerState, request: Request) -> None:
    token = _token_of(request.headers, request.query_params)
    if token is not None:
        grant = await _grant(st, token)
        if not grant.publish:
            raise RealtimeHttpError(403, "this realtime token is for subscribing, not for publishing")
        return
    if not _signing_key_ok(st, request.headers):
        raise RealtimeHttpError(401, "authentication required: send Authorization: Bearer <signing key> (or a "
                                     "publish token)")  # fmt: skip


def _handler(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except RealtimeHttpError as exc:
            return error_response(exc.status, exc.message)
        except PublishError as exc:
            return error_response(exc.status, str(exc))
        except BodyTooLarge as exc:
            return error_response(413, str(exc))
        except BodyTimeout as exc:
            return error_response(408, str(exc))

    return wrapped


# --- publishing ---------------------------------------------------------------------------------------------


async def _target(st: ServerState, request: Request) -> tuple[str, list[str], str | None]:
    q = request.query_params
    channel = check_channel(q.get("channel") or "")
    topics = list(dict.fromkeys(check_topic(t) for t in q.getlist("topic")))
    if not topics:
        raise PublishError("the topic query parameter is required (one or more)")
    run_id = q.get("run_id") or None
    if run_id is not None:
        run = await st.engine.store.get_run(run_id)
        if run is None:
            raise RealtimeHttpError(404, f"run {run_id!r} not found")
        if run.status in TERMINAL_STATUSES:
            raise RealtimeHttpError(409, f"run {run_id} has ended ({run.status}): publish while it runs, or "
                                         "without run_id")  # fmt: skip
    return channel, topics, run_id


async def publish(request: Request) -> Response:
    st = state_of(request)
    await _authorize_publish(st, request)
    channel, topics, run_id = await _target(st, request)
    hub, now = _hub(st), st.engine.clock.now_ms()
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "text/stream":
        return await _publish_stream(st, request, channel, topics, run_id)
    raw = await read_body(request, MAX_MESSAGE_BYTES)
    metadata = _metadata(request)
    try:
        data = parse_json(raw)
        data_json = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    except InvalidBody:  # not JSON: sent as a string, as Inngest does
        data_json = json.dumps(raw.decode("utf-8", "replace"), ensure_ascii=False)
    msgs = [new_message(channel, t, None, now, run_id=run_id, metadata=metadata, data_json=data_json) for t in topics]
    ids = await hub.publish(msgs)
    return JSONResponse({"ids": ids})


def _metadata(request: Request) -> Any:
    raw = request.query_params.get("metadata")
    if not raw:
        return None
    try:
        return parse_json(raw.encode(), "the metadata query parameter")
    except InvalidBody as exc:
        raise PublishError(str(exc)) from None


async def _publish_stream(st: ServerState, request: Request, channel: str, topics: list[str],
                          run_id: str | None) -> Response:  # fmt: skip
    """``text/stream``: start, 1 KB chunks as they arrive, end (the end is sent whatever happens)."""
    hub, clock = _hub(st), st.engine.clock
    stream_id = new_ulid()
    metadata = _metadata(request)

    def each(kind: str, data: Any) -> list[NewRealtimeMessage]:
        return [new_message(channel, t, data, clock.now_ms(), kind=kind, run_id=run_id, stream_id=stream_id,
                            metadata=metadata) for t in topics]  # fmt: skip

    await hub.publish(each("datastream-start", stream_id))
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    sent = 0
    try:
        async for piece in stream_body(request, MAX_STREAM_BYTES, idle_timeout=STREAM_IDLE_SECONDS):
            text = decoder.decode(piece)
            chunks = [text[i : i + CHUNK_BYTES] for i in range(0, len(text), CHUNK_BYTES)]
            msgs = [m for c in chunks for m in each("chunk", c)]
            await hub.publish(msgs)
            sent += len(piece)
        tail = decoder.decode(b"", final=True)
        if tail:
            await hub.publish(each("chunk", tail))
    finally:
        await hub.publish(each("datastream-end", stream_id))
    return JSONResponse({"stream_id": stream_id, "bytes": sent})


async def publish_tee(request: Request) -> Response:
    st = state_of(request)
    await _authorize_publish(st, request)
    channel = check_channel(request.query_params.get("channel") or "")
    hub, clock = _hub(st), st.engine.clock
    sent = 0
    async for piece in stream_body(request, MAX_STREAM_BYTES, idle_timeout=STREAM_IDLE_SECONDS):
        await hub.publish([new_message(channel, STREAM_TOPIC, None, clock.now_ms(), raw=piece)])
        sent += len(piece)
    return JSONResponse({"bytes": sent})


async def create_token(request: Request) -> Response:
    st = state_of(request)
    if not _signing_key_ok(st, request.headers):
        raise RealtimeHttpError(401, "authentication required: send Authorization: Bearer <signing key>")
    try:
        body = parse_json(await read_body(request, TOKEN_BODY_LIMIT))
    except InvalidBody as exc:
        raise RealtimeHttpError(400, f"{exc}: must provide a list of topics") from None
    if not isinstance(body, list) or not body:
        raise RealtimeHttpError(400, 'invalid request: must provide a list of topics, [{"channel", "name"}, ...]')
    expires = request.query_params.get("expires_in")
    expires_in: float = tokens.DEFAULT_EXPIRY_S
    if expires:
        if not expires.isdigit() or not 1 <= int(expires[:7]) <= tokens.MAX_EXPIRY_S:
            raise RealtimeHttpError(400, f"expires_in must be whole seconds from 1 to {tokens.MAX_EXPIRY_S}")
        expires_in = int(expires)
    jwt = tokens.mint(await _hub(st).secret(), st.engine.clock.now_ms() // 1000, topics=body, expires_in=expires_in)
    return JSONResponse({"jwt": jwt}, status_code=201)


# --- subscribing --------------------------------------------------------------------------------------------


def _since(query: Any, headers: Any) -> int | None:
    raw = query.get("since")
    if raw is None or raw == "":
        raw = headers.get("last-event-id") or None
    if raw is None:
        return None
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise RealtimeHttpError(400, f"invalid since {str(raw)[:40]!r}: expected a message id (0: every message kept)")
    return int(text)


def _cross_site(headers: Any) -> bool:
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin, host = headers.get("origin"), headers.get("host", "")
    return origin is not None and origin.split("://", 1)[-1].lower() != host.lower()


async def _topics(st: ServerState, headers: Any, query: Any) -> set[tuple[str, str]]:
    """The (channel, topic) pairs a subscription gets: the token's, narrowed by ``channel``/``topic``."""
    wanted_channel = query.get("channel")
    wanted_topics = list(query.getlist("topic"))
    token = _token_of(headers, query)
    if token is None:
        if st.config.kind != "dev":
            raise RealtimeHttpError(401, "a realtime token is required: ?token=<jwt> or Authorization: Bearer <jwt> "
                                         "(POST /v1/realtime/token, or client.realtime_token)")  # fmt: skip
        if _cross_site(headers):
            raise RealtimeHttpError(403, "a page of another site needs a realtime token to subscribe")
        if not wanted_channel or not wanted_topics:
            raise RealtimeHttpError(400, "without a token, give channel and topic (dev server)")
        try:
            return {(check_channel(wanted_channel), check_topic(t)) for t in wanted_topics}
        except PublishError as exc:
            raise RealtimeHttpError(400, str(exc)) from None
    grant = await _grant(st, token)
    if not grant.topics:
        raise RealtimeHttpError(403, "this realtime token grants no topic to subscribe to")
    granted = set(grant.topics)
    if wanted_channel is None and not wanted_topics:
        return granted
    asked = {(c, t) for c, t in granted if (wanted_channel is None or c == wanted_channel)
             and (not wanted_topics or t in wanted_topics)}  # fmt: skip
    missing = [f"{wanted_channel or '*'}/{t}" for t in wanted_topics if not any(p[1] == t for p in asked)]
    if not asked or missing:
        shown = ", ".join(missing) or f"channel {wanted_channel!r}"
        raise RealtimeHttpError(403, f"the realtime token does not grant {shown}")
    return asked


async def subscribe_sse(request: Request) -> Response:
    st = state_of(request)
    try:
        keys = await _topics(st, request.headers, request.query_params)
        since = _since(request.query_params, request.headers)
    except RealtimeHttpError as exc:
        return _cors_error(exc.status, exc.message)
    try:
        sub = await _hub(st).subscribe(keys, since=since)
    except SubscriptionClosed as exc:
        return _cors_error(503, exc.reason)
    return SseStream(sub)


def _cors_error(status: int, message: str) -> Response:
    """An error a page of another origin can read (EventSource reports none, ``fetch`` does)."""
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=CORS)


class SseStream(Response):
    """The subscription as server-sent events. It ends when the client goes (noticed at once: the request's
    ``http.disconnect``), when the hub ends the subscription (slow subscriber, shutdown: a last ``closing``
    message), or after ``SSE_MAX_SECONDS``."""

    def __init__(self, sub: Subscription) -> None:
        self.status_code = 200
        self.background = None
        headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
                   "x-accel-buffering": "no", **{k.lower(): v for k, v in CORS.items()}}  # fmt: skip
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = asyncio.ensure_future(self._write(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        stuck = asyncio.ensure_future(_stuck_after_end(self.sub))
        try:
            await asyncio.wait([writer, gone, stuck], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.sub.close()
            for task in (gone, stuck, writer):
                task.cancel()
            await asyncio.gather(writer, gone, stuck, return_exceptions=True)

    async def _write(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b":\n\n", "more_body": True})
        deadline = time.monotonic() + SSE_MAX_SECONDS
        while True:
            try:
                d = await self.sub.get(timeout=KEEPALIVE_SECONDS)
            except SubscriptionClosed as exc:
                end = f"data: {closing_text(exc.reason)}\n\n".encode()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SLOW_GRACE_SECONDS):
                        await send({"type": "http.response.body", "body": end, "more_body": False})
                return
            body = b":\n\n" if d is None else d.sse
            await send({"type": "http.response.body", "body": body, "more_body": True})
            if time.monotonic() > deadline:
                self.sub.end(f"the connection reached its {SSE_MAX_SECONDS // 60} minute limit: subscribe again "
                             "(with since=<the last id>)")  # fmt: skip


async def _stuck_after_end(sub: Subscription) -> None:
    """Returns when the hub ended the subscription and the writer still has not finished after a grace period: the
    client takes nothing (its connection's buffers are full), so the connection is dropped."""
    await sub.ended.wait()
    await asyncio.sleep(SLOW_GRACE_SECONDS + 1)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def subscribe_ws(ws: WebSocket) -> None:
    st: ServerState = ws.app.state.stepline
    try:
        keys = await _topics(st, ws.headers, ws.query_params)
        since = _since(ws.query_params, ws.headers)
        sub = await _hub(st).subscribe(keys, since=since)
    except RealtimeHttpError as exc:
        await ws.send_denial_response(error_response(exc.status, exc.message))
        return
    except SubscriptionClosed as exc:
        await ws.send_denial_response(error_response(503, exc.reason))
        return
    await ws.accept()
    writer = asyncio.ensure_future(_ws_write(ws, sub))
    reader = asyncio.ensure_future(_ws_read(st, ws, sub))
    stuck = asyncio.ensure_future(_stuck_after_end(sub))
    try:
        await asyncio.wait([writer, reader, stuck], return_when=asyncio.FIRST_COMPLETED)
    finally:
        sub.close()
        for task in (writer, reader, stuck):
            task.cancel()
        await asyncio.gather(writer, reader, stuck, return_exceptions=True)


async def _ws_write(ws: WebSocket, sub: Subscription) -> None:
    while True:
        try:
            d: Delivery | None = await sub.get()
        except SubscriptionClosed as exc:
            slow = exc.reason.startswith("slow subscriber")
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SLOW_GRACE_SECONDS):
                    await ws.send_text(closing_text(exc.reason))
                    await ws.close(1008 if slow else 1001, exc.reason[:120])
            return
        if d is not None:
            await ws.send_text(d.text)


async def _ws_read(st: ServerState, ws: WebSocket, sub: Subscription) -> None:
    """``sub`` (data: a token: add its topics) and ``unsub`` (data: topics) messages; anything else is ignored."""
    while True:
        try:
            text = await ws.receive_text()
        except (WebSocketDisconnect, KeyError, RuntimeError):
            return  # closed, or a binary frame (not handled, as Inngest)
        if len(text) > WS_CLIENT_MESSAGE_LIMIT:
            continue
        try:
            msg = json.loads(text)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if msg.get("kind") == "sub" and isinstance(msg.get("data"), str):
            try:
                sub.add((await _hub(st).verify(msg["data"])).topics)
            except tokens.TokenError as exc:
                log.info("realtime WebSocket: a sub message with a bad token: %s", exc)
        elif msg.get("kind") == "unsub" and isinstance(msg.get("data"), list):
            sub.remove((str(t.get("channel")), str(t.get("name"))) for t in msg["data"] if isinstance(t, dict))


async def browser_js(request: Request) -> Response:
    return Response(browser_script(), media_type="text/javascript",
                    headers={"Cache-Control": "public, max-age=300", **CORS})  # fmt: skip


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/realtime/publish", _handler(publish), methods=["POST"]),
        Route("/v1/realtime/publish/tee", _handler(publish_tee), methods=["POST"]),
        Route("/v1/realtime/token", _handler(create_token), methods=["POST"]),
        Route("/v1/realtime/sse", subscribe_sse, methods=["GET"]),
        WebSocketRoute("/v1/realtime/connect", subscribe_ws),
        Route("/v1/realtime/stepline-realtime.js", browser_js, methods=["GET"]),
    ]
