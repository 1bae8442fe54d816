"""Checkpointing (npm SDK 4.x): the app stores step results as it runs them instead of ending a call per step.

When the server's call carries ``ctx.fn_id`` and ``ctx.qi_id`` (discovery calls, see ``HttpExecutor``), the npm SDK
runs step after step in that one call and POSTs each result to ``/v1/checkpoint/{run_id}/async``; the call ends
with the last results and ``RunComplete`` (or with an op the server must schedule: a sleep, a wait, parallel steps,
a failing step, ``DiscoveryRequest`` when the SDK's ``maxRuntime`` is reached). A ten-step run takes one call.

``qi_id`` names the dispatch: ``<worker>|<n>``, the worker that holds the run's lease and its call number. A
checkpoint is accepted only from the dispatch in flight: another worker's (the lease moved), or an earlier call of
this worker's (it timed out and was made again), gets ``409`` (stale dispatch: the SDK halts instead of going on
beside the new call). Accepted ops: ``StepRun`` (stored as the step's result, first write wins: a different result
stored meanwhile is a 409 too, so the SDK does not go on with a value that lost), ``StepPlanned`` (a step about to
run: nothing to store), and the lazy ``DeferAdd`` / ``DeferAbort``. Anything else is a precise ``400``.
An unknown run is a ``404``; a run that ended, ``409``.

The usual checkpoint, from the dispatch in flight in this process, is one store round trip: ``record_step``
checks the run's status and lease in the transaction that stores the result (an ended run stores nothing; a
lease lost meanwhile still stores a *completed* result, first write wins, as every late answer does, and the
SDK gets its ``409``); the run is read only to explain a refusal, or for a checkpoint of a dispatch this process
does not hold (``--processes N``: the other process's call, or a stale one).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from stepline.protocol import calls
from stepline.server.bodies import BodyTimeout, BodyTooLarge, InvalidBody, parse_json, read_body
from stepline.server.defers import LAZY_OPS, defer_update
from stepline.server.errors import error_response
from stepline.server.sdk_api import unauthorized
from stepline.server.state import ServerState, state_of
from stepline.storage.records import StepUpdate

log = logging.getLogger("stepline.server.checkpoint")


def dispatch_id(owner: str, n: int) -> str:
    return f"{owner}|{n}"


def dispatch_owner(qi_id: str) -> str | None:
    owner, sep, n = qi_id.rpartition("|")
    return owner if sep and owner and n.isdigit() else None


class Refused(Exception):
    """A checkpoint refused with ``status`` (the SDK reads the status; the message says why)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def store_ops(st: ServerState, run_id: str, owner: str, ops: list[calls.Op]) -> int:
    """Apply the ops of one checkpoint in order; returns how many step results were stored."""
    stored = 0
    store = st.engine.store
    if any(op.op in LAZY_OPS for op in ops):  # defers first, as they ride on the other ops (server/defers.py)
        known = {r.step_id: r for r in await store.list_steps(run_id)}
        for op in ops:
            if op.op in LAZY_OPS and (update := defer_update(op, known, run_id)) is not None:
                outcome = await store.record_step(run_id, owner, update, st.engine.matcher, st.engine.clock.now_ms())
                if outcome.status != "ok" or outcome.step is None:
                    raise Refused(409, f"stale dispatch: run {run_id} has ended or moved")
                known[op.id] = outcome.step
                stored += 1
    for op in ops:
        if op.op == "StepPlanned" or op.op in LAZY_OPS:
            continue  # a step about to run: nothing to store yet
        if op.op not in ("StepRun", "Step"):
            raise Refused(400, f"cannot checkpoint a {op.op} op: only StepRun, StepPlanned, DeferAdd and DeferAbort")
        calls.check_storable(op.data)
        update = StepUpdate(op.id, op.label, "run", "completed", 1, output=op.data)
        outcome = await store.record_step(run_id, owner, update, st.engine.matcher, st.engine.clock.now_ms())
        if outcome.status == "cancelled":
            raise Refused(409, f"run {run_id} has ended")
        if outcome.status == "lost":
            raise Refused(409, f"stale dispatch: another worker holds run {run_id} now")
        if outcome.step is not None and (outcome.step.status, outcome.step.output) != ("completed", op.data):
            raise Refused(409, f"stale dispatch: step {op.label!r} of run {run_id} already has another result")
        stored += 1
    return stored


async def _run_refuses(st: ServerState, run_id: str, owner: str, qi_id: str, current: str | None) -> Response | None:
    """The precise refusal of a checkpoint to an unknown run, an ended run or a stale dispatch (None: accepted)."""
    run = await st.engine.store.get_run(run_id)
    if run is None:
        return error_response(404, f"run {run_id!r} not found")
    if run.status not in ("queued", "running"):
        return error_response(409, f"run {run_id} has ended ({run.status})")
    if run.lease_owner != owner or (current is not None and current != qi_id):
        return error_response(409, f"stale dispatch {qi_id!r}: run {run_id} was dispatched again since")
    return None


async def checkpoint_async(request: Request) -> Response:
    """``POST /v1/checkpoint/{run_id}/async``: the step results of the dispatch in flight."""
    if (denied := unauthorized(request)) is not None:
        return denied
    st = state_of(request)
    run_id = request.path_params["run_id"]
    try:
        body = parse_json(await read_body(request, st.config.max_body_bytes))
    except BodyTooLarge:
        return error_response(413, f"the checkpoint is larger than {st.config.max_body_bytes} bytes")
    except BodyTimeout as exc:
        return error_response(408, str(exc))
    except InvalidBody as exc:
        return error_response(400, f"the checkpoint is not valid JSON: {exc}")
    if not isinstance(body, dict) or not isinstance(body.get("steps"), list):
        return error_response(400, "a checkpoint is an object with a list of ops in 'steps'")
    qi_id = body.get("qi_id")
    owner = dispatch_owner(qi_id) if isinstance(qi_id, str) else None
    if owner is None or not isinstance(qi_id, str):
        return error_response(400, f"the checkpoint's qi_id {qi_id!r:.80} is not a dispatch of this server")
    ops = [calls.parse_op(raw) for raw in body["steps"]]
    if any(op is None or (op.op in calls.STEP_OPS and not op.id) for op in ops):
        return error_response(400, "every checkpointed op needs an 'op' and a step 'id'")
    current = st.dispatches.current.get(run_id)
    if current != qi_id:  # not a dispatch in flight in this process: read the run to check it
        if (refused := await _run_refuses(st, run_id, owner, qi_id, current)) is not None:
            return refused
    # else the usual case, the dispatch in flight here: record_step checks the run and its lease in its own
    # transaction (an ended run stores nothing), so no read ahead of it
    try:
        stored = await store_ops(st, run_id, owner, [op for op in ops if op is not None])
    except Refused as exc:
        if current == qi_id and exc.status == 409:  # say precisely why (unknown run, ended, moved)
            refused = await _run_refuses(st, run_id, owner, qi_id, current)
            return refused if refused is not None else error_response(exc.status, exc.message)
        return error_response(exc.status, exc.message)
    except ValueError as exc:  # a result that cannot be stored (NUL characters, ...)
        return error_response(400, f"a checkpointed result cannot be stored: {exc}")
    if run_id in st.dispatches.counts:
        st.dispatches.counts[run_id] += stored
    # An empty body, as Inngest's: the SDK only reads the status, and a body it leaves unread would keep its
    # connection busy until garbage collection (undici), so the next checkpoint would open another one.
    return Response(status_code=200)


def routes() -> list[BaseRoute]:
    return [Route("/v1/checkpoint/{run_id}/async", checkpoint_async, methods=["POST"])]
