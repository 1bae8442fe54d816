"""The dashboard's pages (GET): runs, a run, functions, a function, events, an event, apps; login and the live
stream. Reads go through the same store and engine calls as the REST API (``server/queries.py``)."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from stepline.core.clock import SystemClock, to_ms
from stepline.core.function import FunctionSpec
from stepline.core.ids import ulid_from
from stepline.server import queries
from stepline.server.dashboard import charts, timeline, views
from stepline.server.dashboard.auth import COOKIE, SESSION_SECONDS, Session, client_address, is_https
from stepline.server.dashboard.core import MAX_LOGIN_FORM_BYTES, PREFIX, ActionError, Dashboard, read_form
from stepline.server.dashboard.sse import sse_message
from stepline.server.openapi import MAX_TIME_MS
from stepline.server.state import state_of
from stepline.storage.records import ChildRun, RunFilter, RunRecord, RunWait, StepRecord, is_internal_event

PAGE_SIZE = (50, 200)  # (default, maximum) runs per page
ID_TIME_MARGIN_MS = 60_000
CHILDREN_SHOWN, CHILD_STEPS_SHOWN = 10, 20  # invoked runs shown expanded on a run's page, and their steps
RANGES = {"1h": 3600_000, "24h": 24 * 3600_000, "7d": 7 * 24 * 3600_000, "30d": 30 * 24 * 3600_000}


def parse_when(raw: str, name: str) -> int | None:
    """A time from a filter form: unix ms, RFC 3339, or a browser's ``datetime-local`` value (read as UTC)."""
    text = raw.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        ms = int(text[:20])
    else:
        try:
            stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ActionError(400, f"{name}: {raw[:100]!r} is not a time (use 2026-01-01T12:00, UTC)") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        ms = to_ms(stamp)
    if not 0 <= ms <= MAX_TIME_MS:
        raise ActionError(400, f"{name}: {raw[:40]!r} is not a time between 1970 and the year 9999")
    return ms


@dataclass(frozen=True)
class RunsQuery:
    """The runs list's filter, as given in the page's query string (and echoed by the bulk action forms)."""

    status: str = ""
    function_id: str = ""
    app_id: str = ""
    range: str = ""
    start: str = ""  # created at or after
    end: str = ""  # created before
    q: str = ""

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> RunsQuery:
        status = params.get("status", "").lower()
        if status and status not in views.STATUSES:
            raise ActionError(400, f"unknown status {status!r}: one of {', '.join(views.STATUSES)}")
        rng = params.get("range", "")
        if rng and rng not in RANGES:
            raise ActionError(400, f"unknown range {rng!r}: one of {', '.join(RANGES)}")
        text = {k: params.get(k, "").strip() for k in ("function_id", "app_id", "from", "to", "q")}
        return cls(status, text["function_id"], text["app_id"], rng, text["from"], text["to"], text["q"])

    def window(self, now: int) -> tuple[int | None, int | None]:
        after = parse_when(self.start, "from")
        if self.range:
            ranged = now - RANGES[self.range]
            after = ranged if after is None else max(after, ranged)
        return after, parse_when(self.end, "to")

    def run_filter(self, now: int, *, status: str | None = None, limit: int = 50, before: str | None = None,
                   event_id: str | None = None, ulid_times: bool = False) -> RunFilter:  # fmt: skip
        """``ulid_times``: run ids carry their creation time (the engine's clock is the system clock, as ULIDs'),
        so an upper time bound also starts the id-ordered index read just above it, instead of scanning down from
        the newest run (a margin of a minute covers the moments between reading the clock and making the id)."""
        after, until = self.window(now)
        if ulid_times and until is not None and until + ID_TIME_MARGIN_MS < 2**48:
            bound = ulid_from(max(until + ID_TIME_MARGIN_MS, 0), b"\x00" * 10)
            before = bound if before is None else min(before, bound)
        return RunFilter(status=status if status is not None else (self.status or None),
                         function_id=self.function_id or None, app_id=self.app_id or None, event_id=event_id,
                         created_after=after, created_before=until, limit=limit, before_id=before)  # fmt: skip

    def params(self) -> dict[str, str]:
        raw = {"status": self.status, "function_id": self.function_id, "app_id": self.app_id, "range": self.range,
               "from": self.start, "to": self.end, "q": self.q}  # fmt: skip
        return {k: v for k, v in raw.items() if v}

    def link(self, **extra: str) -> str:
        return f"{PREFIX}/runs?" + urllib.parse.urlencode({**self.params(), **{k: v for k, v in extra.items() if v}})


@dataclass(frozen=True)
class RunRow:
    run: RunRecord
    app_id: str | None
    idle: str
    wait: RunWait | None = None  # what held it before its start (a gate), shown beside its duration

    @property
    def waited(self) -> str:
        return "" if self.wait is None else timeline.waited_text(self.run, None, 0, self.wait).lower()

    @property
    def duration_ms(self) -> int | None:
        if self.run.started_at is None:
            return None
        return (self.run.ended_at or 0) - self.run.started_at if self.run.ended_at else None


async def run_rows(dash: Dashboard, request: Request, runs: list[RunRecord]) -> list[RunRow]:
    apps = await queries.AppIndex.load(state_of(request))
    now = dash.engine.clock.now_ms()
    reasons = [apps.idle_reason(r, now) if r.status in views.LIVE else None for r in runs]
    waits = await dash.engine.store.list_run_waits([r.id for r in runs if r.started_at is not None])
    return [RunRow(r, apps.of(r.function_id), views.idle_text(why, now), waits.get(r.id))
            for r, why in zip(runs, reasons, strict=True)]  # fmt: skip


def _limit(raw: str | None) -> int:
    default, maximum = PAGE_SIZE
    try:
        return max(1, min(int(raw or default), maximum))
    except ValueError:
        return default


# --- pages ------------------------------------------------------------------------------------------------------


async def home(dash: Dashboard, request: Request, session: Session) -> Response:
    return RedirectResponse(f"{PREFIX}/runs", status_code=303)


async def runs_page(dash: Dashboard, request: Request, session: Session) -> Response:
    store = dash.engine.store
    query = RunsQuery.parse(request.query_params)
    now = dash.engine.clock.now_ms()
    event_id: str | None = None
    notice = ""
    if query.q:
        if await store.get_run(query.q) is not None:
            return RedirectResponse(f"{PREFIX}/runs/{urllib.parse.quote(query.q)}", status_code=303)
        if await store.get_event(query.q) is not None:
            event_id = query.q
            notice = f"Runs started by event {query.q}"
        else:
            notice = f"No run and no event has the id {query.q!r}."
    limit = _limit(request.query_params.get("limit"))
    before = request.query_params.get("before") or None
    runs: list[RunRecord] = []
    if not query.q or event_id:
        ulid_times = isinstance(dash.engine.clock, SystemClock)
        runs = await store.list_runs(query.run_filter(now, limit=limit + 1, before=before, event_id=event_id,
                                                      ulid_times=ulid_times))  # fmt: skip
    page_runs = runs[:limit]
    next_link = query.link(before=page_runs[-1].id, limit=str(limit) if limit != PAGE_SIZE[0] else "") \
        if len(runs) > limit else ""  # fmt: skip
    functions = await store.list_functions()
    return dash.render(request, "runs.html", session, rows=await run_rows(dash, request, page_runs), query=query,
                       next_link=next_link, first_link=query.link() if before else "", notice=notice,
                       functions=functions, app_ids=sorted({f.app_id for f in functions}), statuses=views.STATUSES,
                       ranges=list(RANGES), filtered=bool(query.params()))  # fmt: skip


async def run_page(dash: Dashboard, request: Request, session: Session) -> Response:
    store = dash.engine.store
    run_id = request.path_params["run_id"]
    run = await store.get_run(run_id)
    if run is None:
        raise ActionError(404, f"Run {run_id!r} not found (it may have been pruned by retention).")
    now = dash.engine.clock.now_ms()
    steps = await store.list_steps(run.id)
    event = await store.get_event(run.event_id)
    batch = [e for e in [await store.get_event(i) for i in (run.batch or [])[1:]] if e is not None]
    same_event = await store.list_runs(RunFilter(event_id=run.event_id, limit=20)) if event else []
    [row] = await run_rows(dash, request, [run])
    spec = await dash.engine.find_function(run.function_id)
    logs_captured = spec is None or spec.captures_logs  # HTTP apps log in their own process
    logs = await store.list_run_logs(run.id) if logs_captured else []
    raw_spans = await store.list_run_spans(run.id)
    children = await store.list_child_runs(run.id)
    wait = await store.get_run_wait(run.id) if run.started_at is not None else None
    tl = timeline.build(run, steps, await store.list_step_attempts(run.id), raw_spans, children, now, wait)
    invoked = await _invoked(dash, children[:CHILDREN_SHOWN])
    return dash.render(request, "run.html", session, row=row, run=run, tl=tl, invoked=invoked,
                       waited=timeline.waited_text(run, row.run.idle_reason if row.idle else None, now, wait),
                       wait=wait, event=event, batch=batch, siblings=[r for r in same_event if r.id != run.id],
                       idle=row.idle, function=spec, live=run.status in views.LIVE, logs=logs,
                       logs_captured=logs_captured, step_names={s.step_id: s.display_id for s in steps},
                       spans=views.userland_spans(raw_spans))  # fmt: skip


@dataclass(frozen=True)
class Invoked:
    """A run an invoke step started, shown expanded under the step."""

    run: RunRecord
    steps: list[StepRecord]


async def _invoked(dash: Dashboard, children: list[ChildRun]) -> dict[str, Invoked]:
    out = {}
    for c in children:
        child = await dash.engine.store.get_run(c.run_id)
        if child is not None:
            out[c.run_id] = Invoked(child, (await dash.engine.store.list_steps(c.run_id))[:CHILD_STEPS_SHOWN])
    return out


async def functions_page(dash: Dashboard, request: Request, session: Session) -> Response:
    functions = await dash.engine.store.list_functions()
    app_filter = request.query_params.get("app_id", "")
    if app_filter:
        functions = [f for f in functions if f.app_id == app_filter]
    return dash.render(request, "functions.html", session, functions=functions, counts=await dash.function_counts(),
                       app_filter=app_filter, paused=await dash.engine.refresh_paused())  # fmt: skip


async def function_page(dash: Dashboard, request: Request, session: Session) -> Response:
    function_id = request.path_params["function_id"]
    record = next((f for f in await dash.engine.store.list_functions() if f.id == function_id), None)
    if record is None:
        raise ActionError(404, f"No registered function has the id {function_id!r}.")
    runs = await dash.engine.store.list_runs(RunFilter(function_id=function_id, limit=20))
    counts = (await dash.function_counts()).get(function_id)
    errors = [e for e in await dash.engine.store.list_expression_errors() if e.function_id == function_id]
    return dash.render(request, "function.html", session, fn=record, counts=counts,
                       rows=await run_rows(dash, request, runs),
                       problems=FunctionSpec.from_record(record).problems, expression_errors=errors,
                       paused=record.id in await dash.engine.refresh_paused(),
                       has_cron=any("cron" in t for t in record.config.get("triggers") or []))  # fmt: skip


async def charts_page(dash: Dashboard, request: Request, session: Session) -> Response:
    """Runs per minute, duration and due-to-start lag percentiles, backlog: overall or of one function."""
    store = dash.engine.store
    rng = request.query_params.get("range", "1h")
    if rng not in charts.RANGES:
        raise ActionError(400, f"unknown range {rng!r}: one of {', '.join(charts.RANGES)}")
    function_id = request.query_params.get("function_id", "").strip()
    functions = await store.list_functions()
    if function_id and function_id not in {f.id for f in functions}:
        raise ActionError(404, f"No registered function has the id {function_id!r}.")
    now = dash.engine.clock.now_ms()
    span, res = charts.RANGES[rng]
    rows = await store.run_stats(res, now - span, function_id or None)
    gauges = await store.cluster_gauges(now)
    backlog = [(f, n, now - oldest) for f, n, oldest in gauges.backlog if not function_id or f == function_id]
    return dash.render(request, "charts.html", session, charts=charts.build(rows, rng, now), range=rng,
                       ranges=list(charts.RANGES), function_id=function_id, functions=functions,
                       backlog=sorted(backlog, key=lambda b: -b[1]))  # fmt: skip


async def events_page(dash: Dashboard, request: Request, session: Session) -> Response:
    """Newest first, without the engine's own events unless asked for; ``name`` searches by prefix (``app/user``)
    or by pattern (``*/user.created``): without a ``*`` it is taken as a prefix."""
    name = request.query_params.get("name", "").strip()
    internal = request.query_params.get("internal", "") in ("1", "on", "true")
    before = request.query_params.get("before") or None
    limit = _limit(request.query_params.get("limit"))
    pattern = (name if "*" in name else name + "*") if name else None
    page_events, more = await queries.events_page(dash.engine.store, pattern, limit, before,
                                                   include_internal=internal)  # fmt: skip
    runs = await dash.engine.store.runs_of_events([e.internal_id for e in page_events])
    query = {k: v for k, v in (("name", name), ("internal", "1" if internal else "")) if v}
    next_link = f"{PREFIX}/events?" + urllib.parse.urlencode({**query, "before": page_events[-1].internal_id}) \
        if more else ""  # fmt: skip
    return dash.render(request, "events.html", session, events=page_events, name=name, internal=internal,
                       runs=runs, next_link=next_link,
                       first_link=f"{PREFIX}/events?" + urllib.parse.urlencode(query) if before else "")  # fmt: skip


async def event_page(dash: Dashboard, request: Request, session: Session) -> Response:
    internal_id = request.path_params["internal_id"]
    event = await dash.engine.store.get_event(internal_id)
    if event is None:
        raise ActionError(404, f"Event {internal_id!r} not found.")
    runs = await queries.all_runs(state_of(request), RunFilter(event_id=internal_id))
    return dash.render(request, "event.html", session, event=event, rows=await run_rows(dash, request, runs),
                       replayable=not is_internal_event(event.name))  # fmt: skip


async def apps_page(dash: Dashboard, request: Request, session: Session) -> Response:
    store = dash.engine.store
    counts: dict[str, int] = {}
    for f in await store.list_functions():
        counts[f.app_id] = counts.get(f.app_id, 0) + 1
    synced = await store.list_apps()
    in_process = sorted(a for a in counts if a not in {s.app_id for s in synced})
    return dash.render(request, "apps.html", session, apps=synced, counts=counts, in_process=in_process)


# --- login ------------------------------------------------------------------------------------------------------


def _safe_next(raw: str | None) -> str:
    """Only paths of this dashboard: never an absolute URL (no open redirect)."""
    if raw and raw.startswith(f"{PREFIX}/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return f"{PREFIX}/runs"


async def login_page(dash: Dashboard, request: Request) -> Response:
    if not dash.auth.required:
        return RedirectResponse(f"{PREFIX}/runs", status_code=303)
    return dash.render(request, "login.html", None, next=_safe_next(request.query_params.get("next")),
                       login_csrf=dash.auth.login_csrf(), error="")  # fmt: skip


async def login_submit(dash: Dashboard, request: Request) -> Response:
    if not dash.auth.required:
        return RedirectResponse(f"{PREFIX}/runs", status_code=303)
    client = client_address(request)
    try:
        form = await read_form(request, MAX_LOGIN_FORM_BYTES)
    except ActionError as exc:
        return dash.error_page(request, None, exc.status, exc.message)
    target = _safe_next(form.get("next"))

    def again(status: int, error: str) -> Response:
        return dash.render(request, "login.html", None, status=status, next=target,
                           login_csrf=dash.auth.login_csrf(), error=error)  # fmt: skip

    if not dash.auth.check_csrf_login(form.get("csrf")):
        return again(403, "The login form expired: try again.")
    if await dash.auth.throttled(client):
        return again(429, "Too many failed logins from this address: wait a minute.")
    if not await dash.auth.check_token(client, form.get("token", "")):
        return again(401, "Wrong admin token.")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, await dash.auth.new_cookie(), max_age=SESSION_SECONDS, httponly=True, samesite="lax",
                        secure=is_https(request), path="/")  # fmt: skip
    return response


async def logout(dash: Dashboard, request: Request) -> Response:
    session = await dash.auth.session(request)
    if session is not None and dash.auth.required:
        form = await read_form(request, MAX_LOGIN_FORM_BYTES)
        if not dash.auth.check_csrf(session, form.get("csrf")):
            return dash.error_page(request, session, 403, "The form's CSRF token is missing or wrong.")
        await dash.auth.revoke(session)
    response = RedirectResponse(f"{PREFIX}/login" if dash.auth.required else f"{PREFIX}/runs", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- live updates -----------------------------------------------------------------------------------------------


async def stream(dash: Dashboard, request: Request) -> Response:
    """Server-sent events: ``change`` with a version number whenever the store changed (see ``sse.py``)."""
    if await dash.auth.session(request) is None:
        return Response("login required", status_code=401)
    if dash.hub.closed:
        return Response("the server is stopping", status_code=503)

    async def messages() -> AsyncIterator[str]:
        yield f"retry: 2000\n{sse_message('hello', str(dash.hub.version))}"
        async for version in dash.hub.changes():
            yield ": heartbeat\n\n" if version is None else sse_message("change", str(version))

    return StreamingResponse(messages(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip
