"""After every migration, SQLite's and PostgreSQL's schemas agree, modulo dialect.

Both backends run the same shared SQL code over the same records, so a column, index or key added to one
backend's migration and forgotten in the other's is a bug that shows only on that backend, often only under
load (a missing index). Compared: tables, each table's columns (name, type class, NOT NULL), primary keys,
UNIQUE constraints, and explicit indexes (name, table, columns or expressions, unique, partial).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..backends import selected_backends
from .dbs import Column, PostgresDb, Schema, SQLiteDb, empty_postgres_database, latest_version

# The dialect: SQLite keeps JSON as TEXT, and its migrations table records the time as text.
SAME_TYPE = {("JSON", "TEXT"), ("timestamp with time zone", "TEXT")}
# Columns one backend needs for its own mechanism, with why.
POSTGRES_ONLY = {
    ("events", "xact"): "the inserting transaction id: waits match events their snapshot did not see",
}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[SQLiteDb, PostgresDb]]:
    if not {"sqlite", "postgres"} <= set(selected_backends()):
        pytest.skip("schema parity needs both backends selected (STEPLINE_TEST_BACKENDS)")
    with empty_postgres_database() as url:
        yield SQLiteDb(tmp_path / "stepline.db"), PostgresDb(url)


def _columns(schema: Schema, *, postgres: bool) -> dict[tuple[str, str], Column]:
    found: dict[tuple[str, str], Column] = {}
    for table, columns in schema.columns.items():
        for name, column in columns.items():
            if postgres and (table, name) in POSTGRES_ONLY:
                continue
            pg_type = column.type
            for theirs, ours in SAME_TYPE:
                if pg_type == theirs:
                    pg_type = ours
            found[(table, name)] = Column(name, pg_type, column.not_null)
    return found


@pytest.mark.parametrize("version", range(1, latest_version() + 1))
def test_both_backends_have_the_same_schema_after_each_migration(
    pair: tuple[SQLiteDb, PostgresDb], version: int
) -> None:
    sqlite, postgres = pair
    assert sqlite.migrate(version) == postgres.migrate(version) == version
    ours, theirs = sqlite.schema(), postgres.schema()

    assert sorted(ours.columns) == sorted(theirs.columns)
    lite, pg = _columns(ours, postgres=False), _columns(theirs, postgres=True)
    assert {k: lite.get(k) for k in lite.keys() | pg.keys() if lite.get(k) != pg.get(k)} == {}, "SQLite's columns"
    assert {k: pg.get(k) for k in lite.keys() | pg.keys() if lite.get(k) != pg.get(k)} == {}, "PostgreSQL's columns"
    assert ours.primary_keys == theirs.primary_keys
    assert ours.unique_columns == theirs.unique_columns
    assert ours.indexes == theirs.indexes


def test_the_postgres_only_columns_exist(pair: tuple[SQLiteDb, PostgresDb]) -> None:
    """The exceptions above name real columns (a stale exception would hide a real difference)."""
    _, postgres = pair
    postgres.migrate()
    columns = postgres.schema().columns
    assert [key for key in POSTGRES_ONLY if key[1] not in columns.get(key[0], {})] == []
