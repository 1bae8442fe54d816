"""Endpoints the SDKs call during a run: fetch large state (``use_api``) that did not fit in the call body."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from stepline.protocol import calls, signing
from stepline.server.defers import DEFER_KINDS
from stepline.server.errors import error_response
from stepline.server.state import state_of


def unauthorized(request: Request) -> Response | None:
    st = state_of(request)
    if st.config.signed and not signing.bearer_matches(request.headers.get("authorization"), st.config.signing_keys):
        return error_response(401, "authentication failed: the Authorization bearer does not match the signing key")
    return None


async def run_actions(request: Request) -> Response:
    """``GET /v0/runs/{run_id}/actions``: the run's memo, by hashed step id."""
    if (denied := unauthorized(request)) is not None:
        return denied
    st = state_of(request)
    run_id = request.path_params["run_id"]
    if await st.engine.store.get_run(run_id) is None:
        return error_response(404, f"run {run_id!r} not found")
    steps = await st.engine.store.list_steps(run_id)
    return JSONResponse({s.step_id: calls.memo_value(s) for s in steps if s.is_memo and s.kind not in DEFER_KINDS})


async def run_batch(request: Request) -> Response:
    """``GET /v0/runs/{run_id}/batch``: the run's events (one, or the batch)."""
    if (denied := unauthorized(request)) is not None:
        return denied
    st = state_of(request)
    run_id = request.path_params["run_id"]
    run = await st.engine.store.get_run(run_id)
    if run is None:
        return error_response(404, f"run {run_id!r} not found")
    events = []
    for internal_id in run.batch or [run.event_id]:
        ev = await st.engine.store.get_event(internal_id)
        if ev is not None:
            events.append(calls.sdk_event(ev))
    return JSONResponse(events)


def routes() -> list[BaseRoute]:
    return [
        Route("/v0/runs/{run_id}/actions", run_actions, methods=["GET"]),
        Route("/v0/runs/{run_id}/batch", run_batch, methods=["GET"]),
    ]
