"""Live updates: the change hub (one per server, idle without listeners) and the server-sent events stream over a
real uvicorn server, which ends its streams when the server stops."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn

from stepline import Stepline
from stepline.server.app import create_app
from stepline.server.config import ServerConfig
from stepline.server.dashboard.sse import ChangeHub

from ..backends import Backend
from ..integration.helpers import drain
from .dash_app import define


async def _next_event(lines: AsyncIterator[str], name: str, timeout: float = 5.0) -> str:
    async def read() -> str:
        async for line in lines:
            if line == f"event: {name}":
                data = await anext(lines)
                return data.removeprefix("data: ")
        raise AssertionError(f"the stream ended before a {name!r} event")

    return await asyncio.wait_for(read(), timeout)


async def test_hub_reads_nothing_without_listeners_and_wakes_listeners_on_changes(
    client: Stepline, backend: Backend
) -> None:
    define(client)
    await client.ready()
    hub = ChangeHub(client.engine, poll_interval=0.05, min_gap=0.01)
    async with hub.running():
        await client.send({"name": "dash/greet"})
        await drain(client)
        await asyncio.sleep(0.2)
        assert hub.checks == 0 and hub.version == 0  # nobody listens: no reads at all

        changes = hub.changes(heartbeat=0.1)
        first = await asyncio.wait_for(anext(changes), 2)  # joining makes a first check: pages refresh once
        assert first == 1
        checks = hub.checks
        await asyncio.sleep(0.3)
        if backend.name == "sqlite":  # (PostgreSQL's marker also moves with other databases of the test cluster)
            assert hub.version == 1  # nothing changed: only the cheap marker was read
        assert hub.checks > checks
        assert await asyncio.wait_for(anext(changes), 2) is None  # a heartbeat

        await client.send({"name": "dash/greet"})
        version = None
        while version is None:
            version = await asyncio.wait_for(anext(changes), 2)
        assert version >= 2
        hub.close()
        assert [v async for v in changes] == []
    assert hub.clients == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_stream_pushes_changes_and_ends_when_the_server_stops(client: Stepline) -> None:
    define(client)
    await client.ready()
    app = create_app(client.engine, ServerConfig(discovery=False, poll=False))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    app.state.shutdown_probe = lambda: server.should_exit
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
            http.stream("GET", "/dashboard/stream") as resp,
        ):
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.aiter_lines()
            await _next_event(lines, "hello")
            await _next_event(lines, "change")  # the first check after joining
            await client.send({"name": "dash/greet"})
            await drain(client)
            assert int(await _next_event(lines, "change")) >= 2
            stopped = time.monotonic()
            server.should_exit = True
            rest = [line async for line in lines]
            assert "event: change" not in rest
            assert time.monotonic() - stopped < 3
        await asyncio.wait_for(serving, 10)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
