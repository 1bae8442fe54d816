"""The dashboard over HTTP: the whole server app (``create_app``, its lifespan running) on the store of the backend
under test, driven through ``httpx.ASGITransport``; the test functions run in-process with a fake clock."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from stepline import FakeClock, Stepline
from stepline.server.app import create_app
from stepline.server.config import ServerConfig

from ..integration.helpers import drain
from .dash_app import _seen, _tries, define

ADMIN_TOKEN = "let-me-in-" + "x" * 20
_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]*)">')


class Dash:
    """An HTTP client of one server app, with the helpers the tests share."""

    def __init__(self, http: httpx.AsyncClient, client: Stepline, clock: FakeClock) -> None:
        self.http = http
        self.client = client
        self.clock = clock

    async def page(self, path: str, status: int = 200, **kw: Any) -> str:
        resp = await self.http.get(path, **kw)
        assert resp.status_code == status, f"GET {path}: {resp.status_code} {resp.text[:2000]}"
        return resp.text

    async def csrf(self, path: str = "/dashboard/runs") -> str:
        match = _CSRF.search(await self.page(path))
        assert match and match.group(1), "the page carries no CSRF token"
        return match.group(1)

    async def act(self, path: str, expect: int = 303, *, confirmed: bool = True, csrf: str | None = None,
                  **fields: str) -> httpx.Response:  # fmt: skip
        form = {"csrf": await self.csrf() if csrf is None else csrf, **fields}
        if confirmed:
            form["confirmed"] = "1"
        resp = await self.http.post(path, data=form)
        assert resp.status_code == expect, f"POST {path}: {resp.status_code} {resp.text[:2000]}"
        return resp

    async def send(self, name: str, data: dict[str, Any] | None = None) -> str:
        [event_id] = await self.client.send({"name": name, "data": data or {}})
        await drain(self.client)
        return event_id

    async def run_of(self, event_id: str) -> str:
        [run] = await self.client.runs_for_event(event_id)
        return run.id


MakeDash = Callable[..., Awaitable[Dash]]


@pytest.fixture
async def make_dash(client: Stepline, clock: FakeClock) -> AsyncIterator[MakeDash]:
    """``await make_dash(**config)``: the dashboard of ``client``'s engine (dev mode unless told otherwise)."""
    _seen.clear()
    _tries.clear()
    define(client)
    await client.ready()
    async with contextlib.AsyncExitStack() as stack:

        async def make(**config: Any) -> Dash:
            cfg = ServerConfig(**{"discovery": False, "poll": False, **config})
            app = create_app(client.engine, cfg)
            await stack.enter_async_context(app.router.lifespan_context(app))
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://localhost")
            stack.push_async_callback(http.aclose)
            return Dash(http, client, clock)

        yield make


@pytest.fixture
async def dash(make_dash: MakeDash) -> Dash:
    return await make_dash()


@pytest.fixture
async def secured(make_dash: MakeDash) -> Dash:
    """A ``start``-mode server with an admin token."""
    return await make_dash(kind="cloud", signing_keys=("signkey-test-" + "ab" * 32,), admin_token=ADMIN_TOKEN)


async def login(d: Dash, token: str = ADMIN_TOKEN, status: int = 303) -> httpx.Response:
    page = await d.page("/dashboard/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf
    resp = await d.http.post("/dashboard/login", data={"csrf": csrf.group(1), "token": token,
                                                       "next": "/dashboard/functions"})  # fmt: skip
    assert resp.status_code == status, resp.text[:1000]
    return resp
