"""Durable endpoints (npm SDK 4.x ``inngest.endpoint(...)``): sync checkpointing of runs an HTTP request started.

The app runs the function inside its own HTTP handler and tells the server as it goes:

- ``POST /v1/checkpoint {run_id, event, steps, retries, ...}``: a new run with the id the SDK chose. The event
  (``inngest/http.request``, built by the SDK from the request: ``domain``, ``path``, ``method``, ``fn`` ...) is
  stored, a function for the endpoint is registered in the app named after the endpoint's origin (its URL:
  ``domain + path``), and the run starts ``running`` under the app's lease (``endpoint:<run_id>``, ``call_timeout``
  long, renewed by each checkpoint). Answer: ``{data: {fn_id, app_id, run_id, token, realtime_token}}``; ``409``
  when the run exists.
- ``POST /v1/checkpoint/{run_id}/steps {fn_id, app_id, run_id, steps}``: later ops of the same run.

Ops: ``StepRun`` is stored as the step's result (first write wins) before the answer, so a crash of the app loses
no checkpointed step; ``StepPlanned`` and the lazy ``DeferAdd``/``DeferAbort`` as in async checkpointing;
``RunComplete`` ends the run with its data (the endpoint's response ``{status, headers, body}``). Any other op
(a sleep, a wait, a failed step: ``StepFailed`` is stored as the step's failed memo, ``StepError`` delays
the server's call by the first backoff) means the endpoint went async: the app answers its caller with a redirect to
the output URL, and the server releases the run so a worker calls the endpoint (``POST`` to its URL with
``X-Run-ID`` and ``X-Inngest-Signature``, which makes the SDK replay the checkpointed steps and go on in the
classic flow). An app that dies holding the run loses nothing either: its lease expires and a worker resumes it.

``GET /v1/http/runs/{run_id}/output?token=``: the run's response once it ends (waits up to ``OUTPUT_WAIT_S``, as a
waiting request: counted against the node's cap, 429 beyond),
answered with the endpoint's status, headers and body. The token (``token`` above) is an HMAC of the run id with a
secret kept in the store; a missing or wrong one is a ``401``, an unknown run a ``404``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import re
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from stepline.core.engine import new_run
from stepline.core.errors import EventValidationError
from stepline.core.events import Event, validate_event
from stepline.core.ids import new_ulid
from stepline.protocol import calls
from stepline.server.bodies import BodyTimeout, BodyTooLarge, InvalidBody, parse_json, read_body
from stepline.server.checkpoint_api import Refused, store_ops
from stepline.server.defers import LAZY_OPS
from stepline.server.errors import error_response
from stepline.server.outbound import OutboundRefused
from stepline.server.rest_api import HttpError, _wait_for
from stepline.server.sdk_api import unauthorized
from stepline.server.state import ServerState, state_of
from stepline.storage.records import FunctionRecord, IngestBatch, RunFinish, StepUpdate, StoredEvent

log = logging.getLogger("stepline.server.endpoint")

OUTPUT_WAIT_S = 300.0  # as Inngest: the output URL waits this long for the run to end
_SECRET_NAME = "endpoint-output"
_RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_STORED_OPS = frozenset({"StepRun", "Step", "StepPlanned"}) | LAZY_OPS
_locks: dict[int, asyncio.Lock] = {}
OUTPUT_CSP = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_DROPPED_HEADERS = frozenset({"content-length", "set-cookie", "set-cookie2", "content-security-policy",
                              "x-content-type-options", "transfer-encoding", "connection"})  # fmt: skip


def endpoint_owner(run_id: str) -> str:
    """The lease owner of a run its app is running (no worker's name has this form)."""
    return f"endpoint:{run_id}"


def _slugify(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "-", text).strip("-") or "endpoint"


def endpoint_function(event_data: dict[str, Any], retries: int) -> FunctionRecord:
    """The function a durable endpoint's runs belong to: app ``endpoint-<host>``, slug the SDK's ``fn`` (or
    ``METHOD path``), called at ``domain + path`` (query included, as the SDK saw it)."""
    domain, path = str(event_data["domain"]), str(event_data.get("path") or "/")
    method = str(event_data.get("method") or "POST")
    app_id = f"endpoint-{_slugify(urlsplit(domain).netloc)}"
    slug = _slugify(str(event_data.get("fn") or f"{method} {path}"))
    query = event_data.get("query_params")
    url = domain + path + (f"?{query}" if isinstance(query, str) and query else "")
    config = {"triggers": [], "retries": retries, "runtime": "http", "url": url,
              "endpoint": {"method": method, "path": path}}  # fmt: skip
    return FunctionRecord(f"{app_id}-{slug}", app_id, slug, f"{method} {path}", config)


async def _output_token(st: ServerState, run_id: str) -> str:
    secret = await st.engine.store.realtime_secret(_SECRET_NAME, st.engine.clock.now_ms())
    return hmac.new(secret.encode(), run_id.encode(), hashlib.sha256).hexdigest()


async def _read_json(request: Request, st: ServerState) -> Any:
    try:
        return parse_json(await read_body(request, st.config.max_body_bytes))
    except BodyTooLarge:
        raise Refused(413, f"the checkpoint is larger than {st.config.max_body_bytes} bytes") from None
    except BodyTimeout as exc:
        raise Refused(408, str(exc)) from None
    except InvalidBody as exc:
        raise Refused(400, f"the checkpoint is not valid JSON: {exc}") from None


def _ops(raw: Any) -> list[calls.Op]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise Refused(400, "a checkpoint's 'steps' is a list of ops")
    ops = [calls.parse_op(item) for item in raw]
    if any(op is None or (op.op in calls.STEP_OPS and not op.id) for op in ops):
        raise Refused(400, "every checkpointed op needs an 'op' and a step 'id'")
    return [op for op in ops if op is not None]


def _is_origin(domain: str) -> bool:
    """``scheme://host[:port]`` and nothing else (the app id is named after the host, the URL is domain + path)."""
    try:
        parts = urlsplit(domain)
        parts.port  # noqa: B018 (a bad port raises)
    except ValueError:
        return False
    plain = "@" not in parts.netloc and not parts.query and not parts.fragment and domain.isprintable()
    return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/") and plain


def _checked_event(raw: dict[str, Any]) -> Event:
    """The checkpoint's event with the event API's checks (names, ids, nesting, integers, size ...)."""
    ts = raw.get("ts")
    fields = {"name": raw.get("name") or "inngest/http.request", "data": raw.get("data"), "id": raw.get("id") or None,
              "ts": None if ts in (0, None) else ts, "user": raw.get("user") or {}}  # fmt: skip
    try:
        return validate_event(fields, allow_reserved=True)
    except EventValidationError as exc:
        raise Refused(400, f"the checkpoint's event is refused: {exc}") from None


async def _register(st: ServerState, record: FunctionRecord) -> None:
    """Add the endpoint's function to its app (the app's other endpoints stay)."""
    spec = await st.engine.find_function(record.id)
    if spec is not None and spec.config == record.config:
        return
    lock = _locks.setdefault(id(st), asyncio.Lock())
    async with lock:
        current = [f for f in await st.engine.store.list_functions() if f.app_id == record.app_id]
        await st.engine.register(record.app_id, [f for f in current if f.id != record.id] + [record])


async def _apply(st: ServerState, run_id: str, ops: list[calls.Op]) -> None:
    """Store the ops of a sync checkpoint; end the run (``RunComplete``) or hand it to a worker (anything else)."""
    owner = endpoint_owner(run_id)
    store = st.engine.store
    try:
        await store_ops(st, run_id, owner, [op for op in ops if op.op in _STORED_OPS])
    except ValueError as exc:  # a result that cannot be stored (NUL characters, ...)
        raise Refused(400, f"a checkpointed result cannot be stored: {exc}") from None
    rest = [op for op in ops if op.op not in _STORED_OPS]
    now = st.engine.clock.now_ms()
    complete = next((op for op in rest if op.op == "RunComplete"), None)
    if complete is not None:
        run = await store.get_run(run_id)
        trigger = None if run is None else await store.get_event(run.event_id)
        if run is None or trigger is None:
            raise Refused(404, f"run {run_id!r} not found")
        await st.engine.end_run(run, trigger, owner, RunFinish("completed", output=complete.data))
        st.engine.notify()
    elif rest:  # the endpoint went async: a worker calls it (the SDK replays the stored steps) and goes on
        due = now
        for op in rest:
            error = op.error or {"name": "Error", "message": "step failed"}
            if op.op == "StepFailed":  # no retries left: the step's error is its memo, as the executor stores it
                failed = StepUpdate(op.id, op.label, "run", "failed", 1, error=error)
                outcome = await store.record_step(run_id, owner, failed, st.engine.matcher, now)
                if outcome.status != "ok":
                    raise Refused(409, f"run {run_id} has ended or is no longer run by its endpoint")
            elif op.op == "StepError":  # the step runs again in the server's call, after the first backoff
                due = max(due, now + int(st.config.backoff.delay(0).total_seconds() * 1000))
        await store.release_run(run_id, owner, due)
        st.engine.notify()
    else:
        await store.renew_leases(owner, [run_id], now, int(st.config.call_timeout * 1000))


async def checkpoint_new_run(request: Request) -> Response:
    """``POST /v1/checkpoint``: a run a durable endpoint started, with its first ops."""
    if (denied := unauthorized(request)) is not None:
        return denied
    st = state_of(request)
    try:
        body = await _read_json(request, st)
        if not isinstance(body, dict):
            raise Refused(400, "a checkpoint is a JSON object")
        run_id, event, retries = body.get("run_id"), body.get("event"), body.get("retries", 3)
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise Refused(400, f"the checkpoint's run_id {run_id!r:.80} is not a run id (1-64 letters, digits, _-)")
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("domain"), str):
            raise Refused(400, "the checkpoint's event needs data.domain (and data.path): the endpoint's URL")
        if not _is_origin(str(data["domain"])):
            raise Refused(400, f"the endpoint's domain {data['domain']!r:.200} is not an http(s) origin")
        if not isinstance(data.get("path") or "/", str) or not str(data.get("path") or "/").startswith("/"):
            raise Refused(400, f"the endpoint's path {data.get('path')!r:.200} does not start with '/'")
        if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 20:
            retries = 3  # Infinity and the like: Inngest's default
        checked = _checked_event(event if isinstance(event, dict) else {})
        ops = _ops(body.get("steps"))
        record = endpoint_function(data, retries)
        try:
            st.outbound.policy.check_url(str(record.config["url"]))
        except OutboundRefused as exc:
            raise Refused(400, f"the endpoint's url is refused by the outbound policy: {exc}") from None
    except Refused as exc:
        return error_response(exc.status, exc.message)
    store = st.engine.store
    if await store.get_run(run_id) is not None:
        return error_response(409, "Run already exists")
    await _register(st, record)
    spec = await st.engine.find_function(record.id)
    if spec is None:  # another node replaced the app's functions meanwhile: the SDK retries the checkpoint
        return error_response(503, f"the endpoint's function {record.id!r} is being registered; try again")
    now = st.engine.clock.now_ms()
    eid = new_ulid()
    stored = StoredEvent(eid, checked.id or eid, checked.name, checked.data, checked.user, checked.ts or now, None, now)
    await store.ingest(IngestBatch([stored], []), st.engine.matcher, now)
    run = dataclasses.replace(new_run(spec, eid, now), id=run_id)  # the SDK's run id
    if not await store.start_endpoint_run(run, endpoint_owner(run_id), now + int(st.config.call_timeout * 1000), now):
        return error_response(409, "Run already exists")
    try:
        await _apply(st, run_id, ops)
    except Refused as exc:
        return error_response(exc.status, exc.message)
    realtime = await st.engine.realtime.token(run_id, ["stream"])
    return JSONResponse({"data": {"fn_id": record.id, "app_id": record.app_id, "run_id": run_id,
                                  "token": await _output_token(st, run_id), "realtime_token": realtime}})  # fmt: skip


async def checkpoint_steps(request: Request) -> Response:
    """``POST /v1/checkpoint/{run_id}/steps``: later ops of a durable endpoint's run."""
    if (denied := unauthorized(request)) is not None:
        return denied
    st = state_of(request)
    run_id = request.path_params["run_id"]
    try:
        body = await _read_json(request, st)
        if not isinstance(body, dict):
            raise Refused(400, "a checkpoint is a JSON object")
        ops = _ops(body.get("steps"))
        run = await st.engine.store.get_run(run_id)
        if run is None:
            raise Refused(404, f"run {run_id!r} not found")
        if run.status not in ("queued", "running"):
            raise Refused(409, f"run {run_id} has ended ({run.status})")
        if run.lease_owner != endpoint_owner(run_id):
            raise Refused(409, f"run {run_id} is no longer run by its endpoint (the server resumed it)")
        await _apply(st, run_id, ops)
    except Refused as exc:
        return error_response(exc.status, exc.message)
    return Response(status_code=200)


async def run_output(request: Request) -> Response:
    """``GET /v1/http/runs/{run_id}/output?token=``: the endpoint's response once its run ends."""
    st = state_of(request)
    run_id = request.path_params["run_id"]
    token = request.query_params.get("token") or ""
    if not hmac.compare_digest(token.encode(), (await _output_token(st, run_id)).encode()):
        return error_response(401, "Unable to find run with auth token")
    run = await st.engine.store.get_run(run_id)
    if run is not None and run.status in ("queued", "running"):
        # One waiter per request on the engine's run-end notices (no query per waiter), counted against the node's
        # waiting requests (429 beyond), let go when the caller disconnects or the server stops.
        try:
            await _wait_for(request, [run_id], OUTPUT_WAIT_S)
        except HttpError as exc:
            return JSONResponse({"error": exc.message, "status": exc.status}, exc.status, headers=exc.headers)
        run = await st.engine.store.get_run(run_id)
    if run is None:
        return error_response(404, f"run {run_id!r} not found")
    if run.status in ("queued", "running"):
        return JSONResponse({"status": "running", "message": "run did not end within 5 minutes"})
    if run.status != "completed":
        return JSONResponse({"status": run.status, "error": run.error}, status_code=500)
    out = run.output
    if isinstance(out, dict) and isinstance(out.get("status"), int) and out["status"] > 0:
        headers = _output_headers(out.get("headers"))
        body = out.get("body")
        return Response(body if isinstance(body, str) else "", status_code=out["status"], headers=headers)
    return JSONResponse(out)


def _output_headers(raw: Any) -> dict[str, str]:
    """The endpoint's headers as the output URL may send them. That URL is on the server's origin, the dashboard's,
    and the response is the app's (often built from what its callers sent): it is sandboxed (``OUTPUT_CSP``: its
    scripts run in an opaque origin, without the dashboard's cookie or pages), sets no cookie for the server's
    origin, and a header that cannot be sent as given (CR, LF, other control characters) is left out."""
    headers: dict[str, str] = {}
    for key, value in raw.items() if isinstance(raw, dict) else ():
        name, text = str(key), str(value)
        if not _HEADER_NAME.match(name) or _CONTROL.search(text) or name.lower() in _DROPPED_HEADERS:
            continue
        headers[name] = text
    headers["Content-Security-Policy"] = OUTPUT_CSP
    headers["X-Content-Type-Options"] = "nosniff"
    return headers


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/checkpoint", checkpoint_new_run, methods=["POST"]),
        Route("/v1/checkpoint/{run_id}/steps", checkpoint_steps, methods=["POST"]),
        Route("/v1/http/runs/{run_id}/output", run_output, methods=["GET"]),
    ]
