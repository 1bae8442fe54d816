"""Storage conformance fixtures: every test in this folder runs once per selected backend.

Select backends with ``STEPLINE_TEST_BACKENDS`` (comma-separated, default ``sqlite``)::

    STEPLINE_TEST_BACKENDS=sqlite .venv/bin/python -m pytest tests/storage -q
    STEPLINE_TEST_BACKENDS=sqlite,postgres .venv/bin/python -m pytest tests/storage -q

Tests only talk to the ``Store`` interface (``stepline.storage.base``), so a new backend passes the same
suite by registering a ``Backend`` in ``BACKENDS`` below: nothing else changes.

Known bugs of one backend are marked on the test with ``@pytest.mark.known_bug("sqlite", reason=...)``:
for the named backends the test is a strict xfail (it must keep failing; once fixed, XPASS fails the run
and the marker has to go), for every other backend it is an ordinary test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepline.storage.base import Store
from stepline.storage.sqlite.store import SQLiteStore

BACKENDS_ENV = "STEPLINE_TEST_BACKENDS"
DEFAULT_BACKENDS = "sqlite"


@dataclass(frozen=True)
class Backend:
    """How the suite gets stores of one backend."""

    name: str
    fresh: Callable[[Path], AbstractAsyncContextManager[Store]]
    """``async with fresh(scratch_dir) as store``: an opened Store on a brand-new, empty database (a file in
    ``scratch_dir``, a new database or schema on a server, ...), closed and thrown away on exit."""
    same_database: Callable[[Store], Store]
    """A second, not yet opened Store on the database of an open one: a restart, or another process."""


# --- SQLite -------------------------------------------------------------------------------------------------


@asynccontextmanager
async def _sqlite_fresh(scratch: Path) -> AsyncIterator[Store]:
    # synchronous=OFF: durability against power loss is not what this suite checks, and fsyncs are slow.
    store = SQLiteStore(scratch / "conformance.db", synchronous="OFF")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _sqlite_same_database(store: Store) -> Store:
    assert isinstance(store, SQLiteStore)
    return SQLiteStore(store.path, synchronous="OFF")


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend("sqlite", _sqlite_fresh, _sqlite_same_database),
}

# --- PostgreSQL: register it HERE ------------------------------------------------------------------------
# Not implemented yet. Once ``stepline.storage.postgres`` exists, add something like:
#
#   @asynccontextmanager
#   async def _postgres_fresh(scratch: Path) -> AsyncIterator[Store]:
#       admin_url = os.environ["STEPLINE_TEST_POSTGRES_URL"]  # a server where the tests may create databases
#       db = f"stepline_test_{new_ulid().lower()}"          # CREATE DATABASE db (or a fresh schema)
#       store = PostgresStore(url_for(admin_url, db))
#       await store.open()
#       try:
#           yield store
#       finally:
#           await store.close()                              # then DROP DATABASE db
#
#   BACKENDS["postgres"] = Backend("postgres", _postgres_fresh, lambda s: PostgresStore(s.url))
#
# and run the suite with STEPLINE_TEST_BACKENDS=sqlite,postgres.
# ----------------------------------------------------------------------------------------------------------


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "known_bug(*backends, reason): a known bug of these backends (strict xfail for them only)"
    )
    selected_backends()  # fail fast on a typo in STEPLINE_TEST_BACKENDS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        names = selected_backends()
        metafunc.parametrize("backend", names, ids=names, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen = BACKENDS[request.param]
    marker = request.node.get_closest_marker("known_bug")
    if marker is not None and chosen.name in marker.args:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"KNOWN BUG: {marker.kwargs['reason']}"))
    return chosen


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store on a fresh, empty database of the backend under test."""
    async with backend.fresh(tmp_path) as s:
        yield s


@pytest.fixture
def reopen(backend: Backend) -> Callable[[Store], AbstractAsyncContextManager[Store]]:
    """``async with reopen(store) as other``: another opened Store on the same database (closed on exit)."""

    @asynccontextmanager
    async def _reopen(existing: Store) -> AsyncIterator[Store]:
        other = backend.same_database(existing)
        await other.open()
        try:
            yield other
        finally:
            await other.close()

    return _reopen
