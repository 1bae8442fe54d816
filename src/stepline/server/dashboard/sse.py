"""Live updates: one ``ChangeHub`` per server tells every open dashboard page when something changed.

The hub, not each client, watches the store: while at least one page listens, it reads the store's
``change_marker`` (SQLite ``PRAGMA data_version``, PostgreSQL's current snapshot: no table read) every
``poll_interval``, and at once when this process's engine notifies (a run started or ended here). When the marker
moved, it bumps a version and wakes every stream, at most once per ``min_gap``. A page then re-fetches the part of
itself that is live. No stream holds a database connection; with no page open the hub reads nothing.

Streams end when the hub closes: at the app's shutdown, or as soon as the server's shutdown probe (set by the CLI
as ``app.state.shutdown_probe``) says the server is stopping, so uvicorn does not wait on open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from stepline.core.engine import Engine
from stepline.observability import hooks

log = logging.getLogger("stepline.server.dashboard")

HEARTBEAT_SECONDS = 15.0


class ChangeHub:
    def __init__(self, engine: Engine, *, poll_interval: float = 0.25, min_gap: float = 0.3) -> None:
        self.engine = engine
        self.poll_interval = poll_interval
        self.min_gap = min_gap
        self.version = 0
        self.clients = 0
        self.closed = False
        self.checks = 0  # change_marker reads (tests check the hub is idle with no client)
        self._changed = asyncio.Event()
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown_probe: Callable[[], bool] | None = None

    # --- lifecycle ---
    @contextlib.asynccontextmanager
    async def running(self, app_state: Any = None) -> AsyncIterator[ChangeHub]:
        self._loop = asyncio.get_running_loop()
        self._app_state = app_state
        self.engine.add_listener(self.poke)
        self._task = asyncio.create_task(self._watch(), name="stepline-dashboard-hub")
        try:
            yield self
        finally:
            self.engine.remove_listener(self.poke)
            self.close()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def close(self) -> None:
        """End every stream (and refuse new ones)."""
        self.closed = True
        self._changed.set()
        self._poked.set()

    def poke(self) -> None:
        """Something changed in this process: check now (callable from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._poked.set()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._poked.set)

    def _stopping(self) -> bool:
        probe = getattr(self._app_state, "shutdown_probe", None) if self._app_state is not None else None
        return bool(probe()) if callable(probe) else False

    async def _watch(self) -> None:
        marker: object = None
        while not self.closed:
            if self.clients == 0:
                self._poked.clear()
                await self._poked.wait()  # a client joining pokes too; engine pokes with no client read nothing
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.poll_interval)
            self._poked.clear()
            if self._stopping():
                self.close()
                return
            current = await self._marker()
            if current is not None and current == marker:
                continue
            marker = current
            self.version += 1
            self._broadcast()
            await asyncio.sleep(self.min_gap)

    async def _marker(self) -> object:
        self.checks += 1
        try:
            return await self.engine.store.change_marker()
        except Exception as exc:  # the database is away: tell pages to refresh (they show the error)
            log.warning("dashboard change check failed: %s", exc)
            return None

    def _broadcast(self) -> None:
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()

    # --- streams ---
    async def changes(self, heartbeat: float = HEARTBEAT_SECONDS) -> AsyncIterator[int | None]:
        """Yield the new version after every change, and None as a heartbeat when nothing changed for a while."""
        if self.closed:
            return
        self.clients += 1
        counted = hooks.current
        if counted is not None:
            counted.stream_clients(1)
        self._poked.set()
        try:
            while not self.closed:
                changed = self._changed
                try:
                    await asyncio.wait_for(changed.wait(), heartbeat)
                except TimeoutError:
                    yield None
                    continue
                if self.closed:
                    return
                yield self.version
        finally:
            self.clients -= 1
            if counted is not None:
                counted.stream_clients(-1)


def sse_message(event: str, data: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"
