"""``stepline events list | show | replay``: the events in the store, the runs each one started, replays."""

from __future__ import annotations

import click

from stepline.cli.common import CliError, NotFoundError, compact, db_option, iso, opened_store, run_async
from stepline.cli.display import Column, Look, ago, one_line, plural
from stepline.cli.runs import event_dict, run_dict, runs_table
from stepline.core.engine import Engine
from stepline.core.events import StoredEvent
from stepline.core.replay import Replayed, ReplayError, replay_event
from stepline.storage.records import RunFilter, RunRecord


@click.group("events")
def events_group() -> None:
    """List events, show the runs each one started, replay one."""


@events_group.command("list")
@click.option(
    "--name",
    metavar="NAME",
    help="Only events with this name, or matching this pattern (* matches any characters: 'app/*').",
)
@click.option("--system", is_flag=True, help="Also the events Stepline sends (stepline/*, inngest/*).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@db_option()
@click.pass_context
def list_events(ctx: click.Context, name: str | None, system: bool, limit: int, as_json: bool) -> None:
    """List events, newest first, with their data.

    The events Stepline sends itself (a run's end, cron timers, invocations) are left out unless --system or
    --name asks for them."""

    async def go() -> list[StoredEvent]:
        async with opened_store(ctx, must_exist=True) as store:
            if name and "*" not in name:
                return await store.list_events(name, limit)  # an exact name: whatever it is
            return await store.find_events(name, limit, include_internal=system)

    events = run_async(go())
    if as_json:
        for event in events:
            click.echo(compact(event_dict(event)))
        return
    if not events:
        Look.of("stderr").say("note", "no events" + (f" named {name!r}" if name else ""))
        return
    look = Look.of("stdout")
    table = look.table(Column("EVENT ID"), Column("NAME", max_width=32), Column("RECEIVED"),
                       Column("DATA", clip=True, min_width=16))  # fmt: skip
    for event in events:
        table.add_row(event.internal_id, event.name, ago(event.received_at), one_line(compact(event.data)))
    look.print_table(table)


@events_group.command("replay")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="The new event's id and its runs as one JSON object.")
@db_option()
@click.pass_context
def replay(ctx: click.Context, event_id: str, as_json: bool) -> None:
    """Send a copy of event EVENT_ID as a new event.

    The copy has a new id and time, and the same name and data.

    Prints the new event's id on stdout, then (on stderr) the runs it started. Unlike `stepline runs rerun`, which
    starts one run again, the copy starts every run its name and data trigger now."""

    async def go() -> Replayed:
        async with opened_store(ctx, must_exist=True) as store:
            try:
                return await replay_event(Engine(store), event_id)
            except ReplayError as exc:
                raise (NotFoundError if exc.status == 404 else CliError)(str(exc)) from None

    done = run_async(go())
    if as_json:
        click.echo(compact({"replay_of": done.replay_of, "event_id": done.internal_id, "run_ids": done.run_ids}))
        return
    click.echo(done.internal_id)
    look = Look.of("stderr")
    started = plural(len(done.run_ids), "run")
    look.say("ok" if done.run_ids else "note", f"replayed {event_id}: the copy started {started}")
    for run_id in done.run_ids:
        look.line("    " + run_id)


@events_group.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="The event and its runs as one JSON object.")
@db_option()
@click.pass_context
def show_event(ctx: click.Context, event_id: str, as_json: bool) -> None:
    """Show an event: its data and the runs it started.

    EVENT_ID is the id `stepline send` printed (or the event API answered)."""

    async def go() -> tuple[StoredEvent, list[RunRecord]]:
        async with opened_store(ctx, must_exist=True) as store:
            event = await store.get_event(event_id)
            if event is None:
                raise NotFoundError(f"no event with id {event_id!r}")
            return event, await store.list_runs(RunFilter(event_id=event_id, limit=1000))

    event, runs = run_async(go())
    if as_json:
        click.echo(compact({**event_dict(event), "runs": [run_dict(r) for r in runs]}))
        return
    look = Look.of("stdout")
    fields: list[tuple[str, str | None]] = [("Event", event.internal_id), ("Name", event.name)]
    if event.id != event.internal_id:
        fields.append(("Id", f"{event.id} (the sender's: a second event with it starts no runs)"))
    fields += [("Time", f"{iso(event.ts)} ({ago(event.ts)})"), ("Received", iso(event.received_at)),
               ("Data", compact(event.data))]  # fmt: skip
    look.fields(fields)
    look.line()
    look.line(look.styled(f"Runs it started ({len(runs)})", "bold"))
    if runs:
        runs_table(look, runs)
