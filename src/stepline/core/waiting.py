"""Waiting for runs to end without a polling query per waiter (``client.wait_for_run``, ``GET /v1/runs/{id}?wait=``).

Every waiter of a process registers the runs it waits for here. They learn that a run ended two ways:

- **at once** when this process ended it: ``Engine.end_run``, ``cancel_run`` and ``announce_cancellations`` call
  ``ended``, which settles the run's waiters without reading anything;
- **from the store** for runs other processes or nodes end: while anyone waits, one watcher per event loop reads the
  store's ``change_marker`` every ``poll_interval`` (SQLite ``PRAGMA data_version``, PostgreSQL's snapshot: no
  table read) and, only when it moved, the statuses of every waited run in one query (``Store.run_statuses``).

So the cost is one cheap marker read per interval and process, and one query per change, whatever the number of
waiters; a waiter that leaves (its client disconnected) costs nothing afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from stepline.core.loops import call_in_loop
from stepline.storage.base import Store
from stepline.storage.records import TERMINAL_STATUSES

log = logging.getLogger("stepline.waiting")


class _Waiter:
    __slots__ = ("event", "loop", "pending")

    def __init__(self, run_ids: set[str], loop: asyncio.AbstractEventLoop) -> None:
        self.pending = run_ids
        self.loop = loop
        self.event = asyncio.Event()


class RunWaiters:
    def __init__(self, store: Store, *, poll_interval: float | None = None) -> None:
        self.store = store
        self.poll_interval = poll_interval if poll_interval is not None else store.marker_poll_seconds
        self._by_run: dict[str, set[_Waiter]] = {}
        self._watchers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self.checks = 0  # status queries made (tests: none while nothing changes)

    @property
    def waiting(self) -> int:
        """Waiters registered now."""
        return len({w for ws in self._by_run.values() for w in ws})

    def ended(self, run_ids: Iterable[str]) -> None:
        """These runs ended (in this process): settle their waiters. Callable from any thread."""
        for run_id in run_ids:
            for w in list(self._by_run.get(run_id, ())):
                self._settle(w, run_id)

    def _settle(self, w: _Waiter, run_id: str) -> None:
        w.pending.discard(run_id)
        if not w.pending:
            call_in_loop(w.loop, w.event.set)

    async def wait(self, run_ids: Iterable[str], timeout: float, stop: asyncio.Event | None = None) -> bool:
        """Wait until every run of ``run_ids`` has ended (True), ``timeout`` seconds passed or ``stop`` is set
        (False). The caller reads the runs afterwards. Runs that have already ended count as ended."""
        ids = set(run_ids)
        if not ids:
            return True
        loop = asyncio.get_running_loop()
        w = _Waiter(set(ids), loop)
        for run_id in ids:
            self._by_run.setdefault(run_id, set()).add(w)
        try:
            statuses = await self.store.run_statuses(sorted(ids))  # ended before we registered
            for run_id in ids:
                if statuses.get(run_id) in TERMINAL_STATUSES:
                    self._settle(w, run_id)
            if w.event.is_set() or not w.pending:
                return True
            self._ensure_watcher(loop)
            waits = [asyncio.ensure_future(w.event.wait())]
            if stop is not None:
                waits.append(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in waits:
                    f.cancel()
            return w.event.is_set()
        finally:
            for run_id in ids:
                ws = self._by_run.get(run_id)
                if ws is not None:
                    ws.discard(w)
                    if not ws:
                        del self._by_run[run_id]

    def _ensure_watcher(self, loop: asyncio.AbstractEventLoop) -> None:
        task = self._watchers.get(loop)
        if task is None or task.done():
            self._watchers[loop] = loop.create_task(self._watch(loop), name="stepline-run-waiters")

    def _waited_on(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        return [run_id for run_id, ws in self._by_run.items() if any(w.loop is loop for w in ws)]

    async def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        marker: object = None
        try:
            while True:
                await asyncio.sleep(self.poll_interval)
                if not self._waited_on(loop):
                    return  # the next waiter starts another
                try:
                    current = await self.store.change_marker()
                    if current is not None and current == marker:
                        continue
                    marker = current
                    ids = self._waited_on(loop)
                    self.checks += 1
                    statuses = await self.store.run_statuses(ids)
                except Exception as exc:  # the database is away: try again at the next interval
                    log.warning("checking waited runs failed: %s", exc)
                    marker = None
                    continue
                self.ended(run_id for run_id, status in statuses.items() if status in TERMINAL_STATUSES)
        finally:
            if self._watchers.get(loop) is asyncio.current_task():
                del self._watchers[loop]
