"""The SQLite store: WAL, one group-commit writer thread, a read connection per thread."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from stepline.core.events import StoredEvent
from stepline.storage.base import Store
from stepline.storage.records import (
    ClaimedRun,
    FunctionRecord,
    IngestBatch,
    IngestResult,
    RunFilter,
    RunFinish,
    RunRecord,
    StepRecord,
    StepUpdate,
    WaitMatcher,
    WriteOutcome,
)
from stepline.storage.sql import load_migrations, load_queries
from stepline.storage.sqlite.writer import GroupCommitWriter

Q = load_queries("stepline.storage.sqlite", "queries.sql")
_RUN_LIVE = ("queued", "running")


def _j(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _uj(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _event(row: sqlite3.Row | tuple[Any, ...]) -> StoredEvent:
    internal_id, id_, name, data, user, ts, v, received_at = row
    return StoredEvent(internal_id, id_, name, json.loads(data), json.loads(user), ts, v, received_at)


def _run(row: sqlite3.Row | tuple[Any, ...]) -> RunRecord:
    (id_, function_id, event_id, status, attempt, idle_reason, output, error, created_at, started_at, ended_at,
     start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id, batch) = row  # fmt: skip
    return RunRecord(
        id_, function_id, event_id, status, attempt, _uj(idle_reason), _uj(output), _uj(error), created_at,
        started_at, ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id,
        parent_step_id, _uj(batch),
    )  # fmt: skip


def _step(row: sqlite3.Row | tuple[Any, ...]) -> StepRecord:
    run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at, ended_at = row
    return StepRecord(
        run_id,
        step_id,
        display_id,
        kind,
        status,
        attempts,
        _uj(output),
        _uj(error),
        wake_at,
        started_at,
        ended_at,
    )


class SQLiteStore(Store):
    """Embedded store in one file. ``synchronous`` is FULL by default: a committed step survives power loss."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL", busy_timeout_ms: int = 30000):
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._writer: GroupCommitWriter | None = None
        self._schema_version = 0
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    # --- connections ---
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._all_readers.append(conn)
        return conn

    def _write_connection(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        self._migrate(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TEXT NOT NULL DEFAULT (datetime('now')))"
            )
            applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in load_migrations("stepline.storage.sqlite"):
                if version in applied:
                    continue
                for statement in _split_statements(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._schema_version = int(conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0])

    # --- lifecycle ---
    async def open(self) -> None:
        self.open_sync()

    def open_sync(self) -> None:
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = GroupCommitWriter(self._write_connection)
        writer.start()
        self._writer = writer

    async def close(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        with self._readers_lock:
            for conn in self._all_readers:
                conn.close()
            self._all_readers.clear()
        self._local = threading.local()

    def schema_version(self) -> int:
        return self._schema_version

    @property
    def writer(self) -> GroupCommitWriter:
        if self._writer is None:
            raise RuntimeError("the store is not open: call await store.open() first")
        return self._writer

    # --- functions ---
    async def register_functions(self, app_id: str, functions: list[FunctionRecord], now: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            changed = 0
            for fn in functions:
                cur = conn.execute(
                    Q["upsert_function"],
                    {"id": fn.id, "app_id": app_id, "slug": fn.slug, "name": fn.name,
                     "config": json.dumps(fn.config, sort_keys=True), "now": now},
                )  # fmt: skip
                changed += cur.rowcount
            cur = conn.execute(
                Q["delete_app_functions_except"],
                {"app_id": app_id, "keep": json.dumps([f.id for f in functions])},
            )
            changed += cur.rowcount
            if changed:
                return int(conn.execute(Q["bump_registry_version"]).fetchone()[0])
            return int(conn.execute(Q["registry_version"]).fetchone()[0])

        return await self.writer.run(op)

    async def registry_version(self) -> int:
        return int(self._reader().execute(Q["registry_version"]).fetchone()[0])

    async def list_functions(self) -> list[FunctionRecord]:
        rows = self._reader().execute(Q["list_functions"]).fetchall()
        return [FunctionRecord(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # --- events and runs ---
    async def ingest(self, batch: IngestBatch, matcher: WaitMatcher, now: int) -> IngestResult:
        return await self.writer.run(lambda conn: self._ingest(conn, batch, matcher, now))

    def _ingest(self, conn: sqlite3.Connection, batch: IngestBatch, matcher: WaitMatcher, now: int) -> IngestResult:
        result = IngestResult([], [], [], [], [])
        for ev in batch.events:
            conn.execute(
                Q["insert_event"],
                {"internal_id": ev.internal_id, "id": ev.id, "name": ev.name, "data": json.dumps(ev.data),
                 "user": json.dumps(ev.user), "ts": ev.ts, "v": ev.v, "received_at": ev.received_at},
            ).fetchone()  # fmt: skip
            result.event_ids.append(ev.internal_id)
        # Match waits before this batch's runs exist: an event never cancels the run it starts.
        for ev in batch.events:
            self._match_waits(conn, ev, matcher, now, result)
        for run in batch.runs:
            if run.idempotency_key is not None:
                got = conn.execute(
                    Q["claim_idempotency_key"],
                    {"function_id": run.function_id, "key": run.idempotency_key, "run_id": run.id,
                     "expires_at": now + 24 * 3600 * 1000, "now": now},
                ).fetchone()  # fmt: skip
                if got is None:
                    result.skipped_run_ids.append(run.id)
                    continue
            conn.execute(
                Q["insert_run"],
                {"id": run.id, "function_id": run.function_id, "event_id": run.event_id,
                 "batch": _j(list(run.batch)) if run.batch else None, "created_at": run.created_at,
                 "start_deadline": run.start_deadline, "due_at": run.due_at, "parent_run_id": run.parent_run_id,
                 "parent_step_id": run.parent_step_id},
            )  # fmt: skip
            for w in run.cancel_waits:
                conn.execute(
                    Q["insert_wait"],
                    {"run_id": run.id, "step_id": None, "kind": "cancel", "event_name": w.event_name,
                     "expression": w.expression, "expires_at": w.expires_at},
                )  # fmt: skip
            result.created_run_ids.append(run.id)
        return result

    def _match_waits(
        self, conn: sqlite3.Connection, ev: StoredEvent, matcher: WaitMatcher, now: int, result: IngestResult
    ) -> None:
        rows = conn.execute(Q["waits_for_event"], {"event_name": ev.name, "now": now}).fetchall()
        if not rows:
            return
        candidate = ev.as_dict()
        done: set[str] = set()
        for wait_id, run_id, step_id, kind, expression, *trigger in rows:
            if run_id in done:
                continue
            if not matcher(expression, _event(trigger).as_dict(), candidate):
                continue
            if kind == "cancel":
                reason = {"name": "Cancelled", "message": f"cancelled by event {ev.name!r} ({ev.internal_id})"}
                self._finish(conn, run_id, RunFinish("cancelled", error=reason), matcher, now)
                result.cancelled_run_ids.append(run_id)
                done.add(run_id)
                continue
            conn.execute(Q["delete_wait"], {"id": wait_id})
            cur = conn.execute(
                Q["complete_pending_step"],
                {"run_id": run_id, "step_id": step_id, "status": "completed", "output": json.dumps(candidate),
                 "error": None, "now": now},
            )  # fmt: skip
            if cur.rowcount:
                conn.execute(Q["wake_run"], {"run_id": run_id, "now": now})
                result.woken_run_ids.append(run_id)

    async def latest_event_seq(self) -> int:
        return int(self._reader().execute(Q["latest_event_seq"]).fetchone()[0])

    async def claim_runs(
        self, owner: str, function_ids: list[str], now: int, limit: int, lease_ms: int
    ) -> list[ClaimedRun]:
        ids = json.dumps(function_ids)

        def op(conn: sqlite3.Connection) -> list[ClaimedRun]:
            rows = conn.execute(
                Q["claim_runs"],
                {
                    "owner": owner,
                    "now": now,
                    "lease_until": now + lease_ms,
                    "limit": limit,
                    "function_ids": ids,
                },
            ).fetchall()
            if not rows:
                return []
            runs = [_run(r) for r in rows]
            event_ids = {r.event_id for r in runs}
            for r in runs:
                event_ids.update(r.batch or ())
            events = {
                e.internal_id: e
                for e in map(_event, conn.execute(Q["select_events_by_ids"], {"ids": json.dumps(list(event_ids))}))
            }
            steps: dict[str, dict[str, StepRecord]] = {r.id: {} for r in runs}
            resumed = [r.id for r in runs if r.attempt > 0 or r.idle_reason is not None or r.status == "running"]
            if resumed:
                for s in map(_step, conn.execute(Q["select_steps_for_runs"], {"ids": json.dumps(resumed)})):
                    steps[s.run_id][s.step_id] = s
            claimed = []
            for r in runs:
                batch = [events[i] for i in r.batch] if r.batch else [events[r.event_id]]
                claimed.append(ClaimedRun(r, events[r.event_id], batch, steps[r.id]))
            return claimed

        return await self.writer.run(op)

    async def next_due_at(self, function_ids: list[str]) -> int | None:
        row = self._reader().execute(Q["next_due_at"], {"function_ids": json.dumps(function_ids)}).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def data_version(self) -> int:
        """Changes whenever any connection commits; a cheap way to notice new work from other processes."""
        return int(self._reader().execute("PRAGMA data_version").fetchone()[0])

    async def renew_leases(self, owner: str, run_ids: list[str], now: int, lease_ms: int) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                Q["renew_leases"], {"owner": owner, "ids": json.dumps(run_ids), "lease_until": now + lease_ms}
            ).fetchall()
            held = {r[0] for r in rows}
            return [i for i in run_ids if i not in held]

        return await self.writer.run(op)

    async def release_run(self, run_id: str, owner: str, due_at: int) -> None:
        await self.writer.run(
            lambda conn: conn.execute(Q["release_run"], {"run_id": run_id, "owner": owner, "due_at": due_at})
        )

    def _check_lease(self, conn: sqlite3.Connection, run_id: str, owner: str) -> WriteOutcome | None:
        row = conn.execute(Q["run_lease"], {"run_id": run_id}).fetchone()
        if row is None or row[0] not in _RUN_LIVE:
            return WriteOutcome("cancelled")
        if row[1] != owner:
            return WriteOutcome("lost")
        return None

    def _write_step(self, conn: sqlite3.Connection, run_id: str, u: StepUpdate, now: int) -> StepRecord:
        memo = u.status in ("completed", "failed")
        conn.execute(
            Q["upsert_step"],
            {"run_id": run_id, "step_id": u.step_id, "display_id": u.display_id, "kind": u.kind,
             "status": u.status, "attempts": u.attempts, "output": _j(u.output) if memo else None,
             "error": _j(u.error), "wake_at": u.wake_at, "now": now, "ended_at": now if memo else None,
             },
        )  # fmt: skip
        if memo:
            conn.execute(Q["delete_step_wait"], {"run_id": run_id, "step_id": u.step_id})
        return _step(conn.execute(Q["select_step"], {"run_id": run_id, "step_id": u.step_id}).fetchone())

    async def record_step(
        self, run_id: str, owner: str, update: StepUpdate, matcher: WaitMatcher, now: int
    ) -> WriteOutcome:
        def op(conn: sqlite3.Connection) -> WriteOutcome:
            bad = self._check_lease(conn, run_id, owner)
            if bad is not None and bad.status == "cancelled":
                return bad
            # A worker that lost its lease may still record a result (first write wins, so it is harmless), but
            # never a pending state: that would overwrite the new owner's view of the run.
            if bad is not None and update.status not in ("completed", "failed"):
                return bad
            before = conn.execute(Q["select_step"], {"run_id": run_id, "step_id": update.step_id}).fetchone()
            if before is not None and _step(before).is_memo:
                return WriteOutcome(bad.status if bad else "ok", _step(before))
            step = self._write_step(conn, run_id, update, now)
            if update.emit is not None:
                self._ingest(conn, update.emit, matcher, now)
            return WriteOutcome(bad.status if bad else "ok", step)

        return await self.writer.run(op)

    async def suspend_run(
        self,
        run_id: str,
        owner: str,
        pending: list[StepUpdate],
        idle_reason: dict[str, Any],
        matcher: WaitMatcher,
        now: int,
        max_due_at: int | None = None,
    ) -> WriteOutcome:
        def op(conn: sqlite3.Connection) -> WriteOutcome:
            bad = self._check_lease(conn, run_id, owner)
            if bad is not None:
                return bad
            due_at: int | None = max_due_at
            trigger: dict[str, Any] | None = None
            for u in pending:
                step = self._write_step(conn, run_id, u, now)
                if step.is_memo:
                    due_at = now  # already resolved (by another writer): resume at once
                    continue
                if u.invoke is not None:
                    self._ingest(conn, u.invoke, matcher, now)
                if u.wait is not None and step.status == "waiting":
                    conn.execute(Q["delete_step_wait"], {"run_id": run_id, "step_id": u.step_id})
                    if trigger is None:
                        row = conn.execute(Q["select_run"], {"run_id": run_id}).fetchone()
                        ev = conn.execute(Q["select_event"], {"internal_id": row[2]}).fetchone()
                        trigger = _event(ev).as_dict()
                    matched = self._first_match_since(conn, u, trigger, matcher)
                    if matched is not None:
                        conn.execute(
                            Q["complete_pending_step"],
                            {"run_id": run_id, "step_id": u.step_id, "status": "completed",
                             "output": json.dumps(matched), "error": None, "now": now},
                        )  # fmt: skip
                        due_at = now
                        continue
                    conn.execute(
                        Q["insert_wait"],
                        {"run_id": run_id, "step_id": u.step_id, "kind": "event", "event_name": u.wait.event_name,
                         "expression": u.wait.expression, "expires_at": u.wait.expires_at},
                    )  # fmt: skip
                if step.wake_at is not None:
                    due_at = step.wake_at if due_at is None else min(due_at, step.wake_at)
            conn.execute(
                Q["suspend_run"],
                {
                    "run_id": run_id,
                    "due_at": due_at,
                    "idle_reason": None if due_at == now else _j(idle_reason),
                },
            )
            return WriteOutcome("ok")

        return await self.writer.run(op)

    def _first_match_since(
        self, conn: sqlite3.Connection, u: StepUpdate, trigger: dict[str, Any], matcher: WaitMatcher
    ) -> dict[str, Any] | None:
        assert u.wait is not None
        for row in conn.execute(Q["events_after_seq"], {"name": u.wait.event_name, "since_seq": u.since_seq}):
            candidate = _event(row).as_dict()
            if matcher(u.wait.expression, trigger, candidate):
                return candidate
        return None

    async def retry_run(self, run_id: str, owner: str, due_at: int, error: dict[str, object], now: int) -> WriteOutcome:
        def op(conn: sqlite3.Connection) -> WriteOutcome:
            bad = self._check_lease(conn, run_id, owner)
            if bad is not None:
                return bad
            conn.execute(
                Q["retry_run"],
                {"run_id": run_id, "due_at": due_at, "error": _j(error),
                 "idle_reason": _j({"kind": "retrying", "until": due_at})},
            )  # fmt: skip
            return WriteOutcome("ok")

        return await self.writer.run(op)

    async def finish_run(
        self, run_id: str, owner: str | None, finish: RunFinish, matcher: WaitMatcher, now: int
    ) -> WriteOutcome:
        def op(conn: sqlite3.Connection) -> WriteOutcome:
            if owner is not None:
                bad = self._check_lease(conn, run_id, owner)
                if bad is not None:
                    return bad
            return WriteOutcome("ok") if self._finish(conn, run_id, finish, matcher, now) else WriteOutcome("cancelled")

        return await self.writer.run(op)

    def _finish(self, conn: sqlite3.Connection, run_id: str, finish: RunFinish, matcher: WaitMatcher, now: int) -> bool:
        row = conn.execute(
            Q["finish_run"],
            {"run_id": run_id, "status": finish.status, "output": _j(finish.output), "error": _j(finish.error),
             "now": now},
        ).fetchone()  # fmt: skip
        if row is None:
            return False  # already ended
        conn.execute(Q["delete_run_waits"], {"run_id": run_id})
        parent_run_id, parent_step_id, _ = row
        if parent_run_id is not None:
            result = {"data": finish.output} if finish.status == "completed" else None
            error = (
                None if finish.status == "completed" else (finish.error or {"name": "Error", "message": finish.status})
            )
            cur = conn.execute(
                Q["complete_pending_step"],
                {"run_id": parent_run_id, "step_id": parent_step_id,
                 "status": "completed" if error is None else "failed",
                 "output": _j(result), "error": _j(error), "now": now},
            )  # fmt: skip
            if cur.rowcount:
                conn.execute(Q["wake_run"], {"run_id": parent_run_id, "now": now})
        if finish.follow_up.events or finish.follow_up.runs:
            self._ingest(conn, finish.follow_up, matcher, now)
        return True

    # --- reads ---
    async def get_run(self, run_id: str) -> RunRecord | None:
        row = self._reader().execute(Q["select_run"], {"run_id": run_id}).fetchone()
        return None if row is None else _run(row)

    async def list_runs(self, flt: RunFilter) -> list[RunRecord]:
        rows = self._reader().execute(
            Q["list_runs"],
            {"status": flt.status, "function_id": flt.function_id, "event_id": flt.event_id,
             "before_id": flt.before_id, "limit": flt.limit},
        ).fetchall()  # fmt: skip
        return [_run(r) for r in rows]

    async def list_steps(self, run_id: str) -> list[StepRecord]:
        return [_step(r) for r in self._reader().execute(Q["list_steps"], {"run_id": run_id})]

    async def get_event(self, internal_id: str) -> StoredEvent | None:
        row = self._reader().execute(Q["select_event"], {"internal_id": internal_id}).fetchone()
        return None if row is None else _event(row)

    async def list_events(self, name: str | None, limit: int) -> list[StoredEvent]:
        return [_event(r) for r in self._reader().execute(Q["list_events"], {"name": name, "limit": limit})]


def _split_statements(sql: str) -> list[str]:
    """Split a migration into statements. Comments are dropped first; migrations hold no ';' or '--' in
    string literals."""
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]
