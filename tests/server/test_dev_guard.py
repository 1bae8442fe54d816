"""``stepline dev`` refuses what a web page could make a developer's browser do to it (cross-site requests, DNS
rebinding), while the SDKs, the CLI and its own dashboard keep working."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stepline import Stepline
from stepline.server.config import ServerConfig

from .asgi import asgi_server

EVIL_URL = "http://127.0.0.1:9/api/inngest"
STEP = {"id": "step", "name": "step", "runtime": {"type": "http", "url": EVIL_URL + "?fnId=x"}}
REGISTER = {
    "url": EVIL_URL,
    "appName": "evil",
    "functions": [
        {"id": "evil-steal", "name": "steal", "triggers": [{"event": "shop/card.added"}], "steps": {"step": STEP}}
    ],
}


@pytest.fixture
async def dev(client: Stepline) -> AsyncIterator[httpx.AsyncClient]:
    config = ServerConfig(discovery=False, poll=False, allowed_hosts=("dev.box",))
    async with asgi_server(client, config, base_url="http://127.0.0.1:8288") as http:
        yield http


CROSS_SITE: list[dict[str, str]] = [
    {"origin": "https://evil.example", "content-type": "text/plain"},
    {"origin": "null", "content-type": "text/plain"},
    {"sec-fetch-site": "cross-site", "content-type": "text/plain"},
    {"sec-fetch-site": "same-site", "origin": "http://127.0.0.1:3000"},  # another port is another origin
]


@pytest.mark.parametrize("headers", CROSS_SITE)
async def test_cross_site_state_changes_are_refused(dev: httpx.AsyncClient, client: Stepline,
                                                    headers: dict[str, str]) -> None:  # fmt: skip
    for path, body in (("/fn/register", REGISTER), ("/e/key", {"name": "shop/card.added", "data": {"card": "4111"}}),
                       ("/v1/apps/sync", {"url": "http://127.0.0.1:9/api/inngest"})):  # fmt: skip
        resp = await dev.post(path, content=json.dumps(body).encode(), headers=headers)
        assert resp.status_code == 403, (path, resp.text)
        assert "refused" in resp.json()["error"]
    assert await client.store.list_functions() == []
    assert await client.store.list_events(None, 10) == []


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8288", "127.0.0.1.evil.example", "10.0.0.5:8288"])
async def test_rebound_host_names_are_refused_even_for_reads(dev: httpx.AsyncClient, host: str) -> None:
    for method, path in (("GET", "/v1/events"), ("GET", "/dashboard/runs"), ("POST", "/e/key")):
        resp = await dev.request(method, path, headers={"host": host}, json={"name": "x/y"})
        assert resp.status_code == 403 and "--allowed-host" in resp.json()["error"], (method, path, host)


@pytest.mark.parametrize("host", ["127.0.0.1:8288", "localhost:8288", "[::1]:8288", "app.localhost", "dev.box:8288"])
async def test_loopback_and_allowed_names_work(dev: httpx.AsyncClient, host: str) -> None:
    assert (await dev.get("/v1/events", headers={"host": host})).status_code == 200


async def test_sdk_cli_and_same_origin_dashboard_requests_work(dev: httpx.AsyncClient, client: Stepline) -> None:
    # What the SDKs and the CLI send: no Origin, no Sec-Fetch-Site, whatever the content type.
    sdk: Any = await dev.post("/e/key", content=b'{"name": "shop/card.added"}', headers={"content-type": "text/plain"})
    assert sdk.status_code == 200
    # The dashboard's own form, from its own page.
    page = await dev.get("/dashboard/events")
    csrf = re.search(r'<meta name="csrf-token" content="([^"]*)">', page.text).group(1)  # type: ignore[union-attr]
    form = {"csrf": csrf, "confirmed": "1", "name": "shop/x", "data": "{}"}
    same_origin = {"origin": "http://127.0.0.1:8288", "sec-fetch-site": "same-origin"}
    resp = await dev.post("/dashboard/events/send", data=form, headers=same_origin)
    assert resp.status_code == 303, resp.text[:500]
    assert len(await client.store.list_events(None, 10)) >= 2
