"""``Store`` event searches (REST ``GET /v1/events``, the dashboard's Events page) and paused functions, written
once for every SQL backend. Mixed into ``SqlStore``; the queries live in each backend package's ``events.sql``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from stepline.storage.records import EventRun, StoredEvent, is_internal_event
from stepline.storage.sql import backend_queries

if TYPE_CHECKING:
    from stepline.storage.writer import GroupCommitWriter

T = TypeVar("T")
EVENT_PAGE_BYTES = 8 * 1024 * 1024
PREFIX_SORT_CAP = 2000  # below this many events under a pattern's literal prefix, they are read by name and sorted


def _glob(pattern: str) -> str:
    """``app/*`` as a SQLite GLOB: ``*`` stays the wildcard, the other GLOB characters match themselves."""
    return "".join(f"[{c}]" if c in "?[]" else c for c in pattern)


def _like(pattern: str) -> str:
    """``app/*`` as a LIKE (backslash escapes): ``*`` becomes ``%``, ``%``, ``_`` and ``\\`` match themselves."""
    return "".join("%" if c == "*" else f"\\{c}" if c in "%_\\" else c for c in pattern)


class SqlEventsMixin:
    """Needs ``_read`` from ``SqlStore``; finds its queries by the package of the concrete store class."""

    if TYPE_CHECKING:

        def _read(self, fn: Callable[[Any], T]) -> T: ...

        @property
        def writer(self) -> GroupCommitWriter: ...

        def _notify_work(self, conn: Any, due_at: int) -> None: ...

        def _mark_held_by_pause(self, conn: Any, function_id: str) -> None: ...

        async def list_events(self, name: str | None, limit: int, before: str | None = None,
                              max_bytes: int = EVENT_PAGE_BYTES) -> list[StoredEvent]: ...  # fmt: skip

    @property
    def _event_queries(self) -> dict[str, str]:
        return backend_queries(self, "events.sql")

    async def find_events(self, pattern: str | None, limit: int, before: str | None = None, *,
                          include_internal: bool = False,
                          max_bytes: int = EVENT_PAGE_BYTES) -> list[StoredEvent]:  # fmt: skip
        from stepline.storage.sql_store import _event  # the one row reader of events

        if pattern is not None and "*" not in pattern:
            return await self.list_events(pattern, limit, before, max_bytes)  # an exact name: the (name, seq) index
        hide = not include_internal and not (pattern is not None and is_internal_event(pattern))
        query = self._event_queries["find_public_events" if hide else "find_events"]
        params: dict[str, Any] = {"glob": None if pattern is None else _glob(pattern),
                                  "like": None if pattern is None else _like(pattern), "before": before,
                                  "limit": limit, "max_bytes": max_bytes, "internal": not hide}  # fmt: skip
        prefix = "" if pattern is None else pattern.split("*", 1)[0]
        if prefix:
            query = self._query_for_prefix(prefix, query, params)
        return [_event(r) for r in self._read(lambda c: c.execute(query, params).fetchall())]

    def _query_for_prefix(self, prefix: str, query: str, params: dict[str, Any]) -> str:
        """The query for a pattern with a literal ``prefix``: ``query`` (reads the events in order and filters), or a
        backend's faster one (SQLite: sort the few events under a rare prefix, read through the name index)."""
        return query

    async def runs_of_events(self, event_ids: list[str]) -> dict[str, list[EventRun]]:
        if not event_ids:
            return {}
        query = self._event_queries["runs_of_events"]
        params = {"ids": list(event_ids), "ids_json": json.dumps(list(event_ids))}
        out: dict[str, list[EventRun]] = {}
        for event_id, run_id, function_id, status in self._read(lambda c: c.execute(query, params).fetchall()):
            out.setdefault(str(event_id), []).append(EventRun(str(run_id), str(function_id), str(status)))
        return out

    # --- paused functions ---
    async def pause_function(self, function_id: str, now: int) -> bool:
        query = self._event_queries["pause_function"]
        params = {"function_id": function_id, "now": now}
        return bool(await self.writer.run(lambda c: c.execute(query, params).rowcount))

    async def resume_function(self, function_id: str, now: int) -> bool:
        query = self._event_queries["resume_function"]

        def op(conn: Any) -> bool:
            resumed = bool(conn.execute(query, {"function_id": function_id}).rowcount)
            if resumed:
                self._mark_held_by_pause(conn, function_id)
                self._notify_work(conn, now)  # its held runs are due: every node's workers look now
            return resumed

        return await self.writer.run(op)

    async def paused_functions(self) -> dict[str, int]:
        # Read in a thread: every worker reads this each second, and a database that went away must not hold the event
        # loop (a PostgreSQL connect waits up to its timeout) while /metrics and the rest still answer.
        query = self._event_queries["paused_functions"]
        rows = await asyncio.to_thread(self._read, lambda c: c.execute(query).fetchall())
        return {str(f): int(at) for f, at in rows}
