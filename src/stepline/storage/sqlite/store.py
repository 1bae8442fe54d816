"""The SQLite store: WAL, one group-commit writer thread, a read connection per thread.

Other processes using the same file learn of commits that make work due, and of stored realtime messages, through
the local wake channel (``stepline.storage.wake``): one datagram per such transaction, sent after it commits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from stepline.storage.records import RealtimeRow
from stepline.storage.sql import Conn, load_migrations, load_queries
from stepline.storage.sql_events import PREFIX_SORT_CAP
from stepline.storage.sql_store import SqlStore
from stepline.storage.wake import OVERFLOW, WakeChannel
from stepline.storage.writer import GroupCommitWriter

T = TypeVar("T")
QUERIES = load_queries("stepline.storage.sqlite", "queries.sql")


class SQLiteStore(SqlStore):
    """Embedded store in one file. ``synchronous`` is FULL by default: a committed step survives power loss."""

    Q = QUERIES

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL", busy_timeout_ms: int = 30000):
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._writer: GroupCommitWriter | None = None
        self._write_lock = WriteLock(self.path)
        self._schema_version = 0
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._wake: WakeChannel | None = None
        self._watchers: dict[Callable[[int | None], None], Callable[[bytes], None]] = {}
        self._realtime_watchers: dict[Callable[[str], None], Callable[[bytes], None]] = {}
        # What the transaction being written makes known (only the writer thread touches these): the earliest due
        # time it created, and whether it stored realtime messages. Sent after its commit.
        self._due_note: int | None = None
        self._realtime_note = False

    # --- connections ---
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._all_readers.append(conn)
        return conn

    def _read(self, fn: Callable[[Conn], T]) -> T:
        return fn(self._reader())

    def data_version(self) -> int:
        """Changes whenever any connection commits; a cheap way to notice new work from other processes."""
        return int(self._reader().execute("PRAGMA data_version").fetchone()[0])

    # --- the wake channel ---
    @property
    def wake_channel(self) -> WakeChannel:
        """The local wake channel of this database file (opened at the first use)."""
        if self._wake is None:
            self._wake = WakeChannel(self.path)
        return self._wake

    def _notify_work(self, conn: Conn, due_at: int) -> None:
        if self._due_note is None or due_at < self._due_note:
            self._due_note = due_at

    def _notify_realtime(self, conn: Conn, origin: str, rows: list[RealtimeRow]) -> None:
        self._realtime_note = True

    def _after_commit(self, conn: Conn) -> None:
        due, self._due_note = self._due_note, None
        realtime, self._realtime_note = self._realtime_note, False
        if due is not None:
            self.wake_channel.notify(b"w%d" % due)
        if realtime:
            self.wake_channel.notify(b"r")

    def watch_commits(self, callback: Callable[[int | None], None]) -> bool:
        """Call ``callback(due_at)`` (any thread) after any process's transaction on this file made work due (the
        earliest due time it created; None: unknown, look). True: the wake channel works here."""

        def on_message(message: bytes) -> None:
            if message[:1] == b"w":  # a malformed due time (not this code's message) means: look now
                due = message[1:]
                callback(int(due) if due.isdigit() and len(due) <= 18 else None)
            elif message == OVERFLOW:
                callback(None)

        self._watchers[callback] = on_message
        return self.wake_channel.listen(on_message)

    def unwatch_commits(self, callback: Callable[[int | None], None]) -> None:
        listener = self._watchers.pop(callback, None)
        if listener is not None:
            self._wake_channel_unlisten(listener)

    def subscribe_realtime(self, callback: Callable[[str], None]) -> bool:
        """Called with "" (read the messages after your cursor) when any process stored realtime messages."""

        def on_message(message: bytes) -> None:
            if message == b"r" or message == OVERFLOW:
                callback("")

        if not self.wake_channel.listen(on_message):
            self._wake_channel_unlisten(on_message)
            return False  # the hub polls data_version
        self._realtime_watchers[callback] = on_message
        return True

    def unsubscribe_realtime(self, callback: Callable[[str], None]) -> None:
        listener = self._realtime_watchers.pop(callback, None)
        if listener is not None:
            self._wake_channel_unlisten(listener)

    def _wake_channel_unlisten(self, listener: Callable[[bytes], None]) -> None:
        if self._wake is not None:
            self._wake.unlisten(listener)

    def _write_connection(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        self._migrate(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        self._schema_version = migrate(conn)

    # --- lifecycle ---
    async def open(self) -> None:
        self.open_sync()

    def open_sync(self) -> None:
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = GroupCommitWriter(self._write_connection, is_transient=_is_locked, name="stepline-sqlite-writer",
                                   after_commit=self._after_commit, exclusive=self._write_lock.held)  # fmt: skip
        writer.start()
        self._writer = writer

    async def close(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._write_lock.close()
        with self._readers_lock:
            for conn in self._all_readers:
                conn.close()
            self._all_readers.clear()
        self._local = threading.local()
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        self._watchers.clear()
        self._realtime_watchers.clear()

    def schema_version(self) -> int:
        return self._schema_version

    @property
    def writer(self) -> GroupCommitWriter:
        if self._writer is None:
            raise RuntimeError("the store is not open: call await store.open() first")
        return self._writer

    def _query_for_prefix(self, prefix: str, query: str, params: dict[str, Any]) -> str:
        # Few events under the literal prefix (a rare name): sorting them beats reading every newer event. Byte order
        # is SQLite's index order; PostgreSQL's follows the database's collation, so it keeps the ordered read.
        queries = self._event_queries
        params.update(low=prefix, high=prefix + "\U0010ffff", cap=PREFIX_SORT_CAP)
        count = self._read(lambda c: c.execute(queries["count_prefix"], params).fetchone()[0])
        return queries["find_events_in_prefix"] if count < PREFIX_SORT_CAP else query


class WriteLock:
    """Queues the writers of every process on one database file (``<db>-writelock``, ``flock``) before SQLite's own
    lock: a writer that finds SQLite's write lock taken by another process sleeps in SQLite's busy handler (1, 2, 5,
    10 ... 100 ms at a time) and may find it taken again when it wakes, so with several processes writing a commit
    waited up to hundreds of milliseconds (p99 138 ms, 2 processes; 17 ms with this lock, which wakes the next
    writer as soon as the holder releases it). Writers that do not take it (other tools) still meet SQLite's lock
    and its busy timeout; a holder that dies releases it with its descriptor."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + "-writelock")
        self._fd: int | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:  # a read-only directory, ...: SQLite's lock alone, as before
                yield
                return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def migrate(conn: sqlite3.Connection, target: int | None = None) -> int:
    """Apply pending migrations (up to ``target``, default all) in one write transaction; returns the version.

    ``BEGIN IMMEDIATE`` takes the write lock first, so a second process migrating at once waits (busy timeout)
    and then finds the migrations applied; a failing migration rolls back every one this call applied."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TEXT NOT NULL DEFAULT (datetime('now')))"
        )
        applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in load_migrations("stepline.storage.sqlite"):
            if version in applied or (target is not None and version > target):
                continue
            for statement in _split_statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])


def _is_locked(exc: BaseException) -> bool:
    """SQLite's busy timeout ran out (another process held the write lock that long): worth retrying."""
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _split_statements(sql: str) -> list[str]:
    """Split a migration into statements. Comments are dropped first; migrations hold no ';' or '--' in
    string literals."""
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]
