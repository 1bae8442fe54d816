"""What every request handler of the server reaches through ``request.app.state.stepline``."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from starlette.requests import Request

from stepline.core.engine import Engine
from stepline.server.app_calls import AppCalls
from stepline.server.config import ServerConfig
from stepline.server.live import LiveRequests
from stepline.server.outbound import OutboundClient


@dataclass
class ServerState:
    engine: Engine
    config: ServerConfig
    http: httpx.AsyncClient  # discovery probes of local ports (the operator's own dev setup)
    calls: AppCalls = field(default_factory=AppCalls)  # function calls (the hot path); closed by the lifespan
    # Requests to URLs that came from apps and API callers (sync PUTs, webhooks, gateway steps), under the
    # outbound policy (server/outbound.py); closed by the lifespan.
    outbound: OutboundClient = field(default_factory=OutboundClient)
    live: LiveRequests | None = None  # waits and realtime subscriptions (server/live.py); set by the lifespan


def state_of(request: Request) -> ServerState:
    st: ServerState = request.app.state.stepline
    return st
