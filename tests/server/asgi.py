"""The real server app of a client's engine, in process: lifespan started, an httpx client over ASGI (no socket)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from stepline import Stepline
from stepline.server.app import create_app
from stepline.server.config import ServerConfig


@contextlib.asynccontextmanager
async def asgi_server(
    client: Stepline, config: ServerConfig | None = None, *, base_url: str = "http://localhost", timeout: float = 5.0
) -> AsyncIterator[httpx.AsyncClient]:
    """``async with asgi_server(client) as http``: requests to ``create_app`` (no worker, no discovery, no poll
    unless ``config`` says otherwise), its startup and shutdown run around the block."""
    app = create_app(client.engine, config or ServerConfig(discovery=False, poll=False), run_worker=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=timeout) as http:
            yield http
