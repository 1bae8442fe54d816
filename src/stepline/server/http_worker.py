"""The server's worker: claims due runs of every function served over HTTP and calls their apps.

It is the in-process ``Worker`` (claims, leases, wake-ups, retention) with the HTTP executor, and with its
function set read from the registry: whatever apps have synced, on any node sharing the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from stepline.core.function import FunctionSpec
from stepline.core.worker import Worker
from stepline.server.app_calls import app_origin
from stepline.server.functions import HttpFunction
from stepline.server.http_executor import HttpExecutor
from stepline.server.state import ServerState

RUNS_PER_CALL_SLOT = 3


class HttpWorker(Worker):
    """Runs are claimed per app: at most ``RUNS_PER_CALL_SLOT`` runs per call slot of an app (``max_calls_per_app``
    per app origin) at once. That keeps the app's slots busy while its runs record their steps between calls, and
    no more: a node does not hold leases on runs it cannot call yet while other ``stepline start`` nodes sharing
    the database are idle, and one slow app's backlog does not keep other apps' runs from being claimed.
    ``concurrency=N`` replaces this with one limit of N runs for all apps."""

    def __init__(self, st: ServerState, **options: Any) -> None:
        self._per_app = "concurrency" not in options
        self._per_app_limit = RUNS_PER_CALL_SLOT * st.config.max_calls_per_app
        options.setdefault("concurrency", self._per_app_limit)
        super().__init__(st.engine, [], **options)
        self.st = st
        self.executor = HttpExecutor(st, self.owner)  # type: ignore[assignment]
        self._origin: dict[str, str] = {}  # function id -> app origin
        self._apps: frozenset[str] = frozenset()  # the origins of all functions

    async def _refresh_functions(self) -> None:
        specs = await self.engine.refresh_registry()
        functions = {}
        for spec in specs.values():
            fn = HttpFunction.from_spec(spec)
            if fn is not None:
                functions[fn.id] = fn
        current: dict[str, object] = dict(self.functions)
        if functions != current:
            self._origin = {fid: app_origin(fn.url) for fid, fn in functions.items()}
            self._apps = frozenset(self._origin.values())
            if self._per_app:
                self.concurrency = self._per_app_limit * max(1, len(self._apps))
            self.functions = functions  # type: ignore[assignment]

    def _claimable(self) -> tuple[list[str], int]:
        functions, free = super()._claimable()
        if not self._per_app or not self._origin or free <= 0:
            return functions, free  # no functions yet: the claim refreshes them
        busy = collections.Counter(self._origin.get(fid) for fid in self._active_fn.values())
        open_apps = {o for o in self._apps if busy[o] < self._per_app_limit}
        if len(open_apps) == len(self._apps):
            return functions, min(free, *(self._per_app_limit - busy[o] for o in open_apps))
        if not open_apps:
            return [], 0
        room = min(free, *(self._per_app_limit - busy[o] for o in open_apps))
        return [fid for fid, o in self._origin.items() if o in open_apps and fid not in self.engine.paused], room

    def _function_specs(self) -> list[FunctionSpec]:
        return [f.spec for f in self.functions.values() if isinstance(f, HttpFunction)]

    async def run_until_idle(self, max_rounds: int = 10_000) -> None:
        await self._refresh_functions()  # so that cron functions synced since the last claim are scheduled
        await super().run_until_idle(max_rounds)

    async def _claim_and_spawn(self) -> int:
        await self._refresh_functions()
        return await super()._claim_and_spawn()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HttpWorker]:
        task = asyncio.create_task(self.run(), name="stepline-http-worker")
        try:
            yield self
        finally:
            self.stop()
            await task
