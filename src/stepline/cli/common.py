"""Shared CLI plumbing: errors with exit codes, the ``--db`` option, opening the store, formatting."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from stepline.storage import DEFAULT_DB, Store, store_from_url

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_DB_KEY = "stepline.db"
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2


class CliError(click.ClickException):
    """Bad input: a one-line ``Error: ...`` on stderr and exit code 2 (no traceback)."""

    exit_code = EXIT_USAGE


class NotFoundError(CliError):
    """A missing run or database, or a store that cannot be opened: exit code 1."""

    exit_code = EXIT_NOT_FOUND


def _remember_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[_DB_KEY] = value


def db_option(*, envvar: bool = False) -> Callable[[F], F]:
    """``--db PATH``: on the root group (with ``STEPLINE_DB``) and again on each command, which wins."""
    return click.option(
        "--db",
        metavar="PATH|URL",
        default=None,
        envvar="STEPLINE_DB" if envvar else None,
        show_envvar=envvar,
        expose_value=False,
        callback=_remember_db,
        help="The database: a SQLite file (or sqlite:///path), or a PostgreSQL URL such as "
        f"postgresql://user:password@host:5432/stepline. Default: $STEPLINE_DB, else {DEFAULT_DB}.",
    )


def db_location(ctx: click.Context) -> tuple[str, bool]:
    """The database location and whether it was given explicitly (``--db`` or ``STEPLINE_DB``)."""
    value = ctx.meta.get(_DB_KEY)
    if value:
        return str(value), True
    return DEFAULT_DB, False


def make_store(location: str) -> Store:
    try:
        return store_from_url(location)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def store_path(store: Store) -> Path | None:
    path = getattr(store, "path", None)
    return Path(path) if path is not None else None


def display_path(store: Store, fallback: str) -> str:
    """Where the store is, for messages and logs: a SQLite file's full path, or the URL without its password."""
    path = store_path(store)
    return str(path.resolve()) if path is not None else redact(fallback)


def redact(location: str) -> str:
    """A database URL without its password (``postgresql://user:***@host/db``), for messages and logs."""
    parts = urllib.parse.urlsplit(location)
    if not parts.password:
        return location
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@asynccontextmanager
async def opened_store(ctx: click.Context, *, must_exist: bool) -> AsyncIterator[Store]:
    """Open the ``--db`` store for one command and close it afterwards.

    Read commands pass ``must_exist``: a missing database is reported instead of created empty.
    """
    location, _ = db_location(ctx)
    store = make_store(location)
    path = store_path(store)
    if must_exist and path is not None and not path.exists():
        raise NotFoundError(
            f"no Stepline database at {path.resolve()} (a worker or `stepline dev` creates it; "
            "or pass --db PATH|URL / set STEPLINE_DB)"
        )
    try:
        await store.open()
    except Exception as exc:
        raise NotFoundError(f"cannot open database {redact(location)}: {type(exc).__name__}: {exc}") from None
    try:
        yield store
    finally:
        await store.close()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# --- formatting ---
def iso(ms: int | None) -> str | None:
    """Unix milliseconds as ISO 8601 UTC (``2026-01-01T00:00:00.000Z``)."""
    if ms is None:
        return None
    stamp = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def format_error(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    name, message = error.get("name", "Error"), error.get("message", "")
    return f"{name}: {message}" if message else str(name)
