"""The dashboard's actions (POST, each confirmed, CSRF-checked and recorded as a ``stepline/dashboard.action``
event): cancel, rerun (from a step), bulk cancel and bulk rerun by the runs list's filter, invoke a function,
send an event, sync and remove apps. They call what the REST API calls: ``Engine.cancel_run``, ``rerun``,
``queries.bulk_cancel``, ``Engine.invoke_now``, ``Engine.ingest``, ``sync.sync_app``, ``Store.delete_app``."""

from __future__ import annotations

import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from stepline.core import replay
from stepline.core.errors import EventValidationError, UnknownFunctionError
from stepline.core.rerun import RerunNotPossibleError, RunNotFoundError, StepNotFoundError, rerun
from stepline.core.scheduler import NotACronFunction, run_cron_now
from stepline.server import queries, sync
from stepline.server.bodies import InvalidBody, parse_json
from stepline.server.dashboard.auth import Session
from stepline.server.dashboard.core import PREFIX, ActionError, Dashboard, redirect, server_state
from stepline.server.dashboard.pages import RunsQuery
from stepline.server.outbound import OutboundRefused
from stepline.storage.records import RunRecord

BULK_RERUN_MAX = 1000  # runs one bulk rerun starts at most


def _run_path(run_id: str) -> str:
    return f"{PREFIX}/runs/{urllib.parse.quote(run_id)}"


def _json_object(raw: str, what: str) -> dict[str, Any]:
    try:
        value = parse_json((raw.strip() or "{}").encode("utf-8", "surrogatepass"), what)
    except InvalidBody as exc:
        raise ActionError(400, str(exc)) from None
    if not isinstance(value, dict):
        raise ActionError(400, f"{what} must be a JSON object ({{...}}), got {type(value).__name__}")
    return value


# --- one run --------------------------------------------------------------------------------------------------


async def cancel(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    run_id = request.path_params["run_id"]
    run = await dash.engine.store.get_run(run_id)
    if run is None:
        raise ActionError(404, f"Run {run_id!r} not found.")
    if not await dash.engine.cancel_run(run_id, "cancelled from the dashboard"):
        raise ActionError(409, f"Run {run_id} has already ended: there is nothing to cancel.")
    await dash.record(request, session, "cancel", run_id=run_id, function_id=run.function_id)
    return redirect(_run_path(run_id), "Run cancelled.")


async def rerun_one(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    run_id = request.path_params["run_id"]
    from_step = form.get("from_step") or None
    try:
        new_id = await rerun(dash.engine, run_id, from_step)
    except RunNotFoundError as exc:
        raise ActionError(404, str(exc)) from None
    except StepNotFoundError as exc:
        raise ActionError(400, str(exc)) from None
    except RerunNotPossibleError as exc:
        raise ActionError(409, str(exc)) from None
    await dash.record(request, session, "rerun", run_id=run_id, from_step=from_step, new_run_id=new_id)
    origin = f" from step {form.get('from_step_name') or from_step}" if from_step else ""
    return redirect(_run_path(new_id), f"Rerun of {run_id}{origin} started.")


def describe_run_action(request: Request, form: dict[str, str]) -> str:
    run_id = request.path_params["run_id"]
    if request.url.path.endswith("/cancel"):
        return f"Cancel run {run_id}?"
    if form.get("from_step"):
        return f"Rerun run {run_id} from step {form.get('from_step_name') or form['from_step']!r}?"
    return f"Rerun run {run_id} from the start?"


# --- by filter --------------------------------------------------------------------------------------------------


async def _matching(dash: Dashboard, request: Request, query: RunsQuery, status: str) -> list[RunRecord]:
    flt = query.run_filter(dash.engine.clock.now_ms(), status=status, limit=500)
    return await queries.all_runs(server_state(request), flt)


async def bulk_cancel(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    query = RunsQuery.parse(form)
    if query.status and query.status not in ("queued", "running"):
        raise ActionError(400, f"{query.status.capitalize()} runs have ended: only queued and running runs cancel.")
    now = dash.engine.clock.now_ms()
    after, until = query.window(now)
    functions: set[str] = set()
    for status in (query.status,) if query.status else ("queued", "running"):
        functions |= {r.function_id for r in await _matching(dash, request, query, status)}
    st = server_state(request)
    apps = await queries.AppIndex.load(st)
    cancelled, records = 0, []
    for function_id in sorted(functions):
        record = await queries.bulk_cancel(
            st,
            apps.of(function_id) or "",
            function_id,
            after,
            (until - 1) if until is not None else now,
            None,
            by="a dashboard bulk cancellation",
            statuses=(query.status,) if query.status else queries.LIVE,
        )
        cancelled += record.cancelled
        records.append(record.id)
    await dash.record(request, session, "bulk_cancel", filter=query.params(), cancelled=cancelled,
                      cancellations=records)  # fmt: skip
    return redirect(query.link(), f"Cancelled {cancelled} run{'s' if cancelled != 1 else ''}.")


async def bulk_rerun(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    query = RunsQuery.parse(form)
    status = query.status or "failed"
    if status in ("queued", "running"):
        raise ActionError(400, "Only ended runs are rerun in bulk: filter on failed, cancelled or completed runs.")
    runs = sorted(await _matching(dash, request, query, status), key=lambda r: r.id)
    if len(runs) > BULK_RERUN_MAX:
        raise ActionError(400, f"{len(runs)} runs match; a bulk rerun starts at most {BULK_RERUN_MAX}: narrow the "
                               "filter (function, time range).")  # fmt: skip
    started: list[str] = []
    skipped: list[str] = []
    for run in runs:
        try:
            started.append(await rerun(dash.engine, run.id))
        except (RunNotFoundError, RerunNotPossibleError):
            skipped.append(run.id)
    await dash.record(request, session, "bulk_rerun", filter={**query.params(), "status": status},
                      rerun=len(started), skipped=skipped[:100], new_run_ids=started[:100])  # fmt: skip
    note = f" ({len(skipped)} could not start again)" if skipped else ""
    return redirect(query.link(), f"Started {len(started)} rerun{'s' if len(started) != 1 else ''}{note}.")


def describe_bulk(request: Request, form: dict[str, str]) -> str:
    try:
        query = RunsQuery.parse(form)
    except ActionError:
        return "Apply this action?"
    shown = ", ".join(f"{k} {v}" for k, v in query.params().items()) or "no filter: every run"
    if request.url.path.endswith("bulk-cancel"):
        return f"Cancel every queued or running run matching ({shown})?"
    return f"Rerun every {query.status or 'failed'} run matching ({shown})?"


# --- functions, events, apps ------------------------------------------------------------------------------------


async def invoke(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    function_id = request.path_params["function_id"]
    data = _json_object(form.get("data", ""), "The payload")
    try:
        run_id = await dash.engine.invoke_now(function_id, data)
    except UnknownFunctionError as exc:
        raise ActionError(404, str(exc)) from None
    except EventValidationError as exc:
        raise ActionError(400, str(exc)) from None
    await dash.record(request, session, "invoke", function_id=function_id, run_id=run_id)
    return redirect(_run_path(run_id), "Invoked.")


async def pause(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    function_id = request.path_params["function_id"]
    resuming = request.url.path.endswith("/resume")
    try:
        if resuming:
            changed = await dash.engine.resume_function(function_id)
        else:
            changed = await dash.engine.pause_function(function_id)
    except UnknownFunctionError as exc:
        raise ActionError(404, str(exc)) from None
    await dash.record(request, session, "resume" if resuming else "pause", function_id=function_id, changed=changed)
    note = ("Resumed: its held runs start in order." if resuming else "Paused: its runs wait until it is resumed.") \
        if changed else ("It was not paused." if resuming else "It was paused already.")  # fmt: skip
    return redirect(f"{PREFIX}/functions/{function_id}", note)


async def run_cron(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    function_id = request.path_params["function_id"]
    try:
        event_id, run_id = await run_cron_now(dash.engine, function_id)
    except UnknownFunctionError as exc:
        raise ActionError(404, str(exc)) from None
    except NotACronFunction as exc:
        raise ActionError(400, f"{exc}.") from None
    await dash.record(request, session, "run_cron", function_id=function_id, event_id=event_id, run_id=run_id)
    return redirect(_run_path(run_id), "Started now; the schedule is unchanged.")


async def send_event(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    name = form.get("name", "").strip()
    event: dict[str, Any] = {"name": name, "data": _json_object(form.get("data", ""), "The event's data")}
    if form.get("id", "").strip():
        event["id"] = form["id"].strip()
    try:
        result = await dash.engine.ingest(event)
    except EventValidationError as exc:
        raise ActionError(400, str(exc)) from None
    [event_id] = result.event_ids
    await dash.record(request, session, "send_event", event_id=event_id, name=name,
                      runs=result.created_run_ids)  # fmt: skip
    runs = len(result.created_run_ids)
    return redirect(f"{PREFIX}/events/{event_id}", f"Event sent; it started {runs} run{'s' if runs != 1 else ''}.")


async def replay_event(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    internal_id = request.path_params["internal_id"]
    try:
        out = await replay.replay_event(dash.engine, internal_id)
    except replay.ReplayError as exc:
        raise ActionError(exc.status, f"{exc}.") from None
    await dash.record(request, session, "replay_event", event_id=internal_id, new_event_id=out.internal_id,
                      runs=out.run_ids)  # fmt: skip
    runs = len(out.run_ids)
    return redirect(
        f"{PREFIX}/events/{out.internal_id}",
        f"Replayed event {internal_id}; the copy started {runs} run{'s' if runs != 1 else ''}.",
    )


async def sync_app(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    url = form.get("url", "").strip()
    if not url:
        raise ActionError(400, "Give the app's serve URL, e.g. http://localhost:3000/api/inngest.")
    st = server_state(request)
    try:
        st.outbound.policy.check_url(url)
    except OutboundRefused as exc:
        raise ActionError(400, f"{exc}.") from None
    error = await sync.sync_app(st, url)
    await dash.record(request, session, "sync_app", url=url, error=error)
    return redirect(f"{PREFIX}/apps", f"Sync failed: {error}" if error else "Synced.")


async def remove_app(dash: Dashboard, request: Request, session: Session, form: dict[str, str]) -> Response:
    url = form.get("url", "").strip()
    if await dash.engine.store.get_app(url) is None:
        raise ActionError(404, f"No app is synced from {url!r}.")
    await dash.engine.store.delete_app(url)
    await dash.engine.refresh_registry(force=True)
    await dash.record(request, session, "remove_app", url=url)
    return redirect(f"{PREFIX}/apps", f"Removed {url}.")


def describe_other(request: Request, form: dict[str, str]) -> str:
    path = request.url.path
    if path.endswith(("/pause", "/resume")):
        verb = "Pause" if path.endswith("/pause") else "Resume"
        return f"{verb} {request.path_params['function_id']} on every node?"
    if path.endswith("/run-cron"):
        return f"Run {request.path_params['function_id']} now (its schedule stays as it is)?"
    if path.endswith("/invoke"):
        return f"Invoke {request.path_params['function_id']} with this payload?"
    if path.endswith("/replay"):
        return f"Send a copy of event {request.path_params['internal_id']} as a new event?"
    if path.endswith("/events/send"):
        return f"Send event {form.get('name', '')!r}?"
    if path.endswith("/apps/remove"):
        return f"Remove the app at {form.get('url', '')} and its functions?"
    return f"Sync the app at {form.get('url', '')}?"
