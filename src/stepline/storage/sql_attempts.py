"""Step attempts and invoked runs for the run page's timeline, written once for every SQL backend. Mixed into
``SqlStore``.

A step's attempts cost nothing extra when the step runs once: its ``steps`` row is that attempt (``started_at`` is
when the attempt started, ``StepUpdate.started_at``). A step attempted more than once gets one ``step_attempts``
row per attempt, written in the transaction that records the attempt's outcome (a ``retrying`` update, or the
final result of a step with ``attempts > 1``), and pruned with its run. Queries: each backend's ``attempts.sql``.

The time before a run's start costs nothing extra either when the run started at once or was only queued: a run
that waited on a gate (``GATE_KINDS``: its idle reason when it was first claimed) gets one ``run_waits`` row, written
in the claiming transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from stepline.storage.records import STEP_ATTEMPT_LIMIT, ChildRun, RunRecord, RunWait, StepAttempt, StepUpdate
from stepline.storage.sql import backend_queries

T = TypeVar("T")
# The idle reasons that hold a run before its start: flow control and a paused function (``queued`` is no gate).
HELD_BY_PAUSE = {"kind": "paused", "message": "Function resumed: the run starts now"}
GATE_KINDS = frozenset({"throttled", "debounced", "batch", "concurrency", "rate_limited", "singleton", "paused"})


def records_attempt(u: StepUpdate) -> bool:
    """Whether this write of a step reports an attempt that needs its own row (see the module's docstring)."""
    if u.started_at is None or u.kind != "run":
        return False
    return u.status == "retrying" or (u.status in ("completed", "failed") and u.attempts > 1)


class SqlAttemptsMixin:
    """Needs ``_read`` from ``SqlStore``; finds its queries by the package of the concrete store class."""

    if TYPE_CHECKING:

        def _read(self, fn: Callable[[Any], T]) -> T: ...

    @property
    def _attempt_queries(self) -> dict[str, str]:
        return backend_queries(self, "attempts.sql")

    def _insert_attempt(self, conn: Any, run_id: str, u: StepUpdate, now: int) -> None:
        """Inside the transaction that writes ``u`` (when ``records_attempt(u)``)."""
        failed = u.status != "completed"
        conn.execute(
            self._attempt_queries["insert_step_attempt"],
            {"run_id": run_id, "step_id": u.step_id, "attempt": max(u.attempts, 1),
             "status": "failed" if failed else "completed", "started_at": min(u.started_at or now, now),
             "ended_at": now, "error": json.dumps(u.error) if failed and u.error is not None else None,
             "retry_at": u.wake_at if u.status == "retrying" else None},
        )  # fmt: skip

    def _record_waits(self, conn: Any, started: list[RunRecord], now: int) -> None:
        """Inside the transaction that first claims ``started``: a row for each that waited on a gate."""
        rows = [{"run_id": r.id, "kind": r.idle_reason["kind"], "since": min(r.created_at, now), "until": now}
                for r in started if r.idle_reason is not None and r.idle_reason.get("kind") in GATE_KINDS]  # fmt: skip
        for row in rows:
            conn.execute(self._attempt_queries["insert_run_wait"], row)

    def _mark_held_by_pause(self, conn: Any, function_id: str) -> None:
        """Inside the transaction that resumes ``function_id``: its runs that the pause kept from starting (and
        nothing else) say so, so their first claim records a ``paused`` wait."""
        conn.execute(self._attempt_queries["mark_held_by_pause"],
                     {"function_id": function_id, "idle_reason": json.dumps(HELD_BY_PAUSE)})  # fmt: skip

    def _delete_attempts(self, conn: Any, encoded_ids: str) -> None:
        """Inside the prune transaction: the attempts and waits of the runs being deleted."""
        conn.execute(self._attempt_queries["delete_step_attempts_of_runs"], {"ids": encoded_ids})
        conn.execute(self._attempt_queries["delete_run_waits_of_runs"], {"ids": encoded_ids})

    async def get_run_wait(self, run_id: str) -> RunWait | None:
        query = self._attempt_queries["get_run_wait"]
        row = self._read(lambda c: c.execute(query, {"run_id": run_id}).fetchone())
        return None if row is None else RunWait(str(row[0]), int(row[1]), int(row[2]))

    async def list_run_waits(self, run_ids: list[str]) -> dict[str, RunWait]:
        if not run_ids:
            return {}
        query, ids = self._attempt_queries["list_run_waits"], json.dumps(run_ids)
        rows = self._read(lambda c: c.execute(query, {"ids": ids}).fetchall())
        return {str(rid): RunWait(str(kind), int(since), int(until)) for rid, kind, since, until in rows}

    async def list_step_attempts(self, run_id: str, limit: int = STEP_ATTEMPT_LIMIT) -> list[StepAttempt]:
        query = self._attempt_queries["list_step_attempts"]
        rows = self._read(lambda c: c.execute(query, {"run_id": run_id, "limit": limit}).fetchall())
        return [StepAttempt(str(sid), int(n), str(status), int(start), int(end), json.loads(err) if err else None,
                            None if retry is None else int(retry))
                for sid, n, status, start, end, err, retry in rows]  # fmt: skip

    async def list_child_runs(self, run_id: str, limit: int = 200) -> list[ChildRun]:
        query = self._attempt_queries["list_child_runs"]
        rows = self._read(lambda c: c.execute(query, {"run_id": run_id, "limit": limit}).fetchall())
        return [ChildRun(str(rid), None if sid is None else str(sid)) for rid, sid in rows]
