"""The dashboard's shared machinery: its state (auth, live hub, templates, cached counts), page and action
guards (login, CSRF, confirmation), rendering (whole pages, or only their live part), and the audit record."""

from __future__ import annotations

import functools
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from stepline.core.engine import Engine
from stepline.core.events import Event
from stepline.server.bodies import BodyTimeout, BodyTooLarge, read_body
from stepline.server.config import ServerConfig
from stepline.server.dashboard import views
from stepline.server.dashboard.auth import DashboardAuth, Session, client_address
from stepline.server.dashboard.sse import ChangeHub
from stepline.server.state import ServerState, state_of
from stepline.storage.records import IngestBatch, RunCount

ACTION_EVENT = "stepline/dashboard.action"  # every dashboard action is stored as one of these events
FRAGMENT_HEADER = "x-stepline-fragment"  # "live": render only the page's live block (the live script asks so)
MAX_FORM_BYTES = 4 * 1024 * 1024
MAX_LOGIN_FORM_BYTES = 4096  # the login form is the one action without credentials: it reads nothing large
COUNTS_TTL_SECONDS = 5.0
PREFIX = "/dashboard"

PageHandler = Callable[["Dashboard", Request, Session], Awaitable[Response]]
ActionHandler = Callable[["Dashboard", Request, Session, dict[str, str]], Awaitable[Response]]


class ActionError(Exception):
    """An action that cannot be done as asked: shown to the user with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class FunctionCounts:
    live: dict[str, int] = field(default_factory=dict)  # queued / running now
    day: dict[str, int] = field(default_factory=dict)  # ended in the last 24 h, by status
    hour: dict[str, int] = field(default_factory=dict)  # ended in the last hour, by status

    @staticmethod
    def rate(counts: Mapping[str, int]) -> float | None:
        done = counts.get("completed", 0) + counts.get("failed", 0)
        return None if done == 0 else counts.get("failed", 0) / done


class Dashboard:
    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.auth = DashboardAuth(config.admin_token, engine.store, engine.clock)
        self.hub = ChangeHub(engine)
        self.env = views.environment()
        self._counts: tuple[float, dict[str, FunctionCounts]] | None = None

    # --- rendering ---
    def render(self, request: Request, template: str, session: Session | None, status: int = 200,
               **context: Any) -> HTMLResponse:  # fmt: skip
        tpl = self.env.get_template(template)
        ctx = {"request": request, "session": session, "csrf": session.csrf if session else "",
               "prefix": PREFIX, "login_required": self.auth.required, "kind": self.config.kind,
               "now": self.engine.clock.now_ms(), "message": request.query_params.get("msg", ""),
               **context}  # fmt: skip
        if request.headers.get(FRAGMENT_HEADER) == "live" and "live" in tpl.blocks:
            html = "".join(tpl.blocks["live"](tpl.new_context(ctx)))
        else:
            html = tpl.render(ctx)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def error_page(self, request: Request, session: Session | None, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", session, status=status, error=message)

    # --- counts for the functions pages (shared by every viewer, read at most every few seconds) ---
    async def function_counts(self) -> dict[str, FunctionCounts]:
        now_mono = time.monotonic()
        if self._counts is not None and now_mono - self._counts[0] < COUNTS_TTL_SECONDS:
            return self._counts[1]
        now = self.engine.clock.now_ms()
        rows: list[RunCount] = await self.engine.store.run_counts(now - 24 * 3600_000, now - 3600_000)
        out: dict[str, FunctionCounts] = {}
        for r in rows:
            c = out.setdefault(r.function_id, FunctionCounts())
            if r.status in views.LIVE:
                c.live[r.status] = c.live.get(r.status, 0) + r.count
            else:
                c.day[r.status] = c.day.get(r.status, 0) + r.count
                c.hour[r.status] = c.hour.get(r.status, 0) + r.recent
        self._counts = (now_mono, out)
        return out

    def forget_counts(self) -> None:
        self._counts = None

    # --- the audit record ---
    async def record(self, request: Request, session: Session, action: str, **data: Any) -> None:
        """Store the action as a ``stepline/dashboard.action`` event (it starts no run), so it is listed with the
        events, kept as long as events are, and readable through ``/v1/events?name=stepline/dashboard.action``."""
        now = self.engine.clock.now_ms()
        who = "admin" if self.auth.required else "dev (open dashboard)"
        payload = {"action": action, "by": who, "session": session.sid[:8], "client": client_address(request),
                   **data}  # fmt: skip
        ev = self.engine.stored_event(Event(name=ACTION_EVENT, data=json.loads(json.dumps(payload, default=str))), now)
        await self.engine.store.ingest(IngestBatch([ev], []), self.engine.matcher, now)


def server_state(request: Request) -> ServerState:
    return state_of(request)


def _login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{PREFIX}/login?next={urllib.parse.quote(target, safe='')}", status_code=303)


def page(dash: Dashboard, handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    """A GET page: needs a session when a login is required (else redirects to the login form)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        session = await dash.auth.session(request)
        if session is None:
            if request.headers.get(FRAGMENT_HEADER):
                return Response("login required", status_code=401)
            return _login_redirect(request)
        try:
            return await handler(dash, request, session)
        except ActionError as exc:
            return dash.error_page(request, session, exc.status, exc.message)

    return wrapped


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """The action's form, read up to ``limit`` bytes (the rest is never read)."""
    try:
        body = await read_body(request, limit)
    except BodyTooLarge:
        raise ActionError(413, f"the form is larger than {limit} bytes") from None
    except BodyTimeout as exc:
        raise ActionError(408, str(exc)) from None
    ctype = request.headers.get("content-type", "")
    if ctype and not ctype.startswith("application/x-www-form-urlencoded"):
        raise ActionError(415, "actions take application/x-www-form-urlencoded forms")
    parsed = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    form = {k: v[0] for k, v in parsed.items()}
    if any("\x00" in k or "\x00" in v for k, v in form.items()):
        raise ActionError(400, "the form holds a NUL character")
    return form


def action(dash: Dashboard, handler: ActionHandler, describe: Callable[[Request, dict[str, str]], str]
           ) -> Callable[[Request], Awaitable[Response]]:  # fmt: skip
    """A POST action: needs a session (401 without), the page's CSRF token (403 without), and a confirmation
    (``confirmed=1``, which the page's script adds after the browser's confirm dialog; without it the answer is
    a confirmation page that posts the same form again)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        session = await dash.auth.session(request)
        if session is None:
            return dash.error_page(request, None, 401, "Log in first: this action needs a dashboard session.")
        try:
            form = await read_form(request)
            if not dash.auth.check_csrf(session, form.get("csrf") or request.headers.get("x-csrf-token")):
                raise ActionError(403, "The form's CSRF token is missing or wrong: reload the page and try again.")
            if form.get("confirmed") != "1":
                fields = {k: v for k, v in form.items() if k not in ("csrf", "confirmed")}
                return dash.render(request, "confirm.html", session, question=describe(request, form),
                                   action_url=request.url.path, fields=fields)  # fmt: skip
            response = await handler(dash, request, session, form)
        except ActionError as exc:
            return dash.error_page(request, session, exc.status, exc.message)
        dash.forget_counts()
        dash.hub.poke()
        return response

    return wrapped


def redirect(path: str, message: str | None = None) -> RedirectResponse:
    if message:
        sep = "&" if "?" in path else "?"
        path = f"{path}{sep}msg={urllib.parse.quote(message)}"
    return RedirectResponse(path, status_code=303)
