"""``Store`` methods for cron schedules, written once for every SQL backend. Mixed into ``SqlStore``.

``cron_state`` holds, per (function, cron expression), the last scheduled time fired. A scheduled time fires
when the conditional upsert moves ``last_fire`` forward to it; the run is stored in the same transaction, so of
several workers racing one scheduled time exactly one starts a run.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from stepline.storage.records import IngestBatch, IngestResult, WaitMatcher
from stepline.storage.sql import Conn

if TYPE_CHECKING:
    from stepline.storage.writer import GroupCommitWriter


class SqlCronMixin:
    """Needs what ``SqlStore`` provides: the dialect's queries ``Q``, ``writer`` and ``_ingest``."""

    Q: dict[str, str]

    if TYPE_CHECKING:

        @property
        def writer(self) -> GroupCommitWriter: ...

        def _ingest(self, conn: Conn, batch: IngestBatch, matcher: WaitMatcher, now: int) -> IngestResult: ...

    async def init_cron_schedules(self, function_id: str, initial: dict[str, int]) -> dict[str, int]:
        def op(conn: Conn) -> dict[str, int]:
            conn.execute(
                self.Q["delete_cron_state_except"],
                {"function_id": function_id, "keep": json.dumps(sorted(initial))},
            )
            for cron, last_fire in sorted(initial.items()):
                conn.execute(
                    self.Q["insert_cron_state"], {"function_id": function_id, "cron": cron, "last_fire": last_fire}
                )
            rows = conn.execute(self.Q["cron_state_of_function"], {"function_id": function_id}).fetchall()
            return {str(cron): int(last_fire) for cron, last_fire in rows}

        return await self.writer.run(op)

    async def fire_cron(
        self, function_id: str, cron: str, scheduled_ms: int, batch: IngestBatch, matcher: WaitMatcher, now: int
    ) -> bool:
        def op(conn: Conn) -> bool:
            row = conn.execute(
                self.Q["advance_cron_state"], {"function_id": function_id, "cron": cron, "scheduled": scheduled_ms}
            ).fetchone()
            if row is None:
                return False  # this scheduled time (or a later one) was fired already
            self._ingest(conn, batch, matcher, now)
            return True

        return await self.writer.run(op)
