"""Storage backends behind one ``Store`` interface, chosen by a URL or path."""

from __future__ import annotations

import os
from pathlib import Path

from stepline.storage.base import Store

DEFAULT_DB = ".stepline/stepline.db"


def default_db_location() -> str:
    """``STEPLINE_DB`` if set, else ``.stepline/stepline.db`` in the working directory."""
    return os.environ.get("STEPLINE_DB") or DEFAULT_DB


def auto_migrate_default() -> bool:
    """``STEPLINE_AUTO_MIGRATE=0`` (or false/no) turns off migrating the schema when a store opens."""
    return os.environ.get("STEPLINE_AUTO_MIGRATE", "1").strip().lower() not in ("0", "false", "no", "off")


def store_from_url(location: str | os.PathLike[str] | None = None, *, migrate: bool | None = None) -> Store:
    """A store for ``location``: ``postgresql://...`` for PostgreSQL, else a SQLite path (or ``sqlite:///path``)."""
    loc = str(location) if location is not None else default_db_location()
    if loc.startswith(("postgres://", "postgresql://")):
        from stepline.storage.postgres.store import PostgresStore

        return PostgresStore(loc, migrate=auto_migrate_default() if migrate is None else migrate)
    if loc.startswith("sqlite:///"):
        loc = loc[len("sqlite:///") :]
    elif "://" in loc:
        raise ValueError(f"unsupported database URL {loc!r}: use postgresql://..., sqlite:///path or a file path")
    from stepline.storage.sqlite.store import SQLiteStore

    return SQLiteStore(Path(loc))


__all__ = ["DEFAULT_DB", "Store", "auto_migrate_default", "default_db_location", "store_from_url"]
