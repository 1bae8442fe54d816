"""The server's worker: claims due runs of every function served over HTTP and calls their apps.

It is the in-process ``Worker`` (claims, leases, wake-ups, retention) with the HTTP executor, and with its
function set read from the registry: whatever apps have synced, on any node sharing the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from stepline.core.function import FunctionSpec
from stepline.core.worker import Worker
from stepline.server.functions import HttpFunction
from stepline.server.http_executor import HttpExecutor
from stepline.server.state import ServerState

RUNS_PER_CALL_SLOT = 3


class HttpWorker(Worker):
    """``concurrency`` (runs claimed at once) is, unless given, ``RUNS_PER_CALL_SLOT`` runs per call slot of every
    app (``max_calls_per_app`` per app origin): enough to keep the slots busy while runs record their steps
    between calls, and no more, so a node does not hold leases on runs it cannot call yet while other
    ``stepline start`` nodes sharing the database are idle."""

    def __init__(self, st: ServerState, **options: Any) -> None:
        self._fixed_concurrency = "concurrency" in options
        options.setdefault("concurrency", RUNS_PER_CALL_SLOT * st.config.max_calls_per_app)
        super().__init__(st.engine, [], **options)
        self.st = st
        self.executor = HttpExecutor(st, self.owner)  # type: ignore[assignment]

    async def _refresh_functions(self) -> None:
        specs = await self.engine.refresh_registry()
        functions = {}
        for spec in specs.values():
            fn = HttpFunction.from_spec(spec)
            if fn is not None:
                functions[fn.id] = fn
        current: dict[str, object] = dict(self.functions)
        if functions != current:
            self.functions = functions  # type: ignore[assignment]
            if not self._fixed_concurrency:
                apps = {urlsplit(fn.url)[:2] for fn in functions.values()}
                self.concurrency = RUNS_PER_CALL_SLOT * self.st.config.max_calls_per_app * max(1, len(apps))

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
