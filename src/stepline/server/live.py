"""The server's long requests: waits for run results (``GET /v1/runs/{id}?wait=``) and realtime subscriptions.

At most ``max_waits`` waiting requests per node (more get 429 with ``Retry-After``). At shutdown (the CLI's
``app.state.shutdown_probe``, read every ``probe_interval``; or the app's lifespan ending) every waiter answers at
once with the run's current state and every subscription ends with a ``closing`` message, so uvicorn, which waits
for open requests before it stops, is not held up by them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from stepline.core.engine import Engine

DEFAULT_MAX_WAITS = 1000
RETRY_AFTER_SECONDS = 1


class TooManyWaits(Exception):
    pass


class LiveRequests:
    def __init__(self, engine: Engine, max_waits: int = DEFAULT_MAX_WAITS, probe_interval: float = 0.2) -> None:
        self.engine = engine
        self.max_waits = max_waits
        self.probe_interval = probe_interval
        self.waits = 0
        self.stopping = asyncio.Event()

    @contextlib.contextmanager
    def wait_slot(self) -> Iterator[None]:
        """A waiting request's place; raises TooManyWaits when the node has ``max_waits`` already."""
        if self.waits >= self.max_waits:
            raise TooManyWaits(f"this server already has {self.max_waits} waiting requests; try again shortly")
        self.waits += 1
        try:
            yield
        finally:
            self.waits -= 1

    def stop(self) -> None:
        self.stopping.set()
        self.engine.realtime.close()

    @contextlib.asynccontextmanager
    async def running(self, app_state: Any) -> AsyncIterator[LiveRequests]:
        self.engine.realtime.reopen()
        watcher = asyncio.create_task(self._watch(app_state), name="stepline-live-requests")
        try:
            yield self
        finally:
            self.stop()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, app_state: Any) -> None:
        event = getattr(app_state, "shutdown_event", None)
        if isinstance(event, asyncio.Event):  # the CLI's server says when it stops: nothing to poll
            await event.wait()
            self.stop()
            return
        while not self.stopping.is_set():
            await asyncio.sleep(self.probe_interval)
            probe = getattr(app_state, "shutdown_probe", None)
            if callable(probe) and probe():
                self.stop()
