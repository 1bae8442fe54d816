"""Replay an event: send a copy of a stored event as a new event (REST ``POST /v1/events/{id}/replay``, the
dashboard, ``stepline events replay``). Distinct from a rerun, which starts one run of one function again."""

from __future__ import annotations

from dataclasses import dataclass

from stepline.core.engine import Engine
from stepline.core.errors import EventValidationError
from stepline.core.events import Event
from stepline.storage.records import is_internal_event

__all__ = ["ReplayError", "Replayed", "replay_event"]


class ReplayError(Exception):
    """An event that cannot be replayed, with the HTTP status that says why (404: unknown, 400: refused)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Replayed:
    replay_of: str  # the internal id of the event replayed
    internal_id: str  # the copy's internal id (its id too: a replay carries no sender id)
    run_ids: list[str]  # the runs the copy started


async def replay_event(engine: Engine, internal_id: str) -> Replayed:
    """Send a copy of a stored event as a new event: its name, data, user and version, with a new id and timestamp
    (the sender's idempotency id is not reused, else the copy would be dropped), so it starts the runs its name and
    data trigger today and resumes the waits it matches. The engine's own events are refused."""
    event = await engine.store.get_event(internal_id)
    if event is None:
        raise ReplayError(404, f"event {internal_id!r} not found")
    if is_internal_event(event.name):
        raise ReplayError(400, f"{event.name} is one of the engine's own events: it is not replayed (rerun its run, "
                               "or run a cron function now)")  # fmt: skip
    try:
        result = await engine.ingest(Event(name=event.name, data=event.data, user=event.user, v=event.v))
    except EventValidationError as exc:
        raise ReplayError(400, f"event {internal_id!r} cannot be sent again: {exc}") from None
    [new_id] = result.event_ids
    return Replayed(internal_id, new_id, list(result.created_run_ids))
