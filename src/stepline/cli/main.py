"""``stepline``: the command-line entry point (console script ``stepline = stepline.cli.main:main``)."""

from __future__ import annotations

import json
from typing import Any, Literal

import click
from rich.text import Text

import stepline
from stepline.cli.common import CliError, NotFoundError, compact, db_option, opened_store, run_async
from stepline.cli.db import db_group
from stepline.cli.display import Column, Look, plural
from stepline.cli.events import events_group
from stepline.cli.runs import resolve_function, runs_group
from stepline.cli.server import dev_command, start_command
from stepline.cli.worker import worker_command
from stepline.core.engine import Engine
from stepline.core.errors import EventValidationError, UnknownFunctionError
from stepline.core.scheduler import NotACronFunction, run_cron_now
from stepline.storage.records import FunctionRecord, IngestResult


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(stepline.__version__, "--version", "-V", prog_name="stepline")
@db_option(envvar=True)
def cli() -> None:
    """Stepline: durable, event-driven functions on SQLite or PostgreSQL."""


def parse_data(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--data is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise CliError("--data is nested too deeply") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise CliError(f"--data cannot be read: {exc}") from None
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
    """Send event NAME; report the runs it started or resumed.

    Prints the event's id on stdout, then (on stderr) the runs it started, the waiting runs it resumed and the
    runs it cancelled. The database must exist: a worker or the server creates it."""
    event: dict[str, Any] = {"name": name, "data": parse_data(data_text)}
    if event_id:
        event["id"] = event_id

    async def go() -> tuple[IngestResult, dict[str, str]]:
        async with opened_store(ctx, must_exist=True) as store:
            # The engine alone: registering a client here would replace the functions of an app of that id.
            try:
                result = await Engine(store).ingest(event)
            except EventValidationError as exc:
                raise CliError(str(exc)) from None
            ids = [*result.created_run_ids, *result.woken_run_ids, *result.cancelled_run_ids,
                   *result.flow_skipped_run_ids]  # fmt: skip
            functions = {}
            for run_id in ids:
                run = await store.get_run(run_id)
                functions[run_id] = run.function_id if run is not None else "?"
            return result, functions

    result, functions = run_async(go())
    click.echo(result.event_ids[0])
    report_ingest(Look.of("stderr"), name, result, functions)


def report_ingest(look: Look, name: str, result: IngestResult, functions: dict[str, str]) -> None:
    """What an event did, one line per kind of effect and one per run."""
    created = [r for r in result.created_run_ids if r not in result.flow_skipped_run_ids]
    effects: list[tuple[Literal["ok", "note", "warn"], list[str], str, str]] = [
        ("ok", created, "started {}:", "run"),
        ("ok", result.woken_run_ids, "resumed {}:", "waiting run"),
        ("warn", result.cancelled_run_ids, "cancelled {}:", "run"),
        ("note", result.flow_skipped_run_ids, "stored {} as skipped (flow control):", "run"),
    ]
    said = False
    for kind, run_ids, template, noun in effects:
        if not run_ids:
            continue
        said = True
        look.say(kind, template.format(plural(len(run_ids), noun)))
        for run_id in run_ids:
            look.line(Text("    ").append(run_id).append("  ").append(look.styled(functions.get(run_id, ""), "cyan")))
    if result.merged_run_ids:
        said = True
        look.say("ok", f"joined {plural(len(result.merged_run_ids), 'pending run')} (debounce or batch)")
    if result.skipped_run_ids:
        said = True
        look.say("note", f"started {plural(len(result.skipped_run_ids), 'run')} fewer: the event id or "
                         "idempotency key was already used")  # fmt: skip
    if not said:
        look.say("note", f"started no runs and resumed none: no registered function is triggered by {name!r} "
                         "and no run waits for it")  # fmt: skip


@cli.group("functions")
def functions_group() -> None:
    """List, pause and resume functions; run a cron now."""


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
    """List the registered functions and their triggers.

    Functions registered by workers and the server, with their triggers, flow control and whether paused."""

    async def go() -> tuple[list[FunctionRecord], dict[str, int]]:
        async with opened_store(ctx, must_exist=True) as store:
            return await store.list_functions(), await store.paused_functions()

    functions, paused = run_async(go())
    if as_json:
        for f in functions:
            click.echo(compact({"id": f.id, "app_id": f.app_id, "slug": f.slug, "name": f.name, **f.config,
                                "paused": f.id in paused}))  # fmt: skip
        return
    if not functions:
        Look.of("stderr").say("note", "no registered functions (a worker or `stepline dev --app` registers them)")
        return
    look = Look.of("stdout")
    table = look.table(Column("ID", max_width=36), Column("APP"), Column("TRIGGERS", wrap=True, min_width=20),
                       Column("STATE"))  # fmt: skip
    for f in functions:
        table.add_row(f.id, f.app_id, describe_triggers(f), look.styled("paused", "yellow") if f.id in paused else "")
    look.print_table(table)


def _function_action(ctx: click.Context, name: str, action: Literal["pause", "resume"]) -> tuple[str, bool]:
    """The function's full id (``name`` may be its slug, as in ``runs list --function``) and whether it changed."""

    async def go() -> tuple[str, bool]:
        async with opened_store(ctx, must_exist=True) as store:
            engine = Engine(store)
            function_id = await resolve_function(store, name)
            if await engine.find_function(function_id) is None:
                raise NotFoundError(f"no registered function has the id {name!r} (`stepline functions list` "
                                    "lists them)")  # fmt: skip
            if action == "pause":
                return function_id, await engine.pause_function(function_id)
            return function_id, await engine.resume_function(function_id)

    return run_async(go())


@functions_group.command("pause")
@click.argument("function_id")
@db_option()
@click.pass_context
def pause_function(ctx: click.Context, function_id: str) -> None:
    """Pause FUNCTION_ID on every node.

    FUNCTION_ID is its full id or its slug. On every node sharing the database: its runs are still created but
    wait ("function paused"), running ones stop before their next step, its crons do not fire. Re-syncing its app
    keeps it paused."""
    function_id, changed = _function_action(ctx, function_id, "pause")
    Look.of("stderr").say("ok" if changed else "note", f"{function_id} {'paused' if changed else 'was paused already'}")


@functions_group.command("resume")
@click.argument("function_id")
@db_option()
@click.pass_context
def resume_function(ctx: click.Context, function_id: str) -> None:
    """Resume FUNCTION_ID; its held runs start.

    FUNCTION_ID is its full id or its slug. The runs held while it was paused start in the order they fell due
    (cron times missed while paused are not fired)."""
    function_id, changed = _function_action(ctx, function_id, "resume")
    Look.of("stderr").say("ok" if changed else "note", f"{function_id} {'resumed' if changed else 'was not paused'}")


@functions_group.command("run-cron")
@click.argument("function_id")
@db_option()
@click.pass_context
def run_cron(ctx: click.Context, function_id: str) -> None:
    """Run cron function FUNCTION_ID now.

    A fresh inngest/scheduled.timer event and its run (printed on stdout); the next scheduled time stays as it
    was."""

    async def go() -> tuple[str, str]:
        async with opened_store(ctx, must_exist=True) as store:
            try:
                return await run_cron_now(Engine(store), function_id)
            except UnknownFunctionError as exc:
                raise NotFoundError(str(exc)) from None
            except NotACronFunction as exc:
                raise CliError(str(exc)) from None

    event_id, run_id = run_async(go())
    click.echo(run_id)
    Look.of("stderr").say("ok", f"started run {run_id} of {function_id} (timer event {event_id})")


cli.add_command(worker_command)
cli.add_command(runs_group)
cli.add_command(events_group)
cli.add_command(db_group)
cli.add_command(dev_command)
cli.add_command(start_command)


def main() -> None:
    cli(prog_name="stepline")


if __name__ == "__main__":
    main()
