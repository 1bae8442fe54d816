"""Realtime messages, the token secret, and run statuses for waiters, written once for every SQL backend. Mixed into
``SqlStore``; the queries live in each backend package's ``realtime.sql``.

Every published message is a row of ``realtime_messages`` (one group-commit write for a list of them): the
subscribers of other processes read it from there (SQLite: by cursor, when the database changed; PostgreSQL: from
the ``NOTIFY`` the same transaction sends, which carries the message itself when it fits and its id otherwise), and
a late subscriber's replay is a read of the newest rows of its channel and topic. Rows older than the replay window
are pruned in batches.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from stepline.storage.records import NewRealtimeMessage, RealtimeRow
from stepline.storage.sql import Conn, backend_queries
from stepline.storage.writer import GroupCommitWriter

T = TypeVar("T")
PRUNE_BATCH = 1000
STATUS_BATCH = 500  # run ids per statement of run_statuses


def _row(r: tuple[Any, ...]) -> RealtimeRow:
    id_, origin, channel, topic, kind, payload, created_at = r
    return RealtimeRow(int(id_), str(origin), str(channel), str(topic), str(kind), str(payload), int(created_at))


class SqlRealtimeMixin:
    """Needs ``_read`` and ``writer`` from ``SqlStore``; finds its queries by the package of the concrete store."""

    if TYPE_CHECKING:

        def _read(self, fn: Callable[[Conn], T]) -> T: ...

        @property
        def writer(self) -> GroupCommitWriter: ...

    @property
    def _realtime_queries(self) -> dict[str, str]:
        return backend_queries(self, "realtime.sql")

    def _notify_realtime(self, conn: Conn, origin: str, rows: list[RealtimeRow]) -> None:
        """Tell the other processes' subscribers about ``rows`` before the transaction commits (PostgreSQL: NOTIFY;
        SQLite readers notice the commit itself)."""

    async def publish_realtime(self, origin: str, messages: list[NewRealtimeMessage]) -> list[RealtimeRow]:
        query = self._realtime_queries["insert_realtime_message"]

        def op(conn: Conn) -> list[RealtimeRow]:
            rows = []
            for m in messages:
                (new_id,) = conn.execute(query, {"origin": origin, "channel": m.channel, "topic": m.topic,
                                                 "kind": m.kind, "payload": m.payload,
                                                 "created_at": m.created_at}).fetchone()  # fmt: skip
                rows.append(RealtimeRow(int(new_id), origin, m.channel, m.topic, m.kind, m.payload, m.created_at))
            self._notify_realtime(conn, origin, rows)
            return rows

        return await self.writer.run(op)

    async def realtime_messages_after(self, after_id: int, limit: int) -> list[RealtimeRow]:
        query = self._realtime_queries["realtime_messages_after"]
        rows = self._read(lambda c: c.execute(query, {"after": after_id, "limit": limit}).fetchall())
        return [_row(r) for r in rows]

    async def realtime_message(self, message_id: int) -> RealtimeRow | None:
        query = self._realtime_queries["realtime_message"]
        row = self._read(lambda c: c.execute(query, {"id": message_id}).fetchone())
        return None if row is None else _row(row)

    async def realtime_replay(self, keys: list[tuple[str, str]], after_id: int, since: int,
                              limit: int) -> list[RealtimeRow]:  # fmt: skip
        query = self._realtime_queries["realtime_replay"]

        def read(conn: Conn) -> list[RealtimeRow]:
            found: list[RealtimeRow] = []
            for channel, topic in keys:
                params = {"channel": channel, "topic": topic, "after": after_id, "since": since, "limit": limit}
                found += [_row(r) for r in conn.execute(query, params).fetchall()]
            return found

        rows = self._read(read)
        rows.sort(key=lambda r: r.id)
        return rows[-limit:]

    async def realtime_last_id(self) -> int:
        query = self._realtime_queries["realtime_last_id"]
        row = self._read(lambda c: c.execute(query).fetchone())
        return int(row[0]) if row else 0

    async def prune_realtime(self, before: int) -> int:
        query = self._realtime_queries["prune_realtime_messages"]
        deleted = 0
        while True:
            n = await self.writer.run(lambda c: c.execute(query, {"before": before, "limit": PRUNE_BATCH}).rowcount)
            deleted += max(0, int(n))
            if n < PRUNE_BATCH:
                return deleted

    async def realtime_secret(self, name: str, now: int) -> str:
        q = self._realtime_queries
        found = self._read(lambda c: c.execute(q["realtime_key"], {"name": name}).fetchone())
        if found is not None:
            return str(found[0])

        def op(conn: Conn) -> str:
            conn.execute(q["insert_realtime_key"], {"name": name, "secret": secrets.token_hex(32), "now": now})
            return str(conn.execute(q["realtime_key"], {"name": name}).fetchone()[0])

        return await self.writer.run(op)

    async def run_statuses(self, run_ids: list[str]) -> dict[str, str]:
        query = self._realtime_queries["run_statuses"]

        def read(conn: Conn) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = []
            for start in range(0, len(run_ids), STATUS_BATCH):
                ids = json.dumps(run_ids[start : start + STATUS_BATCH])
                rows += conn.execute(query, {"ids": ids}).fetchall()
            return rows

        return {str(i): str(s) for i, s in self._read(read)}
