"""The storage backends every store-level and engine-level test runs on.

Select them with ``STEPLINE_TEST_BACKENDS`` (comma-separated; default ``sqlite,postgres``)::

    STEPLINE_TEST_BACKENDS=sqlite scripts/test tests/storage

PostgreSQL runs in a throwaway cluster started from the installed binaries (``tests/pg_cluster.py``). Where
PostgreSQL is not installed its tests are skipped, except under CI (``CI=true``), where that is an error.
A new backend passes the same suites by registering a ``Backend`` in ``BACKENDS``: nothing else changes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepline.storage.base import Store
from stepline.storage.postgres.store import PostgresStore
from stepline.storage.sqlite.store import SQLiteStore

from .pg_cluster import get_cluster

BACKENDS_ENV = "STEPLINE_TEST_BACKENDS"
DEFAULT_BACKENDS = "sqlite,postgres"


@dataclass(frozen=True)
class Backend:
    """How tests get stores of one backend."""

    name: str
    fresh: Callable[[Path], AbstractAsyncContextManager[Store]]
    """``async with fresh(scratch_dir) as store``: an opened Store on a brand-new, empty database."""
    same_database: Callable[[Store], Store]
    """A second, not yet opened Store on the database of an open one: a restart, or another process."""
    location: Callable[[Store], str]
    """What to pass as ``--db`` / ``STEPLINE_DB`` to reach the store's database from another process."""


@asynccontextmanager
async def _sqlite_fresh(scratch: Path) -> AsyncIterator[Store]:
    # synchronous=OFF: durability against power loss is not what these tests check, and fsyncs are slow.
    store = SQLiteStore(scratch / "stepline.db", synchronous="OFF")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _sqlite_same(store: Store) -> Store:
    assert isinstance(store, SQLiteStore)
    return SQLiteStore(store.path, synchronous="OFF")


def _sqlite_location(store: Store) -> str:
    assert isinstance(store, SQLiteStore)
    return str(store.path)


@asynccontextmanager
async def _postgres_fresh(scratch: Path) -> AsyncIterator[Store]:
    cluster = get_cluster()
    if cluster is None:
        if os.environ.get("CI"):
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found: .ci/run should have installed them")
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl not found)")
    url = cluster.create_database()
    store = PostgresStore(url, writers=2, pool_size=4)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        cluster.drop_database(url)


def _postgres_same(store: Store) -> Store:
    assert isinstance(store, PostgresStore)
    return PostgresStore(store.url)


def _postgres_location(store: Store) -> str:
    assert isinstance(store, PostgresStore)
    return store.url


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend("sqlite", _sqlite_fresh, _sqlite_same, _sqlite_location),
    "postgres": Backend("postgres", _postgres_fresh, _postgres_same, _postgres_location),
}


def selected_backends() -> list[str]:
    """The backend names in ``STEPLINE_TEST_BACKENDS``, in order, without duplicates."""
    raw = os.environ.get(BACKENDS_ENV, DEFAULT_BACKENDS)
    names = list(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    if not names:
        raise pytest.UsageError(
            f"{BACKENDS_ENV}={raw!r} names no storage backend; known backends: {', '.join(sorted(BACKENDS))}"
        )
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise pytest.UsageError(
            f"{BACKENDS_ENV}={raw!r}: unknown storage backend(s) {', '.join(map(repr, unknown))}; "
            f"known backends: {', '.join(sorted(BACKENDS))} (register new ones in {__file__})"
        )
    return names
