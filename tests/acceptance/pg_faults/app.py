"""The app the PostgreSQL fault tests run: two functions (one sync, one async) of ``STEPS`` sequential steps.

Every step execution appends ``"exec <worker> <run_id> <step_id> <unix_time>"`` to the side-effect log
(``PGF_LOG``) with flush + fsync *before* it sleeps ``STEP_SECONDS`` and returns, so the log shows each time a
step's code ran (and when), including executions whose result never reached the store. When a step call raises
(e.g. the engine's ``LeaseLost``) the handler appends ``"raised:<ExceptionName> <worker> <run_id> <step_id>
<unix_time>"`` and re-raises. The worker launcher adds ``"claim <worker> <run_id> <memo> <unix_time>"`` for every
run a worker claims (see ``run_worker.py``). ``PGF_WORKER`` names the worker process.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from stepline import Context, Stepline, SyncContext

APP_ID = "pg-faults"
EVENT = "pgf/start"
STEPS = 5
STEP_SECONDS = 0.02
SYNC_SLUG = "five-steps-sync"
ASYNC_SLUG = "five-steps-async"
SLUGS = (SYNC_SLUG, ASYNC_SLUG)


def step_id(i: int) -> str:
    return f"step-{i}"


def step_value(n: int, i: int) -> int:
    return n * 100 + i


def _worker() -> str:
    return os.environ.get("PGF_WORKER", "?")


def append_lines(lines: list[tuple[str, str, str, float]]) -> None:
    """Append ``(kind, run_id, field, unix_time)`` lines for this worker in one write, with fsync."""
    text = "".join(f"{kind} {_worker()} {run_id} {fld} {at:.6f}\n" for kind, run_id, fld, at in lines)
    fd = os.open(os.environ["PGF_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())  # one small O_APPEND write: atomic between processes
        os.fsync(fd)
    finally:
        os.close(fd)


def append_log(kind: str, run_id: str, sid: str) -> None:
    append_lines([(kind, run_id, sid, time.time())])


def _sync_body(run_id: str, n: int, i: int) -> dict[str, Any]:
    append_log("exec", run_id, step_id(i))
    time.sleep(STEP_SECONDS)
    return {"value": step_value(n, i), "worker": _worker()}


async def _async_body(run_id: str, n: int, i: int) -> dict[str, Any]:
    append_log("exec", run_id, step_id(i))
    await asyncio.sleep(STEP_SECONDS)
    return {"value": step_value(n, i), "worker": _worker()}


def expected_output(n: int, workers: list[str]) -> dict[str, Any]:
    return {"n": n, "values": [step_value(n, i) for i in range(STEPS)], "workers": workers}


def _output(n: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"n": n, "values": [r["value"] for r in results], "workers": [r["worker"] for r in results]}


def make_client(store: Any) -> Stepline:
    """The app's client on ``store`` (a URL or Store), as every worker process defines it."""
    client = Stepline(APP_ID, store)

    @client.function(id=SYNC_SLUG, trigger=EVENT, retries=0)
    def five_steps_sync(ctx: SyncContext) -> dict[str, Any]:
        n = ctx.event.data["n"]
        results = []
        for i in range(STEPS):
            try:
                results.append(ctx.step.run(step_id(i), _sync_body, ctx.run_id, n, i))
            except BaseException as exc:
                append_log(f"raised:{type(exc).__name__}", ctx.run_id, step_id(i))
                raise
        return _output(n, results)

    @client.function(id=ASYNC_SLUG, trigger=EVENT, retries=0)
    async def five_steps_async(ctx: Context) -> dict[str, Any]:
        n = ctx.event.data["n"]
        results = []
        for i in range(STEPS):
            try:
                results.append(await ctx.step.run(step_id(i), _async_body, ctx.run_id, n, i))
            except BaseException as exc:
                append_log(f"raised:{type(exc).__name__}", ctx.run_id, step_id(i))
                raise
        return _output(n, results)

    return client
