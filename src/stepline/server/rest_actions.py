"""REST actions on events and functions: replay an event (``core/replay.py``). Its ``ENDPOINTS`` are served and
documented with ``rest_api``'s (``rest_api.all_endpoints``)."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from stepline.core.replay import ReplayError, replay_event
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


_EVENT_ID = Param("internal_id", "path", "The event's internal id")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/v1/events/{internal_id}/replay", replay, "Send a copy of the event as a new event (a new id "
             "and timestamp; it starts the runs it triggers now)", ReplayResponse, (400, 404), (_EVENT_ID,),
             tag="events", ok_status=201),
)  # fmt: skip
