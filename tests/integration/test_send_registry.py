"""A send is planned with the engine's cached function registry and the ingest transaction checks the registry
version (a local read on SQLite, in the same round trip as the events on PostgreSQL): a function registered
meanwhile by another process still gets the very next event, and a stale plan stores nothing twice."""

from __future__ import annotations

from typing import Any

from stepline import Stepline
from stepline.storage import store_from_url
from stepline.storage.base import Store
from stepline.storage.records import RunFilter


def _same_database(store: Store) -> Store:
    location = getattr(store, "url", None) or str(store.path)  # type: ignore[attr-defined]
    return store_from_url(location)


async def test_a_function_registered_by_another_process_gets_the_next_event(engine_store: Store) -> None:
    sender = Stepline("sender", engine_store)  # sends only, like a web app's process
    app = Stepline("app", _same_database(engine_store))  # another process, registering its functions later
    try:
        assert engine_store.registry_checked_in_ingest
        first = await sender.send({"name": "shop/order", "data": {"n": 1}})  # caches the (empty) registry
        assert await sender.runs_for_event(first[0]) == []

        @app.function(id="fulfil", trigger="shop/order")
        async def fulfil(ctx: Any) -> int:
            return int(ctx.event.data["n"])

        await app.ready()
        second = await sender.send({"name": "shop/order", "data": {"n": 2}})  # PostgreSQL too: not a second later
        runs = await sender.runs_for_event(second[0])
        assert [(r.function_id, r.status) for r in runs] == [("app-fulfil", "queued")]
        # the stale plan stored nothing: two events, one run
        assert len(await sender.store.list_events(None, 10)) == 2
        assert len(await sender.store.list_runs(RunFilter())) == 1
    finally:
        await app.close()
