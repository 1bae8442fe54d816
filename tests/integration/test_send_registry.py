"""A send is planned with the engine's cached function registry where the store checks the registry version in
the ingest transaction (SQLite): a function registered meanwhile by another process still gets the very next
event, and nothing is stored twice when the plan was stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stepline import Stepline
from stepline.storage.records import RunFilter
from stepline.storage.sqlite.store import SQLiteStore


async def test_a_function_registered_by_another_process_gets_the_next_event(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    sender = Stepline("sender", SQLiteStore(db))  # sends only, like a web app's process
    app = Stepline("app", SQLiteStore(db))  # another process, registering its functions later
    try:
        assert sender.store.registry_checked_in_ingest
        first = await sender.send({"name": "shop/order", "data": {"n": 1}})  # caches the (empty) registry
        assert await sender.runs_for_event(first[0]) == []

        @app.function(id="fulfil", trigger="shop/order")
        async def fulfil(ctx: Any) -> int:
            return int(ctx.event.data["n"])

        await app.ready()
        second = await sender.send({"name": "shop/order", "data": {"n": 2}})
        runs = await sender.runs_for_event(second[0])
        assert [(r.function_id, r.status) for r in runs] == [("app-fulfil", "queued")]
        # the stale plan stored nothing: two events, one run
        assert len(await sender.store.list_events(None, 10)) == 2
        assert len(await sender.store.list_runs(RunFilter())) == 1
    finally:
        await sender.close()
        await app.close()
