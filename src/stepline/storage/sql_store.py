"""Transaction logic shared by the SQL backends: every ``Store`` method as a function of one connection.

Subclasses give the connections (``_read`` and a group-commit ``writer``), the named queries ``Q`` of
their dialect, and a few hooks (locks and notifications PostgreSQL needs and SQLite does not). The
code runs unchanged on ``sqlite3`` and ``psycopg`` connections: both offer ``execute(sql, params)``
returning a cursor with ``fetchone``/``fetchall``/``rowcount``, and JSON travels as text.
"""

from __future__ import annotations

import abc
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

from stepline.storage.base import Store
from stepline.storage.records import (
    RUN_LOG_MESSAGE_LIMIT,
    ClaimedRun,
    FunctionRecord,
    IngestBatch,
    IngestResult,
    NewRun,
    PruneResult,
    RunFilter,
    RunFinish,
    RunLogLine,
    RunLogs,
    RunRecord,
    SignalConflict,
    StaleRegistryError,
    StepRecord,
    StepResultConflict,
    StepUpdate,
    StoredEvent,
    WaitMatcher,
    WriteOutcome,
)
from stepline.storage.sql import Conn
from stepline.storage.sql_apps import SqlAppsMixin
from stepline.storage.sql_attempts import SqlAttemptsMixin, records_attempt
from stepline.storage.sql_cron import SqlCronMixin
from stepline.storage.sql_dashboard import SqlDashboardMixin
from stepline.storage.sql_events import SqlEventsMixin
from stepline.storage.sql_flow import SqlFlowMixin
from stepline.storage.sql_logs import SqlLogsMixin
from stepline.storage.sql_observability import SqlObservabilityMixin
from stepline.storage.sql_realtime import SqlRealtimeMixin
from stepline.storage.sql_security import SqlSecurityMixin
from stepline.storage.sql_stats import SqlStatsMixin, StatsBatch
from stepline.storage.states import IdleReason, retrying_reason
from stepline.storage.writer import GroupCommitWriter, MergeableOp

T = TypeVar("T")
_RUN_LIVE = ("queued", "running")
EVENT_PAGE_BYTES = 8 * 1024 * 1024  # a page of events stops before its data would pass this (at least one event)
# A signal wait's name in the waits table: a reserved event name no sent event can have, so events never match it.
SIGNAL_WAIT_PREFIX = "stepline/signal:"


def _j(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _uj(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _event(row: tuple[Any, ...] | list[Any]) -> StoredEvent:
    internal_id, id_, name, data, user, ts, v, received_at, *rest = row  # rest: the traceparent, where selected
    return StoredEvent(internal_id, id_, name, json.loads(data), json.loads(user), ts, v, received_at,
                       rest[0] if rest else None)  # fmt: skip


def _run(row: tuple[Any, ...]) -> RunRecord:
    (id_, function_id, event_id, status, attempt, idle_reason, output, error, created_at, started_at, ended_at,
     start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id, batch) = row  # fmt: skip
    return RunRecord(
        id_, function_id, event_id, status, attempt, _uj(idle_reason), _uj(output), _uj(error), created_at,
        started_at, ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id,
        parent_step_id, _uj(batch),
    )  # fmt: skip


def _step(row: tuple[Any, ...]) -> StepRecord:
    run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at, ended_at, race = row
    return StepRecord(
        run_id, step_id, display_id, kind, status, attempts, _uj(output), _uj(error), wake_at, started_at, ended_at,
        race,
    )  # fmt: skip


class SqlStore(
    SqlFlowMixin,
    SqlAppsMixin,
    SqlDashboardMixin,
    SqlEventsMixin,
    SqlCronMixin,
    SqlLogsMixin,
    SqlSecurityMixin,
    SqlObservabilityMixin,
    SqlRealtimeMixin,
    SqlAttemptsMixin,
    SqlStatsMixin,
    Store,
):
    """The ``Store`` methods, written once for every SQL backend (apps, reruns, cancellations: ``SqlAppsMixin``)."""

    Q: dict[str, str]
    registry_checked_in_ingest = True  # see _open_ingest: a local read (SQLite), or no extra round trip (PostgreSQL)

    @abc.abstractmethod
    def _read(self, fn: Callable[[Conn], T]) -> T:
        """Run a read-only function on a connection outside any write transaction."""

    @property
    @abc.abstractmethod
    def writer(self) -> GroupCommitWriter:
        """Where write transactions go."""

    # --- dialect hooks (no-ops for SQLite, whose single writer already serialises everything) ---
    def _lock_for_ingest(self, conn: Conn, names: list[str]) -> None:
        """Taken before matching events with these names against waits (PostgreSQL: shared per-name locks)."""

    def _lock_for_wait(self, conn: Conn, name: str) -> None:
        """Taken before registering a wait for events named ``name`` (PostgreSQL: exclusive per-name lock)."""

    def _notify_work(self, conn: Conn, due_at: int) -> None:
        """This transaction makes work due at ``due_at`` (now or later): tell the workers of other processes, so
        that they claim it when it is due without polling for it (PostgreSQL: NOTIFY with the earliest due time)."""

    # --- functions ---
    async def register_functions(self, app_id: str, functions: list[FunctionRecord], now: int) -> int:
        def op(conn: Conn) -> int:
            changed = 0
            for fn in functions:
                cur = conn.execute(
                    self.Q["upsert_function"],
                    {"id": fn.id, "app_id": app_id, "slug": fn.slug, "name": fn.name,
                     "config": json.dumps(fn.config, sort_keys=True), "now": now},
                )  # fmt: skip
                changed += cur.rowcount
            # Schedules of functions that leave the app or lose their cron triggers are forgotten: registered again
            # later, a cron starts afresh (it never fires for times before it was seen again).
            with_crons = [f.id for f in functions if any("cron" in t for t in f.config.get("triggers", []))]
            conn.execute(self.Q["forget_cron_states_except"], {"app_id": app_id, "keep": json.dumps(with_crons)})
            cur = conn.execute(
                self.Q["delete_app_functions_except"],
                {"app_id": app_id, "keep": json.dumps([f.id for f in functions])},
            )
            changed += cur.rowcount
            if changed:
                return int(conn.execute(self.Q["bump_registry_version"]).fetchone()[0])
            return int(conn.execute(self.Q["registry_version"]).fetchone()[0])

        return await self.writer.run(op)

    async def registry_version(self) -> int:
        return int(self._read(lambda c: c.execute(self.Q["registry_version"]).fetchone()[0]))

    async def list_functions(self) -> list[FunctionRecord]:
        rows = self._read(lambda c: c.execute(self.Q["list_functions"]).fetchall())
        return [FunctionRecord(id_, app_id, slug, name, json.loads(config)) for id_, app_id, slug, name, config in rows]

    # --- events and runs ---
    async def ingest(self, batch: IngestBatch, matcher: WaitMatcher, now: int) -> IngestResult:
        result: IngestResult = await self.writer.run(_IngestOp(self, batch, matcher, now))
        return result

    def _ingest(self, conn: Conn, batch: IngestBatch, matcher: WaitMatcher, now: int) -> IngestResult:
        return self._ingest_many(conn, [(batch, matcher, now)])[0]

    # Dialect hooks for the multi-row statements of an ingest (PostgreSQL overrides them with one statement each).
    def _insert_events(self, conn: Conn, events: list[StoredEvent]) -> set[str]:
        """Store the events not stored yet; return the internal ids this call stored."""
        stored: set[str] = set()
        for ev in events:
            cur = conn.execute(
                self.Q["insert_event"],
                {"internal_id": ev.internal_id, "id": ev.id, "name": ev.name, "data": json.dumps(ev.data),
                 "user": json.dumps(ev.user), "ts": ev.ts, "v": ev.v, "received_at": ev.received_at,
                 "traceparent": ev.traceparent},
            )  # fmt: skip
            if cur.rowcount != 0:  # 0: the same event again (a retried event API request with the same seed)
                stored.add(ev.internal_id)
        return stored

    def _open_ingest(self, conn: Conn, planned: set[int], names: list[str], events: list[StoredEvent]) -> set[str]:
        """The start of an ingest transaction: check the registry ``planned`` versions (StaleRegistryError), take
        the locks for ``names`` and store ``events``; returns what ``_insert_events`` returns. PostgreSQL does it in
        two statements (and looks up the waits with the second); a stale plan is rolled back with the transaction."""
        self._check_registry(conn, planned)
        if names:
            self._lock_for_ingest(conn, names)
        return self._insert_events(conn, events)

    def _check_registry(self, conn: Conn, planned: set[int], current: int | None = None) -> None:
        if planned:  # merged ingests of which one is stale are then applied one by one (the writer's fallback)
            if current is None:
                current = int(conn.execute(self.Q["registry_version"]).fetchone()[0])
            if planned != {current}:
                raise StaleRegistryError(f"the function registry changed (now version {current}) since planning")

    def _names_with_waits(self, conn: Conn, names: list[str]) -> set[str]:
        """Which of these event names some wait may be waiting for (a superset is fine: each is looked up)."""
        return set(names)

    def _insert_plain_runs(self, conn: Conn, runs: list[NewRun]) -> None:
        for run in runs:
            self._insert_run_row(conn, run, run.due_at)

    def _ingest_many(self, conn: Conn, items: list[tuple[IngestBatch, WaitMatcher, int]]) -> list[IngestResult]:
        """Apply several ingests in this transaction, with multi-row statements where the dialect has them.

        As if they were applied one after the other, except that the events of every ingest are matched against
        waits before the runs of any of them exist (they are concurrent sends: an event never cancels or resumes
        a run created in the same call, as if it had been applied first). Events are stored in order, a
        redelivered event (stored already, or earlier in this call) matches no wait, and every run passes its
        flow-control gates in order.
        """
        results = [IngestResult([], [], [], [], []) for _ in items]
        planned = {batch.registry_version for batch, _, _ in items if batch.registry_version is not None}
        names = sorted({ev.name for batch, _, _ in items for ev in batch.events})
        stored = self._open_ingest(conn, planned, names, [ev for batch, _, _ in items for ev in batch.events])
        fresh_per_item: list[list[StoredEvent]] = []
        seen: set[str] = set()
        for (batch, _, _), result in zip(items, results, strict=True):
            result.event_ids.extend(ev.internal_id for ev in batch.events)
            fresh = []
            for ev in batch.events:
                if ev.internal_id in stored and ev.internal_id not in seen:
                    fresh.append(ev)
                seen.add(ev.internal_id)
            fresh_per_item.append(fresh)
        waited = self._names_with_waits(conn, sorted({ev.name for fresh in fresh_per_item for ev in fresh}))
        # Match waits before these runs exist: an event never cancels the run it starts. A redelivered event
        # matches nothing: it already resolved whatever waits it matched the first time.
        for (_, matcher, now), fresh, result in zip(items, fresh_per_item, results, strict=True):
            for ev in fresh:
                if ev.name in waited:
                    self._match_waits(conn, ev, matcher, now, result)
        # Singleton keys locked in one order (sorted), before any is needed: two ingests would deadlock otherwise.
        singletons = {
            r.flow.singleton.key for b, _, _ in items for r in b.runs if r.flow is not None and r.flow.singleton
        }
        for key in sorted(singletons):
            self._lock_key(conn, key)
        plain: list[NewRun] = []
        created: list[tuple[IngestResult, NewRun, bool]] = []  # (its result, the run, passed a gate)
        for (batch, matcher, now), fresh, result in zip(items, fresh_per_item, results, strict=True):
            # Events stored by an earlier application of this write (a batch the writer ran again after a lost
            # COMMIT acknowledgement): their runs already passed the flow-control gates.
            replayed: set[str] = set()
            if len(fresh) < len(batch.events) and any(r.flow is not None for r in batch.runs):
                replayed = {ev.internal_id for ev in batch.events} - {ev.internal_id for ev in fresh}
            if batch.expression_failures:
                self._record_expression_failures(conn, batch.expression_failures, now)
            for run in batch.runs:
                if run.idempotency_key is not None:
                    got = conn.execute(
                        self.Q["claim_idempotency_key"],
                        {"function_id": run.function_id, "key": run.idempotency_key, "run_id": run.id,
                         "expires_at": now + 24 * 3600 * 1000, "now": now},
                    ).fetchone()  # fmt: skip
                    if got[0] != run.id:  # held by another run (equal: this very batch, retried after a lost commit)
                        result.skipped_run_ids.append(run.id)
                        continue
                if run.failure is not None:
                    self._insert_failed(conn, run, now, result, matcher)
                    continue
                flow = run.flow
                gated = flow is not None and bool(
                    flow.rate_limit or flow.singleton or flow.debounce or flow.batch or flow.throttle
                )
                if gated:
                    if not self._admit(conn, run, now, matcher, result, run.event_id in replayed):
                        continue  # skipped (stored as such) or merged into an open debounce/batch run
                else:
                    plain.append(run)
                created.append((result, run, gated))
        if plain:
            self._insert_plain_runs(conn, plain)
        for result, run, _ in created:
            for w in run.cancel_waits:
                conn.execute(
                    self.Q["insert_wait"],
                    {"run_id": run.id, "step_id": None, "kind": "cancel", "event_name": w.event_name,
                     "expression": w.expression, "expires_at": w.expires_at},
                )  # fmt: skip
            result.created_run_ids.append(run.id)
        for (_, _, now), result in zip(items, results, strict=True):
            if result.woken_run_ids:
                self._notify_work(conn, now)
        due = [run.due_at for _, run, gated in created if not gated]  # gated runs were notified by their gate
        if due:
            self._notify_work(conn, min(due))
        return results

    def _insert_failed(self, conn: Conn, run: NewRun, now: int, result: IngestResult, matcher: WaitMatcher) -> None:
        """A run that failed before it started: stored as ``failed`` with its error, its end events with it."""
        if not self._insert_run_row(conn, run, None, status="failed", ended_at=now):
            return  # the same write applied again (a lost COMMIT acknowledgement)
        conn.execute(self.Q["set_run_error"], {"run_id": run.id, "error": _j(run.failure)})
        result.failed_run_ids.append(run.id)
        finish = RunFinish("failed", error=run.failure, may_have_waits=False,
                           follow_up=run.follow_up or IngestBatch([], []))  # fmt: skip
        self._after_end(conn, run.id, (run.parent_run_id, run.parent_step_id, None, run.function_id), finish, matcher,
                        now, None)  # fmt: skip

    def _match_waits(self, conn: Conn, ev: StoredEvent, matcher: WaitMatcher, now: int, result: IngestResult) -> None:
        rows = conn.execute(self.Q["waits_for_event"], {"event_name": ev.name, "now": now}).fetchall()
        if not rows:
            return
        candidate = ev.as_dict()
        done: set[str] = set()
        for wait_id, run_id, step_id, kind, expression, *trigger in rows:
            if run_id in done:
                continue
            if not self._wait_matches(conn, run_id, kind, matcher, expression, _event(trigger).as_dict(), candidate,
                                      now):  # fmt: skip
                continue
            if kind == "cancel":
                reason = {"name": "Cancelled", "message": f"cancelled by event {ev.name!r} ({ev.internal_id})"}
                self._finish(conn, run_id, RunFinish("cancelled", error=reason), matcher, now)
                result.cancelled_run_ids.append(run_id)
                done.add(run_id)
                continue
            conn.execute(self.Q["delete_wait"], {"id": wait_id})
            cur = conn.execute(
                self.Q["complete_pending_step"],
                {"run_id": run_id, "step_id": step_id, "status": "completed", "output": json.dumps(candidate),
                 "error": None, "now": now},
            )  # fmt: skip
            if cur.rowcount:
                conn.execute(self.Q["wake_run"], {"run_id": run_id, "now": now})
                result.woken_run_ids.append(run_id)

    async def event_cursor(self) -> int | str:
        return self._read(lambda c: c.execute(self.Q["event_cursor"]).fetchone()[0])  # type: ignore[no-any-return]

    async def claim_runs(
        self,
        owner: str,
        function_ids: list[str],
        now: int,
        limit: int,
        lease_ms: int,
        gated_ids: frozenset[str] | set[str] = frozenset(),
    ) -> list[ClaimedRun]:
        plain = [f for f in function_ids if f not in gated_ids]
        gated = [f for f in function_ids if f in gated_ids]
        ids = json.dumps(plain)

        def claim_plain(conn: Conn, n: int) -> list[Any]:
            params = {"owner": owner, "now": now, "lease_until": now + lease_ms, "limit": n, "function_ids": ids}
            return list(conn.execute(self.Q["claim_runs"], params).fetchall())

        def op(conn: Conn) -> list[ClaimedRun]:
            rows: list[Any] = []
            if gated and plain:
                # Both kinds: the kind whose earliest due run waited longer is served first, so neither starves.
                row = conn.execute(
                    self.Q["flow_earliest_due"], {"now": now, "plain_ids": ids, "all_ids": json.dumps(function_ids)}
                ).fetchone()
                if row is not None and row[0]:
                    rows = claim_plain(conn, limit)
                    if len(rows) < limit:
                        rows += self._claim_gated(conn, owner, gated, now, limit - len(rows), lease_ms)
                else:
                    rows = self._claim_gated(conn, owner, gated, now, limit, lease_ms)
                    if len(rows) < limit:
                        rows += claim_plain(conn, limit - len(rows))
            elif gated:
                rows = self._claim_gated(conn, owner, gated, now, limit, lease_ms)
            elif plain:
                rows = claim_plain(conn, limit)
            if not rows:
                return []
            runs = [_run(r) for r in rows]
            stats = StatsBatch()
            started = [r for r in runs if r.started_at == now and r.attempt == 0]  # (as metrics count a start)
            for r in started:
                stats.started(r.function_id, now - (r.due_at if r.due_at is not None else r.created_at), now)
            self._add_stats(conn, stats)
            self._record_waits(conn, started, now)
            event_ids = {r.event_id for r in runs}
            for r in runs:
                event_ids.update(r.batch or ())
            events = {
                e.internal_id: e
                for e in map(_event, conn.execute(self.Q["select_events_by_ids"], {"ids": json.dumps(list(event_ids))}))
            }
            steps: dict[str, dict[str, StepRecord]] = {r.id: {} for r in runs}
            resumed = [r.id for r in runs if r.attempt > 0 or r.idle_reason is not None or r.status == "running"]
            if resumed:
                for s in map(_step, conn.execute(self.Q["select_steps_for_runs"], {"ids": json.dumps(resumed)})):
                    steps[s.run_id][s.step_id] = s
            claimed = []
            for r in runs:
                batch = [events[i] for i in r.batch] if r.batch else [events[r.event_id]]
                claimed.append(ClaimedRun(r, events[r.event_id], batch, steps[r.id]))
            return claimed

        return await self.writer.run(op)

    async def next_due_at(self, function_ids: list[str]) -> int | None:
        params = {"function_ids": json.dumps(function_ids)}
        row = self._read(lambda c: c.execute(self.Q["next_due_at"], params).fetchone())
        return None if row is None or row[0] is None else int(row[0])

    async def renew_leases(self, owner: str, run_ids: list[str], now: int, lease_ms: int) -> list[str]:
        def op(conn: Conn) -> list[str]:
            ids = json.dumps(run_ids)
            conn.execute(self.Q["renew_leases"], {"owner": owner, "ids": ids, "lease_until": now + lease_ms})
            return [r[0] for r in conn.execute(self.Q["leases_not_held"], {"owner": owner, "ids": ids}).fetchall()]

        return await self.writer.run(op)

    async def release_run(self, run_id: str, owner: str, due_at: int) -> None:
        def op(conn: Conn) -> None:
            row = conn.execute(self.Q["release_run"], {"run_id": run_id, "owner": owner, "due_at": due_at}).fetchone()
            if row is not None:
                self._notify_work(conn, due_at)
                self._free_slots(conn, row, due_at)

        await self.writer.run(op)

    def _check_lease(self, conn: Conn, run_id: str, owner: str) -> WriteOutcome | None:
        row = conn.execute(self.Q["run_lease"], {"run_id": run_id}).fetchone()
        if row is None:
            return WriteOutcome("cancelled")
        status, lease_owner = row
        if status not in _RUN_LIVE:
            return WriteOutcome("cancelled")
        if lease_owner != owner:
            return WriteOutcome("lost")
        return None

    def _write_step(self, conn: Conn, run_id: str, u: StepUpdate, now: int) -> tuple[StepRecord, bool]:
        """Upsert a step; memo states are never overwritten. Returns the stored step and whether this wrote it."""
        memo = u.status in ("completed", "failed")
        row = conn.execute(
            self.Q["upsert_step"],
            {"run_id": run_id, "step_id": u.step_id, "display_id": u.display_id, "kind": u.kind,
             "status": u.status, "attempts": u.attempts, "output": _j(u.output) if memo else None,
             "error": _j(u.error), "wake_at": u.wake_at, "now": now, "ended_at": now if memo else None,
             "race": u.race, "started": now if u.started_at is None else min(u.started_at, now)},
        ).fetchone()  # fmt: skip
        if row is None:  # a result was already recorded (first write wins): report that one
            return _step(
                conn.execute(self.Q["select_step"], {"run_id": run_id, "step_id": u.step_id}).fetchone()
            ), False
        if records_attempt(u):
            self._insert_attempt(conn, run_id, u, now)
        if memo and u.kind in ("wait_for_event", "wait_for_signal"):
            conn.execute(self.Q["delete_step_wait"], {"run_id": run_id, "step_id": u.step_id})
        return _step(row), True

    async def record_step(
        self, run_id: str, owner: str, update: StepUpdate, matcher: WaitMatcher, now: int
    ) -> WriteOutcome:
        def op(conn: Conn) -> WriteOutcome:
            bad = self._check_lease(conn, run_id, owner)
            if bad is not None and bad.status == "cancelled":
                return bad
            # A worker that lost its lease may still record a result (first write wins, so it is harmless), but
            # never a pending state: that would overwrite the new owner's view of the run.
            if bad is not None and update.status not in ("completed", "failed"):
                return bad
            step, wrote = self._write_step(conn, run_id, update, now)
            cancelled: list[str] = []
            if wrote and update.emit is not None:
                cancelled = self._ingest(conn, update.emit, matcher, now).cancelled_run_ids
            if wrote:  # not written: another execution's result won, and its logs are stored
                self._insert_run_logs(conn, run_id, update.logs, now)
            return WriteOutcome(bad.status if bad else "ok", step, tuple(cancelled))

        return await self.writer.run(op)

    async def suspend_run(
        self,
        run_id: str,
        owner: str,
        pending: list[StepUpdate],
        idle_reason: IdleReason,
        matcher: WaitMatcher,
        now: int,
        max_due_at: int | None = None,
        attempt: int | None = None,
    ) -> WriteOutcome:
        def op(conn: Conn) -> WriteOutcome:
            bad = self._check_lease(conn, run_id, owner)
            if bad is not None:
                return bad
            due_at: int | None = max_due_at
            trigger: dict[str, Any] | None = None
            cancelled: list[str] = []
            for u in pending:
                step, _ = self._write_step(conn, run_id, u, now)
                self._insert_run_logs(conn, run_id, u.logs, now)
                if step.is_memo:
                    due_at = now  # already resolved (by another writer): resume at once
                    continue
                if u.invoke is not None:
                    cancelled += self._ingest(conn, u.invoke, matcher, now).cancelled_run_ids
                if u.wait is not None and step.status == "waiting":
                    self._lock_for_wait(conn, u.wait.event_name)
                    conn.execute(self.Q["delete_step_wait"], {"run_id": run_id, "step_id": u.step_id})
                    if trigger is None:
                        row = conn.execute(self.Q["select_run"], {"run_id": run_id}).fetchone()
                        ev = conn.execute(self.Q["select_event"], {"internal_id": row[2]}).fetchone()
                        trigger = _event(ev).as_dict()
                    matched = self._first_match_since(conn, run_id, u, trigger, matcher, now)
                    if matched is not None:
                        conn.execute(
                            self.Q["complete_pending_step"],
                            {"run_id": run_id, "step_id": u.step_id, "status": "completed",
                             "output": json.dumps(matched), "error": None, "now": now},
                        )  # fmt: skip
                        due_at = now
                        continue
                    conn.execute(
                        self.Q["insert_wait"],
                        {"run_id": run_id, "step_id": u.step_id, "kind": "event", "event_name": u.wait.event_name,
                         "expression": u.wait.expression, "expires_at": u.wait.expires_at},
                    )  # fmt: skip
                if step.wake_at is not None:
                    due_at = step.wake_at if due_at is None else min(due_at, step.wake_at)
            keys = conn.execute(
                self.Q["suspend_run"],
                {
                    "run_id": run_id,
                    "due_at": due_at,
                    "idle_reason": None if due_at == now else _j(idle_reason),
                    "attempt": attempt,
                },
            ).fetchone()
            self._free_slots(conn, keys, now)
            if due_at is not None:
                self._notify_work(conn, due_at)
            return WriteOutcome("ok", cancelled_run_ids=tuple(cancelled))

        return await self.writer.run(op)

    def _first_match_since(
        self, conn: Conn, run_id: str, u: StepUpdate, trigger: dict[str, Any], matcher: WaitMatcher, now: int
    ) -> dict[str, Any] | None:
        assert u.wait is not None
        rows = conn.execute(self.Q["events_after_cursor"], {"name": u.wait.event_name, "since": u.since}).fetchall()
        for row in rows:
            candidate = _event(row).as_dict()
            if self._wait_matches(conn, run_id, "event", matcher, u.wait.expression, trigger, candidate, now):
                return candidate
        return None

    def _wait_matches(self, conn: Conn, run_id: str, kind: str, matcher: WaitMatcher, expression: str | None,
                      trigger: dict[str, Any], candidate: dict[str, Any], now: int) -> bool:  # fmt: skip
        """The matcher's answer; an expression that cannot be evaluated (the matcher raises ValueError) does not
        match, and the run's log says so (its page and ``GET /v1/runs/{id}/logs`` show it)."""
        try:
            return matcher(expression, trigger, candidate)
        except ValueError as exc:
            what = "cancel_on condition" if kind == "cancel" else "wait_for_event condition"
            message = (f"the {what} could not be evaluated for event {candidate.get('name')!r} "
                       f"({candidate.get('id')}), so it did not match: {exc}")  # fmt: skip
            line = RunLogLine(now, "WARNING", "stepline.waits", message[:RUN_LOG_MESSAGE_LIMIT])
            self._insert_run_logs(conn, run_id, RunLogs((line,)), now)
            return False

    async def wait_for_signal(
        self, run_id: str, owner: str, update: StepUpdate, signal: str, replace: bool, now: int
    ) -> WriteOutcome:
        name = SIGNAL_WAIT_PREFIX + signal

        def op(conn: Conn) -> WriteOutcome:
            bad = self._check_lease(conn, run_id, owner)
            if bad is not None:
                return bad
            self._lock_for_wait(conn, name)  # serialises with send_signal and other registrations (PostgreSQL)
            row = conn.execute(self.Q["signal_wait"], {"name": name, "now": now}).fetchone()
            if row is not None:
                wait_id, waiting_run, waiting_step = row
                if (waiting_run, waiting_step) != (run_id, update.step_id):
                    if not replace:
                        raise SignalConflict(signal, waiting_run)
                    conn.execute(self.Q["delete_wait"], {"id": wait_id})
            step, _ = self._write_step(conn, run_id, update, now)
            if not step.is_memo:
                conn.execute(self.Q["delete_step_wait"], {"run_id": run_id, "step_id": update.step_id})
                conn.execute(
                    self.Q["insert_wait"],
                    {"run_id": run_id, "step_id": update.step_id, "kind": "signal", "event_name": name,
                     "expression": None, "expires_at": update.wake_at},
                )  # fmt: skip
            return WriteOutcome("ok", step)

        return await self.writer.run(op)

    async def send_signal(self, signal: str, data: Any, now: int) -> str | None:
        name = SIGNAL_WAIT_PREFIX + signal

        def op(conn: Conn) -> str | None:
            self._lock_for_wait(conn, name)
            row = conn.execute(self.Q["signal_wait"], {"name": name, "now": now}).fetchone()
            if row is None:
                return None
            wait_id, run_id, step_id = row
            conn.execute(self.Q["delete_wait"], {"id": wait_id})
            cur = conn.execute(
                self.Q["complete_pending_step"],
                {"run_id": run_id, "step_id": step_id, "status": "completed",
                 "output": _j({"signal": signal, "data": data}), "error": None, "now": now},
            )  # fmt: skip
            if not cur.rowcount:
                return None
            conn.execute(self.Q["wake_run"], {"run_id": run_id, "now": now})
            self._notify_work(conn, now)
            return str(run_id)

        result: str | None = await self.writer.run(op)
        return result

    async def retry_run(
        self,
        run_id: str,
        owner: str,
        due_at: int,
        error: dict[str, object],
        now: int,
        logs: RunLogs | None = None,
        attempt: int | None = None,
    ) -> WriteOutcome:
        def op(conn: Conn) -> WriteOutcome:
            bad = self._check_lease(conn, run_id, owner)
            if bad is not None:
                return bad
            self._insert_run_logs(conn, run_id, logs, now)
            keys = conn.execute(
                self.Q["retry_run"],
                {"run_id": run_id, "due_at": due_at, "error": _j(error), "attempt": attempt,
                 "idle_reason": _j(retrying_reason(None, due_at, error))},
            ).fetchone()  # fmt: skip
            self._free_slots(conn, keys, now)
            self._notify_work(conn, due_at)
            return WriteOutcome("ok")

        return await self.writer.run(op)

    async def finish_run(
        self, run_id: str, owner: str | None, finish: RunFinish, matcher: WaitMatcher, now: int
    ) -> WriteOutcome:
        outcome: WriteOutcome = await self.writer.run(_FinishOp(self, run_id, owner, finish, matcher, now))
        return outcome

    def _finish_many(self, conn: Conn, ops: list[_FinishOp]) -> list[WriteOutcome]:
        """End several runs: their rows and held-back step results with one statement each where the dialect
        can, and the events their ends emit ingested together, after the last one."""
        rows = self._end_run_rows(conn, [(op.run_id, op.finish, op.now, op.owner) for op in ops])
        ended = [(op, row) for op, row in zip(ops, rows, strict=True) if row is not None]
        self._write_end_steps(conn, [(op.run_id, u, op.now) for op, _ in ended for u in op.finish.steps])
        follow_ups: list[tuple[IngestBatch, WaitMatcher, int]] = []
        whose: list[int] = []  # the op each follow-up belongs to
        outcomes: list[WriteOutcome | None] = []
        stats = StatsBatch()  # the ends' statistics, added once for the whole batch
        for i, (op, row) in enumerate(zip(ops, rows, strict=True)):
            if row is None:
                # Not ended by this call: already ended (cancelled elsewhere), or another worker holds the lease.
                bad = self._check_lease(conn, op.run_id, op.owner) if op.owner is not None else None
                outcomes.append(bad or WriteOutcome("cancelled"))
                continue
            outcomes.append(None)
            n = len(follow_ups)
            self._after_end(conn, op.run_id, row, op.finish, op.matcher, op.now, follow_ups, stats)
            whose += [i] * (len(follow_ups) - n)
        self._add_stats(conn, stats)
        cancelled: list[list[str]] = [[] for _ in ops]
        if follow_ups:
            for i, result in zip(whose, self._ingest_many(conn, follow_ups), strict=True):
                cancelled[i] += result.cancelled_run_ids
        return [o or WriteOutcome("ok", cancelled_run_ids=tuple(c)) for o, c in zip(outcomes, cancelled, strict=True)]

    def _finish(
        self,
        conn: Conn,
        run_id: str,
        finish: RunFinish,
        matcher: WaitMatcher,
        now: int,
        owner: str | None = None,
    ) -> bool:
        """End the run if it is live (and leased by ``owner``, when given); False if nothing changed."""
        (row,) = self._end_run_rows(conn, [(run_id, finish, now, owner)])
        if row is None:
            return False
        self._write_end_steps(conn, [(run_id, u, now) for u in finish.steps])
        self._after_end(conn, run_id, row, finish, matcher, now, None)
        return True

    # Dialect hooks for the multi-row statements of run ends (PostgreSQL overrides them with one statement each).
    def _end_run_rows(
        self, conn: Conn, items: list[tuple[str, RunFinish, int, str | None]]
    ) -> list[tuple[Any, ...] | None]:
        """End each run if it is live (and leased by the owner, when given): its row, or None if not ended."""
        return [
            conn.execute(
                self.Q["finish_run"],
                {"run_id": run_id, "status": finish.status, "output": _j(finish.output),
                 "error": _j(finish.error), "now": now, "owner": owner},
            ).fetchone()
            for run_id, finish, now, owner in items
        ]  # fmt: skip

    def _write_end_steps(self, conn: Conn, items: list[tuple[str, StepUpdate, int]]) -> None:
        """Store results that ended runs held back; one already recorded with another result is a conflict."""
        for run_id, u, now in items:
            step, wrote = self._write_step(conn, run_id, u, now)
            if wrote:
                self._insert_run_logs(conn, run_id, u.logs, now)
            elif (step.status, step.output) != (u.status, u.output):
                raise StepResultConflict(f"step {u.display_id!r} of run {run_id} already has another result")

    def _after_end(
        self,
        conn: Conn,
        run_id: str,
        row: tuple[Any, ...],
        finish: RunFinish,
        matcher: WaitMatcher,
        now: int,
        follow_ups: list[tuple[IngestBatch, WaitMatcher, int]] | None,
        stats: StatsBatch | None = None,
    ) -> None:
        """What a run's end does beyond its row: logs, waits, slots, the parent's invoke step, the events it emits
        (ingested here, or added to ``follow_ups`` for the caller to ingest), its statistics (added here, or to
        ``stats`` for the caller to add)."""
        self._insert_run_logs(conn, run_id, finish.logs, now)
        if finish.may_have_waits:
            conn.execute(self.Q["delete_run_waits"], {"run_id": run_id})
        parent_run_id, parent_step_id, started_at, function_id, *keys = row
        batch = StatsBatch() if stats is None else stats
        batch.ended(function_id, finish.status, started_at, now)
        if stats is None:
            self._add_stats(conn, batch)
        self._free_slots(conn, tuple(keys), now)
        if parent_run_id is not None:
            result = finish.output if finish.status == "completed" else None  # the invoked function's output
            # A failed invoke's memo is the child's error as its run-end events carry it (as Inngest resumes it).
            error = (
                None
                if finish.status == "completed"
                else (finish.event_error or finish.error or {"name": "Error", "message": finish.status})
            )
            cur = conn.execute(
                self.Q["complete_pending_step"],
                {"run_id": parent_run_id, "step_id": parent_step_id,
                 "status": "completed" if error is None else "failed",
                 "output": _j(result), "error": _j(error), "now": now},
            )  # fmt: skip
            if cur.rowcount:
                conn.execute(self.Q["wake_run"], {"run_id": parent_run_id, "now": now})
                self._notify_work(conn, now)
        if finish.follow_up.events or finish.follow_up.runs:
            if follow_ups is not None:
                follow_ups.append((finish.follow_up, matcher, now))
            else:
                self._ingest(conn, finish.follow_up, matcher, now)

    # --- retention ---
    async def prune(
        self,
        now: int,
        default_cutoff: int,
        cutoffs: dict[str, int],
        batch_size: int = 1000,
        progress: Callable[[PruneResult], None] | None = None,
    ) -> PruneResult:
        result = PruneResult()
        tell = progress or (lambda _: None)
        selections: list[tuple[str, dict[str, Any]]] = [
            ("prunable_runs_of_function", {"function_id": f, "cutoff": c}) for f, c in cutoffs.items()
        ]
        selections.append(
            ("prunable_runs_except", {"except_ids": json.dumps(sorted(cutoffs)), "cutoff": default_cutoff})
        )
        for query, params in selections:
            while True:
                runs, steps = await self.writer.run(functools.partial(self._prune_runs, query, params, batch_size))
                result.runs += runs
                result.steps += steps
                if runs:
                    tell(result)
                if runs < batch_size:
                    break
        events_params = {"cutoff": default_cutoff, "limit": batch_size}
        while n := await self.writer.run(
            functools.partial(self._delete_count, "delete_unreferenced_events", events_params)
        ):
            result.events += n
            tell(result)
            if n < batch_size:
                break
        while n := await self.writer.run(
            functools.partial(self._delete_count, "delete_expired_idempotency", {"now": now, "limit": batch_size})
        ):
            result.idempotency_keys += n
            tell(result)
            if n < batch_size:
                break
        while await self.writer.run(functools.partial(self._prune_flow, now=now, limit=batch_size)) >= batch_size:
            pass  # stale throttle/rate-limit buckets and closed debounce/batch entries
        await self.writer.run(functools.partial(self._prune_stats, now=now))
        return result

    def _delete_count(self, query: str, params: dict[str, Any], conn: Conn) -> int:
        return int(conn.execute(self.Q[query], params).rowcount)

    def _prune_runs(self, query: str, params: dict[str, Any], limit: int, conn: Conn) -> tuple[int, int]:
        ids = [r[0] for r in conn.execute(self.Q[query], {**params, "limit": limit}).fetchall()]
        if not ids:
            return 0, 0
        encoded = json.dumps(ids)
        steps = conn.execute(self.Q["delete_steps_of_runs"], {"ids": encoded}).rowcount
        conn.execute(self.Q["delete_run_waits_of_runs"], {"ids": encoded})
        conn.execute(self.Q["delete_run_logs_of_runs"], {"ids": encoded})
        self._delete_run_spans(conn, encoded)
        self._delete_attempts(conn, encoded)
        runs = conn.execute(self.Q["delete_runs"], {"ids": encoded}).rowcount
        return int(runs), int(steps)

    # --- reads ---
    async def get_run(self, run_id: str) -> RunRecord | None:
        row = self._read(lambda c: c.execute(self.Q["select_run"], {"run_id": run_id}).fetchone())
        return None if row is None else _run(row)

    async def list_runs(self, flt: RunFilter) -> list[RunRecord]:
        params = {"status": flt.status, "function_id": flt.function_id, "event_id": flt.event_id,
                  "before_id": flt.before_id, "limit": flt.limit, "app_id": flt.app_id,
                  "created_after": flt.created_after, "created_before": flt.created_before}  # fmt: skip
        # One query per leading filter, so the most selective index (ending in id) serves the page in order.
        if flt.event_id is not None:
            query = "list_runs_by_event"
        elif flt.function_id is not None:
            query = "list_runs_by_function"
        elif flt.status is not None:
            query = "list_runs_by_status"
        else:
            query = "list_runs"
        rows = self._read(lambda c: c.execute(self.Q[query], params).fetchall())
        return [_run(r) for r in rows]

    async def list_steps(self, run_id: str) -> list[StepRecord]:
        return [_step(r) for r in self._read(lambda c: c.execute(self.Q["list_steps"], {"run_id": run_id}).fetchall())]

    async def get_event(self, internal_id: str) -> StoredEvent | None:
        row = self._read(lambda c: c.execute(self.Q["select_event"], {"internal_id": internal_id}).fetchone())
        return None if row is None else _event(row)

    async def list_events(self, name: str | None, limit: int, before: str | None = None,
                          max_bytes: int = EVENT_PAGE_BYTES) -> list[StoredEvent]:  # fmt: skip
        params = {"name": name, "limit": limit, "before": before, "max_bytes": max_bytes}
        query = "list_events" if name is None else "list_events_by_name"
        return [_event(r) for r in self._read(lambda c: c.execute(self.Q[query], params).fetchall())]


class _IngestOp(MergeableOp):
    """One ingest; the writer applies the ingests of a batch together (``SqlStore._ingest_many``)."""

    __slots__ = ("batch", "matcher", "now", "store")

    def __init__(self, store: SqlStore, batch: IngestBatch, matcher: WaitMatcher, now: int) -> None:
        self.store, self.batch, self.matcher, self.now = store, batch, matcher, now

    def merge(self, conn: Conn, ops: list[Any]) -> list[Any]:
        return list(self.store._ingest_many(conn, [(op.batch, op.matcher, op.now) for op in ops]))


class _FinishOp(MergeableOp):
    """One run's end; the writer applies the ends of a batch together (``SqlStore._finish_many``)."""

    __slots__ = ("finish", "matcher", "now", "owner", "run_id", "store")

    def __init__(
        self, store: SqlStore, run_id: str, owner: str | None, finish: RunFinish, matcher: WaitMatcher, now: int
    ) -> None:
        self.store, self.run_id, self.owner, self.finish, self.matcher, self.now = (
            store, run_id, owner, finish, matcher, now)  # fmt: skip

    def merge(self, conn: Conn, ops: list[Any]) -> list[Any]:
        return list(self.store._finish_many(conn, ops))
