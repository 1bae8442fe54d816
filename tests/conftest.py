"""Shared fixtures: a real SQLite store in a temporary directory and a fake clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stepline import FakeClock, Stepline
from stepline.storage.sqlite.store import SQLiteStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "stepline.db"


@pytest.fixture
async def client(db_path: Path, clock: FakeClock) -> AsyncIterator[Stepline]:
    c = Stepline("test-app", SQLiteStore(db_path), clock=clock)
    yield c
    await c.close()
