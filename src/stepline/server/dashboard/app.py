"""The dashboard's routes and what runs for its lifetime: ``create_app`` mounts ``routes(dash)`` and runs
``running(dash, ...)`` while the server runs."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from stepline.core.ids import new_ulid
from stepline.server.dashboard import actions, pages
from stepline.server.dashboard.alerts import FailureAlerts
from stepline.server.dashboard.core import PREFIX, Dashboard, action, page
from stepline.server.state import ServerState

__all__ = ["PREFIX", "Dashboard", "routes", "running"]


def _bind(dash: Dashboard, fn: Callable[[Dashboard, Request], Awaitable[Response]]
          ) -> Callable[[Request], Awaitable[Response]]:  # fmt: skip
    async def endpoint(request: Request) -> Response:
        return await fn(dash, request)

    return endpoint


async def _root(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/runs", status_code=307)


def routes(dash: Dashboard) -> list[BaseRoute]:
    run_action, bulk, other = actions.describe_run_action, actions.describe_bulk, actions.describe_other
    inner: list[BaseRoute] = [
        Route("/", page(dash, pages.home), methods=["GET"]),
        Route("/login", _bind(dash, pages.login_page), methods=["GET"]),
        Route("/login", _bind(dash, pages.login_submit), methods=["POST"]),
        Route("/logout", _bind(dash, pages.logout), methods=["POST"]),
        Route("/stream", _bind(dash, pages.stream), methods=["GET"]),
        Route("/runs", page(dash, pages.runs_page), methods=["GET"]),
        Route("/runs/bulk-cancel", action(dash, actions.bulk_cancel, bulk), methods=["POST"]),
        Route("/runs/bulk-rerun", action(dash, actions.bulk_rerun, bulk), methods=["POST"]),
        Route("/runs/{run_id}", page(dash, pages.run_page), methods=["GET"]),
        Route("/runs/{run_id}/cancel", action(dash, actions.cancel, run_action), methods=["POST"]),
        Route("/runs/{run_id}/rerun", action(dash, actions.rerun_one, run_action), methods=["POST"]),
        Route("/functions", page(dash, pages.functions_page), methods=["GET"]),
        Route("/functions/{function_id}", page(dash, pages.function_page), methods=["GET"]),
        Route("/functions/{function_id}/invoke", action(dash, actions.invoke, other), methods=["POST"]),
        Route("/functions/{function_id}/pause", action(dash, actions.pause, other), methods=["POST"]),
        Route("/functions/{function_id}/resume", action(dash, actions.pause, other), methods=["POST"]),
        Route("/functions/{function_id}/run-cron", action(dash, actions.run_cron, other), methods=["POST"]),
        Route("/charts", page(dash, pages.charts_page), methods=["GET"]),
        Route("/events", page(dash, pages.events_page), methods=["GET"]),
        Route("/events/send", action(dash, actions.send_event, other), methods=["POST"]),
        Route("/events/{internal_id}", page(dash, pages.event_page), methods=["GET"]),
        Route("/events/{internal_id}/replay", action(dash, actions.replay_event, other), methods=["POST"]),
        Route("/apps", page(dash, pages.apps_page), methods=["GET"]),
        Route("/apps/sync", action(dash, actions.sync_app, other), methods=["POST"]),
        Route("/apps/remove", action(dash, actions.remove_app, other), methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("stepline.server.dashboard", "static")]), name="static"),
    ]
    return [Route("/", _root, methods=["GET"]), Mount(PREFIX, routes=inner)]


@contextlib.asynccontextmanager
async def running(dash: Dashboard, st: ServerState, app_state: Any) -> AsyncIterator[Dashboard]:
    """The live hub and, with alert rules (``--alert-webhook``, ``--alert-rule``), the failure alerts, for the
    server's lifetime (one server of the cluster posts them: ``alerts.py``)."""
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(dash.hub.running(app_state))
        cfg = st.config
        rules = cfg.all_alert_rules
        if rules:
            port = cfg.extra.get("port", "8288")
            base = cfg.public_url or f"http://127.0.0.1:{port}"
            owner = f"{socket.gethostname()}:{os.getpid()}:{new_ulid()[-8:]}"
            alerts = FailureAlerts(st.engine.store, st.engine.clock, st.outbound, rules, owner=owner,
                                   cooldown=cfg.alert_cooldown, base_url=base)  # fmt: skip
            await stack.enter_async_context(alerts.running())
        yield dash
