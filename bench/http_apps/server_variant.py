"""``stepline`` with experimental patches, to measure what a change to the server's calls to apps would bring
before it is made under src/ (``bench/run_http.py --server-variant SPEC``; nothing else uses this).

    BENCH_SERVER_VARIANT=call_limit=64,keepalive=100 python bench/http_apps/server_variant.py dev --port 8288 ...

SPEC is comma-separated ``key=value``:

  connections=N   the server's httpx.AsyncClient gets Limits(max_connections=N) (0: no limit); httpx's default is 100
  keepalive=N     ... and max_keepalive_connections=N (httpx's default is 20: more idle connections are closed)
  call_limit=N    at most N of the client's POSTs in flight (an asyncio.Semaphore around AsyncClient.post and
                  .stream, until the response is closed), so no request waits in httpcore's pool queue
  concurrency=N   the HTTP worker's concurrency (runs executing at once; HttpWorker's default is 500)
  plain_json=1    call bodies with json.dumps instead of RFC 8785 canonical JSON (dev mode only: nothing is signed)
  sniffio=1       sniffio must be importable (from BENCH_VARIANT_PATH, e.g. ``pip install --target /tmp/sn sniffio``):
                  httpcore 1.0.9 imports it on every lock and event it sets up, and a failed import is not cached;
                  anyio >= 4.12 no longer installs it (without it every call pays several failed imports)
  client=aiohttp  the POSTs (the calls to apps) go through an aiohttp.ClientSession (TCPConnector(limit=connections,
                  default 100)) answered as httpx.Response objects; aiohttp must be importable: it is not a
                  dependency of Stepline (``pip install --target /tmp/aio aiohttp``, BENCH_VARIANT_PATH=/tmp/aio)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx

SPEC = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in os.environ.get("BENCH_SERVER_VARIANT", "")
        .split(",") if p.strip())}  # fmt: skip
KNOWN = {"connections", "keepalive", "call_limit", "concurrency", "plain_json", "client", "sniffio"}


def _patch() -> None:
    unknown = set(SPEC) - KNOWN
    if unknown:
        raise SystemExit(f"server_variant.py: unknown key(s) {sorted(unknown)}; known: {sorted(KNOWN)}")
    for extra in filter(None, os.environ.get("BENCH_VARIANT_PATH", "").split(os.pathsep)):
        sys.path.insert(0, extra)  # where the optional libraries of a variant are installed
    if SPEC.get("sniffio") == "1":
        try:
            import sniffio  # noqa: F401
        except ImportError:
            raise SystemExit(
                "server_variant.py: sniffio=1 but sniffio is not importable (BENCH_VARIANT_PATH)"
            ) from None
    if {"connections", "keepalive", "call_limit", "client"} & SPEC.keys():
        base = httpx.AsyncClient
        via_aiohttp = SPEC.get("client", "httpx") == "aiohttp"
        if via_aiohttp:
            import aiohttp

        class Client(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                if "connections" in SPEC or "keepalive" in SPEC:
                    conns = int(SPEC.get("connections", "100")) or None
                    keep = int(SPEC.get("keepalive", "20")) or None
                    kwargs.setdefault("limits", httpx.Limits(max_connections=conns, max_keepalive_connections=keep))
                super().__init__(*args, **kwargs)
                limit = int(SPEC.get("call_limit", "0"))
                self._bench_gate = asyncio.Semaphore(limit) if limit else None
                self._bench_session: Any = None

            async def _via_aiohttp(self, url: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
                if self._bench_session is None:
                    conns = int(SPEC.get("connections", "100"))
                    self._bench_session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=conns), timeout=aiohttp.ClientTimeout(total=300)
                    )
                try:
                    async with self._bench_session.post(url, data=content, headers=headers) as r:
                        body = await r.read()
                        return httpx.Response(r.status, headers=list(r.headers.items()), content=body)
                except TimeoutError as exc:
                    raise httpx.ReadTimeout(str(exc)) from exc
                except aiohttp.ClientError as exc:
                    raise httpx.ConnectError(str(exc)) from exc

            async def post(self, url: Any, **kwargs: Any) -> httpx.Response:
                """The calls to apps, as Stepline made them with ``client.post`` (before the streaming read)."""
                async with self._gate():
                    if via_aiohttp:
                        return await self._via_aiohttp(str(url), kwargs["content"], kwargs["headers"])
                    return await super().post(url, **kwargs)

            @contextlib.asynccontextmanager
            async def stream(self, method: str, url: Any, **kwargs: Any) -> AsyncIterator[httpx.Response]:  # type: ignore[override]
                """The calls to apps, as Stepline makes them with ``client.stream("POST", ...)``."""
                async with self._gate():
                    if via_aiohttp and method == "POST":
                        yield await self._via_aiohttp(str(url), kwargs["content"], kwargs["headers"])
                        return
                    async with super().stream(method, url, **kwargs) as resp:
                        yield resp

            @contextlib.asynccontextmanager
            async def _gate(self) -> AsyncIterator[None]:
                if self._bench_gate is None:
                    yield
                    return
                async with self._bench_gate:
                    yield

            async def aclose(self) -> None:
                if self._bench_session is not None:
                    await self._bench_session.close()
                await super().aclose()

        httpx.AsyncClient = Client  # type: ignore[misc]
    if "concurrency" in SPEC:
        from stepline.server import http_worker

        init = http_worker.HttpWorker.__init__

        def patched_init(self: Any, st: Any, **options: Any) -> None:
            options.setdefault("concurrency", int(SPEC["concurrency"]))
            init(self, st, **options)

        http_worker.HttpWorker.__init__ = patched_init  # type: ignore[method-assign]
    if SPEC.get("plain_json") == "1":
        from stepline.protocol import signing

        signing.canonical_json = lambda value: json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


if __name__ == "__main__":
    _patch()
    from stepline.cli.main import main

    sys.argv[0] = "stepline"
    main()
