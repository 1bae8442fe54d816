"""``Store`` methods for the server's bookkeeping, written once for every SQL backend: apps synced over HTTP,
runs created directly (rerun, with a copied memo) and bulk cancellations. Mixed into ``SqlStore``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from stepline.storage.records import AppRecord, CancellationRecord, NewRun, StepRecord
from stepline.storage.sql import Conn
from stepline.storage.states import IdleReason

if TYPE_CHECKING:
    from stepline.storage.writer import GroupCommitWriter

T = TypeVar("T")


def _j(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _app(row: tuple[Any, ...]) -> AppRecord:
    return AppRecord(*row)


def _cancellation(row: tuple[Any, ...]) -> CancellationRecord:
    return CancellationRecord(*row)


class SqlAppsMixin:
    """Needs what ``SqlStore`` provides: the dialect's queries ``Q``, ``_read``, ``writer`` and ``_notify_work``."""

    Q: dict[str, str]

    if TYPE_CHECKING:

        def _read(self, fn: Callable[[Conn], T]) -> T: ...

        @property
        def writer(self) -> GroupCommitWriter: ...

        def _notify_work(self, conn: Conn, due_at: int) -> None: ...

        def _insert_run_row(self, conn: Conn, run: NewRun, due_at: int | None) -> int: ...

    # --- apps ---
    async def save_app(self, app: AppRecord) -> None:
        params = {
            "url": app.url, "app_id": app.app_id, "sdk": app.sdk, "framework": app.framework,
            "app_version": app.app_version, "checksum": app.checksum, "synced_at": app.synced_at,
            "error": app.error, "created_at": app.created_at, "updated_at": app.updated_at,
        }  # fmt: skip
        await self.writer.run(lambda conn: conn.execute(self.Q["upsert_app"], params))

    async def get_app(self, url: str) -> AppRecord | None:
        row = self._read(lambda c: c.execute(self.Q["select_app"], {"url": url}).fetchone())
        return None if row is None else _app(row)

    async def list_apps(self) -> list[AppRecord]:
        return [_app(r) for r in self._read(lambda c: c.execute(self.Q["list_apps"]).fetchall())]

    async def delete_app(self, url: str) -> None:
        def op(conn: Conn) -> None:
            row = conn.execute(self.Q["delete_app"], {"url": url}).fetchone()
            if row is None or row[0] is None:
                return  # unknown, or never registered: it has no functions
            app_id = row[0]
            if conn.execute(self.Q["count_apps_with_app_id"], {"app_id": app_id}).fetchone()[0]:
                return  # the same app is still served from another URL: its functions stay
            conn.execute(self.Q["forget_cron_states_except"], {"app_id": app_id, "keep": "[]"})
            if conn.execute(self.Q["delete_app_functions"], {"app_id": app_id}).rowcount:
                conn.execute(self.Q["bump_registry_version"]).fetchone()

        await self.writer.run(op)

    # --- runs created directly ---
    async def create_run(
        self, run: NewRun, steps: list[StepRecord], now: int, idle_reason: IdleReason | None = None
    ) -> None:
        if idle_reason is None and steps:
            # Claims load the memo only of runs that are resuming (an idle reason says so).
            idle_reason = {"kind": "queued", "memo_steps": len(steps)}

        def op(conn: Conn) -> None:
            if not self._insert_run_row(conn, run, run.due_at):
                return  # already created (this transaction retried after a lost commit)
            for w in run.cancel_waits:
                conn.execute(
                    self.Q["insert_wait"],
                    {"run_id": run.id, "step_id": None, "kind": "cancel", "event_name": w.event_name,
                     "expression": w.expression, "expires_at": w.expires_at},
                )  # fmt: skip
            for seq, s in enumerate(steps, start=1):
                conn.execute(
                    self.Q["insert_step_copy"],
                    {"run_id": run.id, "step_id": s.step_id, "display_id": s.display_id, "kind": s.kind,
                     "status": s.status, "attempts": s.attempts, "output": _j(s.output), "error": _j(s.error),
                     "wake_at": s.wake_at, "started_at": s.started_at, "ended_at": s.ended_at, "seq": seq},
                )  # fmt: skip
            if idle_reason is not None:
                conn.execute(self.Q["set_run_idle_reason"], {"run_id": run.id, "idle_reason": _j(idle_reason)})
            self._notify_work(conn, run.due_at)

        await self.writer.run(op)

    async def start_endpoint_run(self, run: NewRun, owner: str, lease_until: int, now: int) -> bool:
        def op(conn: Conn) -> bool:
            if not self._insert_run_row(conn, run, lease_until):
                return False
            conn.execute(self.Q["lease_endpoint_run"],
                         {"run_id": run.id, "owner": owner, "lease_until": lease_until, "now": now})  # fmt: skip
            self._notify_work(conn, lease_until)
            return True

        return await self.writer.run(op)

    # --- bulk cancellations ---
    async def save_cancellation(self, cancellation: CancellationRecord) -> None:
        c = cancellation
        params = {
            "id": c.id, "app_id": c.app_id, "function_id": c.function_id, "started_after": c.started_after,
            "started_before": c.started_before, "expression": c.expression, "cancelled": c.cancelled,
            "created_at": c.created_at,
        }  # fmt: skip
        await self.writer.run(lambda conn: conn.execute(self.Q["insert_cancellation"], params))

    async def list_cancellations(self, limit: int = 100) -> list[CancellationRecord]:
        rows = self._read(lambda c: c.execute(self.Q["list_cancellations"], {"limit": limit}).fetchall())
        return [_cancellation(r) for r in rows]
