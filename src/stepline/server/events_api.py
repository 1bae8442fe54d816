"""The event API (protocol section 2): ``POST /e/{event_key}``, and ``POST /invoke/{function_id}``.

``/e/{key}`` takes a JSON array of events (what both SDKs send) or a single event object (curl, the UI). The
whole request is checked before anything is stored, so one bad event rejects the batch and stores nothing.
Internal ids come from the ``x-inngest-event-id-seed`` header (``event_ids``): a retried request stores nothing
new and starts no extra run, and gets the same ids back.

Responses, in the shapes the SDKs parse:

- ``200 {"ids": [...], "status": 200}``
- ``400 {"ids": [], "status": 400, "error": "..."}`` (also 413 for an oversized body, 500 for a store failure)
- ``401 {"status": 401, "message": "", "error": "Event key not found"}``

The Content-Type is not checked: any body that parses as JSON is accepted (the SDKs send application/json;
curl users often forget it).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from stepline.core.errors import EventValidationError, UnknownFunctionError
from stepline.core.events import MAX_EVENT_BYTES, MAX_EVENTS_PER_SEND, MAX_NAME_CHARS, RESERVED_PREFIXES
from stepline.core.json_checks import json_problem, text_problem
from stepline.protocol.signing import bearer_matches
from stepline.server import bodies
from stepline.server.bodies import BodyTimeout, BodyTooLarge, read_body
from stepline.server.config import ServerConfig
from stepline.server.errors import error_response
from stepline.server.event_ids import EVENT_ID_SEED_HEADER, event_ids
from stepline.server.state import state_of

__all__ = ["normalize_events", "routes"]

log = logging.getLogger("stepline.server.events")

LARGE_REQUEST_BYTES = 256 * 1024  # parsed, checked and planned off the event loop
MAX_REQUEST_VALUES = 1_000_000  # JSON values in one request (each event holds at most 250,000)
MIN_TS_MS = 315_532_800_000  # 1980-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
EVENT_FIELDS = frozenset({"name", "data", "id", "ts", "user", "v"})
DROPPED_FIELDS = frozenset({"meta"})  # JS session metadata: accepted, not stored


class InvalidRequest(ValueError):
    """The request body is not acceptable; the message is returned to the client."""


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN/Infinity); raises InvalidRequest with a readable reason."""
    if not raw.strip():
        raise InvalidRequest("request body is empty: expected a JSON event or an array of events")
    try:
        return bodies.parse_json(raw, allow_nul=True)  # in event data (names and ids are checked one by one)
    except bodies.InvalidBody as exc:
        raise InvalidRequest(str(exc)) from None


def _normalize_event(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where} is not a JSON object")
    text = json.dumps(raw, ensure_ascii=False, separators=(",", ":"))
    problem = json_problem(raw.get("data"), "data", text) or json_problem(raw.get("user"), "user", text)
    if problem is not None:
        raise InvalidRequest(f"{where}: {problem}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_EVENT_BYTES:
        raise InvalidRequest(f"{where} is {size} bytes; the limit is {MAX_EVENT_BYTES} bytes (3 MiB) per event")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest(f"{where}: 'name' must be a non-empty string")
    for field in ("name", "id", "v"):
        value = raw.get(field)
        if isinstance(value, str):
            issue = text_problem(value, f"'{field}'")
            if issue is None and len(value) > MAX_NAME_CHARS:
                issue = f"'{field}' is {len(value)} characters long; the limit is {MAX_NAME_CHARS}"
            if issue is not None:
                raise InvalidRequest(f"{where}: {issue}")
    if name.startswith(RESERVED_PREFIXES):
        raise InvalidRequest(f"{where}: event name {name!r} is reserved for internal use "
                             "(names starting with 'inngest/' or 'stepline/')")  # fmt: skip
    data = raw.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequest(f"{where}: 'data' must be a JSON object, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k != "_inngest"}  # internal metadata could fake an invoke result
    event_id = raw.get("id")
    if event_id is not None and not isinstance(event_id, str):
        raise InvalidRequest(f"{where}: 'id' must be a string")
    ts = raw.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise InvalidRequest(f"{where}: 'ts' must be an integer (unix milliseconds)")
    if ts is not None and ts != 0 and not MIN_TS_MS <= ts <= MAX_TS_MS:
        raise InvalidRequest(f"{where}: ts {ts} is not unix milliseconds between 1980 and 2100")
    user = raw.get("user")
    if user is not None and not isinstance(user, dict):
        raise InvalidRequest(f"{where}: 'user' must be a JSON object")
    version = raw.get("v")
    if version is not None and not isinstance(version, str):
        raise InvalidRequest(f"{where}: 'v' must be a string")
    return {"name": name, "data": data, "id": event_id or None, "ts": ts or None, "user": user or {}, "v": version}


def normalize_events(payload: Any) -> list[dict[str, Any]]:
    """Check a request body (an event or an array of events) and return the events as the engine takes them.

    Raises InvalidRequest naming the first bad event by its 0-based index. ``data._inngest``, ``meta`` and
    unknown fields are dropped; ``ts`` 0 and an empty ``id`` count as absent (the engine fills them in)."""
    if isinstance(payload, dict):
        items: list[Any] = [payload]
    elif isinstance(payload, list):
        items = payload
    else:
        raise InvalidRequest(f"expected a JSON event or an array of events, got {type(payload).__name__}")
    if len(items) > MAX_EVENTS_PER_SEND:
        raise InvalidRequest(f"{len(items)} events in one request; the limit is {MAX_EVENTS_PER_SEND}")
    n = len(items)
    return [_normalize_event(raw, f"event {i} of {n}" if n > 1 else "the event") for i, raw in enumerate(items)]


def event_key_accepted(config: ServerConfig, key: str) -> bool:
    """Dev accepts any key. With keys configured (or in cloud mode, where having none accepts nothing), the path
    segment must equal one of them exactly."""
    if not config.event_keys:
        return config.kind != "cloud"
    given = key.encode("utf-8")
    ok = False
    for k in config.event_keys:  # compare with every key: timing reveals nothing about which is close
        ok |= hmac.compare_digest(given, k.encode("utf-8"))
    return ok


def _events_reply(status: int, ids: list[str], error: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ids": ids, "status": status}
    if error is not None:
        body["error"] = error
    return JSONResponse(body, status_code=status)


async def receive_events(request: Request) -> Response:
    st = state_of(request)
    key = request.path_params["event_key"]
    if not event_key_accepted(st.config, key):
        log.warning("event API: rejected a request with an unknown event key")
        return JSONResponse({"status": 401, "message": "", "error": "Event key not found"}, status_code=401)
    try:
        raw = await read_body(request, st.config.max_body_bytes)
        large = len(raw) > LARGE_REQUEST_BYTES
        if large and raw.count(b",") + raw.count(b"[") + raw.count(b"{") > MAX_REQUEST_VALUES:
            # an upper bound of its values, counted before parsing (which holds the interpreter for its duration)
            raise InvalidRequest(f"the request holds more than {MAX_REQUEST_VALUES:,} JSON values; send fewer events "
                                 "per request")  # fmt: skip
        if large:  # parsing and checking a few MB takes a while: not on the event loop
            events = await asyncio.to_thread(lambda: normalize_events(parse_json(raw)))
        else:
            events = normalize_events(parse_json(raw))
    except BodyTooLarge as exc:
        return _events_reply(413, [], str(exc))
    except BodyTimeout as exc:
        return _events_reply(408, [], str(exc))
    except InvalidRequest as exc:
        return _events_reply(400, [], str(exc))
    if not events:
        return _events_reply(200, [])
    ids = event_ids(request.headers.get(EVENT_ID_SEED_HEADER), len(events))
    try:
        # The sender's trace context (an instrumented HTTP client sends one): the runs continue its trace. The
        # events were validated here (normalize_events): the engine does not check them again.
        result = await st.engine.ingest(events, internal_ids=ids, traceparent=request.headers.get("traceparent"),
                                        checked=True, large=large)  # fmt: skip
    except EventValidationError as exc:
        return _events_reply(400, [], str(exc))
    except Exception as exc:  # the store failed: a 5xx makes the SDKs retry (with the same seed, so no duplicates)
        log.exception("event API: storing %d events failed", len(events))
        return _events_reply(500, [], f"storing the events failed: {type(exc).__name__}")
    return _events_reply(200, list(result.event_ids))


def _invoke_data(payload: Any) -> dict[str, Any]:
    """``{"data": {...}}`` (an event without a name) or the data object itself."""
    if not isinstance(payload, dict):
        raise InvalidRequest(f"expected a JSON object (the data, or an event's fields), got {type(payload).__name__}")
    data = payload
    if "data" in payload and set(payload) <= EVENT_FIELDS | DROPPED_FIELDS and isinstance(payload["data"], dict | None):
        data = payload["data"] or {}
    return {k: v for k, v in data.items() if k != "_inngest"}


async def invoke_function(request: Request) -> Response:
    st = state_of(request)
    if st.config.signed and not bearer_matches(request.headers.get("authorization"), st.config.signing_keys):
        return error_response(401, "a valid 'Authorization: Bearer <signing key>' header is required")
    function_id = request.path_params["function_id"]
    try:
        raw = await read_body(request, st.config.max_body_bytes)
        data = _invoke_data(parse_json(raw) if raw.strip() else {})
    except BodyTooLarge as exc:
        return error_response(413, str(exc))
    except BodyTimeout as exc:
        return error_response(408, str(exc))
    except InvalidRequest as exc:
        return error_response(400, str(exc))
    if await st.engine.find_function(function_id) is None:
        return error_response(404, f"function {function_id!r} not found (use the full '<app>-<function>' id)")
    try:
        run_id = await st.engine.invoke_now(function_id, data)
    except UnknownFunctionError as exc:  # unregistered in between
        return error_response(404, str(exc))
    except EventValidationError as exc:
        return error_response(400, str(exc))
    return JSONResponse({"ids": [run_id], "status": 200})


def routes() -> list[BaseRoute]:
    return [
        Route("/e/{event_key}", receive_events, methods=["POST"]),
        Route("/invoke/{function_id}", invoke_function, methods=["POST"]),
    ]
