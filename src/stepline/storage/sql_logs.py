"""Run logs, written once for every SQL backend. Mixed into ``SqlStore``.

Log lines never get a transaction of their own: ``SqlStore`` calls ``_insert_run_logs`` inside the transaction of
the step, suspension, retry or run end they precede (one statement per write, whatever the number of lines, plus
an index read of the run's last line). A run keeps at most ``RUN_LOG_LIMIT`` lines; the records beyond are counted
in one more line (seq ``RUN_LOG_LIMIT + 1``), which later writes update. Queries: each backend's ``queries.sql``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from stepline.storage.records import RUN_LOG_LIMIT, RunLogLine, RunLogs
from stepline.storage.sql import Conn

T = TypeVar("T")
DROPPED_LOGGER = "stepline"


def dropped_message(count: int) -> str:
    return f"{count} more records dropped (a run keeps at most {RUN_LOG_LIMIT} log records)"


def _dropped_count(message: str) -> int:
    head = message.split(" ", 1)[0]
    return int(head) if head.isdigit() else 0


class SqlLogsMixin:
    """Needs ``Q`` and ``_read`` from ``SqlStore``."""

    if TYPE_CHECKING:
        Q: dict[str, str]

        def _read(self, fn: Callable[[Conn], T]) -> T: ...

        def _lock_key(self, conn: Conn, key: str, shared: bool = False) -> None: ...

    def _insert_run_logs(self, conn: Conn, run_id: str, logs: RunLogs | None, now: int) -> None:
        """Append the lines to the run's log (in the caller's transaction), up to the per-run limit."""
        if logs is None or (not logs.lines and not logs.dropped):
            return
        # Parallel steps of one run may write at once (PostgreSQL commits on several connections): one at a time
        # reads the last seq and appends after it.
        self._lock_key(conn, f"run-logs:{run_id}")
        last = conn.execute(self.Q["last_run_log"], {"run_id": run_id}).fetchone()
        after = 0 if last is None else int(last[0])
        room = max(0, RUN_LOG_LIMIT - after)
        kept = logs.lines[:room]
        if kept:
            rows = [[line.ts, line.level, line.logger, line.message, line.step_id] for line in kept]
            conn.execute(self.Q["insert_run_logs"], {"run_id": run_id, "after": after, "lines": json.dumps(rows)})
        dropped = len(logs.lines) - len(kept) + logs.dropped
        if dropped:
            before = _dropped_count(last[1]) if last is not None and after > RUN_LOG_LIMIT else 0
            conn.execute(
                self.Q["upsert_run_log"],
                {"run_id": run_id, "seq": RUN_LOG_LIMIT + 1, "ts": now, "level": "WARNING",
                 "logger": DROPPED_LOGGER, "message": dropped_message(before + dropped)},
            )  # fmt: skip

    async def list_run_logs(self, run_id: str, limit: int = RUN_LOG_LIMIT + 1) -> list[RunLogLine]:
        query = self.Q["list_run_logs"]
        rows = self._read(lambda c: c.execute(query, {"run_id": run_id, "limit": limit}).fetchall())
        return [RunLogLine(int(ts), str(level), str(logger), str(message), step_id, int(seq))
                for seq, ts, level, logger, message, step_id in rows]  # fmt: skip
