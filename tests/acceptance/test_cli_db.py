"""`stepline db migrate` and `stepline db prune` on both backends, through the real console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stepline.storage.sql import load_migrations

from ..pg_cluster import get_cluster


def stepline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stepline.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)  # fmt: skip


def fresh_pg_url() -> str:
    cluster = get_cluster()
    if cluster is None:
        if os.environ.get("CI"):
            raise RuntimeError("PostgreSQL is not installed")
        pytest.skip("PostgreSQL is not installed")
    url = cluster.url()
    import psycopg

    from stepline.core.ids import new_ulid

    name = f"cli_{new_ulid().lower()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # empty: no schema yet
    return cluster.url(name)


def test_postgres_auto_migrate_can_be_turned_off_and_db_migrate_applies_the_schema() -> None:
    url = fresh_pg_url()
    refused = stepline("runs", "list", "--db", url, env={"STEPLINE_AUTO_MIGRATE": "0"})
    assert refused.returncode != 0
    assert "the database schema is at version 0; run `stepline db migrate`" in refused.stderr
    migrated = stepline("db", "migrate", "--db", url)
    assert migrated.returncode == 0, migrated.stderr
    latest = len(load_migrations("stepline.storage.postgres"))
    assert latest >= 3
    assert migrated.stdout.strip() == f"schema version {latest}"
    again = stepline("db", "migrate", "--db", url)
    assert again.stdout.strip() == f"schema version {latest}"  # idempotent
    listed = stepline("runs", "list", "--db", url, env={"STEPLINE_AUTO_MIGRATE": "0"})
    assert listed.returncode == 0, listed.stderr


def test_db_prune_reports_counts_and_rejects_bad_durations(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    latest = len(load_migrations("stepline.storage.sqlite"))
    assert stepline("db", "migrate", "--db", db).stdout.strip() == f"schema version {latest}"
    pruned = stepline("db", "prune", "--db", db, "--older-than", "7d")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.strip() == "pruned 0 runs, 0 steps, 0 events, 0 idempotency keys"
    bad = stepline("db", "prune", "--db", db, "--older-than", "a while")
    assert bad.returncode == 2 and "--older-than: invalid duration 'a while'" in bad.stderr
    short = stepline("db", "prune", "--db", db, "--older-than", "10m")
    assert short.returncode == 2 and "at least 1h" in short.stderr
