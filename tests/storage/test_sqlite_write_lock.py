"""SQLite: the writers of several processes on one file queue on ``<db>-writelock`` (``SQLiteStore``'s ``WriteLock``)
instead of sleeping in SQLite's busy handler; a writer that does not take the lock still meets SQLite's own."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from pathlib import Path

from stepline.storage.sqlite.store import SQLiteStore


async def test_a_write_waits_for_the_holder_of_the_write_lock_and_goes_on_when_it_lets_go(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        assert await store.take_cluster_lease("a", "me", 1_000, 10_000) is not None
        lock = tmp_path / "s.db-writelock"
        assert lock.exists()  # the writer took it for that write
        fd = os.open(lock, os.O_RDWR)  # another process's writer, as far as flock is concerned
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            write = asyncio.ensure_future(store.take_cluster_lease("b", "me", 1_000, 10_000))
            done, _ = await asyncio.wait([write], timeout=0.3)
            assert not done  # queued behind the holder, not committed beside it
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        assert await asyncio.wait_for(write, 10) is not None
    finally:
        await store.close()


async def test_a_writer_without_the_lock_still_meets_sqlites_own(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # e.g. the sqlite3 shell: SQLite's write lock, not the file lock
        write = asyncio.ensure_future(store.take_cluster_lease("a", "me", 1_000, 10_000))
        done, _ = await asyncio.wait([write], timeout=0.3)
        assert not done
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 10) is not None
    finally:
        other.close()
        await store.close()
