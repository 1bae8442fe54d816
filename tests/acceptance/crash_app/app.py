"""The app the crash tests run: two functions (one sync, one async) of ``STEPS`` sequential steps.

Every step execution appends ``"exec <worker> <run_id> <step_id>"`` to the side-effect log (``CRASH_APP_LOG``)
with flush + fsync *before* it sleeps ``STEP_SECONDS`` and returns, so the log shows each time a step's code
ran, including runs whose result never reached the store. When a step call raises (e.g. the engine's
``LeaseLost`` signal in a worker that lost its lease) the handler appends
``"raised:<ExceptionName> <worker> <run_id> <step_id>"`` and re-raises.

Optional gate (used by the pause test): with ``CRASH_APP_GATE_AT=k`` and ``CRASH_APP_GATE_FILE=path``, steps with
index >= k wait (before doing anything) until that file exists.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from stepline import Context, Stepline, SyncContext

APP_ID = "crash-app"
EVENT = "crash/start"
STEPS = 8
STEP_SECONDS = 0.15
SYNC_SLUG = "eight-steps-sync"
ASYNC_SLUG = "eight-steps-async"


def step_id(i: int) -> str:
    return f"step-{i}"


def step_value(n: int, i: int) -> int:
    return n * 100 + i


def _worker() -> str:
    return os.environ.get("CRASH_APP_WORKER", "?")


def append_log(kind: str, run_id: str, sid: str) -> None:
    line = f"{kind} {_worker()} {run_id} {sid}\n"
    fd = os.open(os.environ["CRASH_APP_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: atomic between processes
        os.fsync(fd)
    finally:
        os.close(fd)


def _gate_closed(i: int) -> bool:
    gate_at = os.environ.get("CRASH_APP_GATE_AT")
    if gate_at is None or i < int(gate_at):
        return False
    return not Path(os.environ["CRASH_APP_GATE_FILE"]).exists()


def _sync_body(run_id: str, n: int, i: int) -> dict[str, Any]:
    while _gate_closed(i):
        time.sleep(0.01)
    append_log("exec", run_id, step_id(i))
    time.sleep(STEP_SECONDS)
    return {"value": step_value(n, i), "worker": _worker()}


async def _async_body(run_id: str, n: int, i: int) -> dict[str, Any]:
    while _gate_closed(i):
        await asyncio.sleep(0.01)
    append_log("exec", run_id, step_id(i))
    await asyncio.sleep(STEP_SECONDS)
    return {"value": step_value(n, i), "worker": _worker()}


def _output(n: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"n": n, "values": [r["value"] for r in results], "workers": [r["worker"] for r in results]}


def make_client(store: Any) -> Stepline:
    """The app's client on ``store`` (a path or Store); the test process and the workers define the same app."""
    client = Stepline(APP_ID, store)

    @client.function(id=SYNC_SLUG, trigger=EVENT, retries=0)
    def eight_steps_sync(ctx: SyncContext) -> dict[str, Any]:
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
    async def eight_steps_async(ctx: Context) -> dict[str, Any]:
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
