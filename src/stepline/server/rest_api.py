"""The REST API for users, tests and the dashboard, in the shape of Inngest's ``/v1`` API.

Responses are ``{"data": ..., "metadata": {"fetched_at", "cached_until": null}}`` (paged lists add ``cursor``),
errors ``{"error", "status"}``. Every shape is a model of ``openapi.py``; the document is at ``/openapi.json``.
In cloud mode every endpoint requires ``Authorization: Bearer <signing key>`` (raw or its sha256 form).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from stepline.core.clock import parse_rfc3339_ms
from stepline.core.events import StoredEvent
from stepline.core.expressions import ExpressionError, compile_expression
from stepline.core.function import FunctionSpec
from stepline.core.rerun import RerunNotPossibleError, RunNotFoundError, StepNotFoundError, rerun
from stepline.protocol.signing import bearer_matches
from stepline.server.bodies import BodyTimeout, BodyTooLarge, InvalidBody, parse_json, read_body
from stepline.server.errors import error_response
from stepline.server.live import RETRY_AFTER_SECONDS, TooManyWaits
from stepline.server.openapi import (
    MAX_TIME_MS,
    MIN_TIME_MS,
    AppList,
    AppOut,
    CancellationIn,
    CancellationList,
    CancellationOut,
    CancellationResponse,
    Endpoint,
    EventOut,
    EventPage,
    EventResponse,
    ExpressionErrorOut,
    FunctionList,
    FunctionOut,
    Handler,
    LogLineOut,
    Metadata,
    OpenApiDocument,
    Param,
    RerunIn,
    RerunOut,
    RerunResponse,
    RunDetailOut,
    RunList,
    RunLogsOut,
    RunLogsResponse,
    RunOut,
    RunPage,
    RunResponse,
    RunSpanList,
    RunSpanOut,
    SignalIn,
    SignalOut,
    SignalResponse,
    StepList,
    StepOut,
    openapi_document,
)
from stepline.server.queries import LIVE, AppIndex, all_runs, bulk_cancel, events_page
from stepline.server.state import ServerState, state_of
from stepline.storage.records import CancellationRecord, RunFilter, RunRecord, StepRecord

log = logging.getLogger("stepline.server.rest")

STATUS_NAMES = {"queued": "Queued", "running": "Running", "completed": "Completed", "failed": "Failed",
                "cancelled": "Cancelled", "skipped": "Skipped"}  # fmt: skip
EVENTS_LIMIT = (20, 100)  # (default, maximum) page sizes, as Inngest
RUNS_LIMIT = (20, 400)
CANCELLATIONS_LIMIT = (100, 1000)
API_BODY_LIMIT = 1024 * 1024  # JSON bodies of the REST API (cancellations, reruns)


MAX_WAIT_SECONDS = 300
_WAIT = re.compile(r"^([0-9]{1,9})(\.[0-9]{1,3})?(ms|s|m)?$")
# The accepted values exactly (at most 300 s, 5 m or 300000 ms), so the document says what the code does.
WAIT_PATTERN = (r"^(?:(?:300(?:\.0{1,3})?|[12]?[0-9]?[0-9](?:\.[0-9]{1,3})?)s?"
                r"|(?:5(?:\.0{1,3})?|[0-4](?:\.[0-9]{1,3})?)m"
                r"|(?:300000(?:\.0{1,3})?|[12]?[0-9]{0,4}[0-9](?:\.[0-9]{1,3})?)ms)$")  # fmt: skip
_WAIT_EXACT = re.compile(WAIT_PATTERN)


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# --- helpers ------------------------------------------------------------------------------------------------


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def iso(ms: int | None) -> str | None:
    """Unix ms as RFC 3339 UTC with milliseconds (``2026-01-01T00:00:00.000Z``); times before the year 1 or after
    9999 (which RFC 3339 cannot write) are shown as those bounds."""
    if ms is None:
        return None
    ms = max(-62_135_596_800_000, min(ms, MAX_TIME_MS))
    stamp = _EPOCH + dt.timedelta(milliseconds=ms)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso(ms: int) -> str:
    out = iso(ms)
    assert out is not None
    return out


TIME_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "pattern": "^[0-9]{1,15}$"}],
    "description": "RFC 3339 with an offset (years 0000-9999), or unix milliseconds",
}


def parse_time(value: str | int, name: str) -> int:
    """RFC 3339 (with an offset, years 0000-9999) or unix milliseconds (up to 15 digits) -> unix milliseconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not MIN_TIME_MS <= value <= MAX_TIME_MS:
            raise HttpError(400, f"invalid {name}: {value} is not a time from the year 0 to 9999")
        return value
    text = str(value).strip()
    ms = int(text) if text.isascii() and text.isdigit() and len(text) <= 15 else parse_rfc3339_ms(text)
    if ms is None:
        raise HttpError(400, f"invalid {name} {str(value)[:100]!r}: expected RFC 3339 with an offset "
                             "(2026-01-01T00:00:00Z) or unix milliseconds (at most 15 digits)")  # fmt: skip
    return ms


def _query_time(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    return None if raw is None else parse_time(raw, name)


def _limit(request: Request, bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text[:12]) <= maximum:
        raise HttpError(400, f"invalid limit {str(raw)[:40]!r}: expected an integer from 1 to {maximum}")
    return int(text)


def _status(raw: str | None) -> str | None:
    if raw is None:
        return None
    status = raw.lower()
    if status not in STATUS_NAMES:
        raise HttpError(400, f"invalid status {raw!r}: expected one of {', '.join(STATUS_NAMES.values())}")
    return status


def _meta(st: ServerState) -> Metadata:
    return Metadata(fetched_at=_iso(st.engine.clock.now_ms()), cached_until=None)


def _ok(model: BaseModel, status: int = 200) -> JSONResponse:
    # Python mode: the models hold only JSON types, and user data (event payloads, outputs) nested deeper than
    # pydantic's JSON serializer goes (about 255 levels) must still be served; json.dumps takes it from here.
    return JSONResponse(model.model_dump(mode="python", by_alias=True), status_code=status)


async def _body(request: Request, model: type[BaseModel]) -> Any:
    try:
        raw = await read_body(request, API_BODY_LIMIT)
        value = parse_json(raw) if raw else {}  # no body: none given; whitespace is not JSON
    except BodyTooLarge as exc:
        raise HttpError(413, str(exc)) from None
    except BodyTimeout as exc:
        raise HttpError(408, str(exc)) from None
    except InvalidBody as exc:
        raise HttpError(400, str(exc)) from None
    if not isinstance(value, dict):
        raise HttpError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise HttpError(400, f"invalid request body: {problems}") from None


def endpoint(handler: Handler) -> Handler:
    """Check the bearer in cloud mode and turn ``HttpError`` into an error response."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        st = state_of(request)
        if st.config.kind == "cloud":
            authorization = request.headers.get("authorization")
            if not authorization:
                return error_response(401, "authentication required: send Authorization: Bearer <signing key>")
            if not bearer_matches(authorization, st.config.signing_keys):
                return error_response(401, "the Authorization bearer does not match the server's signing key")
        try:
            return await handler(request)
        except HttpError as exc:
            response = error_response(exc.status, exc.message)
            response.headers.update(exc.headers)
            return response

    return wrapped


# --- converting records -------------------------------------------------------------------------------------


def event_out(ev: StoredEvent) -> EventOut:
    return EventOut(internal_id=ev.internal_id, id=ev.id, name=ev.name, data=ev.data, user=ev.user, ts=ev.ts,
                    v=ev.v, received_at=_iso(ev.received_at), received_at_ms=ev.received_at)  # fmt: skip


def _run_fields(run: RunRecord, apps: AppIndex, now: int) -> dict[str, Any]:
    return {
        "run_id": run.id, "function_id": run.function_id, "app_id": apps.of(run.function_id),
        "event_id": run.event_id, "batch": run.batch, "status": STATUS_NAMES.get(run.status, run.status),
        "output": run.output, "error": run.error, "attempt": run.attempt,
        "idle_reason": apps.idle_reason(run, now),
        "parent_run_id": run.parent_run_id,
        "created_at": _iso(run.created_at), "created_at_ms": run.created_at,
        "started_at": iso(run.started_at), "started_at_ms": run.started_at,
        "ended_at": iso(run.ended_at), "ended_at_ms": run.ended_at,
    }  # fmt: skip


def step_out(step: StepRecord) -> StepOut:
    return StepOut(
        id=step.step_id, name=step.display_id, kind=step.kind, status=step.status, attempts=step.attempts,
        output=step.output, error=step.error, started_at=_iso(step.started_at), ended_at=iso(step.ended_at),
        duration_ms=None if step.ended_at is None else step.ended_at - step.started_at, wake_at=iso(step.wake_at),
    )  # fmt: skip


def cancellation_out(c: CancellationRecord) -> CancellationOut:
    return CancellationOut.model_validate({
        "id": c.id, "app_id": c.app_id, "function_id": c.function_id, "started_after": iso(c.started_after),
        "started_before": _iso(c.started_before), "if": c.expression, "cancelled": c.cancelled,
        "created_at": _iso(c.created_at)})  # fmt: skip


async def _run_or_404(st: ServerState, run_id: str) -> RunRecord:
    run = await st.engine.store.get_run(run_id)
    if run is None:
        raise HttpError(404, f"run {run_id!r} not found")
    return run


# --- events -------------------------------------------------------------------------------------------------


async def list_events(request: Request) -> Response:
    st = state_of(request)
    limit = _limit(request, EVENTS_LIMIT)
    cursor = request.query_params.get("cursor") or None  # an id bound: the events listed before it
    name = request.query_params.get("name") or None
    internal = _flag(request, "include_internal")
    page, more = await events_page(st.engine.store, name, limit, cursor, include_internal=internal)
    next_cursor = page[-1].internal_id if more else None
    return _ok(EventPage(data=[event_out(e) for e in page], metadata=_meta(st), cursor=next_cursor))


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter as the OpenAPI document has it: absent (false), ``true`` or ``false``."""
    raw = request.query_params.get(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise HttpError(400, f"{name} must be true or false, got {raw[:40]!r}")


async def get_event(request: Request) -> Response:
    st = state_of(request)
    internal_id = request.path_params["internal_id"]
    ev = await st.engine.store.get_event(internal_id)
    if ev is None:
        raise HttpError(404, f"event {internal_id!r} not found")
    return _ok(EventResponse(data=event_out(ev), metadata=_meta(st)))


async def event_runs(request: Request) -> Response:
    st = state_of(request)
    internal_id = request.path_params["internal_id"]
    wait = _wait_seconds(request)
    if await st.engine.store.get_event(internal_id) is None:
        raise HttpError(404, f"event {internal_id!r} not found")
    found = await all_runs(st, RunFilter(event_id=internal_id))
    live = [r.id for r in found if not r.ended]
    if wait and live:
        await _wait_for(request, live, wait)
        found = await all_runs(st, RunFilter(event_id=internal_id))
    apps, now = await AppIndex.load(st), st.engine.clock.now_ms()
    return _ok(RunList(data=[RunOut(**_run_fields(r, apps, now)) for r in found], metadata=_meta(st)))


# --- runs ---------------------------------------------------------------------------------------------------


def _wait_seconds(request: Request) -> float:
    """``?wait=``: ``30s``, ``2m``, ``500ms`` or bare seconds, at most ``MAX_WAIT_SECONDS``; 0 when absent."""
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    match = _WAIT.match(raw.strip()) if _WAIT_EXACT.match(raw.strip()) else None
    if match is None:
        raise HttpError(400, f"invalid wait {raw[:40]!r}: expected a duration like 30s, 2m, 500ms or bare seconds")
    number = float(match.group(1) + (match.group(2) or ""))
    seconds = number / 1000 if match.group(3) == "ms" else number * 60 if match.group(3) == "m" else number
    if seconds > MAX_WAIT_SECONDS:
        raise HttpError(400, f"invalid wait {raw[:40]!r}: at most {MAX_WAIT_SECONDS} s")
    return seconds


async def _wait_for(request: Request, run_ids: list[str], seconds: float) -> None:
    """Hold the request until these runs have ended, ``seconds`` passed or the server stops (no query per waiter:
    core/waiting.py). A client that disconnects meanwhile is let go at once."""
    st = state_of(request)
    live = st.live
    if live is None or live.stopping.is_set():
        return
    try:
        with live.wait_slot():
            waiting = asyncio.ensure_future(st.engine.waiters.wait(run_ids, seconds, stop=live.stopping))
            gone = asyncio.ensure_future(_disconnected(request))
            try:
                await asyncio.wait([waiting, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (waiting, gone):
                    task.cancel()
                await asyncio.gather(waiting, gone, return_exceptions=True)
    except TooManyWaits as exc:
        raise HttpError(429, str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def get_run(request: Request) -> Response:
    st = state_of(request)
    wait = _wait_seconds(request)
    run = await _run_or_404(st, request.path_params["run_id"])
    if wait and not run.ended:
        await _wait_for(request, [run.id], wait)
        run = await _run_or_404(st, run.id)
    ev = await st.engine.store.get_event(run.event_id)
    fields = _run_fields(run, await AppIndex.load(st), st.engine.clock.now_ms())
    data = RunDetailOut(**fields, event=None if ev is None else event_out(ev))
    return _ok(RunResponse(data=data, metadata=_meta(st)))


async def run_steps(request: Request) -> Response:
    st = state_of(request)
    run = await _run_or_404(st, request.path_params["run_id"])
    steps = await st.engine.store.list_steps(run.id)
    return _ok(StepList(data=[step_out(s) for s in steps], metadata=_meta(st)))


async def run_logs(request: Request) -> Response:
    st = state_of(request)
    run = await _run_or_404(st, request.path_params["run_id"])
    spec = await st.engine.find_function(run.function_id)
    lines = await st.engine.store.list_run_logs(run.id)
    names = {s.step_id: s.display_id for s in await st.engine.store.list_steps(run.id)} if lines else {}
    data = RunLogsOut(captured=spec is None or spec.captures_logs, lines=[
        LogLineOut(seq=line.seq, ts=_iso(line.ts), ts_ms=line.ts, level=line.level, logger=line.logger,
                   message=line.message, step_id=line.step_id, step=names.get(line.step_id or ""))
        for line in lines])  # fmt: skip
    return _ok(RunLogsResponse(data=data, metadata=_meta(st)))


async def run_traces(request: Request) -> Response:
    """The spans SDK apps sent for the run (``POST /v1/traces/userland``, server/traces_api.py)."""
    st = state_of(request)
    run = await _run_or_404(st, request.path_params["run_id"])
    spans = await st.engine.store.list_run_spans(run.id)
    data = [RunSpanOut(seq=s.seq, received_at=s.received_at, **s.span) for s in spans]
    return _ok(RunSpanList(data=data, metadata=_meta(st)))


async def list_runs(request: Request) -> Response:
    st = state_of(request)
    q = request.query_params
    limit = _limit(request, RUNS_LIMIT)
    app_id = q.get("app_id") or None
    function_id = q.get("function_id") or None
    if function_id is not None and app_id is not None:
        function_id = await resolve_function_id(st, app_id, function_id) or function_id
    flt = RunFilter(status=_status(q.get("status")), function_id=function_id, app_id=app_id,
                    created_after=_query_time(request, "created_after"),
                    created_before=_query_time(request, "created_before"),
                    limit=limit + 1, before_id=q.get("cursor") or None)  # fmt: skip
    found = await st.engine.store.list_runs(flt)
    page = found[:limit]
    apps, now = await AppIndex.load(st), st.engine.clock.now_ms()
    return _ok(RunPage(data=[RunOut(**_run_fields(r, apps, now)) for r in page], metadata=_meta(st),
                       cursor=page[-1].id if len(found) > limit else None))  # fmt: skip


async def cancel_run(request: Request) -> Response:
    """204 when cancelled; 404 for an unknown run; 409 for a run that had already ended."""
    st = state_of(request)
    run = await _run_or_404(st, request.path_params["run_id"])
    if run.status in LIVE and await st.engine.cancel_run(run.id, "cancelled by API"):
        return Response(status_code=204)
    ended = await st.engine.store.get_run(run.id)
    status = STATUS_NAMES.get(ended.status, ended.status) if ended is not None else "deleted"
    raise HttpError(409, f"run {run.id!r} has already ended ({status}): there is nothing to cancel")


async def rerun_run(request: Request) -> Response:
    st = state_of(request)
    body: RerunIn = await _body(request, RerunIn)
    run_id = request.path_params["run_id"]
    try:
        new_id = await rerun(st.engine, run_id, body.from_step)
    except RunNotFoundError as exc:
        raise HttpError(404, str(exc)) from None
    except StepNotFoundError as exc:
        raise HttpError(400, str(exc)) from None
    except RerunNotPossibleError as exc:
        raise HttpError(409, str(exc)) from None
    return _ok(RerunResponse(data=RerunOut(run_id=new_id), metadata=_meta(st)))


# --- signals ------------------------------------------------------------------------------------------------


async def send_signal(request: Request) -> Response:
    """``POST /v1/signals``: resume the run waiting for the signal; 404 when none waits (as Inngest answers)."""
    st = state_of(request)
    body: SignalIn = await _body(request, SignalIn)
    try:
        run_id = await st.engine.send_signal(body.signal, body.data)
    except (ValueError, TypeError) as exc:
        raise HttpError(400, str(exc)) from None
    if run_id is None:
        raise HttpError(404, f"no run waits for signal {body.signal!r}")
    return _ok(SignalResponse(data=SignalOut(run_id=run_id), metadata=_meta(st)))


# --- cancellations ------------------------------------------------------------------------------------------


async def resolve_function_id(st: ServerState, app_id: str, function_id: str) -> str | None:
    """The composite id of the app's function given by slug or composite id; None if the app has no such one."""
    specs = await st.engine.refresh_registry()
    for candidate in (f"{app_id}-{function_id}", function_id):
        spec = specs.get(candidate)
        if spec is not None and spec.app_id == app_id:
            return spec.id
    return None


async def create_cancellation(request: Request) -> Response:
    """Cancel the live runs of one function created in a time window (whose trigger event matches ``if``)."""
    st = state_of(request)
    body: CancellationIn = await _body(request, CancellationIn)
    function_id = await resolve_function_id(st, body.app_id, body.function_id)
    if function_id is None:
        raise HttpError(404, f"function {body.function_id!r} not found in app {body.app_id!r}")
    before = parse_time(body.started_before, "started_before")
    after = None if body.started_after is None else parse_time(body.started_after, "started_after")
    if after is not None and after > before:
        raise HttpError(400, "started_after must not be later than started_before")
    expression = None
    if body.if_ is not None and body.if_.strip():
        try:
            expression = compile_expression(body.if_)
        except ExpressionError as exc:
            raise HttpError(400, f"invalid if expression: {exc}") from None
    record = await bulk_cancel(st, body.app_id, function_id, after, before, expression)
    return _ok(CancellationResponse(data=cancellation_out(record), metadata=_meta(st)))


async def list_cancellations(request: Request) -> Response:
    st = state_of(request)
    found = await st.engine.store.list_cancellations(_limit(request, CANCELLATIONS_LIMIT))
    return _ok(CancellationList(data=[cancellation_out(c) for c in found], metadata=_meta(st)))


# --- functions and apps -------------------------------------------------------------------------------------


async def list_functions(request: Request) -> Response:
    st = state_of(request)
    app_id = request.query_params.get("app_id") or None
    found = [f for f in await st.engine.store.list_functions() if app_id is None or f.app_id == app_id]
    errors = await expression_errors_by_function(st)
    data = [FunctionOut(id=f.id, app_id=f.app_id, slug=f.slug, name=f.name, config=f.config,
                        problems=list(FunctionSpec.from_record(f).problems), expression_errors=errors.get(f.id, []))
            for f in found]  # fmt: skip
    return _ok(FunctionList(data=data, metadata=_meta(st)))


async def expression_errors_by_function(st: ServerState) -> dict[str, list[ExpressionErrorOut]]:
    out: dict[str, list[ExpressionErrorOut]] = {}
    for e in await st.engine.store.list_expression_errors():
        out.setdefault(e.function_id, []).append(ExpressionErrorOut(
            place=e.place, expression=e.expression, message=e.message, count=e.count, first_at=_iso(e.first_at),
            last_at=_iso(e.last_at)))  # fmt: skip
    return out


async def list_apps(request: Request) -> Response:
    """Apps synced over HTTP, then apps known only from their registered functions (in-process workers)."""
    st = state_of(request)
    counts: dict[str, int] = {}
    problems: dict[str, list[str]] = {}
    for f in await st.engine.store.list_functions():
        counts[f.app_id] = counts.get(f.app_id, 0) + 1
        problems.setdefault(f.app_id, []).extend(f"{f.id}: {p}" for p in FunctionSpec.from_record(f).problems)
    data = [
        AppOut(app_id=a.app_id, url=a.url, sdk=a.sdk, framework=a.framework, app_version=a.app_version,
               checksum=a.checksum, synced_at=iso(a.synced_at), error=a.error,
               function_count=counts.get(a.app_id, 0) if a.app_id else 0, created_at=iso(a.created_at),
               updated_at=iso(a.updated_at), problems=problems.get(a.app_id, []) if a.app_id else [])
        for a in await st.engine.store.list_apps()
    ]  # fmt: skip
    synced = {a.app_id for a in data}
    data += [
        AppOut(app_id=app_id, url=None, sdk=None, framework=None, app_version=None, checksum=None, synced_at=None,
               error=None, function_count=n, created_at=None, updated_at=None, problems=problems.get(app_id, []))
        for app_id, n in sorted(counts.items()) if app_id not in synced
    ]  # fmt: skip
    return _ok(AppList(data=data, metadata=_meta(st)))


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document())


# --- routing ------------------------------------------------------------------------------------------------


def _limit_param(bounds: tuple[int, int]) -> Param:
    return Param("limit", "query", f"Page size (default {bounds[0]})",
                 {"type": "integer", "minimum": 1, "maximum": bounds[1]})  # fmt: skip


_RUN_ID = Param("run_id", "path", "The run's id")
_EVENT_ID = Param("internal_id", "path", "The event's internal id")
_CURSOR = Param("cursor", "query", "The cursor of the previous page (an id: the page lists what comes before it)")
_STATUS = {"type": "string", "enum": [*STATUS_NAMES.values(), *STATUS_NAMES]}
_WAIT_PARAM = Param(
    "wait",
    "query",
    f"Answer once the run has ended (or after this long, with its current state, "
    f"200 either way): 30s, 2m, 500ms or bare seconds, at most {MAX_WAIT_SECONDS} s. Past the node's "
    "cap of waiting requests: 429 with Retry-After",
    {"type": "string", "pattern": WAIT_PATTERN},
)

ENDPOINTS: Sequence[Endpoint] = (
    Endpoint("GET", "/v1/events", list_events, "Events, newest first", EventPage, (400,),
             (Param("name", "query", "Only events with this name, or matching this pattern: * matches any characters "
                    "(app/*, */user.created)"),
              Param("include_internal", "query", "Also list the engine's own stepline/* and inngest/* events (listed "
                    "anyway when name names them)", {"type": "boolean"}),
              _limit_param(EVENTS_LIMIT), _CURSOR),
             tag="events"),
    Endpoint("GET", "/v1/events/{internal_id}", get_event, "One event", EventResponse, (404,), (_EVENT_ID,),
             tag="events"),
    Endpoint("GET", "/v1/events/{internal_id}/runs", event_runs, "The runs an event started (?wait=: once they "
             "have all ended)", RunList, (400, 404, 429), (_EVENT_ID, _WAIT_PARAM), tag="events"),
    Endpoint("GET", "/v1/runs", list_runs, "Runs, newest first", RunPage, (400,), (
        Param("status", "query", "Queued, Running, Completed, Failed, Cancelled or Skipped (any case)", _STATUS),
        Param("function_id", "query", "A composite function id (or a slug, with app_id)"),
        Param("app_id", "query", "Runs of this app's functions"),
        Param("created_after", "query", "Created at or after (inclusive)", TIME_SCHEMA),
        Param("created_before", "query", "Created before (exclusive)", TIME_SCHEMA),
        _limit_param(RUNS_LIMIT), _CURSOR)),
    Endpoint("GET", "/v1/runs/{run_id}", get_run, "One run with its trigger event (?wait=: once it has ended)",
             RunResponse, (400, 404, 429), (_RUN_ID, _WAIT_PARAM)),
    Endpoint("GET", "/v1/runs/{run_id}/steps", run_steps, "A run's steps in the order they were first recorded",
             StepList, (404,), (_RUN_ID,)),
    Endpoint("GET", "/v1/runs/{run_id}/logs", run_logs, "The log lines of a run's in-process function code",
             RunLogsResponse, (404,), (_RUN_ID,)),
    Endpoint("GET", "/v1/runs/{run_id}/traces", run_traces, "The OpenTelemetry spans SDK apps sent for the run "
             "(POST /v1/traces/userland), in OTLP JSON", RunSpanList, (404,), (_RUN_ID,)),
    Endpoint("DELETE", "/v1/runs/{run_id}", cancel_run, "Cancel a run (409 if it already ended)", None,
             (404, 409), (_RUN_ID,), ok_status=204),
    Endpoint("DELETE", "/v0/runs/{run_id}", cancel_run, "Cancel a run (409 if it already ended)", None,
             (404, 409), (_RUN_ID,), ok_status=204),
    Endpoint("POST", "/v1/runs/{run_id}/rerun", rerun_run, "Start the run again, from the start or from a step",
             RerunResponse, (400, 404, 409), (_RUN_ID,), body=RerunIn, body_required=False),
    Endpoint("POST", "/v1/signals", send_signal, "Resume the run waiting for a signal with data", SignalResponse,
             (400, 404), body=SignalIn, tag="signals"),
    Endpoint("POST", "/v1/cancellations", create_cancellation, "Cancel the live runs of a function in a time window",
             CancellationResponse, (400, 404), body=CancellationIn, tag="cancellations"),
    Endpoint("GET", "/v1/cancellations", list_cancellations, "Bulk cancellations requested, newest first",
             CancellationList, (400,), (_limit_param(CANCELLATIONS_LIMIT),), tag="cancellations"),
    Endpoint("GET", "/v1/functions", list_functions, "Registered functions with their config", FunctionList, (),
             (Param("app_id", "query", "Only this app's functions"),), tag="functions"),
    Endpoint("GET", "/v1/apps", list_apps, "Apps: synced ones (by URL), then in-process ones", AppList,
             tag="apps"),
    Endpoint("GET", "/openapi.json", openapi_json, "This document", OpenApiDocument, tag="meta"),
)  # fmt: skip


@functools.cache
def all_endpoints() -> tuple[Endpoint, ...]:
    """``ENDPOINTS`` and the actions of ``rest_actions`` (which uses this module's helpers, so is imported late)."""
    from stepline.server import rest_actions

    return (*ENDPOINTS, *rest_actions.ENDPOINTS)


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document of every endpoint (built once)."""
    return openapi_document(all_endpoints())


def routes() -> list[BaseRoute]:
    """One route per path, whatever its methods: a request with another method gets 405 with an ``Allow`` that
    lists them all (one route per method would list only the first route's)."""
    by_path: dict[str, dict[str, Handler]] = {}
    for ep in all_endpoints():
        by_path.setdefault(ep.path, {})[ep.method] = endpoint(ep.handler)
    return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in by_path.items()]


def _by_method(handlers: dict[str, Handler]) -> Handler:
    if len(handlers) == 1:
        return next(iter(handlers.values()))

    async def dispatch(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return dispatch
