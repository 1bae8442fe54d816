"""The PostgreSQL store: many Stepline processes on one database.

Writes go through group-commit writer threads (each with its own connection, many operations per
transaction); reads use a psycopg connection pool. Idle workers are woken by ``LISTEN/NOTIFY`` instead of
polling. Waits never miss an event: an ingest holds a shared per-event-name advisory lock, registering a wait
holds the exclusive one, and a wait matches exactly the events not visible in the snapshot taken when its
step started.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool

from stepline.storage.records import NewRun, RealtimeRow, RunFinish, StepUpdate, StoredEvent
from stepline.storage.sql import Conn, backend_queries, load_migrations, load_queries
from stepline.storage.sql_attempts import records_attempt
from stepline.storage.sql_store import SqlStore, _j
from stepline.storage.writer import GroupCommitWriter

T = TypeVar("T")
QUERIES = load_queries("stepline.storage.postgres", "queries.sql")
NOTIFY_CHANNEL = "stepline_work"
REALTIME_CHANNEL = "stepline_realtime"
NOTIFY_PAYLOAD_LIMIT = 7900  # bytes: PostgreSQL refuses NOTIFY payloads of 8,000 bytes or more
MIGRATION_LOCK = 0x5737E9_11E  # advisory lock key held while migrating
log = logging.getLogger("stepline.postgres")


def _is_disconnect(exc: BaseException) -> bool:
    """The connection is gone (or the server is going away): reconnect and retry. psycopg files every SQLSTATE
    of classes 53, 54, 55 and 57 under OperationalError too; of those only connection failures (no SQLSTATE, class
    08) and server shutdowns (57P01-57P03) are a lost connection: a statement over one of PostgreSQL's limits
    (54000: an index entry too large, say) fails the same way every time, so it is the caller's error at once."""
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, pg_errors.QueryCanceled):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def _is_transient(exc: BaseException) -> bool:
    return _is_disconnect(exc) or isinstance(
        exc, pg_errors.DeadlockDetected | pg_errors.SerializationFailure | pg_errors.LockNotAvailable
    )


class _WriterGroup:
    """Several group-commit writers used round-robin: PostgreSQL commits in parallel across connections."""

    def __init__(self, writers: list[GroupCommitWriter]) -> None:
        self.writers = writers
        self._next = itertools.cycle(writers)

    async def run(self, op: Callable[[Conn], T]) -> T:
        return await next(self._next).run(op)

    @property
    def commits(self) -> int:
        return sum(w.commits for w in self.writers)

    @property
    def ops(self) -> int:
        return sum(w.ops for w in self.writers)

    def close(self) -> None:
        for w in self.writers:
            w.close()


class PostgresStore(SqlStore):
    """``url`` is a libpq connection string (``postgresql://user@host:port/db``).

    ``writers``: group-commit writer connections. One is the default: its batches grow with the load, and
    with several processes on a machine, more connections committing smaller batches cost the server more
    (one-step runs/s at 4 worker processes on 2 cores: 1,255 with one writer each, 1,102 with two).
    """

    Q = QUERIES
    registry_check_seconds = 1.0  # for lookups other than sends (sends check the version in their transaction)
    marker_poll_seconds = 0.05  # the change marker is a round trip here (a local pragma on SQLite)

    def __init__(self, url: str, *, writers: int = 1, pool_size: int = 4, migrate: bool = True) -> None:
        self.url = url
        self._writer_count = writers
        self._pool_size = pool_size
        self._migrate_on_open = migrate
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._writers: _WriterGroup | None = None
        self._schema_version = 0
        self._listeners: list[Callable[[int | None], None]] = []
        self._listen_thread: threading.Thread | None = None
        self._realtime_listeners: list[Callable[[str], None]] = []
        self._realtime_thread: threading.Thread | None = None
        self._closing = threading.Event()
        # writer connection -> the earliest due time its open transaction created (sent as the NOTIFY payload)
        self._notify_pending: dict[int, tuple[int, int | None]] = {}
        # writer connection -> the event names with waits that its open ingest looked up (``_open_ingest``)
        self._waited: dict[int, set[str]] = {}

    # --- connections ---
    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    def _read(self, fn: Callable[[Conn], T]) -> T:
        if self._pool is None:
            raise RuntimeError("the store is not open: call await store.open() first")
        pool = self._pool
        for attempt in range(3):  # reads are idempotent: a connection lost mid-query is retried on a fresh one
            try:
                with pool.connection() as conn:
                    return fn(conn)
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
                time.sleep(0.05 * (attempt + 1))
                try:
                    pool.check()  # the other idle connections likely died too (server restart): replace them
                except psycopg.Error:
                    pass
        raise AssertionError("unreachable")

    @property
    def writer(self) -> Any:
        if self._writers is None:
            raise RuntimeError("the store is not open: call await store.open() first")
        return self._writers

    # --- lifecycle ---
    async def open(self) -> None:
        self.open_sync()

    def open_sync(self) -> None:
        if self._writers is not None:
            return
        with self._connect() as conn:
            if self._migrate_on_open:
                self._schema_version = migrate(conn)
            else:
                self._schema_version = current_version(conn)
                if self._schema_version < len(load_migrations("stepline.storage.postgres")):
                    raise RuntimeError(
                        f"the database schema is at version {self._schema_version}; run `stepline db migrate`"
                    )
        # No per-checkout connection check (an empty query before every read): a read that finds its connection
        # dead is retried by ``_read``, after dropping every dead connection the pool holds.
        self._pool = ConnectionPool(
            self.url, min_size=1, max_size=self._pool_size, kwargs={"autocommit": True}, open=True,
            name="stepline-read",
        )  # fmt: skip
        writers = [
            GroupCommitWriter(
                self._connect,
                begin="BEGIN",
                is_transient=_is_transient,
                is_disconnect=_is_disconnect,
                name=f"stepline-pg-writer-{i}",
                commit=self._notify_and_commit,
            )
            for i in range(self._writer_count)
        ]
        for w in writers:
            w.start()
        self._writers = _WriterGroup(writers)

    async def close(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        self._closing.set()
        if self._writers is not None:
            self._writers.close()
            self._writers = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for thread in (self._listen_thread, self._realtime_thread):
            if thread is not None:
                thread.join(timeout=5)
        self._listen_thread = self._realtime_thread = None

    def schema_version(self) -> int:
        return self._schema_version

    # --- dialect hooks ---
    def _lock_for_ingest(self, conn: Conn, names: list[str]) -> None:
        # A statement of its own: the wait lookups that follow take their snapshots after the lock is granted
        # (a lock taken inside the lookup would come after that statement's snapshot, and miss a wait
        # committed while it blocked).
        conn.execute(
            "SELECT pg_advisory_xact_lock_shared(hashtextextended(n, 0)) FROM unnest(%(names)s::text[]) AS n",
            {"names": names},
        )

    def _names_with_waits(self, conn: Conn, names: list[str]) -> set[str]:
        known = self._waited.pop(id(conn), None)  # looked up by _open_ingest, in this transaction
        if known is not None:
            return known & set(names)
        if not names:
            return set()
        return {r[0] for r in conn.execute(self.Q["names_with_waits"], {"names": names})}

    def _insert_plain_runs(self, conn: Conn, runs: list[NewRun]) -> None:
        if len(runs) < 2:
            super()._insert_plain_runs(conn, runs)
            return
        concs = [r.flow.concurrency if r.flow is not None else () for r in runs]
        conn.execute(
            self.Q["insert_plain_runs"],
            {"id": [r.id for r in runs], "function_id": [r.function_id for r in runs],
             "event_id": [r.event_id for r in runs],
             "batch": [json.dumps(list(r.batch)) if r.batch else None for r in runs],
             "created_at": [r.created_at for r in runs], "start_deadline": [r.start_deadline for r in runs],
             "due_at": [r.due_at for r in runs], "parent_run_id": [r.parent_run_id for r in runs],
             "parent_step_id": [r.parent_step_id for r in runs],
             "flow": [json.dumps({"c": [[c.key, c.limit, c.shown] for c in conc]}) if conc else None for conc in concs],
             "ckey1": [conc[0].key if conc else None for conc in concs],
             "ckey2": [conc[1].key if len(conc) > 1 else None for conc in concs],
             "priority_ms": [r.flow.priority_ms if r.flow is not None else 0 for r in runs]},
        )  # fmt: skip

    def _end_run_rows(
        self, conn: Conn, items: list[tuple[str, RunFinish, int, str | None]]
    ) -> list[tuple[Any, ...] | None]:
        if len(items) < 2 or len({run_id for run_id, *_ in items}) < len(items):
            return super()._end_run_rows(conn, items)
        rows = conn.execute(
            self.Q["finish_runs"],
            {"id": [i[0] for i in items], "status": [i[1].status for i in items],
             "output": [_j(i[1].output) for i in items], "error": [_j(i[1].error) for i in items],
             "now": [i[2] for i in items], "owner": [i[3] for i in items]},
        ).fetchall()  # fmt: skip
        ended = {r[0]: tuple(r[1:]) for r in rows}
        return [ended.get(run_id) for run_id, *_ in items]

    def _write_end_steps(self, conn: Conn, items: list[tuple[str, StepUpdate, int]]) -> None:
        plain = all(u.status in ("completed", "failed") and u.kind == "run" and not records_attempt(u)
                    for _, u, _ in items)  # fmt: skip
        if len(items) < 2 or not plain or len({run_id for run_id, *_ in items}) < len(items):
            super()._write_end_steps(conn, items)
            return
        rows = conn.execute(
            self.Q["insert_end_steps"],
            {"run_id": [i[0] for i in items], "step_id": [i[1].step_id for i in items],
             "display_id": [i[1].display_id for i in items], "kind": [i[1].kind for i in items],
             "status": [i[1].status for i in items], "attempts": [i[1].attempts for i in items],
             "output": [_j(i[1].output) for i in items], "error": [_j(i[1].error) for i in items],
             "now": [i[2] for i in items],
             "started": [i[2] if i[1].started_at is None else min(i[1].started_at, i[2]) for i in items]},
        ).fetchall()  # fmt: skip
        written = {(r[0], r[1]) for r in rows}
        for run_id, u, now in items:
            if (run_id, u.step_id) in written:
                self._insert_run_logs(conn, run_id, u.logs, now)
            else:  # recorded before: the same result is fine, another one is a conflict
                super()._write_end_steps(conn, [(run_id, u, now)])

    def _lock_for_wait(self, conn: Conn, name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%(name)s, 0))", {"name": name})

    def _lock_key(self, conn: Conn, key: str, shared: bool = False) -> None:
        # Flow-control keys (concurrency slots, singleton): another hash seed than the event-name locks above.
        fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        conn.execute(f"SELECT {fn}(hashtextextended(%(key)s, 1))", {"key": key})

    def _notify_work(self, conn: Conn, due_at: int) -> None:
        # At most two NOTIFYs per transaction, sent just before it commits: the earliest due time it created and
        # the next later one (flow control makes one ingest create runs due at several times: throttled starts,
        # debounce and batch deadlines). A worker claims what is due, sets a timer for the later time, and reads
        # the store's next due time when that timer fires, so it never waits for its safety poll.
        # Only the writer thread that owns ``conn`` touches its entry.
        key = id(conn)
        pending = self._notify_pending.get(key)
        if pending is None:
            self._notify_pending[key] = (due_at, None)
            return
        first, then = pending
        if due_at == first or due_at == then:
            return
        if due_at < first:
            self._notify_pending[key] = (due_at, first if then is None else min(first, then))
        elif then is None or due_at < then:
            self._notify_pending[key] = (first, due_at)

    def _notify_and_commit(self, conn: Conn) -> None:
        """COMMIT, with the transaction's NOTIFYs (``_notify_work``) sent in the same round trip: a statement
        without parameters goes as one simple query, several statements in one message (the payloads are
        integers, written as literals)."""
        pending = self._notify_pending.pop(id(conn), None)
        if pending is None:
            conn.execute("COMMIT")
            return
        notify = "".join(f"NOTIFY {NOTIFY_CHANNEL}, '{int(due)}'; " for due in pending if due is not None)
        conn.execute(notify + "COMMIT")

    def _open_ingest(self, conn: Any, planned: set[int], names: list[str], events: list[StoredEvent]) -> set[str]:
        # Two statements: the registry version with the shared per-name locks, then the events with the names
        # that have waits (kept for ``_names_with_waits``): that lookup's snapshot comes after the locks were
        # granted. (A psycopg pipeline of the separate statements measured slower than this on loopback.)
        self._waited.pop(id(conn), None)
        if not names:  # no events
            self._check_registry(conn, planned)
            return set()
        current = conn.execute(self.Q["lock_names_and_registry_version"], {"names": names}).fetchone()[0]
        self._check_registry(conn, planned, int(current))
        rows = conn.execute(self.Q["insert_events_and_waits"], {**_event_columns(events), "names": names}).fetchall()
        self._waited[id(conn)] = {value for kind, value in rows if kind == "w"}
        return {value for kind, value in rows if kind == "e"}

    # --- notifications ---
    def subscribe(self, callback: Callable[[int | None], None]) -> bool:
        self._listeners.append(callback)
        if self._listen_thread is None:
            self._listen_thread = threading.Thread(target=self._listen, name="stepline-pg-listen", daemon=True)
            self._listen_thread.start()
        return True

    def unsubscribe(self, callback: Callable[[int | None], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _fire(self, due_at: int | None) -> None:
        for cb in list(self._listeners):
            cb(due_at)

    def _listen(self) -> None:
        """LISTEN for work on a dedicated connection (and wake workers to look for work after a reconnect)."""
        self._listen_on(NOTIFY_CHANNEL, lambda: self._fire(None), lambda payload: self._fire(_due_at(payload)))

    def _listen_on(self, channel: str, connected: Callable[[], None], notified: Callable[[str], None]) -> None:
        """LISTEN on ``channel`` on a dedicated connection; reconnect after failures, calling ``connected`` each
        time (what was notified while not listening is unknown)."""
        delay = 0.1
        while not self._closing.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {channel}")
                    delay = 0.1
                    connected()
                    while not self._closing.is_set():
                        for n in conn.notifies(timeout=1.0, stop_after=1):
                            notified(n.payload)
            except psycopg.Error as exc:
                if self._closing.is_set():
                    return
                log.warning("LISTEN %s connection lost (%s); reconnecting in %.1f s", channel, exc, delay)
                self._closing.wait(delay)
                delay = min(delay * 2, 5.0)

    # --- realtime ---
    def _notify_realtime(self, conn: Conn, origin: str, rows: list[RealtimeRow]) -> None:
        # One NOTIFY per message, in order, delivered at commit. A message too large for a payload goes by its id:
        # the listeners read its row.
        query = backend_queries(self, "realtime.sql")["notify_realtime"]
        for r in rows:
            payload = json.dumps({"id": r.id, "o": origin, "m": [r.channel, r.topic, r.kind, r.payload,
                                                                   r.created_at]}, separators=(",", ":"))  # fmt: skip
            if len(payload.encode()) > NOTIFY_PAYLOAD_LIMIT:
                payload = json.dumps({"id": r.id, "o": origin}, separators=(",", ":"))
            conn.execute(query, {"channel": REALTIME_CHANNEL, "payload": payload})

    def subscribe_realtime(self, callback: Callable[[str], None]) -> bool:
        self._realtime_listeners.append(callback)
        if self._realtime_thread is None:
            self._realtime_thread = threading.Thread(
                target=self._listen_on, args=(REALTIME_CHANNEL, self._realtime_reconnected, self._realtime_fire),
                name="stepline-pg-realtime", daemon=True)  # fmt: skip
            self._realtime_thread.start()
        return True

    def unsubscribe_realtime(self, callback: Callable[[str], None]) -> None:
        if callback in self._realtime_listeners:
            self._realtime_listeners.remove(callback)

    def _realtime_fire(self, payload: str) -> None:
        for cb in list(self._realtime_listeners):
            cb(payload)

    def _realtime_reconnected(self) -> None:
        self._realtime_fire("")  # "" : notifications may have been missed; listeners read the rows after their cursor


def _due_at(payload: str) -> int | None:
    """The NOTIFY payload: the earliest due time (unix ms) the notifying transaction created; None if unknown."""
    try:
        return int(payload)
    except ValueError:
        return None


def current_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(got[0]) if got else 0


def migrate(conn: psycopg.Connection[Any], target: int | None = None) -> int:
    """Apply pending migrations (up to ``target``, default all), one transaction each, under an advisory lock
    (safe with many nodes: a second node waits, then finds them applied); returns the version."""
    conn.execute("SELECT pg_advisory_lock(%(key)s)", {"key": MIGRATION_LOCK})
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in load_migrations("stepline.storage.postgres"):
            if version in applied or (target is not None and version > target):
                continue
            with conn.transaction():
                conn.execute(sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%(v)s, %(n)s)", {"v": version, "n": name}
                )
        return current_version(conn)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%(key)s)", {"key": MIGRATION_LOCK})


def _event_columns(events: list[StoredEvent]) -> dict[str, list[Any]]:
    """The event parameters of ``insert_events_and_waits``: one array per column."""
    return {"internal_id": [e.internal_id for e in events], "id": [e.id for e in events],
            "name": [e.name for e in events], "data": [json.dumps(e.data) for e in events],
            "user": [json.dumps(e.user) for e in events], "ts": [e.ts for e in events], "v": [e.v for e in events],
            "received_at": [e.received_at for e in events], "traceparent": [e.traceparent for e in events]}  # fmt: skip
