"""``stepline db``: schema migrations and retention."""

from __future__ import annotations

import datetime as dt

import click

from stepline.cli.common import CliError, db_location, db_option, run_async
from stepline.core.durations import DurationError, parse_duration
from stepline.core.engine import Engine
from stepline.storage import store_from_url
from stepline.storage.records import PruneResult


@click.group("db")
def db_group() -> None:
    """Database schema and retention."""


@db_group.command("migrate")
@db_option()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Apply pending schema migrations (safe to run from several nodes at once) and print the version."""
    location, _ = db_location(ctx)

    async def go() -> int:
        try:
            store = store_from_url(location, migrate=True)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        try:
            await store.open()
        except Exception as exc:
            raise CliError(f"cannot open database {location}: {type(exc).__name__}: {exc}") from None
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
    """Delete ended runs, their steps and unreferenced events older than the retention."""
    try:
        keep = parse_duration(older_than)
    except DurationError as exc:
        raise CliError(f"--older-than: {exc}") from None
    if keep < dt.timedelta(hours=1):
        raise CliError(f"--older-than must be at least 1h, got {older_than!r}")
    location, _ = db_location(ctx)

    async def go() -> PruneResult:
        store = store_from_url(location)
        await store.open()
        try:
            return await Engine(store).prune(keep, batch_size)
        finally:
            await store.close()

    r = run_async(go())
    click.echo(f"pruned {r.runs} runs, {r.steps} steps, {r.events} events, {r.idempotency_keys} idempotency keys")
