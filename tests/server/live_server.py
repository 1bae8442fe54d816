"""The whole server app on a real socket, served by uvicorn with the CLI's settings (``http_limits.uvicorn_config``:
WebSockets, header timeouts) on the test's own event loop, with an in-process worker for the client's functions.

SSE streams and WebSockets need a real connection (httpx's ASGI transport buffers whole responses and has no
WebSockets); running uvicorn on the test's loop keeps the engine, its fake clock and the hub on one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from stepline import Stepline
from stepline.server.app import create_app
from stepline.server.config import ServerConfig
from stepline.server.http_limits import uvicorn_config
from stepline.server.live import LiveRequests
from stepline.server.state import ServerState


@dataclass
class LiveServer:
    url: str
    app: Starlette
    server: uvicorn.Server
    http: httpx.AsyncClient

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    @property
    def state(self) -> ServerState:
        st: ServerState = self.app.state.stepline
        return st

    @property
    def live(self) -> LiveRequests:
        assert self.state.live is not None
        return self.state.live


@contextlib.asynccontextmanager
async def live_server(client: Stepline, *, worker: bool = True, **config: Any) -> AsyncIterator[LiveServer]:
    await client.ready()
    cfg = ServerConfig(**{"discovery": False, "poll": False, **config})
    app = create_app(client.engine, cfg, run_worker=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    runner = client.worker(poll_interval=0.05) if worker else None
    working = asyncio.create_task(runner.run()) if runner is not None else None
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield LiveServer(f"http://127.0.0.1:{port}", app, server, http)
    finally:
        if runner is not None and working is not None:
            runner.stop()
            await working
        server.should_exit = True
        await asyncio.wait_for(serving, 15)
        sock.close()
