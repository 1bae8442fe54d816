"""Bulk CSV processing as a durable Stepline function.

A port of a common Inngest flow: an upload sends ``csv/uploaded``; the ``process-csv`` function parses the
file, then processes it in batches, one ``step.run`` per batch, writing progress to the app's own database
after every batch so a UI (here: ``main.py``) can show it while the job runs.

What each piece demonstrates:

* ``parse``: the first step. Its result (the parsed rows) is stored, so later replays of the function do
  not read or parse the file again. A malformed upload raises ``NonRetriableError``: retrying cannot fix it.
* ``batch-<n>``: one step per batch. A bad *row* (invalid email, unparsable amount) is data, not a failure:
  it is recorded in the batch result and the job goes on. A *transient* failure (the fake CRM below times out)
  raises, so Stepline retries the whole batch step after the function's backoff; batches already done are
  not run again.
* The writes a batch makes (normalised rows + the progress row) are idempotent upserts of absolute values,
  committed in one transaction. A step runs at least once: if the process dies after the commit but before
  Stepline records the step, the batch runs again and writes the same values.
* ``summarise``: the run's output, ``{job_id, rows, ok, errors: [...]}``.
* ``on_failure``: when the run fails for good, a separate run marks the job failed in the progress table.
* Realtime (for the web page, ``web.py``): ``ctx.publish`` sends the job's progress on channel ``csv:<job_id>``,
  topic ``progress``, after each batch; ``ctx.step.publish`` sends the summary (or the failure) on topic ``result``.

Row numbers in errors are 1-based data rows (the first row after the header is row 1); ``line`` is the line
in the file (the header is line 1).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from stepline import Backoff, Clock, NonRetriableError, Stepline, SyncContext
from stepline.storage import default_db_location

log = logging.getLogger("csv_bulk")

APP_ID = "csv-bulk"
EVENT = "csv/uploaded"
FUNCTION_ID = f"{APP_ID}-process-csv"  # Stepline ids are "<app_id>-<function id>"
REQUIRED_COLUMNS = ("customer_id", "name", "email", "amount")
DEFAULT_BATCH_SIZE = 5
MAX_BATCH_SIZE = 500
PROGRESS_DB_ENV = "CSV_BULK_DB"

# Retry a failed batch after 0.2 s, then 0.4 s (+ up to 50 ms jitter), so the demo's retry is visible but
# fast. The default schedule is Inngest's (15 s, 30 s, 1 min, ...), which suits real APIs better.
RETRY_BACKOFF = Backoff.exponential(
    dt.timedelta(milliseconds=200),
    max_delay=dt.timedelta(seconds=1),
    jitter=dt.timedelta(milliseconds=50),
)
RETRIES = 2  # as the original flow: a batch gets 3 attempts in all

_EMAIL = re.compile(r"^[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}$")
_FREE_MAIL = frozenset({"gmail.com", "yahoo.com", "outlook.com", "hotmail.com"})


# --------------------------------------------------------------------------------------------------------
# The app's own data: a small SQLite file next to Stepline's (like the seed's `csv_batches` table)
# --------------------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    job_id          TEXT PRIMARY KEY,
    status          TEXT NOT NULL,               -- running | completed | failed
    total_rows      INTEGER NOT NULL DEFAULT 0,
    processed_rows  INTEGER NOT NULL DEFAULT 0,
    ok_rows         INTEGER NOT NULL DEFAULT 0,
    error_rows      INTEGER NOT NULL DEFAULT 0,
    batches_done    INTEGER NOT NULL DEFAULT 0,
    total_batches   INTEGER NOT NULL DEFAULT 0,
    percent         INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    updated_at      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS customers (
    job_id       TEXT NOT NULL,
    row          INTEGER NOT NULL,
    customer_id  TEXT NOT NULL,
    name         TEXT NOT NULL,
    email        TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    segment      TEXT NOT NULL,
    tier         TEXT NOT NULL,
    PRIMARY KEY (job_id, row)
);
-- The fake CRM's memory of lookups, so "fails the first time" holds across processes and replays.
CREATE TABLE IF NOT EXISTS crm_calls (
    job_id TEXT NOT NULL,
    email  TEXT NOT NULL,
    calls  INTEGER NOT NULL,
    PRIMARY KEY (job_id, email)
);
"""


class AppDB:
    """The example's own database. Every call opens a short-lived connection (steps run in worker threads)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._tx() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers (the progress poller) never block the writer
            conn.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=10)) as conn:
            conn.row_factory = sqlite3.Row
            with conn:  # commit on success, roll back on error
                yield conn

    @staticmethod
    def _now() -> str:
        return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")

    # --- progress ---
    def start_job(self, job_id: str, total_rows: int, total_batches: int) -> None:
        with self._tx() as conn:
            conn.execute(
                """INSERT INTO progress (job_id, status, total_rows, total_batches, percent, updated_at)
                   VALUES (?, 'running', ?, ?, ?, ?)
                   ON CONFLICT (job_id) DO UPDATE SET status = 'running', total_rows = excluded.total_rows,
                       total_batches = excluded.total_batches, updated_at = excluded.updated_at""",
                (job_id, total_rows, total_batches, 100 if total_rows == 0 else 0, self._now()),
            )

    def save_batch(self, job_id: str, rows: list[dict[str, Any]], progress: Mapping[str, int]) -> None:
        """Store a batch's normalised rows and the job's progress after it, in one transaction."""
        total = progress["total_rows"]
        percent = 100 if total == 0 else progress["processed_rows"] * 100 // total
        with self._tx() as conn:
            conn.executemany(
                """INSERT OR REPLACE INTO customers
                   (job_id, row, customer_id, name, email, amount_cents, segment, tier)
                   VALUES (:job_id, :row, :customer_id, :name, :email, :amount_cents, :segment, :tier)""",
                [{"job_id": job_id, **r} for r in rows],
            )
            conn.execute(
                """UPDATE progress SET processed_rows = ?, ok_rows = ?, error_rows = ?, batches_done = ?,
                       percent = ?, updated_at = ?
                   WHERE job_id = ?""",
                (progress["processed_rows"], progress["ok_rows"], progress["error_rows"],
                 progress["batches_done"], percent, self._now(), job_id),
            )  # fmt: skip

    def finish_job(self, job_id: str, status: str, error: str | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                """INSERT INTO progress (job_id, status, error, updated_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, error = excluded.error,
                       updated_at = excluded.updated_at""",
                (job_id, status, error, self._now()),
            )

    def progress(self, job_id: str) -> dict[str, Any] | None:
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM progress WHERE job_id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else None

    def customers(self, job_id: str) -> list[dict[str, Any]]:
        with self._tx() as conn:
            rows = conn.execute("SELECT * FROM customers WHERE job_id = ? ORDER BY row", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    # --- the fake CRM's call log ---
    def count_crm_call(self, job_id: str, email: str) -> int:
        with self._tx() as conn:
            conn.execute(
                """INSERT INTO crm_calls (job_id, email, calls) VALUES (?, ?, 1)
                   ON CONFLICT (job_id, email) DO UPDATE SET calls = calls + 1""",
                (job_id, email),
            )
            (calls,) = conn.execute(
                "SELECT calls FROM crm_calls WHERE job_id = ? AND email = ?", (job_id, email)
            ).fetchone()
        return int(calls)

    def crm_calls(self, job_id: str) -> dict[str, int]:
        with self._tx() as conn:
            rows = conn.execute("SELECT email, calls FROM crm_calls WHERE job_id = ?", (job_id,)).fetchall()
        return {r["email"]: r["calls"] for r in rows}


# --------------------------------------------------------------------------------------------------------
# A stand-in for a third-party enrichment API
# --------------------------------------------------------------------------------------------------------


class CRMTimeoutError(ConnectionError):
    """A transient failure: worth retrying."""


class FakeCRM:
    """Looks customers up by email. It is slow for one domain: the first lookup of each such email times out."""

    SLOW_DOMAIN = "slowcrm.example"

    def __init__(self, db: AppDB, latency: float = 0.0) -> None:
        self.db = db
        self.latency = latency  # seconds per lookup, to make the demo's progress visible

    def lookup(self, job_id: str, email: str) -> dict[str, str]:
        if self.latency:
            time.sleep(self.latency)
        calls = self.db.count_crm_call(job_id, email)
        domain = email.rsplit("@", 1)[1]
        if domain == self.SLOW_DOMAIN and calls == 1:
            log.warning("CRM lookup for %s timed out (call %d); the batch step will be retried", email, calls)
            raise CRMTimeoutError(f"CRM lookup for {email} timed out")
        return {"segment": "consumer" if domain in _FREE_MAIL else "business"}


# --------------------------------------------------------------------------------------------------------
# Pure helpers: parsing and normalising
# --------------------------------------------------------------------------------------------------------


class RowError(ValueError):
    """A row that cannot be processed: reported in the batch result, never retried."""


def validate_event(data: Mapping[str, Any]) -> tuple[str, int]:
    """The job id and batch size of a ``csv/uploaded`` event, or NonRetriableError (a bad event stays bad)."""
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise NonRetriableError("csv/uploaded: data.job_id must be a non-empty string")
    if ("csv_text" in data) == ("path" in data):
        raise NonRetriableError("csv/uploaded: give exactly one of data.csv_text or data.path")
    size = data.get("batch_size", DEFAULT_BATCH_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE:
        raise NonRetriableError(f"csv/uploaded: data.batch_size must be an integer from 1 to {MAX_BATCH_SIZE}")
    return job_id, size


def read_rows(text: str) -> list[dict[str, Any]]:
    """Parse CSV text: check the header, return every non-blank data row with its row and line numbers."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    header = next(reader, None)
    if header is None:
        raise NonRetriableError("the CSV file is empty")
    columns = [c.strip().lower() for c in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise NonRetriableError(f"the CSV header is missing column(s): {', '.join(missing)} (got {header})")
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise NonRetriableError(f"the CSV header repeats column(s): {', '.join(dupes)}")
    rows: list[dict[str, Any]] = []
    while True:
        line = reader.line_num + 1  # where the next record starts
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise NonRetriableError(f"line {line}: the CSV is malformed: {exc}") from None
        if not any(v.strip() for v in values):
            continue  # blank lines are not rows
        # Fields stay raw here; the batches validate them, so one bad row does not fail the whole job.
        rows.append({"row": len(rows) + 1, "line": line, "fields": dict(zip(columns, values, strict=False)),
                     "field_count": len(values), "expected_fields": len(columns)})  # fmt: skip
    return rows


def parse_amount(raw: str) -> int:
    """``"$1,234.50"`` -> 123450 (cents)."""
    text = raw.strip().replace("$", "").replace(",", "")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise RowError(f"amount {raw.strip()!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise RowError(f"amount {raw.strip()!r} must be a non-negative number")
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def normalise_row(row: Mapping[str, Any], job_id: str, crm: FakeCRM) -> dict[str, Any]:
    """Validate and enrich one row. Bad data raises RowError; a CRM outage raises CRMTimeoutError."""
    if row["field_count"] != row["expected_fields"]:
        raise RowError(f"expected {row['expected_fields']} fields, got {row['field_count']}")
    fields = row["fields"]
    customer_id = fields["customer_id"].strip()
    if not customer_id:
        raise RowError("customer_id is empty")
    name = " ".join(fields["name"].split())
    if not name:
        raise RowError("name is empty")
    email = fields["email"].strip().lower()
    if not _EMAIL.match(email):
        raise RowError(f"email {fields['email'].strip()!r} is not a valid address")
    amount_cents = parse_amount(fields["amount"])
    tier = "gold" if amount_cents >= 100_000 else "silver" if amount_cents >= 10_000 else "bronze"
    enriched = crm.lookup(job_id, email)
    return {"row": row["row"], "customer_id": customer_id, "name": name, "email": email,
            "amount_cents": amount_cents, "tier": tier, **enriched}  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# Step bodies (module-level so they are easy to read and to test)
# --------------------------------------------------------------------------------------------------------


def parse_upload(db: AppDB, data: Mapping[str, Any], job_id: str, batch_size: int) -> dict[str, Any]:
    if "csv_text" in data:
        text = data["csv_text"]
        if not isinstance(text, str):
            raise NonRetriableError("csv/uploaded: data.csv_text must be a string")
    else:
        try:
            text = Path(data["path"]).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NonRetriableError(f"csv/uploaded: no file at {data['path']!r}") from None
        # Other OSErrors (a network share hiccup, say) propagate and are retried.
    rows = read_rows(text)
    total_batches = -(-len(rows) // batch_size)
    db.start_job(job_id, len(rows), total_batches)
    return {"rows": rows, "total_batches": total_batches}


def process_batch(db: AppDB, crm: FakeCRM, job_id: str, number: int, rows: list[dict[str, Any]],
                  before: Mapping[str, int]) -> dict[str, Any]:  # fmt: skip
    """Process one batch; ``before`` is the job's progress after the previous batch (from its memoised result)."""
    done: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for row in rows:
        try:
            done.append(normalise_row(row, job_id, crm))
        except RowError as exc:
            errors.append({"row": row["row"], "line": row["line"], "reason": str(exc)})
    progress = {
        "total_rows": before["total_rows"],
        "processed_rows": before["processed_rows"] + len(rows),
        "ok_rows": before["ok_rows"] + len(done),
        "error_rows": before["error_rows"] + len(errors),
        "batches_done": number,
    }
    db.save_batch(job_id, done, progress)
    return {"batch": number, "ok": len(done), "errors": errors, "progress": progress}


def summarise(db: AppDB, job_id: str, total_rows: int, batches: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [e for b in batches for e in b["errors"]]
    db.finish_job(job_id, "completed")
    return {"job_id": job_id, "rows": total_rows, "ok": sum(b["ok"] for b in batches), "errors": errors}


# --------------------------------------------------------------------------------------------------------
# The Stepline app
# --------------------------------------------------------------------------------------------------------


def channel_of(job_id: str) -> str:
    """The realtime channel of one job: topics ``progress`` (after each batch) and ``result`` (once, at the end)."""
    return f"csv:{job_id}"


def resolve_paths(
    db_path: str | os.PathLike[str] | None = None, progress_db: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """Stepline's database (``STEPLINE_DB`` or ``.stepline/stepline.db``) and the app's own database
    (``CSV_BULK_DB`` or ``csv_bulk.db`` next to Stepline's)."""
    stepline_db = Path(str(db_path or default_db_location()).removeprefix("sqlite:///"))
    app_db = Path(progress_db or os.environ.get(PROGRESS_DB_ENV) or stepline_db.with_name("csv_bulk.db"))
    return stepline_db, app_db


def make_client(
    db_path: str | os.PathLike[str] | None = None,
    progress_db: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
    *,
    crm_latency: float = 0.0,
) -> Stepline:
    """The example's Stepline client with ``process-csv`` (and its failure handler) defined on it.

    ``clock`` is for tests (a ``stepline.FakeClock``); ``crm_latency`` slows each fake CRM lookup down.
    """
    stepline_db, app_db = resolve_paths(db_path, progress_db)
    client = Stepline(APP_ID, str(stepline_db), clock=clock)
    db = AppDB(app_db)
    crm = FakeCRM(db, latency=crm_latency)

    def mark_failed(ctx: SyncContext) -> dict[str, Any]:
        """Runs (as its own function) when process-csv fails for good. ``ctx.event`` is the failure event."""
        original = (ctx.event.data.get("event") or {}).get("data") or {}
        job_id = original.get("job_id")
        err = ctx.event.data.get("error") or {}
        reason = f"{err.get('name', 'Error')}: {err.get('message', '')}"
        if isinstance(job_id, str) and job_id:
            ctx.step.run("mark-failed", db.finish_job, job_id, "failed", reason)
            ctx.step.publish("announce-failure", channel_of(job_id), "result", {"status": "failed", "reason": reason})
        return {"job_id": job_id, "status": "failed", "reason": reason}

    @client.function(id="process-csv", trigger=EVENT, retries=RETRIES, backoff=RETRY_BACKOFF,
                     on_failure=mark_failed)  # fmt: skip
    def process_csv(ctx: SyncContext) -> dict[str, Any]:
        # A plain `def` function runs in a worker thread and its steps block. Everything outside steps runs
        # again on every replay, so it must be deterministic and cheap (it is: slicing memoised results).
        job_id, batch_size = validate_event(ctx.event.data)
        channel = channel_of(job_id)
        parsed = ctx.step.run("parse", parse_upload, db, ctx.event.data, job_id, batch_size)
        rows = parsed["rows"]
        progress = {"total_rows": len(rows), "processed_rows": 0, "ok_rows": 0, "error_rows": 0}
        # Live progress for the web page (web.py): a realtime message after each batch. A replay (after a batch's
        # retry) passes these lines again without sending them twice.
        ctx.publish(channel, "progress", {**progress, "batches_done": 0, "total_batches": parsed["total_batches"]})
        results = []
        for number, start in enumerate(range(0, len(rows), batch_size), start=1):
            batch = rows[start : start + batch_size]
            result = ctx.step.run(f"batch-{number}", process_batch, db, crm, job_id, number, batch, progress)
            progress = result["progress"]
            results.append(result)
            ctx.publish(channel, "progress", {**progress, "total_batches": parsed["total_batches"]})
        summary: dict[str, Any] = ctx.step.run("summarise", summarise, db, job_id, len(rows), results)
        ctx.step.publish("announce-result", channel, "result", {"status": "completed", **summary})
        return summary  # the run's output

    return client
