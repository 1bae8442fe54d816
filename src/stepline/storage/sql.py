"""Load named SQL queries from a backend's ``.sql`` files (``-- name: <query_name>`` headers)."""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any, Protocol


class Conn(Protocol):
    """What the shared code needs of a DB-API connection (sqlite3 and psycopg both fit)."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...


_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a file into ``{name: sql}``; text before the first header is ignored (file comments)."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


def load_queries(package: str, filename: str) -> dict[str, str]:
    return parse_queries(resources.files(package).joinpath(filename).read_text(encoding="utf-8"))


@functools.cache
def _package_queries(package: str, filename: str) -> dict[str, str]:
    return load_queries(package, filename)


def backend_queries(store: object, filename: str) -> dict[str, str]:
    """The queries of ``filename`` in the package of ``store``'s concrete class (``stepline.storage.sqlite``,
    ``...postgres``), loaded once: how the mixins shared by every SQL backend find their dialect's SQL."""
    return _package_queries(type(store).__module__.rsplit(".", 1)[0], filename)


def load_migrations(package: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for every ``NNNN_name.sql`` in the package's ``migrations`` folder."""
    folder = resources.files(package).joinpath("migrations")
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations of {package} are not numbered 1..n without gaps: {versions}")
    return found
