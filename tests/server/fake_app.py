"""A deliberately misbehaving app and the real server around it, for tests of bad apps and bad registrations.

- ``FakeApp``: a raw ASGI app served by uvicorn on a loopback port in a background thread (real sockets). It
  records every request and answers from a per-function script (``app.script(fn_id, reply, ...)``): garbage,
  errors, hanging until the caller hangs up, waiting for the test to release it. ``stop()`` / ``start()`` keep
  the port, so "the app is down" is a real connection refused at the same URL.
- ``server_stack``: ``create_app(engine, config, run_worker=False)`` with its real lifespan (the HTTP client with
  ``call_timeout``, the syncer), served by uvicorn on a real socket in the test's event loop, and an
  ``HttpWorker`` on the same state that the test drives with the fake clock (``drain`` / ``advance``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from stepline import FakeClock, Stepline
from stepline.core.backoff import Backoff
from stepline.core.ids import hash_step_id
from stepline.protocol import signing
from stepline.server.app import create_app
from stepline.server.config import ServerConfig
from stepline.server.http_worker import HttpWorker
from stepline.server.outbound import Lookup
from stepline.server.state import ServerState
from stepline.storage.records import RunFilter, RunRecord, StoredEvent

from ..eventually import eventually, eventually_sync
from ..pg_cluster import free_port

SDK = "py:v0.5.19"
APP_ID = "shop"
SIGNING_KEY = "signkey-test-" + "ab" * 32
FALLBACK_KEY = "signkey-test-" + "cd" * 32
# Retries 10 s, 20 s, 40 s after failed attempts 0, 1, 2: no jitter, so due times are exact.
BACKOFF = Backoff(schedule=(dt.timedelta(seconds=10), dt.timedelta(seconds=20), dt.timedelta(seconds=40)),
                  jitter=dt.timedelta(0))  # fmt: skip


# --- what the app answers ---
@dataclass
class Reply:
    status: int = 200
    body: bytes = b"null"
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # wait this long, or until the caller hangs up, before answering
    release: threading.Event | None = None  # wait until the test sets it before answering
    chunks: int = 0  # stream the body this many times (chunked), stopping when the caller hangs up
    interval: float = 0.0  # seconds between streamed chunks
    signed: bool = True  # signed with the app's signing key, if it has one (SDK answers only)


def sdk(status: int, payload: Any, **headers: str) -> Reply:
    """An answer with the SDK's headers and a JSON body."""
    return Reply(status, json.dumps(payload).encode(), {"x-inngest-sdk": SDK, "content-type": "application/json",
                                                         **headers})  # fmt: skip


def sdk_raw(status: int, body: bytes, **headers: str) -> Reply:
    """The SDK's headers with any body."""
    return Reply(status, body, {"x-inngest-sdk": SDK, "content-type": "application/json", **headers})


def raw(status: int, body: str | bytes, content_type: str = "text/plain", **headers: str) -> Reply:
    """Not an SDK: no X-Inngest-SDK header."""
    data = body.encode() if isinstance(body, str) else body
    return Reply(status, data, {"content-type": content_type, **headers})


def complete(value: Any) -> Reply:
    return sdk(200, value)


def step_op(user_id: str, data: Any) -> dict[str, Any]:
    return {"op": "StepRun", "id": hash_step_id(user_id), "name": user_id, "displayName": user_id, "data": data}


def ops(*items: dict[str, Any], **headers: str) -> Reply:
    return sdk(206, list(items), **headers)


def fn_error(name: str, message: str, status: int = 500, **headers: str) -> Reply:
    return sdk(status, {"name": name, "message": message, "stack": f"{name}: {message}\n    at handler"}, **headers)


@dataclass
class Call:
    """One request the app received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def fn_id(self) -> str | None:
        return self.query.get("fnId")

    @property
    def step_id(self) -> str | None:
        return self.query.get("stepId")


Script = Reply | Callable[[Call], Reply | Awaitable[Reply]]


class FakeApp:
    """An app at ``self.url`` that answers each function's calls from its script (the last entry repeats)."""

    def __init__(self, path: str = "/api/inngest") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.calls: list[Call] = []
        self.scripts: dict[str | None, deque[Script]] = {}
        self.on_put: Script = raw(404, "no PUT handler")
        self.streamed: list[int] = []  # per streamed answer: the chunks sent before the caller hung up
        self.signing_key: str | None = None
        self.now_s: Callable[[], int] = lambda: int(time.time())
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- scripting ---
    def sign_answers(self, key: str, now_s: Callable[[], int]) -> None:
        """Sign every SDK answer (an X-Inngest-SDK header, not streamed) as SDKs in cloud mode do."""
        self.signing_key, self.now_s = key, now_s

    def script(self, fn_id: str | None, *replies: Script) -> None:
        """What the calls of ``fn_id`` (None: any function without a script) get, in order; the last repeats."""
        self.scripts[fn_id] = deque(replies)

    def calls_of(self, fn_id: str) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and c.fn_id == fn_id]

    def _next(self, call: Call) -> Script:
        if call.method == "PUT":
            return self.on_put
        queue = self.scripts.get(call.fn_id) or self.scripts.get(None)
        if not queue:
            return raw(500, f"no script for {call.fn_id!r}")
        return queue.popleft() if len(queue) > 1 else queue[0]

    # --- ASGI ---
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope["query_string"].decode(), keep_blank_values=True))
        call = Call(scope["method"], scope["path"], query, headers, body, time.monotonic())
        self.calls.append(call)
        script = self._next(call)
        reply = script(call) if callable(script) else script
        if inspect.isawaitable(reply):
            reply = await reply
        gone = asyncio.Event()

        async def watch() -> None:  # the next message after the body is the caller hanging up
            with contextlib.suppress(Exception):
                if (await receive())["type"] == "http.disconnect":
                    gone.set()

        watcher = asyncio.create_task(watch())
        try:
            if reply.hang:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), reply.hang)
            if reply.release is not None:
                while not reply.release.is_set() and not gone.is_set():
                    await asyncio.sleep(0.005)
            if gone.is_set():
                return
            out = dict(reply.headers)
            if self.signing_key and reply.signed and not reply.chunks and "x-inngest-sdk" in out:
                out.setdefault("x-inngest-signature", signing.sign(reply.body, self.signing_key, self.now_s()))
            headers_out = [(k.encode(), v.encode()) for k, v in out.items()]
            await send({"type": "http.response.start", "status": reply.status, "headers": headers_out})
            if not reply.chunks:
                await send({"type": "http.response.body", "body": reply.body})
                return
            sent = 0
            for _ in range(reply.chunks):
                if gone.is_set():
                    break
                await send({"type": "http.response.body", "body": reply.body, "more_body": True})
                sent += 1
                await asyncio.sleep(reply.interval)
            self.streamed.append(sent)
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()

    # --- serving ---
    def start(self) -> FakeApp:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="warning", log_config=None,
                                lifespan="off", ws="none", timeout_graceful_shutdown=2)  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"fake-app-{self.port}", daemon=True)
        thread.start()

        def started() -> bool:
            assert thread.is_alive(), "the fake app's server stopped"
            return bool(server.started)

        eventually_sync("the fake app to start", started, 10, interval=0.005)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            assert not self._thread.is_alive(), "the fake app did not stop"
        self._server = self._thread = None

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)


# --- function configs and register bodies, as the SDKs send them ---
def fn_config(app_url: str, slug: str, *, event: str = "shop/order", retries: int = 1, app_id: str = APP_ID,
              **extra: Any) -> dict[str, Any]:  # fmt: skip
    fid = f"{app_id}-{slug}"
    return {
        "id": fid,
        "name": slug,
        "triggers": [{"event": event}],
        "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": retries},
                           "runtime": {"type": "http", "url": f"{app_url}?fnId={fid}&stepId=step"}}},
        **extra,
    }  # fmt: skip


def register_body(app_url: str, functions: list[dict[str, Any]], *, app_id: str = APP_ID,
                  name_key: str = "appName", **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"url": app_url, "deployType": "ping", name_key: app_id, "sdk": SDK, "v": "0.1", "framework": "fast_api",
            "capabilities": {"trust_probe": "v1"}, "functions": functions, **extra}  # fmt: skip


def registers_on_put(server_url: str, body: dict[str, Any], bearer: str | None = None) -> Script:
    """The app's PUT handler: POST ``body`` to the server's /fn/register and relay its answer (as the JS SDK)."""

    async def handle(call: Call) -> Reply:
        headers = {"x-inngest-sdk": SDK, "x-inngest-framework": "fast_api"}
        if call.headers.get("x-inngest-server-kind"):
            headers["x-inngest-expected-server-kind"] = call.headers["x-inngest-server-kind"]
        if bearer:
            headers["authorization"] = f"Bearer {bearer}"
        async with httpx.AsyncClient() as http:
            res = await http.post(f"{server_url}/fn/register", json=body, headers=headers)
        return sdk(res.status_code, res.json())

    return handle


# --- the server ---
@dataclass
class Stack:
    client: Stepline
    clock: FakeClock
    st: ServerState
    worker: HttpWorker
    url: str
    api: httpx.AsyncClient
    caplog: pytest.LogCaptureFixture

    @property
    def store(self) -> Any:
        return self.client.engine.store

    async def register(self, body: Any, **headers: str) -> httpx.Response:
        if isinstance(body, bytes):
            return await self.api.post("/fn/register", content=body, headers=headers)
        return await self.api.post("/fn/register", json=body, headers=headers)

    async def send(self, name: str = "shop/order", data: dict[str, Any] | None = None) -> str:
        res = await self.api.post("/e/dev", json={"name": name, "data": data or {}})
        assert res.status_code == 200, res.text
        [event_id] = res.json()["ids"]
        return str(event_id)

    async def runs_of(self, event_id: str) -> dict[str, RunRecord]:
        """The runs an event started, by function id."""
        runs = await self.store.list_runs(RunFilter(event_id=event_id, limit=1000))
        return {r.function_id: r for r in runs}

    async def run(self, run_id: str) -> RunRecord:
        run = await self.store.get_run(run_id)
        assert run is not None
        return run

    async def drain(self) -> None:
        """Execute everything due now, then check that the worker and the executor logged no crash."""
        await self.worker.run_until_idle()
        # (A run that fails for good is an ERROR of stepline.runs: what the function did, not a crash.)
        crashes = [
            r
            for r in self.caplog.records
            if r.name.startswith("stepline") and r.name != "stepline.runs" and r.levelno >= logging.ERROR
        ]
        assert not crashes, "the worker logged a crash: " + "\n".join(
            f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in crashes
        )

    async def advance(self, seconds: float) -> None:
        self.clock.advance(dt.timedelta(seconds=seconds))
        await self.drain()

    def now(self) -> int:
        return self.clock.now_ms()

    async def events(self, name: str) -> list[StoredEvent]:
        return list(await self.store.list_events(name, 1000))


@contextlib.asynccontextmanager
async def server_stack(client: Stepline, clock: FakeClock, caplog: pytest.LogCaptureFixture, config: ServerConfig,
                       outbound_lookup: Lookup | None = None) -> AsyncIterator[Stack]:  # fmt: skip
    app = create_app(client.engine, config, run_worker=False, outbound_lookup=outbound_lookup)
    async with app.router.lifespan_context(app):
        st: ServerState = app.state.stepline
        worker = HttpWorker(st)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None,
                                               lifespan="off", ws="none"))  # fmt: skip
        task = asyncio.create_task(server.serve())
        try:

            def started() -> bool:
                assert not task.done(), "the server stopped"
                return bool(server.started)

            await eventually("the server to start", started, 10, interval=0.005)
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=30) as api:
                yield Stack(client, clock, st, worker, url, api, caplog)
        finally:
            server.should_exit = True
            await task
            worker.close()


MakeStack = Callable[..., Awaitable[Stack]]


def quiet_config(**options: Any) -> ServerConfig:
    """A dev server that does not discover or re-sync on its own during a test; exact backoff."""
    options.setdefault("discovery", False)
    options.setdefault("poll_interval", 3600.0)
    options.setdefault("backoff", BACKOFF)
    return ServerConfig(**options)


@contextlib.asynccontextmanager
async def stack_factory(
    client: Stepline, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[MakeStack]:
    """``await make(**server_config_options)``: a running server stack, stopped at the end."""
    async with contextlib.AsyncExitStack() as exits:

        async def make(**options: Any) -> Stack:
            lookup = options.pop("outbound_lookup", None)
            return await exits.enter_async_context(server_stack(client, clock, caplog, quiet_config(**options),
                                                                lookup))  # fmt: skip

        yield make
