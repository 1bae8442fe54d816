"""The bulk CSV example (examples/csv_bulk): its function on a fake clock, and its demo script end to end."""

from __future__ import annotations

import collections
import datetime as dt
import importlib.util
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from stepline import FakeClock, Stepline, Worker
from stepline.storage.records import RunFilter, RunRecord

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "csv_bulk"
SAMPLE_BAD_ROWS = {7: "email 'ken thompson at bell-labs' is not a valid address",
                   31: "amount 'twelve dollars' is not a number"}  # fmt: skip
FLAKY_BATCH = 4  # sample row 18 (hedy@slowcrm.example) is in rows 16-20


def _load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("csv_bulk_app", EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app() -> ModuleType:
    return _load_app()


class Example:
    """The example's client on a fake clock, with its app database and a counter of step-body executions."""

    def __init__(self, app: ModuleType, tmp: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
        self.app = app
        self.clock = clock
        self.client: Stepline = app.make_client(tmp / "stepline.db", tmp / "app.db", clock=clock)
        self.db = app.AppDB(tmp / "app.db")
        self.calls: collections.Counter[str] = collections.Counter()
        self.worker: Worker | None = None
        # process_csv looks its step bodies up as module globals, so counting wrappers see every execution.
        self._count(monkeypatch, "parse_upload", lambda *a: "parse")
        self._count(monkeypatch, "process_batch", lambda *a: f"batch-{a[3]}")
        self._count(monkeypatch, "summarise", lambda *a: "summarise")

    def _count(self, monkeypatch: pytest.MonkeyPatch, name: str, key: Callable[..., str]) -> None:
        original = getattr(self.app, name)

        def counted(*args: Any) -> Any:
            self.calls[key(*args)] += 1
            return original(*args)

        monkeypatch.setattr(self.app, name, counted)

    async def send(self, data: dict[str, Any]) -> str:
        await self.client.ready()
        [event_id] = await self.client.send({"name": self.app.EVENT, "data": data})
        return event_id

    async def drain(self, advance_seconds: float = 0) -> None:
        if advance_seconds:
            self.clock.advance(dt.timedelta(seconds=advance_seconds))
        await self.client.ready()
        if self.worker is None:
            self.worker = self.client.worker()
        await self.worker.run_until_idle()

    async def run(self, event_id: str, function_id: str | None = None) -> RunRecord:
        fid = function_id or self.app.FUNCTION_ID
        found = await self.client.store.list_runs(RunFilter(event_id=event_id, function_id=fid))
        assert len(found) == 1, found
        return found[0]

    async def runs_of(self, function_id: str) -> list[RunRecord]:
        return await self.client.store.list_runs(RunFilter(function_id=function_id))


@pytest.fixture
async def example(
    app: ModuleType, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Example]:
    ex = Example(app, tmp_path, clock, monkeypatch)
    yield ex
    await ex.client.close()


async def test_sample_csv_batches_with_one_transient_retry(example: Example, app: ModuleType) -> None:
    job = "job-sample"
    event_id = await example.send({"job_id": job, "path": str(EXAMPLE / "sample.csv")})

    # First pass: parse and batches 1-3 complete; batch 4 hits the CRM timeout and waits for its retry.
    await example.drain()
    run = await example.run(event_id)
    assert run.status == "running"
    assert run.idle_reason is not None
    assert run.idle_reason["kind"] == "retrying" and run.idle_reason["step"] == f"batch-{FLAKY_BATCH}"
    assert run.idle_reason["until"] <= example.clock.now_ms() + 250  # 200 ms backoff + up to 50 ms jitter
    progress = example.db.progress(job)
    assert progress is not None
    assert (progress["status"], progress["batches_done"], progress["processed_rows"], progress["percent"]) == (
        "running", 3, 15, 37,
    )  # fmt: skip
    assert (progress["ok_rows"], progress["error_rows"], progress["total_batches"]) == (14, 1, 8)

    # Past the backoff: batch 4 is retried and succeeds, the rest runs.
    await example.drain(advance_seconds=1)
    run = await example.run(event_id)
    assert run.status == "completed", run.error
    assert run.output == {
        "job_id": job,
        "rows": 40,
        "ok": 38,
        "errors": [{"row": r, "line": r + 1, "reason": reason} for r, reason in SAMPLE_BAD_ROWS.items()],
    }

    progress = example.db.progress(job)
    assert progress is not None
    assert progress["status"] == "completed" and progress["percent"] == 100
    assert (progress["processed_rows"], progress["ok_rows"], progress["error_rows"]) == (40, 38, 2)
    assert (progress["batches_done"], progress["total_batches"], progress["error"]) == (8, 8, None)

    steps = await example.client.store.list_steps(run.id)
    expected_ids = ["parse", *(f"batch-{n}" for n in range(1, 9)), "summarise"]
    assert [s.display_id for s in steps] == [*expected_ids, "announce-result"]
    assert all(s.status == "completed" for s in steps)
    assert {s.display_id: s.attempts for s in steps} == {
        i: 2 if i == f"batch-{FLAKY_BATCH}" else 1 for i in [*expected_ids, "announce-result"]
    }
    # What actually executed: every step body once, the flaky batch twice (memoised steps are not re-run).
    assert example.calls == {i: 2 if i == f"batch-{FLAKY_BATCH}" else 1 for i in expected_ids}

    # The live progress the web page shows: one message per batch (and one at the start), none repeated although
    # the run replayed batches 1-3 after batch 4's retry; then the result, once.
    sub = await example.client.subscribe(app.channel_of(job), ["progress", "result"], since=0)
    messages = [(await sub.get(timeout=0)).message() for _ in range(sub.queued)]  # type: ignore[union-attr]
    assert [m.data["processed_rows"] for m in messages if m.topic == "progress"] == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    [result] = [m.data for m in messages if m.topic == "result"]
    assert result == {"status": "completed", **run.output}

    # The first attempt of batch 4 looked up rows 16 and 17, then timed out on row 18; the retry re-ran the
    # whole batch. Every other valid row was looked up once (bad rows 7 and 31 never reach the CRM).
    crm = example.db.crm_calls(job)
    twice = {"timbl@www.example", "vint@tcp.example", "hedy@slowcrm.example"}
    assert {email for email, n in crm.items() if n == 2} == twice
    assert len(crm) == 38 and all(n == 1 for email, n in crm.items() if email not in twice)

    customers = example.db.customers(job)
    assert [c["row"] for c in customers] == [r for r in range(1, 41) if r not in SAMPLE_BAD_ROWS]
    first, second = customers[0], customers[1]
    assert first["email"] == "ada.lovelace@analytical.example" and first["amount_cents"] == 125_000
    assert first["tier"] == "gold" and first["segment"] == "business"
    assert second["name"] == "grace hopper" and second["amount_cents"] == 340_050

    assert await example.runs_of(f"{app.FUNCTION_ID}-failure") == []


async def test_csv_text_with_custom_batch_size(example: Example) -> None:
    csv_text = (
        "Customer_ID, Name ,EMAIL,amount,notes\n"
        "A1,Ann,ann@x.example,10,\n"
        "\n"
        'A2,"Bo, Jr.",bo@gmail.com,"1,000.005",vip\n'
        "A3,Cy,cy@x.example,-5,\n"
        "A4,Di,di@x.example\n"
        ",Ed,ed@x.example,1,\n"
    )
    event_id = await example.send({"job_id": "job-text", "csv_text": csv_text, "batch_size": 2})
    await example.drain()
    run = await example.run(event_id)
    assert run.status == "completed", run.error
    assert run.output == {
        "job_id": "job-text",
        "rows": 5,
        "ok": 2,
        "errors": [
            {"row": 3, "line": 5, "reason": "amount '-5' must be a non-negative number"},
            {"row": 4, "line": 6, "reason": "expected 5 fields, got 3"},
            {"row": 5, "line": 7, "reason": "customer_id is empty"},
        ],
    }
    steps = await example.client.store.list_steps(run.id)
    assert [s.display_id for s in steps] == ["parse", "batch-1", "batch-2", "batch-3", "summarise", "announce-result"]
    customers = example.db.customers("job-text")
    assert [(c["name"], c["amount_cents"], c["segment"]) for c in customers] == [
        ("Ann", 1000, "business"),
        ("Bo, Jr.", 100_001, "consumer"),
    ]
    progress = example.db.progress("job-text")
    assert progress is not None and progress["percent"] == 100 and progress["status"] == "completed"


async def test_bad_header_fails_without_retries_and_on_failure_marks_the_job(example: Example, app: ModuleType) -> None:
    event_id = await example.send({"job_id": "job-bad", "csv_text": "id,name,mail\n1,a,b\n"})
    await example.drain()
    run = await example.run(event_id)
    assert run.status == "failed"
    assert run.error is not None and run.error["name"] == "NonRetriableError"
    assert "missing column(s): customer_id, email, amount" in run.error["message"]
    steps = await example.client.store.list_steps(run.id)
    assert [(s.display_id, s.status, s.attempts) for s in steps] == [("parse", "failed", 1)]

    [failure] = await example.runs_of(f"{app.FUNCTION_ID}-failure")
    assert failure.status == "completed"
    assert failure.output["job_id"] == "job-bad" and failure.output["status"] == "failed"
    progress = example.db.progress("job-bad")
    assert progress is not None and progress["status"] == "failed"
    assert progress["error"].startswith("NonRetriableError: the CSV header is missing column(s)")
    sub = await example.client.subscribe(app.channel_of("job-bad"), ["result"], since=0)
    [told] = [(await sub.get(timeout=0)).message() for _ in range(sub.queued)]  # type: ignore[union-attr]
    assert told.data["status"] == "failed" and "missing column(s)" in told.data["reason"]


async def test_crm_outage_exhausts_retries_then_the_job_is_marked_failed(
    example: Example, app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(self: Any, job_id: str, email: str) -> dict[str, str]:
        raise app.CRMTimeoutError(f"CRM lookup for {email} timed out")

    monkeypatch.setattr(app.FakeCRM, "lookup", down)
    event_id = await example.send(
        {"job_id": "job-down", "csv_text": "customer_id,name,email,amount\n1,a,a@b.example,1\n"}
    )
    await example.drain()
    for _ in range(app.RETRIES):  # each retry is due within a second (backoff 0.2 s, 0.4 s + jitter)
        assert (await example.run(event_id)).status == "running"
        await example.drain(advance_seconds=1)
    run = await example.run(event_id)
    assert run.status == "failed"
    assert run.error is not None and run.error["name"] == "CRMTimeoutError"
    steps = await example.client.store.list_steps(run.id)
    assert [(s.display_id, s.status, s.attempts) for s in steps] == [
        ("parse", "completed", 1),
        ("batch-1", "failed", app.RETRIES + 1),
    ]
    assert example.calls == {"parse": 1, "batch-1": app.RETRIES + 1}
    progress = example.db.progress("job-down")
    assert progress is not None and progress["status"] == "failed"
    assert progress["error"] == "CRMTimeoutError: CRM lookup for a@b.example timed out"
    assert progress["percent"] == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"csv_text": "x"}, "data.job_id must be a non-empty string"),
        ({"job_id": "j"}, "give exactly one of data.csv_text or data.path"),
        ({"job_id": "j", "csv_text": "x", "batch_size": 0}, "data.batch_size must be an integer"),
    ],
)
async def test_invalid_events_fail_fast(example: Example, data: dict[str, Any], message: str) -> None:
    event_id = await example.send(data)
    await example.drain()
    run = await example.run(event_id)
    assert run.status == "failed"
    assert run.error is not None and run.error["name"] == "NonRetriableError" and message in run.error["message"]


def test_demo_script_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "STEPLINE_DB": str(tmp_path / "db" / "stepline.db")}
    env.pop("CSV_BULK_DB", None)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "main.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "rows 40/40 (100%)  ok=38 errors=2" in out
    assert "Run completed" in out
    assert '"ok": 38' in out
    assert f"batch-{FLAKY_BATCH}    run    completed  attempts=2" in out
    assert "summarise  run    completed  attempts=1" in out
    assert "Summary: job job-" in out and "rows=40 ok=38 errors=2" in out
    assert (tmp_path / "db" / "csv_bulk.db").exists()  # the app database defaults to STEPLINE_DB's folder
    assert not (tmp_path / ".stepline").exists()
