"""``GET /metrics`` on the server (Prometheus text format; OpenMetrics when asked), and the event API's counter.

Open in ``dev``; in ``start`` a scrape needs ``Authorization: Bearer`` with the dashboard's admin token or the signing
key (``observability/endpoint.py``). The exporter itself (``MetricsRuntime``: metrics, the cluster-gauge leader,
``stepline_store_up``) is created by ``create_app`` and kept in ``app.state.metrics``, where the CLI's
``--metrics-port`` listener finds it too.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepline import observability
from stepline.observability.endpoint import MetricsRuntime, bearer_allowed
from stepline.server.state import state_of


async def metrics(request: Request) -> Response:
    st = state_of(request)
    if st.config.kind == "cloud" and not bearer_allowed(
        request.headers.get("authorization"), st.config.admin_token, st.config.signing_keys
    ):
        return JSONResponse({"error": "send Authorization: Bearer <admin token or signing key> to scrape /metrics"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    runtime: MetricsRuntime = request.app.state.metrics
    body, content_type = await runtime.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


def routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics, methods=["GET"])]


class EventRequestCounter:
    """Counts the event API's responses (``POST /e/{key}``) by status code: refused requests (a bad key, a body too
    large) never reach the engine, whose counter sees the events of accepted and invalid ones."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/e/"):
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                m = observability.current_metrics()
                if m is not None:
                    m.event_request(int(message["status"]))
            await send(message)

        await self.app(scope, receive, counted)
