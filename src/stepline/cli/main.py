"""``stepline``: the command-line entry point (console script ``stepline = stepline.cli.main:main``)."""

from __future__ import annotations

import json
from typing import Any

import click

import stepline
from stepline.cli.common import CliError, compact, db_option, opened_store, run_async, table
from stepline.cli.db import db_group
from stepline.cli.runs import runs_group
from stepline.cli.server import dev_command, start_command
from stepline.cli.worker import worker_command
from stepline.core.engine import Engine
from stepline.core.errors import EventValidationError
from stepline.storage.records import FunctionRecord, IngestResult


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(stepline.__version__, "--version", "-V", prog_name="stepline")
@db_option(envvar=True)
def cli() -> None:
    """Stepline: durable, event-driven functions on SQLite or PostgreSQL."""


def parse_data(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--data is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise CliError(f"--data must be a JSON object, got a JSON {type(data).__name__}: {text!r}")
    return data


@cli.command("send")
@click.argument("name")
@click.option("--data", "data_text", default="{}", metavar="JSON", help="The event's data: a JSON object.")
@click.option("--id", "event_id", default=None, help="Event id: a second event with the same id starts no runs.")
@db_option()
@click.pass_context
def send(ctx: click.Context, name: str, data_text: str, event_id: str | None) -> None:
    """Send event NAME and start the runs it triggers. Prints the event's id."""
    event: dict[str, Any] = {"name": name, "data": parse_data(data_text)}
    if event_id:
        event["id"] = event_id

    async def go() -> IngestResult:
        async with opened_store(ctx, must_exist=False) as store:
            # The engine alone: registering a client here would replace the functions of an app of that id.
            try:
                return await Engine(store).ingest(event)
            except EventValidationError as exc:
                raise CliError(str(exc)) from None

    result = run_async(go())
    click.echo(result.event_ids[0])
    if result.created_run_ids:
        click.echo(f"started {len(result.created_run_ids)} run(s): {', '.join(result.created_run_ids)}", err=True)
    elif result.skipped_run_ids:
        click.echo("started no runs: the event id or idempotency key was already used", err=True)
    else:
        click.echo(f"started no runs: no registered function is triggered by {name!r}", err=True)


@cli.group("functions")
def functions_group() -> None:
    """Inspect registered functions."""


def describe_triggers(fn: FunctionRecord) -> str:
    parts = []
    for t in fn.config.get("triggers", []):
        if "cron" in t:
            parts.append(f"cron {t['cron']}")
        else:
            parts.append(t["event"] + (f" if {t['expression']}" if t.get("expression") else ""))
    return ", ".join(parts) or "-"


@functions_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@db_option()
@click.pass_context
def list_functions(ctx: click.Context, as_json: bool) -> None:
    """Functions registered by workers, with their triggers."""

    async def go() -> list[FunctionRecord]:
        async with opened_store(ctx, must_exist=True) as store:
            return await store.list_functions()

    functions = run_async(go())
    if as_json:
        for f in functions:
            click.echo(compact({"id": f.id, "app_id": f.app_id, "slug": f.slug, "name": f.name, **f.config}))
        return
    if not functions:
        click.echo("no registered functions (start a worker to register its app's functions)", err=True)
        return
    rows = [[f.id, f.app_id, f.name, describe_triggers(f)] for f in functions]
    click.echo(table(["ID", "APP", "NAME", "TRIGGERS"], rows))


cli.add_command(worker_command)
cli.add_command(runs_group)
cli.add_command(db_group)
cli.add_command(dev_command)
cli.add_command(start_command)


def main() -> None:
    cli(prog_name="stepline")


if __name__ == "__main__":
    main()
