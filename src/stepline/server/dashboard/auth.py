"""Dashboard login, session cookie and CSRF tokens.

- With an admin token (``stepline start`` always has one: ``--admin-token``/``STEPLINE_ADMIN_TOKEN``, or one
  generated and logged at start), every page, the live stream and every action need a session: the login form
  takes the token and sets a signed, HttpOnly, SameSite=Lax cookie holding a random session id and its expiry.
  The signing secret derives from the token, so every node configured with the same token accepts the same
  sessions, and changing the token logs everyone out.
- Without one (``stepline dev``, which listens on loopback), the dashboard is open.
- In both modes every action (POST) must carry the CSRF token of the page it came from: an HMAC of the session id
  (or of a per-process secret when open), so another site cannot make a visitor's browser act on Stepline.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

COOKIE = "stepline_session"
SESSION_SECONDS = 12 * 3600
LOGIN_FAILURES_PER_MINUTE = 10  # per client address, then 429 until the minute has passed


@dataclass(frozen=True)
class Session:
    sid: str  # "open" when no login is required
    csrf: str


class DashboardAuth:
    def __init__(self, admin_token: str | None) -> None:
        self.token = admin_token
        if admin_token:
            secret = hmac.new(admin_token.encode(), b"stepline dashboard sessions", hashlib.sha256).hexdigest()
        else:
            secret = secrets.token_hex(32)
        self._secret = secret.encode()
        self._cookies = URLSafeTimedSerializer(secret, salt="stepline-dashboard-session")
        self._failures: dict[str, list[float]] = {}
        self._revoked: set[str] = set()  # logged-out session ids (this process; the cookie expires anyway)

    @property
    def required(self) -> bool:
        return bool(self.token)

    def csrf_for(self, sid: str) -> str:
        return hmac.new(self._secret, f"csrf:{sid}".encode(), hashlib.sha256).hexdigest()

    def session(self, request: Request) -> Session | None:
        """The request's session, or None when a login is required and the request has no valid cookie."""
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
        if not isinstance(sid, str) or not sid or sid in self._revoked:
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

    def throttled(self, client: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, []) if now - t < 60]
        self._failures[client] = recent
        return len(recent) >= LOGIN_FAILURES_PER_MINUTE

    def check_token(self, client: str, submitted: str) -> bool:
        ok = bool(self.token) and hmac.compare_digest(submitted.encode(), (self.token or "").encode())
        if not ok:
            self._failures.setdefault(client, []).append(time.monotonic())
            if len(self._failures) > 10_000:  # do not grow without bound under a spray of addresses
                self._failures.clear()
        return ok

    def revoke(self, session: Session) -> None:
        if len(self._revoked) > 100_000:
            self._revoked.clear()
        self._revoked.add(session.sid)

    def new_cookie(self) -> str:
        return self._cookies.dumps({"sid": secrets.token_urlsafe(18)})


def is_https(request: Request) -> bool:
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
    return request.url.scheme == "https" or proto == "https"


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"
