"""The server's worker: claims due runs of every function served over HTTP and calls their apps.

It is the in-process ``Worker`` (claims, leases, wake-ups, retention) configured with the HTTP executor and with
``HttpFunctions`` as its function source: whatever apps have synced, on any node sharing the store, read from the
registry before each claim.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from stepline.core.function import FunctionSpec
from stepline.core.worker import Worker
from stepline.server.app_calls import app_origin
from stepline.server.functions import HttpFunction
from stepline.server.http_executor import HttpExecutor
from stepline.server.state import ServerState

RUNS_PER_CALL_SLOT = 3


class HttpFunctions:
    """The registry's HTTP functions, and the per-app claim limit: at most ``RUNS_PER_CALL_SLOT`` runs per call slot
    of an app (``max_calls_per_app`` per app origin) at once. That keeps the app's slots busy while its runs record
    their steps between calls, and no more: a node does not hold leases on runs it cannot call yet while other
    ``stepline start`` nodes sharing the database are idle, and one slow app's backlog does not keep other apps'
    runs from being claimed. ``per_app=False``: one limit (the worker's ``concurrency``) for all apps."""

    def __init__(self, st: ServerState, *, per_app: bool = True) -> None:
        self.st = st
        self.per_app = per_app
        self.per_app_limit = RUNS_PER_CALL_SLOT * st.config.max_calls_per_app
        self.functions: dict[str, HttpFunction] = {}
        self.concurrency: int | None = self.per_app_limit if per_app else None
        self._origin: dict[str, str] = {}  # function id -> app origin
        self._apps: frozenset[str] = frozenset()  # the origins of all functions

    async def refresh(self) -> None:
        specs = await self.st.engine.refresh_registry()
        functions = {}
        for spec in specs.values():
            fn = HttpFunction.from_spec(spec)
            if fn is not None:
                functions[fn.id] = fn
        if functions != self.functions:
            self._origin = {fid: app_origin(fn.url) for fid, fn in functions.items()}
            self._apps = frozenset(self._origin.values())
            if self.per_app:
                self.concurrency = self.per_app_limit * max(1, len(self._apps))
            self.functions = functions

    def claimable(self, active: Iterable[str], free: int) -> tuple[list[str] | None, int]:
        if not self.per_app or not self._origin or free <= 0:
            return None, free  # no functions yet: the claim refreshes them
        busy = collections.Counter(self._origin.get(fid) for fid in active)
        open_apps = {o for o in self._apps if busy[o] < self.per_app_limit}
        if len(open_apps) == len(self._apps):
            return None, min(free, *(self.per_app_limit - busy[o] for o in open_apps))
        if not open_apps:
            return [], 0
        room = min(free, *(self.per_app_limit - busy[o] for o in open_apps))
        return [fid for fid, o in self._origin.items() if o in open_apps], room

    def cron_specs(self) -> list[FunctionSpec]:
        return [f.spec for f in self.functions.values()]


class HttpWorker(Worker):
    """A ``Worker`` configured for the server: ``HttpFunctions`` and ``HttpExecutor`` (no behaviour of its own).
    ``concurrency=N`` replaces the per-app claim limit with one limit of N runs for all apps."""

    def __init__(self, st: ServerState, **options: Any) -> None:
        self.st = st
        source = HttpFunctions(st, per_app="concurrency" not in options)
        options.setdefault("concurrency", source.per_app_limit)
        super().__init__(st.engine, source=source, executor=lambda owner: HttpExecutor(st, owner), **options)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HttpWorker]:
        task = asyncio.create_task(self.run(), name="stepline-http-worker")
        try:
            yield self
        finally:
            self.stop()
            await task
