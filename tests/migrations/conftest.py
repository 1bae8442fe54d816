"""Migrations tier fixtures: ``db`` is an empty database (schema version 0) of each selected backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..backends import Backend
from .dbs import MigrationDb, PostgresDb, SQLiteDb, empty_postgres_database


@pytest.fixture
def db(backend: Backend, tmp_path: Path) -> Iterator[MigrationDb]:
    if backend.name == "sqlite":
        yield SQLiteDb(tmp_path / "stepline.db")
        return
    with empty_postgres_database() as url:
        yield PostgresDb(url)
