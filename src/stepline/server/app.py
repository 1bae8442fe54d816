"""The Stepline server as one ASGI app: event API, SDK sync and calls, REST API, health.

``create_app(engine, config)`` wires the routes of each module and, for the app's lifetime, runs the worker that
executes HTTP functions (calls to apps) and the app syncer (discovery, periodic re-sync).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepline.core.engine import Engine
from stepline.observability.endpoint import MetricsRuntime
from stepline.server import (
    checkpoint_api,
    endpoint_api,
    events_api,
    metrics_api,
    realtime_api,
    rest_api,
    sdk_api,
    sync,
    traces_api,
)
from stepline.server.app_calls import AppCalls
from stepline.server.bodies import RefuseNul
from stepline.server.config import ServerConfig
from stepline.server.dashboard import app as dashboard
from stepline.server.dev_guard import DevGuard
from stepline.server.http_worker import HttpWorker
from stepline.server.live import LiveRequests
from stepline.server.outbound import Lookup, OutboundClient, PolicyResolver
from stepline.server.state import ServerState, state_of


class ServerKindHeader:
    """Every response says which kind of server answered (``X-Inngest-Server-Kind``), as Inngest's does."""

    def __init__(self, app: ASGIApp, kind: str) -> None:
        self.app = app
        self.header = (b"x-inngest-server-kind", kind.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, with_header)


async def health(request: Request) -> Response:
    st = state_of(request)
    return JSONResponse({"status": 200, "message": "OK", "kind": st.config.kind})


def create_app(engine: Engine, config: ServerConfig | None = None, *, run_worker: bool = True,
               outbound_lookup: Lookup | None = None) -> Starlette:  # fmt: skip
    """``run_worker=False`` serves the APIs only (another process executes the HTTP functions).
    ``outbound_lookup``: how names of outbound targets resolve (tests stub it; default: the system resolver)."""
    cfg = config or ServerConfig()
    routes: list[BaseRoute] = [Route("/health", health, methods=["GET"])]
    routes += events_api.routes()
    routes += sync.routes()
    routes += sdk_api.routes()
    routes += checkpoint_api.routes()
    routes += endpoint_api.routes()
    routes += traces_api.routes()  # POST /v1/traces/userland
    routes += rest_api.routes()
    routes += metrics_api.routes()
    routes += realtime_api.routes()
    dash = dashboard.Dashboard(engine, cfg)
    exporter = MetricsRuntime(engine)  # /metrics (and the CLI's --metrics-port); the cluster-gauge leader
    routes += dashboard.routes(dash)  # GET / and /dashboard/...

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(30.0, connect=10.0)  # discovery probes; calls: AppCalls; the rest: outbound
        policy = cfg.outbound_policy
        async with httpx.AsyncClient(timeout=timeout) as client:
            st = ServerState(engine=engine, config=cfg, http=client,
                             calls=AppCalls(policy=policy, resolver=PolicyResolver(policy, outbound_lookup)),
                             outbound=OutboundClient(policy, lookup=outbound_lookup),
                             live=LiveRequests(engine, cfg.max_waiting_requests))  # fmt: skip
            app.state.stepline = st
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(st.live.running(app.state))  # type: ignore[union-attr]
                stack.push_async_callback(st.outbound.close)
                stack.push_async_callback(st.calls.close)  # after the worker below has stopped calling
                await stack.enter_async_context(exporter.running())
                if run_worker:
                    worker = HttpWorker(st)
                    await stack.enter_async_context(worker.running())
                if cfg.sync_apps:
                    await stack.enter_async_context(sync.Syncer(st).running())
                await stack.enter_async_context(dashboard.running(dash, st, app.state))
                yield

    middleware = [Middleware(ServerKindHeader, kind=cfg.kind), Middleware(RefuseNul),
                  Middleware(metrics_api.EventRequestCounter)]  # fmt: skip
    if cfg.kind == "dev":  # open on loopback: refuse rebound names and cross-site requests (server/dev_guard.py)
        middleware.append(Middleware(DevGuard, allowed_hosts=cfg.allowed_hosts))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.dashboard = dash
    app.state.metrics = exporter
    return app
