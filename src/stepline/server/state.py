"""What every request handler of the server reaches through ``request.app.state.stepline``."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from starlette.requests import Request

from stepline.core.engine import Engine
from stepline.server.config import ServerConfig


@dataclass
class ServerState:
    engine: Engine
    config: ServerConfig
    http: httpx.AsyncClient  # calls to apps (sync PUTs and function calls)


def state_of(request: Request) -> ServerState:
    st: ServerState = request.app.state.stepline
    return st
