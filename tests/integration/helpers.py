"""Small helpers for engine integration tests (real SQLite store, fake clock)."""

from __future__ import annotations

import datetime as dt

from stepline import FakeClock, Stepline
from stepline.storage.records import RunFilter, RunRecord, StepRecord


async def drain(client: Stepline) -> None:
    """Execute everything due now."""
    await client.ready()
    worker = client.worker()
    try:
        await worker.run_until_idle()
    finally:
        worker.close()


async def advance(client: Stepline, clock: FakeClock, seconds: float) -> None:
    clock.advance(dt.timedelta(seconds=seconds))
    await drain(client)


async def runs(client: Stepline, function: str | None = None) -> list[RunRecord]:
    fid = None if function is None else f"{client.app_id}-{function}"
    return list(reversed(await client.store.list_runs(RunFilter(function_id=fid, limit=1000))))


async def only_run(client: Stepline, function: str | None = None) -> RunRecord:
    found = await runs(client, function)
    assert len(found) == 1, found
    return found[0]


async def steps(client: Stepline, run_id: str) -> list[StepRecord]:
    return await client.store.list_steps(run_id)
