"""A migration that fails halfway leaves the database at the previous version, with its data; two nodes
migrating the same database at once both succeed, one waiting for the other."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from stepline.storage.postgres import store as pg_store
from stepline.storage.sql import load_migrations
from stepline.storage.sqlite import store as sqlite_store

from .dbs import MigrationDb, PostgresDb, SQLiteDb, latest_version

# Its first statements succeed (a new table, every event deleted), the last fails: a half-applied migration.
BROKEN = """
CREATE TABLE half_done (x INTEGER);
DELETE FROM events;
INSERT INTO no_such_table (x) VALUES (1);
"""


def _with_broken_migration(package: str) -> Callable[[str], list[tuple[int, str, str]]]:
    real = load_migrations(package)

    def fake(requested: str) -> list[tuple[int, str, str]]:
        assert requested == package
        return [*real, (len(real) + 1, "broken", BROKEN)]

    return fake


def _tables(db: MigrationDb) -> set[str]:
    return set(db.schema().columns)


def test_a_migration_failing_halfway_leaves_the_previous_version_and_its_data(
    db: MigrationDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert db.migrate() == latest_version()
    db.insert("events", {"internal_id": "e1", "id": "e1", "name": "a", "data": "{}", "user": "{}", "ts": 1,
                         "received_at": 1})  # fmt: skip
    module: Any = sqlite_store if isinstance(db, SQLiteDb) else pg_store
    monkeypatch.setattr(module, "load_migrations", _with_broken_migration(db.migrations_package()))

    with pytest.raises(Exception, match="no_such_table|no such table"):
        db.migrate()

    assert db.version() == latest_version()
    assert "half_done" not in _tables(db)
    assert db.execute("SELECT internal_id FROM events") == [("e1",)]
    monkeypatch.undo()
    assert db.migrate() == latest_version()  # and a fixed release migrates it afterwards


def test_a_first_migration_run_failing_leaves_a_database_the_next_run_migrates(
    db: MigrationDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From an empty database: what failed is not recorded as applied, so the next start applies it."""
    module: Any = sqlite_store if isinstance(db, SQLiteDb) else pg_store
    monkeypatch.setattr(module, "load_migrations", _with_broken_migration(db.migrations_package()))
    with pytest.raises(Exception, match="no_such_table|no such table"):
        db.migrate()
    # SQLite applies a run's migrations in one transaction (back to 0); PostgreSQL one transaction each.
    assert db.version() == (0 if isinstance(db, SQLiteDb) else latest_version())
    assert "half_done" not in _tables(db)
    monkeypatch.undo()
    assert db.migrate() == latest_version()


def test_two_nodes_migrating_at_once_both_end_at_the_latest_version(db: MigrationDb) -> None:
    start = threading.Barrier(2)
    results: list[int | BaseException] = []

    def node() -> None:
        start.wait()
        try:
            results.append(db.migrate())
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=node) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [latest_version(), latest_version()]
    applied = db.execute("SELECT version FROM schema_migrations ORDER BY version")
    assert applied == [(v,) for v in range(1, latest_version() + 1)]


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_node_waits_while_another_holds_the_migration_lock(db: MigrationDb) -> None:
    """The second node neither fails nor migrates beside the first: it waits, then finds the work done."""
    release = threading.Event()
    held = threading.Event()

    def first_node() -> None:
        if isinstance(db, SQLiteDb):
            with db.connect() as conn:
                conn.execute("BEGIN IMMEDIATE")  # what migrate() holds while it applies migrations
                held.set()
                release.wait(30)
                conn.execute("ROLLBACK")
        else:
            assert isinstance(db, PostgresDb)
            with db.connect() as conn:
                conn.execute("SELECT pg_advisory_lock(%(key)s)", {"key": pg_store.MIGRATION_LOCK})
                held.set()
                release.wait(30)
                conn.execute("SELECT pg_advisory_unlock(%(key)s)", {"key": pg_store.MIGRATION_LOCK})

    result: list[int] = []
    holder = threading.Thread(target=first_node)
    holder.start()
    assert held.wait(10)
    second = threading.Thread(target=lambda: result.append(db.migrate()))
    second.start()
    if isinstance(db, PostgresDb):  # visibly blocked on the lock
        _wait_until(lambda: bool(db.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")))
    else:  # SQLite shows no waiter: it is still in its busy wait, not failed ("database is locked")
        second.join(0.3)
        assert second.is_alive()
    assert result == []
    assert db.version() == 0
    release.set()
    holder.join(10)
    second.join(30)
    assert result == [latest_version()]
