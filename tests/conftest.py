"""Shared fixtures: the storage backend under test (SQLite and PostgreSQL), a fake clock, a client."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stepline import FakeClock, Stepline
from stepline.storage.base import Store

from .backends import BACKENDS, Backend, selected_backends


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses the ``backend`` fixture (directly or through ``store``/``client``) runs once per
    selected backend."""
    if "backend" in metafunc.fixturenames:
        names = selected_backends()
        metafunc.parametrize("backend", names, ids=names, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


@pytest.fixture
async def engine_store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    async with backend.fresh(tmp_path) as store:
        yield store


@pytest.fixture
async def client(engine_store: Store, clock: FakeClock) -> AsyncIterator[Stepline]:
    """A client for app ``test-app`` on a fresh database of the backend under test, with a fake clock."""
    yield Stepline("test-app", engine_store, clock=clock)
