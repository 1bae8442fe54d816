"""``stepline runs list | show | cancel | rerun``: inspect runs in the store, cancel and rerun them (one by id, or
every run matching a filter, with a progress display)."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import click
from rich.text import Text

from stepline.cli.common import (
    CliError,
    NotFoundError,
    compact,
    db_option,
    format_error,
    iso,
    opened_store,
    run_async,
    shorten,
)
from stepline.cli.display import Column, Look, ago, plural, took
from stepline.core.engine import PAUSED_REASON, Engine
from stepline.core.events import StoredEvent
from stepline.core.rerun import RerunError, StepNotFoundError, rerun
from stepline.storage import Store
from stepline.storage.records import RunFilter, RunLogLine, RunRecord, StepRecord
from stepline.storage.states import LIVE, describe_idle

STATUSES = ["queued", "running", "completed", "failed", "cancelled", "skipped"]
ENDED = ("completed", "failed", "cancelled")
BULK_PAGE = 500
BULK_RERUN_MAX = 1000  # as the dashboard's bulk rerun


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


def run_note(run: RunRecord) -> str:
    """Why a live or skipped run is idle, or how an ended one failed."""
    if run.status in (*LIVE, "skipped"):
        return describe_idle(run.idle_reason) or ("executing" if run.status == "running" else "")
    return format_error(run.error)


def runs_table(look: Look, runs: list[RunRecord]) -> None:
    table = look.table(Column("RUN ID"), Column("FUNCTION", max_width=28), Column("STATUS"), Column("CREATED"),
                       Column("TOOK"), Column("NOTE", wrap=True, min_width=16))  # fmt: skip
    for r in runs:
        duration = took(r.started_at, r.ended_at) if r.ended_at is not None else ""
        table.add_row(r.id, r.function_id, look.status(r.status), ago(r.created_at), duration,
                      shorten(run_note(r), 300))  # fmt: skip
    look.print_table(table)


async def with_pause_reason(store: Store, runs: list[RunRecord]) -> list[RunRecord]:
    """The runs, a live one of a paused function (not executing right now) saying so, as the dashboard does: a
    held run's stored reason is only written when a worker gets to it."""
    paused = await store.paused_functions() if any(r.status in LIVE for r in runs) else {}
    now = int(time.time() * 1000)
    for r in runs:
        leased = r.lease_owner is not None and (r.lease_expires_at or 0) > now
        if r.status in LIVE and r.function_id in paused and not leased:
            r.idle_reason = PAUSED_REASON
    return runs


async def resolve_function(store: Store, name: str) -> str:
    """A full function id as given, or the id of the only registered function with that slug."""
    functions = await store.list_functions()
    if any(f.id == name for f in functions):
        return name
    matches = [f.id for f in functions if f.slug == name]
    return matches[0] if len(matches) == 1 else name


@click.group("runs")
def runs_group() -> None:
    """List, show, cancel and rerun function runs."""


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
            fn = await resolve_function(store, function) if function else None
            return await with_pause_reason(store, await store.list_runs(RunFilter(status=status, function_id=fn,
                                                                                  limit=limit)))  # fmt: skip

    runs = run_async(go())
    if as_json:
        for run in runs:
            click.echo(compact(run_dict(run)))
        return
    if not runs:
        Look.of("stderr").say("note", "no runs" + (f" with status {status}" if status else "") +
                              (f" of function {function!r}" if function else ""))  # fmt: skip
        return
    runs_table(Look.of("stdout"), runs)


def _status_line(look: Look, run: RunRecord) -> Text:
    text = look.status(run.status)
    if run.attempt:
        text.append(f" (attempt {run.attempt + 1}: retried {plural(run.attempt, 'time')})")
    return text


def _print_run(look: Look, run: RunRecord, event: StoredEvent | None, steps: list[StepRecord]) -> None:
    def at(ms: int | None) -> str | None:
        return f"{iso(ms)} ({ago(ms)})" if ms is not None else None

    fields: list[tuple[str, str | Text | None]] = [
        ("Run", run.id),
        ("Function", run.function_id),
        ("Status", _status_line(look, run)),
        ("Created", at(run.created_at)),
        ("Started", at(run.started_at)),
    ]
    if run.ended_at is not None:
        fields.append(("Ended", f"{at(run.ended_at)}, took {took(run.started_at or run.created_at, run.ended_at)}"))
    if run.parent_run_id:
        fields.append(("Parent", f"{run.parent_run_id} (step {run.parent_step_id})"))
    if run.status in (*LIVE, "skipped"):
        fields.append(("Why idle" if run.status != "skipped" else "Why skipped", run_note(run)))
        if run.lease_owner:
            fields.append(("Worker", f"{run.lease_owner} (lease until {iso(run.lease_expires_at)})"))
        elif run.due_at is not None and run.status in LIVE:
            fields.append(("Next due", iso(run.due_at)))
    if run.status == "completed":
        fields.append(("Output", compact(run.output)))
    if run.error:
        label = "Error" if run.status != "running" else "Last error"
        fields.append((label, look.styled(format_error(run.error), "red" if run.status == "failed" else "")))
    if event is not None:
        user_id = f", id {event.id}" if event.id != event.internal_id else ""
        fields.append(("Trigger", f"{event.name} (event {event.internal_id}{user_id}, at {iso(event.ts)})"))
        fields.append(("Data", compact(event.data)))
    else:
        fields.append(("Trigger", f"event {run.event_id} (not found)"))
    look.fields(fields)
    look.line()
    look.line(look.styled(f"Steps ({len(steps)})", "bold"))
    if not steps:
        return
    table = look.table(Column("STEP", max_width=30), Column("KIND"), Column("STATUS"), Column("TRIES"),
                       Column("TOOK"), Column("OUTPUT / ERROR", wrap=True, min_width=20))  # fmt: skip
    for s in steps:
        result = format_error(s.error) if s.error and s.status != "completed" else compact(s.output)
        if s.status in ("sleeping", "waiting", "invoking", "retrying") and s.wake_at is not None:
            result = f"until {iso(s.wake_at)}" + (f"; last error {format_error(s.error)}" if s.error else "")
        table.add_row(s.display_id, s.kind, look.status(s.status), str(s.attempts), took(s.started_at, s.ended_at),
                      shorten(result, 300))  # fmt: skip
    look.print_table(table)


def _log_rows(logs: list[RunLogLine], steps: list[StepRecord]) -> list[dict[str, Any]]:
    names = {s.step_id: s.display_id for s in steps}
    return [{"seq": line.seq, "ts": iso(line.ts), "level": line.level, "logger": line.logger,
             "step": names.get(line.step_id, line.step_id) if line.step_id else None, "message": line.message}
            for line in logs]  # fmt: skip


_LEVEL_STYLE = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red", "DEBUG": "bright_black"}


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The run, its trigger event and steps as one JSON object.")
@click.option("--logs", "last_logs", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the run's last log lines to show (0: none).")  # fmt: skip
@db_option()
@click.pass_context
def show_run(ctx: click.Context, run_id: str, as_json: bool, last_logs: int) -> None:
    """Show a run: status, output, error, steps and logs.

    Also why a live run is idle and the event that triggered it."""

    async def go() -> tuple[RunRecord, StoredEvent | None, list[StepRecord], list[RunLogLine]]:
        async with opened_store(ctx, must_exist=True) as store:
            run = await store.get_run(run_id)
            if run is None:
                raise NotFoundError(f"no run with id {run_id!r}")
            logs = await store.list_run_logs(run_id) if last_logs else []
            [run] = await with_pause_reason(store, [run])
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
    look = Look.of("stdout")
    _print_run(look, run, event, steps)
    if shown:
        look.line()
        look.line(look.styled(f"Logs (last {len(shown)} of {len(logs)})", "bold"))
        for row in shown:
            first, *more = row["message"].splitlines() or [""]
            line = Text(f"{row['ts']} ")
            line.append(look.styled(f"{row['level']:<8}", _LEVEL_STYLE.get(row["level"], "")))
            line.append(
                (f"[{row['step']}] " if row["step"] else "") + first + (f" (+{len(more)} lines)" if more else "")
            )
            look.line(line)


# --- cancel and rerun: one run by id, or every run matching a filter ---


def _confirm(what: str, yes: bool) -> None:
    """Ask before a bulk action on a terminal; elsewhere ``--yes`` must say it."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"{what}? Add --yes to do it without a question.")
    if not click.confirm(f"{what}?", default=False, err=True):
        raise click.Abort()


async def _matching_runs(store: Store, statuses: tuple[str, ...], function_id: str | None) -> list[RunRecord]:
    out: list[RunRecord] = []
    for status in statuses:
        before: str | None = None
        while True:
            page = await store.list_runs(RunFilter(status=status, function_id=function_id, limit=BULK_PAGE,
                                                   before_id=before))  # fmt: skip
            out += page
            if len(page) < BULK_PAGE:
                break
            before = page[-1].id
    return sorted(out, key=lambda r: r.id)


async def _each_with_progress(look: Look, verb: str, runs: list[RunRecord],
                              action: Callable[[RunRecord], Awaitable[bool]]) -> int:  # fmt: skip
    done = 0
    with look.progress(f"{verb} {plural(len(runs), 'run')}", total=len(runs)) as bar:
        for run in runs:
            done += bool(await action(run))
            bar.advance()
    return done


def _filter_words(status: str | None, statuses: tuple[str, ...], function_id: str | None) -> str:
    which = status or " or ".join(statuses)
    return f"{which} runs" + (f" of {function_id}" if function_id else " of every function")


@runs_group.command("cancel")
@click.argument("run_ids", metavar="[RUN_ID]...", nargs=-1)
@click.option("--function", "function", metavar="ID", help="Cancel every live run of this function (id or slug).")
@click.option("--status", type=click.Choice(LIVE), help="With --function or --all: only queued or running runs.")
@click.option("--all", "every", is_flag=True, help="Cancel the live runs of every function.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before cancelling runs by filter.")
@db_option()
@click.pass_context
def cancel_runs(ctx: click.Context, run_ids: tuple[str, ...], function: str | None, status: str | None, every: bool,
                yes: bool) -> None:  # fmt: skip
    """Cancel runs by id, or by function (--function) or all (--all).

    By filter, every queued and running run matching it is cancelled (asked first, unless --yes)."""
    by_filter = bool(function or every)
    if by_filter == bool(run_ids):
        raise CliError("give run ids, or --function ID or --all (not both)")
    if status and not by_filter:
        raise CliError("--status filters --function or --all; a run given by id is cancelled whatever its status")
    look = Look.of("stderr")

    async def go() -> None:
        async with opened_store(ctx, must_exist=True) as store:
            engine = Engine(store)

            async def cancel(run: RunRecord) -> bool:
                return await engine.cancel_run(run.id, reason="cancelled with the stepline CLI")

            if not by_filter:
                for run_id in run_ids:
                    run = await store.get_run(run_id)
                    if run is None:
                        raise NotFoundError(f"no run with id {run_id!r}")
                    if await cancel(run):
                        look.say("ok", f"cancelled run {run_id} ({run.function_id})")
                    else:
                        ended = await store.get_run(run_id)
                        look.say("note", f"run {run_id} had already ended "
                                         f"({ended.status if ended else run.status}); nothing to cancel")  # fmt: skip
                return
            function_id = await resolve_function(store, function) if function else None
            statuses = (status,) if status else LIVE
            runs = await _matching_runs(store, statuses, function_id)
            words = _filter_words(status, statuses, function_id)
            if not runs:
                look.say("note", f"no {words} to cancel")
                return
            _confirm(f"Cancel {plural(len(runs), 'run')} ({words})", yes)
            done = await _each_with_progress(look, "cancelling", runs, cancel)
            note = f" ({len(runs) - done} had ended meanwhile)" if done < len(runs) else ""
            look.say("ok", f"cancelled {plural(done, 'run')}{note}")

    run_async(go())


@runs_group.command("rerun")
@click.argument("run_id", required=False)
@click.option("--from-step", metavar="STEP", help="Rerun from this step (its name): earlier steps are not redone.")
@click.option("--function", "function", metavar="ID", help="Rerun the ended runs of this function (id or slug).")
@click.option("--status", type=click.Choice(ENDED), help="With --function or --all: runs with this status "
              "(default failed).")  # fmt: skip
@click.option("--all", "every", is_flag=True, help="Rerun the matching runs of every function.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before rerunning runs by filter.")
@db_option()
@click.pass_context
def rerun_runs(ctx: click.Context, run_id: str | None, from_step: str | None, function: str | None,
               status: str | None, every: bool, yes: bool) -> None:  # fmt: skip
    """Start runs again: one by id, or failed runs by filter.

    A rerun is a new run of the same function with the same trigger event; --from-step keeps the steps before
    that one. By filter (--function or --all), the failed runs (or --status) are rerun, asked first unless --yes.
    Prints the new runs' ids."""
    by_filter = bool(function or every)
    if by_filter == bool(run_id):
        raise CliError("give a run id, or --function ID or --all (not both)")
    if from_step and by_filter:
        raise CliError("--from-step reruns one run: give its id")
    look = Look.of("stderr")

    async def go() -> None:
        async with opened_store(ctx, must_exist=True) as store:
            engine = Engine(store)
            if run_id is not None:
                try:
                    new_id = await rerun(engine, run_id, from_step)
                except StepNotFoundError as exc:
                    raise CliError(str(exc)) from None
                except LookupError as exc:
                    raise NotFoundError(str(exc)) from None
                except RerunError as exc:
                    raise CliError(str(exc)) from None
                click.echo(new_id)
                origin = f" from step {from_step!r}" if from_step else ""
                look.say("ok", f"started run {new_id}: a rerun of {run_id}{origin}")
                return
            function_id = await resolve_function(store, function) if function else None
            wanted = status or "failed"
            runs = await _matching_runs(store, (wanted,), function_id)
            words = _filter_words(wanted, (wanted,), function_id)
            if not runs:
                look.say("note", f"no {words} to rerun")
                return
            if len(runs) > BULK_RERUN_MAX:
                raise CliError(f"{len(runs)} {words} match; a bulk rerun starts at most {BULK_RERUN_MAX}: "
                               "narrow it with --function")  # fmt: skip
            _confirm(f"Rerun {plural(len(runs), 'run')} ({words})", yes)
            failed: list[str] = []
            started: list[str] = []  # printed after the progress display, which would otherwise break the lines

            async def again(run: RunRecord) -> bool:
                try:
                    started.append(await rerun(engine, run.id))
                    return True
                except RerunError as exc:
                    failed.append(str(exc))
                    return False

            done = await _each_with_progress(look, "rerunning", runs, again)
            for new_id in started:
                click.echo(new_id)
            look.say("ok", f"started {plural(done, 'rerun')} of {words}")
            for reason in failed[:5]:
                look.say("warn", reason)
            if len(failed) > 5:
                look.say("warn", f"... and {len(failed) - 5} more that could not start again")

    run_async(go())
