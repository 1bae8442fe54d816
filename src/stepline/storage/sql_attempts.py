"""Step attempts and invoked runs for the run page's timeline, written once for every SQL backend. Mixed into
``SqlStore``.

A step's attempts cost nothing extra when the step runs once: its ``steps`` row is that attempt (``started_at`` is
when the attempt started, ``StepUpdate.started_at``). A step attempted more than once gets one ``step_attempts``
row per attempt, written in the transaction that records the attempt's outcome (a ``retrying`` update, or the
final result of a step with ``attempts > 1``), and pruned with its run. Queries: each backend's ``attempts.sql``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from stepline.storage.records import STEP_ATTEMPT_LIMIT, ChildRun, StepAttempt, StepUpdate
from stepline.storage.sql import backend_queries

T = TypeVar("T")


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

    def _delete_attempts(self, conn: Any, encoded_ids: str) -> None:
        """Inside the prune transaction: the attempts of the runs being deleted."""
        conn.execute(self._attempt_queries["delete_step_attempts_of_runs"], {"ids": encoded_ids})

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
