"""What every request handler of the server reaches through ``request.app.state.stepline``."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from starlette.requests import Request

from stepline.core.engine import Engine
from stepline.server.app_calls import AppCalls
from stepline.server.config import ServerConfig


@dataclass
class ServerState:
    engine: Engine
    config: ServerConfig
    http: httpx.AsyncClient  # sync PUTs, discovery probes, alert webhooks
    calls: AppCalls = field(default_factory=AppCalls)  # function calls (the hot path); closed by the lifespan


def state_of(request: Request) -> ServerState:
    st: ServerState = request.app.state.stepline
    return st
