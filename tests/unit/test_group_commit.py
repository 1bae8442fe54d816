"""The SQLite group-commit writer: many operations per transaction, one failing op does not undo others."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from stepline.storage.writer import GroupCommitWriter, WriterClosedError


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY)")
    return conn


def test_failing_op_is_isolated_and_batched_ops_share_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    gate = threading.Event()
    writer = GroupCommitWriter(lambda: _connect(path))
    writer.start()
    try:
        blocker = writer.submit(lambda conn: gate.wait(5))  # holds the writer so the next ops queue up
        futures = [writer.submit(lambda conn, k=k: conn.execute("INSERT INTO t VALUES (?)", (k,)).rowcount)
                   for k in range(50)]  # fmt: skip
        dup = writer.submit(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))  # violates the primary key
        after = writer.submit(lambda conn: conn.execute("INSERT INTO t VALUES (1000)").rowcount)
        gate.set()
        assert blocker.result(5) is True
        assert [f.result(5) for f in futures] == [1] * 50
        with pytest.raises(sqlite3.IntegrityError):
            dup.result(5)
        assert after.result(5) == 1
        assert writer.commits <= 3  # the 52 queued operations went out in one or two commits
    finally:
        writer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 51
    conn.close()
    with pytest.raises(WriterClosedError):
        writer.submit(lambda conn: None)


def test_async_callers_await_durable_results(tmp_path: Path) -> None:
    writer = GroupCommitWriter(lambda: _connect(tmp_path / "a.db"))
    writer.start()

    async def main() -> list[int]:
        return await asyncio.gather(
            *(writer.run(lambda conn, k=k: conn.execute("INSERT INTO t VALUES (?)", (k,)).lastrowid) for k in range(20))
        )

    try:
        assert sorted(asyncio.run(main())) == list(range(20))
    finally:
        writer.close()


def test_a_cancelled_caller_does_not_break_the_writer(tmp_path: Path) -> None:
    gate = threading.Event()
    writer = GroupCommitWriter(lambda: _connect(tmp_path / "c.db"))
    writer.start()
    try:
        blocker = writer.submit(lambda conn: gate.wait(5))
        abandoned = writer.submit(lambda conn: conn.execute("INSERT INTO t VALUES (1)").rowcount)
        assert abandoned.cancel()  # e.g. a send() whose asyncio task was cancelled while queued
        kept = writer.submit(lambda conn: conn.execute("INSERT INTO t VALUES (2)").rowcount)
        gate.set()
        assert blocker.result(5) is True
        assert kept.result(5) == 1
        assert writer.submit(lambda conn: conn.execute("SELECT k FROM t").fetchall()).result(5) == [(2,)]
    finally:
        writer.close()
