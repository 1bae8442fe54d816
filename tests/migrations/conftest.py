"""Migrations tier fixtures: ``db`` is an empty database (schema version 0) of each selected backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..backends import Backend
from ..pg_cluster import get_cluster
from .dbs import MigrationDb, PostgresDb, SQLiteDb


@pytest.fixture
def db(backend: Backend, tmp_path: Path) -> Iterator[MigrationDb]:
    if backend.name == "sqlite":
        yield SQLiteDb(tmp_path / "stepline.db")
        return
    cluster = get_cluster()
    if cluster is None:
        if os.environ.get("CI"):
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found: .ci/run should have installed them")
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl not found)")
    url = cluster.create_database(migrated=False)
    try:
        yield PostgresDb(url)
    finally:
        cluster.drop_database(url)
