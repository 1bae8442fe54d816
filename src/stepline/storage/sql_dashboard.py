"""``Store`` reads for the dashboard, written once for every SQL backend. Mixed into ``SqlStore``.

The queries live in each backend package's ``dashboard.sql`` (beside its ``queries.sql``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from stepline.storage.records import RunCount
from stepline.storage.sql import Conn, backend_queries

T = TypeVar("T")


class SqlDashboardMixin:
    """Needs ``_read`` from ``SqlStore``; finds its queries by the package of the concrete store class."""

    if TYPE_CHECKING:

        def _read(self, fn: Callable[[Conn], T]) -> T: ...

    @property
    def _dashboard_queries(self) -> dict[str, str]:
        return backend_queries(self, "dashboard.sql")

    async def change_marker(self) -> object:
        query = self._dashboard_queries["change_marker"]
        row = self._read(lambda c: c.execute(query).fetchone())
        return row[0] if row else None

    async def run_counts(self, ended_after: int, recent_after: int) -> list[RunCount]:
        query = self._dashboard_queries["run_counts"]
        rows = self._read(lambda c: c.execute(query, {"day": ended_after, "hour": recent_after}).fetchall())
        return [RunCount(str(f), str(s), int(n), int(r or 0)) for f, s, n, r in rows]
