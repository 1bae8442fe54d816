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
class Dispatches:
    """This process's calls that may checkpoint: run id -> the ``qi_id`` of its current dispatch (kept until the
    run's execution here ends, so a late checkpoint of an earlier call is recognised as stale)."""

    current: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # run id -> steps checkpointed here during its dispatch

    def begin(self, run_id: str, qi_id: str) -> None:
        self.current[run_id] = qi_id
        self.counts[run_id] = 0

    def took(self, run_id: str) -> int:
        """How many steps were checkpointed in this process since the dispatch began."""
        return self.counts.get(run_id, 0)

    def end(self, run_id: str) -> None:
        self.current.pop(run_id, None)
        self.counts.pop(run_id, None)


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
    # The dispatches of this process's calls that may checkpoint (server/checkpoint_api.py).
    dispatches: Dispatches = field(default_factory=Dispatches)


def state_of(request: Request) -> ServerState:
    st: ServerState = request.app.state.stepline
    return st
