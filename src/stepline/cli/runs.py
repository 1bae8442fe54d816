"""``stepline runs list | show | cancel``: inspect and cancel runs in the store."""

from __future__ import annotations

from typing import Any

import click

from stepline.cli.common import (
    NotFoundError,
    compact,
    db_option,
    describe_idle,
    format_error,
    iso,
    opened_store,
    run_async,
    shorten,
    table,
)
from stepline.core.engine import Engine
from stepline.core.events import StoredEvent
from stepline.storage import Store
from stepline.storage.records import RunFilter, RunLogLine, RunRecord, StepRecord

STATUSES = ["queued", "running", "completed", "failed", "cancelled"]
LIVE = ("queued", "running")


def run_dict(run: RunRecord) -> dict[str, Any]:
    return {
        "id": run.id,
        "function_id": run.function_id,
        "status": run.status,
        "attempt": run.attempt,
        "event_id": run.event_id,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
        "due_at": iso(run.due_at) if run.status in LIVE else None,
        "idle_reason": run.idle_reason if run.status in (*LIVE, "skipped") else None,
        "output": run.output,
        "error": run.error,
        "lease_owner": run.lease_owner,
        "parent_run_id": run.parent_run_id,
    }


def step_dict(step: StepRecord) -> dict[str, Any]:
    return {
        "id": step.display_id,
        "kind": step.kind,
        "status": step.status,
        "attempts": step.attempts,
        "output": step.output,
        "error": step.error,
        "wake_at": iso(step.wake_at),
        "started_at": iso(step.started_at),
        "ended_at": iso(step.ended_at),
    }


def event_dict(event: StoredEvent) -> dict[str, Any]:
    return {"internal_id": event.internal_id, **event.as_dict(), "ts": iso(event.ts),
            "received_at": iso(event.received_at)}  # fmt: skip


async def _resolve_function(store: Store, name: str) -> str:
    """A full function id as given, or the id of the only registered function with that slug."""
    functions = await store.list_functions()
    if any(f.id == name for f in functions):
        return name
    matches = [f.id for f in functions if f.slug == name]
    return matches[0] if len(matches) == 1 else name


@click.group("runs")
def runs_group() -> None:
    """Inspect and cancel function runs."""


@runs_group.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only runs with this status.")
@click.option("--function", "function", metavar="ID", help="Only runs of this function (full id or slug).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@db_option()
@click.pass_context
def list_runs(ctx: click.Context, status: str | None, function: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first."""

    async def go() -> list[RunRecord]:
        async with opened_store(ctx, must_exist=True) as store:
            fn = await _resolve_function(store, function) if function else None
            return await store.list_runs(RunFilter(status=status, function_id=fn, limit=limit))

    runs = run_async(go())
    if as_json:
        for run in runs:
            click.echo(compact(run_dict(run)))
        return
    if not runs:
        click.echo("no runs", err=True)
        return
    rows = [
        [r.id, r.function_id, r.status, iso(r.created_at) or "", iso(r.ended_at) or "",
         shorten(describe_idle(r.idle_reason) if r.status in (*LIVE, "skipped") else format_error(r.error), 70)]
        for r in runs
    ]  # fmt: skip
    click.echo(table(["RUN ID", "FUNCTION", "STATUS", "CREATED", "ENDED", "IDLE / ERROR"], rows))


def _print_run(run: RunRecord, event: StoredEvent | None, steps: list[StepRecord]) -> None:
    fields = [
        ("Run", run.id),
        ("Function", run.function_id),
        ("Status", f"{run.status} (attempt {run.attempt})"),
        ("Created", iso(run.created_at)),
        ("Started", iso(run.started_at)),
        ("Ended", iso(run.ended_at)),
    ]
    if run.parent_run_id:
        fields.append(("Parent", f"{run.parent_run_id} (step {run.parent_step_id})"))
    if run.status in LIVE:
        fields.append(("Idle", describe_idle(run.idle_reason) or ("executing" if run.lease_owner else "")))
        if run.lease_owner:
            fields.append(("Worker", f"{run.lease_owner} (lease until {iso(run.lease_expires_at)})"))
        elif run.due_at is not None:
            fields.append(("Next due", iso(run.due_at)))
    if run.status == "completed":
        fields.append(("Output", compact(run.output)))
    if run.error:
        fields.append(("Error" if run.status != "running" else "Last error", format_error(run.error)))
    if event is not None:
        user_id = f", id {event.id}" if event.id != event.internal_id else ""
        fields.append(("Trigger", f"{event.name} (event {event.internal_id}{user_id}, at {iso(event.ts)})"))
        fields.append(("Data", compact(event.data)))
    else:
        fields.append(("Trigger", f"event {run.event_id} (not found)"))
    for label, value in fields:
        click.echo(f"{label + ':':<12}{value if value is not None else '-'}")
    click.echo(f"\nSteps ({len(steps)}):")
    if not steps:
        return
    rows = []
    for s in steps:
        result = format_error(s.error) if s.error and s.status != "completed" else compact(s.output)
        if s.status in ("sleeping", "waiting", "invoking", "retrying") and s.wake_at is not None:
            result = f"until {iso(s.wake_at)}" + (f"; last error {format_error(s.error)}" if s.error else "")
        rows.append([s.display_id, s.kind, s.status, str(s.attempts), iso(s.started_at) or "",
                     iso(s.ended_at) or "", shorten(result, 80)])  # fmt: skip
    click.echo(table(["STEP", "KIND", "STATUS", "ATTEMPTS", "STARTED", "ENDED", "OUTPUT / ERROR"], rows))


def _log_rows(logs: list[RunLogLine], steps: list[StepRecord]) -> list[dict[str, Any]]:
    names = {s.step_id: s.display_id for s in steps}
    return [{"seq": line.seq, "ts": iso(line.ts), "level": line.level, "logger": line.logger,
             "step": names.get(line.step_id, line.step_id) if line.step_id else None, "message": line.message}
            for line in logs]  # fmt: skip


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The run, its trigger event and steps as one JSON object.")
@click.option("--logs", "last_logs", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the run's last log lines to show (0: none).")  # fmt: skip
@db_option()
@click.pass_context
def show_run(ctx: click.Context, run_id: str, as_json: bool, last_logs: int) -> None:
    """Show a run: status, output or error, why it is idle, its trigger event, its steps and its last log lines."""

    async def go() -> tuple[RunRecord, StoredEvent | None, list[StepRecord], list[RunLogLine]]:
        async with opened_store(ctx, must_exist=True) as store:
            run = await store.get_run(run_id)
            if run is None:
                raise NotFoundError(f"no run with id {run_id!r}")
            logs = await store.list_run_logs(run_id) if last_logs else []
            return run, await store.get_event(run.event_id), await store.list_steps(run_id), logs

    run, event, steps, logs = run_async(go())
    shown = _log_rows(logs[-last_logs:] if last_logs else [], steps)
    if as_json:
        out = run_dict(run)
        out["event"] = event_dict(event) if event is not None else None
        out["steps"] = [step_dict(s) for s in steps]
        out["logs"] = shown
        click.echo(compact(out))
        return
    _print_run(run, event, steps)
    if shown:
        click.echo(f"\nLogs (last {len(shown)} of {len(logs)}):")
        for row in shown:
            first, *more = row["message"].splitlines() or [""]
            step = f" [{row['step']}]" if row["step"] else ""
            click.echo(f"{row['ts']} {row['level']:<8}{step} {first}" + (f" (+{len(more)} lines)" if more else ""))


@runs_group.command("cancel")
@click.argument("run_id")
@db_option()
@click.pass_context
def cancel_run(ctx: click.Context, run_id: str) -> None:
    """Cancel a queued or running run (a no-op, said so, if it has already ended)."""

    async def go() -> tuple[bool, RunRecord | None]:
        async with opened_store(ctx, must_exist=True) as store:
            if await store.get_run(run_id) is None:
                raise NotFoundError(f"no run with id {run_id!r}")
            cancelled = await Engine(store).cancel_run(run_id, reason="cancelled with the stepline CLI")
            return cancelled, await store.get_run(run_id)

    cancelled, run = run_async(go())
    status = run.status if run is not None else "unknown"
    if cancelled:
        click.echo(f"cancelled run {run_id}")
    else:
        click.echo(f"run {run_id} had already ended ({status}); nothing to cancel")
