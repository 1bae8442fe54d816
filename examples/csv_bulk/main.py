"""Run the bulk CSV demo end to end in one process.

    python examples/csv_bulk/main.py [--csv FILE] [--batch-size N] [--timeout SECONDS]

Starts a Stepline worker on this process's event loop, sends one ``csv/uploaded`` event for the sample CSV,
prints the job's progress as the batches commit it, then the run's output and its steps. Exits 0 when the
run completed, 1 when it failed, 2 when it did not finish in time.

Stepline's database is ``STEPLINE_DB`` (default ``.stepline/stepline.db`` in the current directory); the
example's own tables (progress, customers) live in ``csv_bulk.db`` next to it (or ``CSV_BULK_DB``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so `import app` works from any directory

import app

from stepline import RunRecord, Stepline

SAMPLE = Path(__file__).resolve().parent / "sample.csv"
POLL_SECONDS = 0.05
FAILURE_GRACE_SECONDS = 5.0
CRM_LATENCY = 0.02  # a pretend network round trip per row, so the progress is visible


def progress_line(p: dict[str, Any]) -> str:
    return (
        f"  [{p['status']:>9}] batch {p['batches_done']}/{p['total_batches']}  "
        f"rows {p['processed_rows']}/{p['total_rows']} ({p['percent']}%)  "
        f"ok={p['ok_rows']} errors={p['error_rows']}" + (f"  {p['error']}" if p["error"] else "")
    )


async def find_run(client: Stepline, event_id: str) -> RunRecord:
    runs = [r for r in await client.runs_for_event(event_id) if r.function_id == app.FUNCTION_ID]
    if len(runs) != 1:
        raise RuntimeError(f"expected one {app.FUNCTION_ID} run for event {event_id}, found {len(runs)}")
    return runs[0]


async def follow(client: Stepline, db: app.AppDB, job_id: str, run_id: str) -> RunRecord:
    """Print each new state of the job's progress row until the run ends."""
    last: dict[str, Any] | None = None
    ended: float | None = None
    while True:
        progress = await asyncio.to_thread(db.progress, job_id)
        if progress is not None:
            shown = {k: v for k, v in progress.items() if k != "updated_at"}
            if shown != last:
                print(progress_line(progress), flush=True)
                last = shown
        run = await client.get_run(run_id)
        assert run is not None
        if run.ended:
            if run.status != "failed" or (progress or {}).get("status") == "failed":
                return run
            # on_failure runs as its own run just after: give it a moment to mark the job failed
            ended = ended if ended is not None else time.monotonic()
            if time.monotonic() - ended > FAILURE_GRACE_SECONDS:
                return run
        await asyncio.sleep(POLL_SECONDS)


async def demo(csv_path: Path, batch_size: int, timeout: float) -> int:
    client = app.make_client(crm_latency=CRM_LATENCY)
    stepline_db, app_db = app.resolve_paths()
    db = app.AppDB(app_db)
    await client.ready()
    worker = client.worker()
    worker_task = asyncio.create_task(worker.run(), name="stepline-worker")
    started = time.monotonic()
    try:
        job_id = f"job-{uuid.uuid4().hex[:8]}"
        print(f"Stepline database: {stepline_db}\nApp database:      {app_db}")
        print(f"Sending csv/uploaded for {csv_path.name} (job {job_id}, batch_size={batch_size})")
        event = {"name": app.EVENT, "data": {"job_id": job_id, "path": str(csv_path), "batch_size": batch_size}}
        [event_id] = await client.send(event)
        run = await find_run(client, event_id)
        print(f"Run {run.id} started; progress:")
        try:
            async with asyncio.timeout(timeout):
                run = await follow(client, db, job_id, run.id)
        except TimeoutError:
            print(f"error: run {run.id} did not finish within {timeout:g} s", file=sys.stderr)
            return 2
        print(f"\nRun {run.status} in {time.monotonic() - started:.2f} s.")
        if run.status == "completed":
            print("Output:")
            print(json.dumps(run.output, indent=2))
        else:
            err = run.error or {}
            print(f"Error: {err.get('name')}: {err.get('message')}")
        print("\nSteps:")
        for s in await client.steps(run.id):
            retried = "  <- retried after a transient error" if s.kind == "run" and s.attempts > 1 else ""
            print(f"  {s.display_id:<10} {s.kind:<6} {s.status:<10} attempts={s.attempts}{retried}")
        if run.status == "completed":
            out = run.output
            print(f"\nSummary: job {out['job_id']}: rows={out['rows']} ok={out['ok']} errors={len(out['errors'])}")
            return 0
        return 1
    finally:
        worker.stop()
        await worker_task
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the bulk CSV demo end to end in one process.")
    parser.add_argument("--csv", type=Path, default=SAMPLE, help="the CSV file to process (default: sample.csv)")
    parser.add_argument("--batch-size", type=int, default=app.DEFAULT_BATCH_SIZE, help="rows per batch step")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="  (%(name)s) %(message)s", stream=sys.stdout)
    return asyncio.run(demo(args.csv.resolve(), args.batch_size, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
