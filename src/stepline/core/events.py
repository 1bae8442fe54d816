"""Events: the model users send, validation, and the reserved system event names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stepline.core.errors import EventValidationError, SerializationError
from stepline.core.json_checks import json_problem, text_problem
from stepline.storage.records import StoredEvent as StoredEvent  # defined with the other stored records

RESERVED_PREFIXES = ("inngest/", "stepline/")
MAX_EVENT_BYTES = 3 * 1024 * 1024
MAX_EVENTS_PER_SEND = 5000
MAX_NAME_CHARS = 512  # event names, ids and versions (indexed: PostgreSQL refuses index entries past ~2.7 KB)

FUNCTION_FINISHED = "stepline/function.finished"
FUNCTION_FAILED = "stepline/function.failed"
FUNCTION_CANCELLED = "stepline/function.cancelled"
FUNCTION_INVOKED = "stepline/function.invoked"


def canonical_event_name(name: str) -> str:
    """Inngest's system event names are accepted as aliases of Stepline's (``inngest/function.failed``)."""
    if name.startswith("inngest/function."):
        return "stepline/" + name[len("inngest/") :]
    return name


class Event(BaseModel):
    """An event as users send it. ``data`` may be a dict or a pydantic model."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str
    data: Any = Field(default_factory=dict)
    id: str | None = None
    ts: int | None = None
    user: Any = Field(default_factory=dict)
    v: str | None = None


def to_json_value(value: Any, what: str) -> Any:
    """Convert pydantic models to plain JSON values and check the whole value is JSON-compatible."""
    try:
        return json.loads(dumps(value))
    except SerializationError as exc:
        raise SerializationError(f"{what} is not JSON-compatible: {exc}") from None


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")


def dumps(value: Any) -> str:
    """JSON text for storage; pydantic models are dumped in JSON mode. Raises SerializationError."""
    try:
        return json.dumps(value, default=_default, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise SerializationError("the value is nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise SerializationError(str(exc)) from None


def validate_event(raw: Event | Mapping[str, Any], *, allow_reserved: bool = False) -> Event:
    """Check one event and return it as an ``Event`` with JSON data. Raises EventValidationError."""
    if isinstance(raw, Event):
        event = raw
    elif isinstance(raw, Mapping):
        try:
            event = Event.model_validate(dict(raw))
        except Exception as exc:
            raise EventValidationError(f"invalid event {dict(raw)!r:.200}: {exc}") from None
    else:
        raise EventValidationError(f"an event must be a stepline.Event or a dict, got {type(raw).__name__}")
    if not isinstance(event.name, str) or not event.name.strip():
        raise EventValidationError("event name must be a non-empty string")
    for label, text in (("name", event.name), ("id", event.id), ("v", event.v)):
        if text is None:
            continue
        problem = text_problem(text, f"the event's {label}")
        if problem is None and len(text) > MAX_NAME_CHARS:
            problem = f"the event's {label} is {len(text)} characters long; the limit is {MAX_NAME_CHARS}"
        if problem is not None:
            raise EventValidationError(problem)
    if not allow_reserved and event.name.startswith(RESERVED_PREFIXES):
        raise EventValidationError(
            f"event name {event.name!r} is reserved: names starting with 'inngest/' or 'stepline/' "
            "are sent by Stepline itself"
        )
    try:
        text = dumps(event.data)
        data = json.loads(text)
        user = to_json_value(event.user, f"user of event {event.name!r}") if event.user else {}
    except RecursionError:
        raise EventValidationError(f"data of event {event.name!r} is nested too deeply") from None
    except SerializationError as exc:
        found = json_problem(event.data, "data") if isinstance(event.data, dict) and "deep" not in str(exc) else None
        raise EventValidationError(f"data of event {event.name!r} is not JSON-compatible: {found or exc}") from None
    problem = json_problem(data, "data", text)
    if problem is None and user:
        problem = json_problem(user, "user")
    if problem is not None:
        raise EventValidationError(f"event {event.name!r}: {problem}")
    if data is None:
        data, text = {}, "{}"
    if not isinstance(data, dict):
        raise EventValidationError(
            f"data of event {event.name!r} must be a JSON object (dict or pydantic model), got {type(data).__name__}"
        )
    if not allow_reserved and "_inngest" in data:
        del data["_inngest"]
        text = dumps(data)
    size = len(text)
    if size > MAX_EVENT_BYTES:
        raise EventValidationError(
            f"event {event.name!r} is {size} bytes of data; the limit is {MAX_EVENT_BYTES} bytes"
        )
    if event.ts is not None and not (315532800000 <= event.ts <= 4102444800000):
        raise EventValidationError(f"event {event.name!r}: ts {event.ts} is not unix milliseconds in 1980..2100")
    return Event(name=event.name, data=data, id=event.id or None, ts=event.ts, user=user or {}, v=event.v)
