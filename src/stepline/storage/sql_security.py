"""``Store`` methods for hardening, written once for every SQL backend. Mixed into ``SqlStore``.

- Expression errors: the failures the engine met while planning runs (``ExpressionFailure``), upserted per
  (function, place) in the ingest transaction that met them, read for the function's page and the REST API.
- Dashboard sessions: created at login, revoked at logout, checked on every request, so a logout holds on every
  node and across restarts.
- Login failures: counted per peer address and minute, shared by every node (the login throttle).

The queries live in each backend package's ``security.sql`` (beside its ``queries.sql``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from stepline.storage.records import ExpressionErrorRecord, ExpressionFailure
from stepline.storage.sql import Conn, backend_queries
from stepline.storage.writer import GroupCommitWriter

T = TypeVar("T")


class SqlSecurityMixin:
    """Needs ``_read`` and ``writer`` from ``SqlStore``; finds its queries by the package of the concrete store."""

    if TYPE_CHECKING:

        def _read(self, fn: Callable[[Conn], T]) -> T: ...

        @property
        def writer(self) -> GroupCommitWriter: ...

    @property
    def _security_queries(self) -> dict[str, str]:
        return backend_queries(self, "security.sql")

    # --- expression errors ---
    def _record_expression_failures(self, conn: Conn, failures: list[ExpressionFailure], now: int) -> None:
        query = self._security_queries["upsert_expression_error"]
        for f in failures:
            conn.execute(query, {"function_id": f.function_id, "place": f.place, "expression": f.expression[:2000],
                                 "message": f.message[:2000], "count": f.count, "now": now})  # fmt: skip

    async def list_expression_errors(self) -> list[ExpressionErrorRecord]:
        query = self._security_queries["list_expression_errors"]
        rows = self._read(lambda c: c.execute(query).fetchall())
        return [ExpressionErrorRecord(str(f), str(p), str(e), str(m), int(n), int(a), int(b))
                for f, p, e, m, n, a, b in rows]  # fmt: skip

    # --- dashboard sessions ---
    async def create_dashboard_session(self, sid: str, expires_at: int, now: int) -> None:
        q = self._security_queries

        def op(conn: Conn) -> None:
            conn.execute(q["delete_expired_dashboard_sessions"], {"now": now})
            conn.execute(q["insert_dashboard_session"], {"sid": sid, "now": now, "expires_at": expires_at})

        await self.writer.run(op)

    async def revoke_dashboard_session(self, sid: str, now: int) -> None:
        query = self._security_queries["revoke_dashboard_session"]
        await self.writer.run(lambda conn: conn.execute(query, {"sid": sid, "now": now}))

    async def dashboard_session_valid(self, sid: str, now: int) -> bool:
        query = self._security_queries["dashboard_session_valid"]
        return self._read(lambda c: c.execute(query, {"sid": sid, "now": now}).fetchone()) is not None

    # --- login throttle ---
    async def add_login_failure(self, address: str, now: int) -> int:
        """Count a failed login from ``address`` in this minute; returns the minute's count so far."""
        q = self._security_queries
        minute = now // 60_000

        def op(conn: Conn) -> int:
            conn.execute(q["delete_old_login_failures"], {"minute": minute - 1})
            return int(conn.execute(q["add_login_failure"], {"address": address, "minute": minute}).fetchone()[0])

        return await self.writer.run(op)

    async def login_failures(self, address: str, now: int) -> int:
        query = self._security_queries["login_failures_in_minute"]
        row = self._read(lambda c: c.execute(query, {"address": address, "minute": now // 60_000}).fetchone())
        return int(row[0]) if row else 0
