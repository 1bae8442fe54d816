"""Dashboard login, session cookie and CSRF tokens.

- With an admin token (``stepline start`` always has one: ``--admin-token``/``STEPLINE_ADMIN_TOKEN``, or one
  generated and logged at start), every page, the live stream and every action need a session: the login form
  takes the token and sets a signed, HttpOnly, SameSite=Lax cookie holding a random session id. The session is
  stored (``dashboard_sessions``): every node sharing the store accepts it, logging out revokes it on every node
  and for good (restarts included), and it expires after ``SESSION_SECONDS``. The cookie's signing secret derives
  from the token, so changing the token logs everyone out.
- Failed logins are counted per peer address and minute in the store (``login_failures``), so the throttle holds
  across nodes; the address is the TCP peer's, or the one a trusted proxy forwarded (``--forwarded-allow-ips``:
  uvicorn rewrites the client address only for those proxies). Its memory cost is one row per address and minute,
  deleted a minute later.
- Without a token (``stepline dev``, which listens on loopback), the dashboard is open.
- In both modes every action (POST) must carry the CSRF token of the page it came from: an HMAC of the session id
  (or of a per-process secret when open), so another site cannot make a visitor's browser act on Stepline.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

from stepline.core.clock import Clock
from stepline.storage.base import Store

COOKIE = "stepline_session"
SESSION_SECONDS = 12 * 3600
LOGIN_FAILURES_PER_MINUTE = 10  # per client address (all nodes), then 429 until the minute has passed


@dataclass(frozen=True)
class Session:
    sid: str  # "open" when no login is required
    csrf: str


class DashboardAuth:
    def __init__(self, admin_token: str | None, store: Store, clock: Clock) -> None:
        self.token = admin_token
        self.store = store
        self.clock = clock
        if admin_token:
            secret = hmac.new(admin_token.encode(), b"stepline dashboard sessions", hashlib.sha256).hexdigest()
        else:
            secret = secrets.token_hex(32)
        self._secret = secret.encode()
        self._cookies = URLSafeTimedSerializer(secret, salt="stepline-dashboard-session")

    @property
    def required(self) -> bool:
        return bool(self.token)

    def csrf_for(self, sid: str) -> str:
        return hmac.new(self._secret, f"csrf:{sid}".encode(), hashlib.sha256).hexdigest()

    async def session(self, request: Request) -> Session | None:
        """The request's session, or None when a login is required and the request has no valid cookie (unsigned,
        expired, or logged out on any node)."""
        if not self.required:
            return Session("open", self.csrf_for("open"))
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            payload = self._cookies.loads(raw, max_age=SESSION_SECONDS)
        except BadSignature:
            return None
        sid = payload.get("sid") if isinstance(payload, dict) else None
        if not isinstance(sid, str) or not sid:
            return None
        if not await self.store.dashboard_session_valid(sid, self.clock.now_ms()):
            return None
        return Session(sid, self.csrf_for(sid))

    def check_csrf(self, session: Session, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(session.csrf, submitted or "")

    # --- login ---
    def login_csrf(self) -> str:
        """The login form's token (no session yet): stops other sites from logging a visitor in."""
        return self.csrf_for("login")

    def check_csrf_login(self, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(self.login_csrf(), submitted or "")

    async def throttled(self, client: str) -> bool:
        return await self.store.login_failures(client, self.clock.now_ms()) >= LOGIN_FAILURES_PER_MINUTE

    async def check_token(self, client: str, submitted: str) -> bool:
        ok = bool(self.token) and hmac.compare_digest(submitted.encode(), (self.token or "").encode())
        if not ok:
            await self.store.add_login_failure(client, self.clock.now_ms())
        return ok

    async def revoke(self, session: Session) -> None:
        await self.store.revoke_dashboard_session(session.sid, self.clock.now_ms())

    async def new_cookie(self) -> str:
        """A new session, stored, and the cookie that carries it."""
        sid = secrets.token_urlsafe(18)
        now = self.clock.now_ms()
        await self.store.create_dashboard_session(sid, now + SESSION_SECONDS * 1000, now)
        return self._cookies.dumps({"sid": sid})


def is_https(request: Request) -> bool:
    """The request's scheme; a proxy's ``X-Forwarded-Proto`` counts only from ``--forwarded-allow-ips`` (uvicorn
    applies it to the scheme for those peers, and ignores it from anyone else)."""
    return request.url.scheme == "https"


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"
