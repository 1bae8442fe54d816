"""``Store`` methods for observability, written once for every SQL backend. Mixed into ``SqlStore``.

Cluster leases (one holder per name across every process sharing the database: the metrics leader, the alert
sender), the counts behind the cluster-wide gauges (read only from the live part of the ``runs_due`` and
``runs_lease_owner`` indexes: ended runs are not in them), and the userland spans apps send for their runs. The
queries live in each backend package's ``observability.sql``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from stepline.storage.records import RUN_SPAN_LIMIT, ClusterGauges, ClusterLease, RunSpan
from stepline.storage.sql import Conn, backend_queries

if TYPE_CHECKING:
    from stepline.storage.writer import GroupCommitWriter

T = TypeVar("T")


class SqlObservabilityMixin:
    """Needs ``_read`` and ``writer`` from ``SqlStore``; finds its queries by the package of the concrete store."""

    if TYPE_CHECKING:

        def _read(self, fn: Callable[[Conn], T]) -> T: ...

        def _lock_key(self, conn: Conn, key: str, shared: bool = False) -> None: ...

        @property
        def writer(self) -> GroupCommitWriter: ...

    @property
    def _obs_queries(self) -> dict[str, str]:
        return backend_queries(self, "observability.sql")

    # --- cluster leases ---
    async def take_cluster_lease(self, name: str, owner: str, now: int, ttl_ms: int) -> ClusterLease | None:
        query = self._obs_queries["take_cluster_lease"]

        def op(conn: Conn) -> ClusterLease | None:
            row = conn.execute(query, {"name": name, "owner": owner, "now": now, "expires_at": now + ttl_ms}).fetchone()
            if row is None:
                return None
            holder, expires_at, state = row
            return ClusterLease(name, str(holder), int(expires_at), None if state is None else json.loads(state))

        return await self.writer.run(op)

    async def save_cluster_lease_state(self, name: str, owner: str, state: dict[str, Any], now: int) -> bool:
        query = self._obs_queries["save_cluster_lease_state"]
        params = {"name": name, "owner": owner, "now": now, "state": json.dumps(state, separators=(",", ":"))}
        return bool(await self.writer.run(lambda conn: conn.execute(query, params).rowcount))

    async def release_cluster_lease(self, name: str, owner: str) -> None:
        query = self._obs_queries["release_cluster_lease"]
        await self.writer.run(lambda conn: conn.execute(query, {"name": name, "owner": owner}))

    async def ping(self) -> None:
        await asyncio.to_thread(self._read, lambda conn: conn.execute("SELECT 1").fetchone())

    # --- cluster-wide gauges ---
    async def cluster_gauges(self, now: int) -> ClusterGauges:
        q = self._obs_queries

        def read(conn: Conn) -> ClusterGauges:
            params = {"now": now}
            backlog = [(str(f), int(n), int(t)) for f, n, t in conn.execute(q["backlog_by_function"], params)]
            idle = [(str(f), str(k or "other"), int(n)) for f, k, n in conn.execute(q["idle_by_reason"], params)]
            running = [(str(f), int(n)) for f, n in conn.execute(q["running_by_function"], params)]
            return ClusterGauges(backlog, idle, running)

        # Its cost grows with the live runs (not with the ended ones): off the event loop.
        return await asyncio.to_thread(self._read, read)

    # --- userland spans ---
    async def save_run_spans(self, spans: dict[str, list[dict[str, Any]]], now: int) -> dict[str, int]:
        """Append spans to their runs' (by run id), each run up to ``RUN_SPAN_LIMIT``; returns how many of each run
        were stored (0 for a run that does not exist, or is full)."""
        q = self._obs_queries

        def op(conn: Conn) -> dict[str, int]:
            stored: dict[str, int] = {}
            for run_id, items in spans.items():
                if conn.execute(q["run_exists"], {"run_id": run_id}).fetchone() is None:
                    stored[run_id] = 0
                    continue
                self._lock_key(conn, f"run-spans:{run_id}")  # two requests for one run (PostgreSQL): one at a time
                last = int(conn.execute(q["last_run_span"], {"run_id": run_id}).fetchone()[0])
                kept = items[: max(0, RUN_SPAN_LIMIT - last)]
                if kept:
                    rows = json.dumps([json.dumps(s, separators=(",", ":")) for s in kept])
                    conn.execute(q["insert_run_spans"], {"run_id": run_id, "after": last, "now": now, "spans": rows})
                stored[run_id] = len(kept)
            return stored

        return await self.writer.run(op)

    async def list_run_spans(self, run_id: str, limit: int = RUN_SPAN_LIMIT) -> list[RunSpan]:
        query = self._obs_queries["list_run_spans"]
        rows = self._read(lambda c: c.execute(query, {"run_id": run_id, "limit": limit}).fetchall())
        return [RunSpan(run_id, int(seq), int(at), json.loads(span)) for seq, at, span in rows]

    def _delete_run_spans(self, conn: Conn, encoded_ids: str) -> None:
        """Inside the prune transaction: the spans of the runs being deleted."""
        conn.execute(self._obs_queries["delete_run_spans_of_runs"], {"ids": encoded_ids})
