"""``stepline db``: schema migrations and retention."""

from __future__ import annotations

import datetime as dt

import click

from stepline.cli.common import CliError, db_location, db_option, redact, run_async
from stepline.cli.display import Look
from stepline.core.durations import DurationError, parse_duration
from stepline.core.engine import Engine
from stepline.storage import Store, store_from_url
from stepline.storage.records import PruneResult


@click.group("db")
def db_group() -> None:
    """Migrate the database schema; prune old runs and events."""


async def _open(location: str, *, migrate: bool | None = None) -> Store:
    try:
        store = store_from_url(location, migrate=migrate)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        await store.open()
    except Exception as exc:
        raise CliError(f"cannot open database {redact(location)}: {type(exc).__name__}: {exc}") from None
    return store


@db_group.command("migrate")
@db_option()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Apply pending schema migrations and print the schema version.

    Safe to run from several nodes at once."""
    location, _ = db_location(ctx)

    async def go() -> int:
        store = await _open(location, migrate=True)
        try:
            return store.schema_version()
        finally:
            await store.close()

    click.echo(f"schema version {run_async(go())}")


@db_group.command("prune")
@click.option("--older-than", "older_than", default="30d", show_default=True,
              help="Default retention; a function's own `retention` option wins.")  # fmt: skip
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@db_option()
@click.pass_context
def prune(ctx: click.Context, older_than: str, batch_size: int) -> None:
    """Delete old ended runs, their steps and unreferenced events.

    A run is old when it ended longer ago than its function's `retention` option, else --older-than."""
    try:
        keep = parse_duration(older_than)
    except DurationError as exc:
        raise CliError(f"--older-than: {exc}") from None
    if keep < dt.timedelta(hours=1):
        raise CliError(f"--older-than must be at least 1h, got {older_than!r}")
    location, _ = db_location(ctx)
    look = Look.of("stderr")

    async def go() -> PruneResult:
        store = await _open(location)
        try:
            with look.progress(f"pruning what ended before {older_than} ago", total=None) as ticker:
                return await Engine(store).prune(keep, batch_size, lambda r: ticker.describe(f"pruning: {_counts(r)}"))
        finally:
            await store.close()

    click.echo(f"pruned {_counts(run_async(go()))}")


def _counts(r: PruneResult) -> str:
    return f"{r.runs} runs, {r.steps} steps, {r.events} events, {r.idempotency_keys} idempotency keys"
