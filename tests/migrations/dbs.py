"""Databases at any schema version, for the migrations tier: one class per backend with the same methods.

A ``MigrationDb`` is an empty database (no migration applied) that the tests migrate step by step with the
backends' own ``migrate(conn, target)``, write raw rows into, introspect (tables, columns, indexes) and finally
open as a ``Store`` to read back through the store API.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest

from stepline.storage.base import Store
from stepline.storage.postgres import store as pg_store
from stepline.storage.postgres.store import PostgresStore
from stepline.storage.sql import load_migrations
from stepline.storage.sqlite import store as sqlite_store
from stepline.storage.sqlite.store import SQLiteStore

from ..pg_cluster import get_cluster


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # normalized: INTEGER | TEXT | REAL | JSON | <dialect-only types as they are>
    not_null: bool


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    columns: tuple[str | None, ...]  # None: an expression
    unique: bool
    partial: bool


@dataclass(frozen=True)
class Schema:
    columns: dict[str, dict[str, Column]] = field(default_factory=dict)  # table -> column name -> column
    primary_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unique_columns: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)  # UNIQUE besides the primary key
    indexes: dict[str, Index] = field(default_factory=dict)  # explicit CREATE INDEX, by name


class MigrationDb(Protocol):
    backend: str

    def migrate(self, target: int | None = None) -> int: ...

    def version(self) -> int: ...

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...

    def insert(self, table: str, row: dict[str, Any]) -> None: ...

    def schema(self) -> Schema: ...

    def store(self) -> Store: ...

    def migrations_package(self) -> str: ...


def latest_version() -> int:
    return len(load_migrations("stepline.storage.sqlite"))


class _Db:
    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def insert(self, table: str, row: dict[str, Any]) -> None:
        """One row of raw column values (``%(name)s`` placeholders: SQLite's ``execute`` turns them into ``:name``)."""
        cols = ", ".join(f'"{c}"' for c in row)
        self.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join(f'%({c})s' for c in row)})", row)


class SQLiteDb(_Db):
    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def connect(self, busy_timeout_ms: int = 30000) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        try:
            yield conn
        finally:
            conn.close()

    def migrate(self, target: int | None = None) -> int:
        with self.connect() as conn:
            return sqlite_store.migrate(conn, target)

    def version(self) -> int:
        rows = self.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
        if not rows:
            return 0
        return int(self.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")[0][0])

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return list(conn.execute(sql.replace("%(", ":").replace(")s", ""), params or {}).fetchall())

    def schema(self) -> Schema:
        found = Schema()
        with self.connect() as conn:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                )
            ]
            for table in tables:
                info = conn.execute(f"PRAGMA table_info({table})").fetchall()  # cid, name, type, notnull, dflt, pk
                pk = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
                found.primary_keys[table] = pk
                found.columns[table] = {r[1]: Column(r[1], r[2].upper(), bool(r[3]) or r[1] in pk) for r in info}
                found.unique_columns[table] = set()
                for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({table})").fetchall():
                    cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})").fetchall())
                    if origin == "u":
                        found.unique_columns[table].add(cols)
                    elif origin == "c":
                        found.indexes[name] = Index(name, table, cols, bool(unique), bool(partial))
        return found

    def store(self) -> Store:
        return SQLiteStore(self.path, synchronous="OFF")

    def migrations_package(self) -> str:
        return "stepline.storage.sqlite"


_PG_TYPES = {"bigint": "INTEGER", "integer": "INTEGER", "text": "TEXT", "jsonb": "JSON", "json": "JSON"}


class PostgresDb(_Db):
    backend = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            yield conn

    def migrate(self, target: int | None = None) -> int:
        with self.connect() as conn:
            return pg_store.migrate(conn, target)

    def version(self) -> int:
        with self.connect() as conn:
            return pg_store.current_version(conn)

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(sql.encode() if params is None else sql, params)
            return list(cur.fetchall()) if cur.description else []

    def schema(self) -> Schema:
        found = Schema()
        with self.connect() as conn:
            for table, name, type_, nullable in conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
            ):
                found.columns.setdefault(table, {})[name] = Column(name, _PG_TYPES.get(type_, type_), nullable == "NO")
            for table in found.columns:
                found.primary_keys[table] = ()
                found.unique_columns[table] = set()
            # Indexes: (table, index, unique, partial, constraint type or NULL, column names or NULL per key).
            for table, name, unique, partial, contype, cols in conn.execute(
                """
                SELECT t.relname, i.relname, x.indisunique, x.indpred IS NOT NULL, c.contype,
                       array(SELECT a.attname FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                             LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
                             ORDER BY k.n)
                FROM pg_index x
                JOIN pg_class i ON i.oid = x.indexrelid
                JOIN pg_class t ON t.oid = x.indrelid
                JOIN pg_namespace ns ON ns.oid = t.relnamespace AND ns.nspname = 'public'
                LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid
                """
            ):
                if contype == "p":
                    found.primary_keys[table] = tuple(cols)
                elif contype == "u":
                    found.unique_columns[table].add(tuple(cols))
                else:
                    found.indexes[name] = Index(name, table, tuple(cols), unique, partial)
        return found

    def store(self) -> Store:
        return PostgresStore(self.url, writers=1, pool_size=2)

    def migrations_package(self) -> str:
        return "stepline.storage.postgres"


@contextmanager
def empty_postgres_database() -> Iterator[str]:
    """The URL of a new database with no table in the tests' PostgreSQL cluster, dropped afterwards; the test is
    skipped where PostgreSQL is not installed (an error under CI)."""
    cluster = get_cluster()
    if cluster is None:
        if os.environ.get("CI"):
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found: .ci/run should have installed them")
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl not found)")
    url = cluster.create_database(migrated=False)
    try:
        yield url
    finally:
        cluster.drop_database(url)
