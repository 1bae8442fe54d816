"""REST actions on events and functions: replay an event (``core/replay.py``), pause and resume a function, run a
cron function now (``core/scheduler.py``). Its ``ENDPOINTS`` are served and documented with ``rest_api``'s
(``rest_api.all_endpoints``); signing-key auth in ``start`` mode as for every endpoint."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from stepline.core.replay import ReplayError, replay_event
from stepline.core.scheduler import NotACronFunction, run_cron_now
from stepline.server.openapi import Endpoint, Envelope, Out, Param
from stepline.server.rest_api import HttpError, _meta, _ok
from stepline.server.state import state_of

__all__ = ["ENDPOINTS"]


class ReplayOut(Out):
    replay_of: str = Field(description="The internal id of the event replayed")
    internal_id: str = Field(description="The new event's internal id (its id too: a replay has no sender id)")
    run_ids: list[str] = Field(description="The runs the new event started")


class ReplayResponse(Envelope[ReplayOut]): ...


async def replay(request: Request) -> Response:
    st = state_of(request)
    try:
        done = await replay_event(st.engine, request.path_params["internal_id"])
    except ReplayError as exc:
        raise HttpError(exc.status, str(exc)) from None
    out = ReplayOut(replay_of=done.replay_of, internal_id=done.internal_id, run_ids=done.run_ids)
    return _ok(ReplayResponse(data=out, metadata=_meta(st)), status=201)


# --- functions: pause, resume, run a cron now ---------------------------------------------------------------


class PauseOut(Out):
    function_id: str
    paused: bool = Field(description="Whether the function is paused now")
    changed: bool = Field(description="False when it already was (paused) or was not (resumed)")


class PauseResponse(Envelope[PauseOut]): ...


class CronRunOut(Out):
    function_id: str
    event_id: str = Field(description="The internal id of the new inngest/scheduled.timer event")
    run_id: str


class CronRunResponse(Envelope[CronRunOut]): ...


async def _function_id(request: Request) -> str:
    st = state_of(request)
    function_id = str(request.path_params["function_id"])
    if await st.engine.find_function(function_id) is None:
        raise HttpError(404, f"no registered function has the id {function_id!r}")
    return function_id


async def pause(request: Request) -> Response:
    """``POST .../pause`` and ``.../resume``."""
    st = state_of(request)
    function_id = await _function_id(request)
    pausing = request.url.path.endswith("/pause")
    engine = st.engine
    changed = await (engine.pause_function if pausing else engine.resume_function)(function_id)
    return _ok(PauseResponse(data=PauseOut(function_id=function_id, paused=pausing, changed=changed),
                             metadata=_meta(st)))  # fmt: skip


async def run_cron(request: Request) -> Response:
    st = state_of(request)
    function_id = await _function_id(request)
    try:
        event_id, run_id = await run_cron_now(st.engine, function_id)
    except NotACronFunction as exc:
        raise HttpError(400, str(exc)) from None
    return _ok(CronRunResponse(data=CronRunOut(function_id=function_id, event_id=event_id, run_id=run_id),
                               metadata=_meta(st)), status=201)  # fmt: skip


_EVENT_ID = Param("internal_id", "path", "The event's internal id")
_FUNCTION_ID = Param("function_id", "path", 'The composite function id "<app_id>-<slug>"')

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/v1/events/{internal_id}/replay", replay, "Send a copy of the event as a new event (a new id "
             "and timestamp; it starts the runs it triggers now)", ReplayResponse, (400, 404), (_EVENT_ID,),
             tag="events", ok_status=201),
    Endpoint("POST", "/v1/functions/{function_id}/pause", pause, "Pause a function on every node: its runs are "
             "created but wait (reason: function paused), running ones stop before their next step, crons do not "
             "fire", PauseResponse, (404,), (_FUNCTION_ID,), tag="functions"),
    Endpoint("POST", "/v1/functions/{function_id}/resume", pause, "Resume a paused function: its held runs start in "
             "the order they fell due (missed cron times are not fired)", PauseResponse, (404,), (_FUNCTION_ID,),
             tag="functions"),
    Endpoint("POST", "/v1/functions/{function_id}/run-cron", run_cron, "Run a cron function now: a fresh "
             "inngest/scheduled.timer event and its run; the next scheduled time is unchanged", CronRunResponse,
             (400, 404), (_FUNCTION_ID,), tag="functions", ok_status=201),
)  # fmt: skip
