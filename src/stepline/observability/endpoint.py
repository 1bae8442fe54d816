"""Where Prometheus scrapes: ``/metrics`` on the server, and the ``--metrics-port`` listener of dev, start and worker.

``MetricsRuntime`` is one process's exporter: it turns metrics on, runs the cluster-gauge leader election
(``cluster.ClusterGaugeLeader``) and renders a scrape with ``stepline_store_up`` checked at that moment.

- The server's ``/metrics`` (``server_endpoint``) is open in ``dev``; in ``start`` it needs ``Authorization: Bearer``
  with the dashboard's admin token or the signing key (raw or hashed, as the REST API).
- ``--metrics-port`` (``serve_port``) is a separate listener with only ``GET /metrics``, unauthenticated, bound to
  127.0.0.1 unless ``--metrics-host`` says otherwise: for a scraper on the same host or a private network.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from stepline.core.engine import Engine
from stepline.core.ids import new_ulid
from stepline.observability import enable_metrics
from stepline.observability.cluster import ClusterGaugeLeader, StoreHealth
from stepline.observability.metrics import GaugeCollector

STORE_UP_HELP = "1 when the store answered a cheap read within the scrape's deadline (2 s), else 0."


class MetricsRuntime:
    def __init__(self, engine: Engine, *, owner: str | None = None, store_timeout: float = 2.0) -> None:
        self.metrics = enable_metrics()
        self.health = StoreHealth(engine.store, store_timeout)
        owner = owner or f"{socket.gethostname()}:{os.getpid()}:{new_ulid()[-8:]}"
        self.leader = ClusterGaugeLeader(engine.store, engine.clock, self.metrics, owner)

    async def render(self, accept: str | None) -> tuple[bytes, str]:
        up = await self.health.check()
        return self.metrics.render(accept, [GaugeCollector("stepline_store_up", STORE_UP_HELP, lambda: up)])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MetricsRuntime]:
        try:
            async with self.leader.running():
                yield self
        finally:
            await self.health.close()


def bearer_allowed(authorization: str | None, admin_token: str | None, signing_keys: tuple[str, ...]) -> bool:
    """``Authorization: Bearer`` with the admin token (compared in constant time) or a signing key."""
    from stepline.protocol.signing import bearer_matches

    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and admin_token and token and hmac.compare_digest(token, admin_token):
        return True
    return bool(signing_keys) and bearer_matches(authorization, signing_keys)


@contextlib.asynccontextmanager
async def serve_port(runtime: MetricsRuntime, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    """The ``--metrics-port`` listener, in this event loop (aiohttp), until the context ends."""

    async def handle(request: web.Request) -> web.Response:
        body, content_type = await runtime.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot listen for metrics on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        yield runner
    finally:
        await runner.cleanup()
