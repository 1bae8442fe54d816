"""Store conformance: realtime messages (stored, read by cursor, replayed per channel and topic, pruned, pushed to
other processes), the shared token secret, and the run statuses waiters read."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from stepline.storage.base import Store
from stepline.storage.records import TERMINAL_STATUSES, NewRealtimeMessage, RunFinish
from stepline.storage.sqlite.store import SQLiteStore

from .builders import MATCH, NOW, start_and_claim


def msg(channel: str, topic: str, n: int, created_at: int = NOW, size: int = 0) -> NewRealtimeMessage:
    payload = json.dumps({"kind": "data", "channel": channel, "topic": topic, "data": {"n": n, "pad": "x" * size}})
    return NewRealtimeMessage(channel, topic, "data", payload, created_at)


async def test_published_messages_get_increasing_ids_and_are_read_by_cursor(store: Store) -> None:
    assert await store.realtime_last_id() == 0
    rows = await store.publish_realtime("p1", [msg("c", "t", 1), msg("c", "u", 2)])
    more = await store.publish_realtime("p2", [msg("d", "t", 3)])
    ids = [r.id for r in rows + more]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert (rows[0].origin, rows[0].channel, rows[0].topic, rows[0].kind) == ("p1", "c", "t", "data")
    assert await store.realtime_last_id() == ids[-1]
    after = await store.realtime_messages_after(ids[0], 10)
    assert [(r.id, r.origin, json.loads(r.payload)["data"]["n"]) for r in after] == [
        (ids[1], "p1", 2),
        (ids[2], "p2", 3),
    ]
    assert [r.id for r in await store.realtime_messages_after(0, 1)] == [ids[0]]
    assert await store.realtime_message(ids[2]) == more[0]
    assert await store.realtime_message(10**9) is None


async def test_a_replay_is_the_newest_kept_messages_of_the_topics_asked_for_in_order(store: Store) -> None:
    old = await store.publish_realtime("p", [msg("job", "progress", 0, created_at=NOW - 10_000)])
    rows = await store.publish_realtime("p", [msg("job", "progress", i, created_at=NOW + i) for i in range(1, 6)])
    await store.publish_realtime("p", [msg("job", "other", 9), msg("job2", "progress", 9)])
    await store.publish_realtime("p", [msg("job", "result", 7, created_at=NOW + 7)])

    def ns(found: list) -> list[int]:  # type: ignore[type-arg]
        return [json.loads(r.payload)["data"]["n"] for r in found]

    everything = await store.realtime_replay([("job", "progress")], 0, 0, 100)
    assert ns(everything) == [0, 1, 2, 3, 4, 5]
    assert ns(await store.realtime_replay([("job", "progress")], 0, NOW, 100)) == [1, 2, 3, 4, 5]  # window
    assert ns(await store.realtime_replay([("job", "progress")], rows[2].id, 0, 100)) == [4, 5]  # since a cursor
    assert ns(await store.realtime_replay([("job", "progress")], 0, 0, 2)) == [4, 5]  # the newest, in order
    both = await store.realtime_replay([("job", "progress"), ("job", "result")], old[0].id, 0, 100)
    assert ns(both) == [1, 2, 3, 4, 5, 7]
    assert await store.realtime_replay([("nobody", "progress")], 0, 0, 100) == []


async def test_pruning_deletes_old_messages_and_ids_are_never_reused(store: Store) -> None:
    old = await store.publish_realtime("p", [msg("c", "t", i, created_at=NOW - 60_000) for i in range(3)])
    kept = await store.publish_realtime("p", [msg("c", "t", 9, created_at=NOW)])
    assert await store.prune_realtime(NOW - 1000) == 3
    assert [r.id for r in await store.realtime_messages_after(0, 10)] == [kept[0].id]
    assert await store.realtime_message(old[0].id) is None
    await store.prune_realtime(NOW + 1)  # everything
    again = await store.publish_realtime("p", [msg("c", "t", 10)])
    assert again[0].id > kept[0].id  # a subscriber's cursor stays meaningful after pruning


async def test_the_token_secret_is_made_once_and_shared_by_every_process(
    store: Store, reopen: Callable[[Store], AbstractAsyncContextManager[Store]]
) -> None:
    secret = await store.realtime_secret("jwt", NOW)
    assert len(secret) == 64 and int(secret, 16) >= 0
    assert await store.realtime_secret("jwt", NOW + 1) == secret
    async with reopen(store) as other:
        assert await other.realtime_secret("jwt", NOW + 2) == secret
        assert await other.realtime_secret("another", NOW + 2) != secret


async def test_run_statuses_for_many_runs_in_one_call(store: Store) -> None:
    live = await start_and_claim(store)
    ended = await start_and_claim(store)
    await store.finish_run(ended.run.id, "w1", RunFinish("completed", output=1), MATCH, NOW + 1)
    statuses = await store.run_statuses([live.run.id, ended.run.id, "no-such-run"] + [f"x{i}" for i in range(600)])
    assert statuses == {live.run.id: "running", ended.run.id: "completed"}
    assert statuses[ended.run.id] in TERMINAL_STATUSES
    assert await store.run_statuses([]) == {}


async def test_other_processes_learn_of_published_messages(
    store: Store, reopen: Callable[[Store], AbstractAsyncContextManager[Store]]
) -> None:
    """PostgreSQL pushes one notification per message (a large one by its id); SQLite pushes "" through the local
    wake channel (read the messages after your cursor), or nothing without one: subscribers then read by cursor
    when the database changed (data_version)."""
    async with reopen(store) as other:
        got: list[str] = []
        arrived = threading.Event()
        sqlite = isinstance(other, SQLiteStore)

        def note(payload: str) -> None:
            got.append(payload)
            if sqlite or sum(1 for p in got if p) >= 2:
                arrived.set()

        pushed = other.subscribe_realtime(note)
        try:
            if not pushed:
                before = other.data_version()
                rows = await store.publish_realtime("p", [msg("c", "t", 1), msg("c", "t", 2, size=20_000)])
                assert other.data_version() != before
                assert [r.id for r in await other.realtime_messages_after(rows[0].id - 1, 10)] == [r.id for r in rows]
                return
            if sqlite:
                last = await other.realtime_last_id()
                rows = await store.publish_realtime("p", [msg("c", "t", 1), msg("c", "t", 2, size=20_000)])
                assert await asyncio.to_thread(arrived.wait, 10)
                assert got == [""]  # one transaction: one wake-up
                assert await other.realtime_messages_after(last, 10) == rows
                return
            await asyncio.sleep(0.3)  # the listener connects
            rows = await store.publish_realtime("p", [msg("c", "t", 1), msg("c", "t", 2, size=20_000)])
            assert await asyncio.to_thread(arrived.wait, 10)
            small, large = [json.loads(p) for p in got if p]
            assert (small["id"], small["o"]) == (rows[0].id, "p")
            channel, topic, kind, payload, created_at = small["m"]
            assert (channel, topic, kind, payload, created_at) == ("c", "t", "data", rows[0].payload, NOW)
            assert large == {"id": rows[1].id, "o": "p"}  # beyond NOTIFY's 8,000 bytes: read the row
            assert (await other.realtime_message(large["id"])) == rows[1]
        finally:
            other.unsubscribe_realtime(note)
