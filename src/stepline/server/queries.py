"""Reads and bulk actions the REST API (``rest_api.py``) and the dashboard (``dashboard/``) share: runs paged
through in full, a page of events, which app a function belongs to, a bulk cancellation. No HTTP here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from stepline.core.engine import PAUSED_REASON
from stepline.core.events import StoredEvent
from stepline.core.expressions import Bindings, Expression, ExpressionError
from stepline.core.function import FunctionSpec
from stepline.core.ids import new_ulid
from stepline.server.state import ServerState
from stepline.storage.base import Store
from stepline.storage.records import CancellationRecord, RunFilter, RunRecord
from stepline.storage.states import IdleReason

log = logging.getLogger("stepline.server.rest")

LIVE = ("queued", "running")


class AppIndex:
    """Which app a function id belongs to: the registry first, else the longest known app id it starts with."""

    def __init__(self, specs: dict[str, FunctionSpec], app_ids: set[str], paused: frozenset[str] = frozenset()) -> None:
        self.specs = specs
        self.app_ids = sorted(app_ids | {s.app_id for s in specs.values()}, key=len, reverse=True)
        self.paused = paused  # paused functions: their live runs wait with the reason "function paused"

    @classmethod
    async def load(cls, st: ServerState) -> AppIndex:
        specs = await st.engine.refresh_registry()
        return cls(specs, {a.app_id for a in await st.engine.store.list_apps() if a.app_id},
                   await st.engine.refresh_paused())  # fmt: skip

    def idle_reason(self, run: RunRecord, now: int) -> IdleReason | None:
        """Why a run has no work running (None while it executes, or once it ended, unless it was skipped)."""
        live = run.status in LIVE
        if live and run.lease_owner is not None and (run.lease_expires_at or 0) > now:
            return None
        if live and run.function_id in self.paused:
            return PAUSED_REASON
        return run.idle_reason if live or run.status == "skipped" else None

    def of(self, function_id: str) -> str | None:
        spec = self.specs.get(function_id)
        if spec is not None:
            return spec.app_id
        return next((a for a in self.app_ids if function_id.startswith(f"{a}-")), None)


async def all_runs(st: ServerState, flt: RunFilter, page_size: int = 500) -> list[RunRecord]:
    out: list[RunRecord] = []
    before = flt.before_id
    while True:
        page = await st.engine.store.list_runs(RunFilter(
            status=flt.status, function_id=flt.function_id, event_id=flt.event_id, app_id=flt.app_id,
            created_after=flt.created_after, created_before=flt.created_before, limit=page_size,
            before_id=before))  # fmt: skip
        out += page
        if len(page) < page_size:
            return out
        before = page[-1].id


async def events_page(store: Store, name: str | None, limit: int, before: str | None, *,
                      include_internal: bool = False) -> tuple[list[StoredEvent], bool]:  # fmt: skip
    """A page of events (REST API and dashboard) and whether more come after it: the store ends a page early when
    its events' data would pass a size budget, so a short page may still have more behind it. ``name``: an exact
    name, or a pattern with ``*`` (``app/*``); the engine's own events only when asked for (or named)."""
    found = await store.find_events(name, limit + 1, before, include_internal=include_internal)
    page = found[:limit]
    if len(found) > limit:
        return page, True
    more = bool(page) and bool(await store.find_events(name, 1, page[-1].internal_id,
                                                       include_internal=include_internal))  # fmt: skip
    return page, more


async def bulk_cancel(st: ServerState, app_id: str, function_id: str, after: int | None, before: int,
                      expression: Expression | None, by: str = "bulk cancellation",
                      statuses: Sequence[str] = LIVE) -> CancellationRecord:  # fmt: skip
    """Cancel the live runs (``statuses``) of ``function_id`` created in ``[after, before]`` (whose trigger event
    matches ``expression``) and record the cancellation (REST API and dashboard)."""
    cancellation_id = new_ulid()
    candidates: list[RunRecord] = []
    for status in statuses:
        candidates += await all_runs(st, RunFilter(status=status, function_id=function_id, created_after=after,
                                                    created_before=before + 1))  # fmt: skip
    cancelled = 0
    failures: list[str] = []
    for run in sorted(candidates, key=lambda r: r.id):
        if expression is not None:
            ev = await st.engine.store.get_event(run.event_id)
            if ev is None or not await _if_matches(expression, ev.as_dict(), failures):
                continue
        if await st.engine.cancel_run(run.id, f"cancelled by {by} {cancellation_id}"):
            cancelled += 1
    if failures:
        log.warning("%s %s: the if expression could not be evaluated for %d run(s), which were not cancelled; "
                    "first error: %s", by, cancellation_id, len(failures), failures[0])  # fmt: skip
    record = CancellationRecord(cancellation_id, app_id, function_id, after, before,
                                expression.source if expression else None, cancelled,
                                st.engine.clock.now_ms())  # fmt: skip
    await st.engine.store.save_cancellation(record)
    return record


async def _if_matches(expression: Expression, event: dict[str, Any], failures: list[str]) -> bool:
    """Whether a bulk cancellation's ``if`` holds for a run's event; a failure other than a missing field counts as
    no match and is added to ``failures``. Expressions with comprehensions are evaluated off the event loop."""
    try:
        bindings = Bindings({"event": event})
        if expression.isolated:
            return await asyncio.to_thread(expression.check, bindings)
        return expression.check(bindings)
    except ExpressionError as exc:
        if not exc.missing_key:
            failures.append(str(exc))
        return False
