"""What the CLI says it did, checked against the store: `stepline send` (runs started, waits resumed, runs
cancelled, runs skipped), `runs rerun` (one and by filter), bulk `runs cancel`, `events list/show`,
`--status skipped`, a missing database, and the worker's exit counts."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_cli import APP_SOURCE, WorkerProc, cli, ok, run_with, runs, send, sent, start_worker, wait_for


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    path = tmp_path_factory.mktemp("cli-effects")
    shutil.copy(APP_SOURCE, path / "app.py")
    w = start_worker(path, "--db", "tmp.db", "--concurrency", "20", "--threads", "4")
    try:
        yield w
    finally:
        w.stop()


def status_of(cwd: Path, run_id: str) -> str:
    return str(json.loads(ok(cwd, "runs", "show", run_id, "--json", "--db", "tmp.db"))["status"])


def test_send_says_which_waiting_run_it_resumed(worker: WorkerProc) -> None:
    cwd = worker.cwd
    run_id = send(cwd, "test/wait", "--data", '{"k": 7}')
    wait_for("the run to wait", lambda: run_with(cwd, run_id, lambda r: (r["idle_reason"] or {}).get("kind")
                                                 == "waiting"))  # fmt: skip
    _, effects = sent(cwd, "test/go", "--data", '{"k": 7}')
    assert effects["said"] == ["resumed 1 waiting run:"]
    assert effects["resumed"] == [run_id]
    done = wait_for("the run to complete", lambda: run_with(cwd, run_id, lambda r: r["status"] == "completed"))
    assert done["output"] == {"went": True}


def test_send_says_which_runs_it_cancelled(worker: WorkerProc) -> None:
    cwd = worker.cwd
    run_id = send(cwd, "test/wait", "--data", '{"k": 8}')
    _, effects = sent(cwd, "test/stop", "--data", '{"k": 8}')
    assert effects["said"] == ["cancelled 1 run:"]
    assert effects["cancelled"] == [run_id]
    assert status_of(cwd, run_id) == "cancelled"


def test_send_that_does_nothing_says_why(worker: WorkerProc) -> None:
    proc = cli(worker.cwd, "send", "test/nobody-listens", "--db", "tmp.db")
    assert proc.returncode == 0
    assert proc.stderr.strip() == ("started no runs and resumed none: no registered function is triggered by "
                                   "'test/nobody-listens' and no run waits for it")  # fmt: skip


def test_rate_limited_runs_are_reported_and_listed_as_skipped(worker: WorkerProc) -> None:
    cwd = worker.cwd
    first = send(cwd, "test/limited")
    _, effects = sent(cwd, "test/limited")
    assert effects["said"] == ["stored 1 run as skipped (flow control):"]
    [skipped] = effects["stored"]
    assert skipped != first
    listed = [r["id"] for r in runs(cwd, "--status", "skipped")]
    assert listed == [skipped]
    table = ok(cwd, "runs", "list", "--status", "skipped", "--db", "tmp.db")
    assert skipped in table and "rate limit" in table


def test_rerun_one_run_and_by_filter(worker: WorkerProc) -> None:
    cwd = worker.cwd
    run_id = send(cwd, "test/hello", "--data", '{"n": 4}')
    wait_for("the run to complete", lambda: run_with(cwd, run_id, lambda r: r["status"] == "completed"))
    proc = cli(cwd, "runs", "rerun", run_id, "--db", "tmp.db")
    assert proc.returncode == 0, proc.stderr
    new_id = proc.stdout.strip()
    assert proc.stderr.strip() == f"started run {new_id}: a rerun of {run_id}"
    again = wait_for("the rerun to complete", lambda: run_with(cwd, new_id, lambda r: r["status"] == "completed"))
    assert again["output"] == {"plus_one": 5, "times_ten": 50}

    from_step = cli(cwd, "runs", "rerun", run_id, "--from-step", "no-such-step", "--db", "tmp.db")
    assert from_step.returncode == 2 and "has no step with id 'no-such-step'" in from_step.stderr
    missing = cli(cwd, "runs", "rerun", "01NOSUCHRUN", "--db", "tmp.db")
    assert missing.returncode == 1 and "run '01NOSUCHRUN' not found" in missing.stderr

    completed = [r["id"] for r in runs(cwd, "--function", "hello", "--status", "completed")]
    unasked = cli(cwd, "runs", "rerun", "--function", "hello", "--status", "completed", "--db", "tmp.db")
    assert unasked.returncode == 2 and "Add --yes" in unasked.stderr  # no terminal to ask on
    bulk = cli(cwd, "runs", "rerun", "--function", "hello", "--status", "completed", "--yes", "--db", "tmp.db")
    assert bulk.returncode == 0, bulk.stderr
    new_ids = bulk.stdout.split()
    assert len(new_ids) == len(completed) >= 2
    assert bulk.stderr.strip() == f"started {len(completed)} reruns of completed runs of cli-test-hello"
    for new in new_ids:
        wait_for("the reruns to complete", lambda new=new: run_with(cwd, new, lambda r: r["status"] == "completed"))


def test_bulk_cancel_by_function(worker: WorkerProc) -> None:
    cwd = worker.cwd
    sleeping = [send(cwd, "test/sleep") for _ in range(3)]
    bulk = cli(cwd, "runs", "cancel", "--function", "sleeper", "--yes", "--db", "tmp.db")
    assert bulk.returncode == 0, bulk.stderr
    assert bulk.stderr.strip() == "cancelled 3 runs"
    assert [status_of(cwd, r) for r in sleeping] == ["cancelled"] * 3
    none_left = cli(cwd, "runs", "cancel", "--function", "sleeper", "--yes", "--db", "tmp.db")
    assert none_left.stderr.strip() == "no queued or running runs of cli-test-sleeper to cancel"
    both = cli(cwd, "runs", "cancel", sleeping[0], "--all", "--db", "tmp.db")
    assert both.returncode == 2 and "not both" in both.stderr


def test_events_list_and_show(worker: WorkerProc) -> None:
    cwd = worker.cwd
    run_id = send(cwd, "test/hello", "--data", '{"n": 41}')
    event_id = json.loads(ok(cwd, "runs", "show", run_id, "--json", "--db", "tmp.db"))["event_id"]
    listed = ok(cwd, "events", "list", "--db", "tmp.db")
    assert listed.splitlines()[0].split() == ["EVENT", "ID", "NAME", "RECEIVED", "DATA"]
    assert event_id in listed and '{"n":41}' in listed
    assert "stepline/function.finished" not in listed  # Stepline's own events only with --system
    wait_for("the run's end event", lambda: "stepline/function.finished" in ok(cwd, "events", "list", "--system",
                                                                               "--db", "tmp.db"))  # fmt: skip
    shown = ok(cwd, "events", "show", event_id, "--db", "tmp.db")
    assert "test/hello" in shown and '{"n":41}' in shown and run_id in shown and "cli-test-hello" in shown
    as_json = json.loads(ok(cwd, "events", "show", event_id, "--json", "--db", "tmp.db"))
    assert [r["id"] for r in as_json["runs"]] == [run_id]
    missing = cli(cwd, "events", "show", "01NOSUCHEVENT", "--db", "tmp.db")
    assert missing.returncode == 1 and "no event with id '01NOSUCHEVENT'" in missing.stderr


def test_events_replay_sends_a_copy_that_starts_a_new_run(worker: WorkerProc) -> None:
    cwd = worker.cwd
    run_id = send(cwd, "test/hello", "--data", '{"n": 42}')
    event_id = json.loads(ok(cwd, "runs", "show", run_id, "--json", "--db", "tmp.db"))["event_id"]
    proc = cli(cwd, "events", "replay", event_id, "--db", "tmp.db")
    assert proc.returncode == 0, proc.stderr
    copy_id = proc.stdout.strip()
    assert copy_id != event_id and f"replayed {event_id}: the copy started 1 run" in proc.stderr
    shown = json.loads(ok(cwd, "events", "show", copy_id, "--json", "--db", "tmp.db"))
    assert shown["name"] == "test/hello" and shown["data"] == {"n": 42}
    [new_run] = shown["runs"]
    assert new_run["id"] != run_id and new_run["id"] in proc.stderr
    done = wait_for("the replayed run", lambda: run_with(cwd, new_run["id"], lambda r: r["status"] == "completed"))
    assert done["function_id"] == "cli-test-hello"
    listed = ok(cwd, "events", "list", "--name", "test/hel*", "--db", "tmp.db")  # a pattern
    assert copy_id in listed and event_id in listed and "stepline/" not in listed
    missing = cli(cwd, "events", "replay", "01NOSUCHEVENT", "--db", "tmp.db")
    assert missing.returncode == 1 and "event '01NOSUCHEVENT' not found" in missing.stderr


def test_functions_pause_holds_the_workers_runs_and_resume_releases_them(worker: WorkerProc) -> None:
    cwd = worker.cwd
    paused = cli(cwd, "functions", "pause", "cli-test-hello", "--db", "tmp.db")
    assert paused.returncode == 0 and "cli-test-hello paused" in paused.stderr
    time.sleep(1.5)  # the worker (another process) reads the paused functions every second
    held = [send(cwd, "test/hello", "--data", f'{{"n": {i}}}') for i in range(2)]
    time.sleep(1.5)
    assert [status_of(cwd, r) for r in held] == ["queued", "queued"]
    resumed = cli(cwd, "functions", "resume", "cli-test-hello", "--db", "tmp.db")
    assert resumed.returncode == 0 and "cli-test-hello resumed" in resumed.stderr
    for run_id in held:
        wait_for("the held run", lambda r=run_id: run_with(cwd, r, lambda x: x["status"] == "completed"))
    again = cli(cwd, "functions", "resume", "cli-test-hello", "--db", "tmp.db")
    assert again.returncode == 0 and "was not paused" in again.stderr
    missing = cli(cwd, "functions", "pause", "nope", "--db", "tmp.db")
    assert missing.returncode == 1 and "no registered function has the id 'nope'" in missing.stderr
    not_cron = cli(cwd, "functions", "run-cron", "cli-test-hello", "--db", "tmp.db")
    assert not_cron.returncode == 2 and "has no cron trigger" in not_cron.stderr


def test_send_to_a_missing_database_creates_nothing(tmp_path: Path) -> None:
    proc = cli(tmp_path, "send", "test/hello", "--db", "nothing-here.db")
    assert proc.returncode == 1
    assert "Error: no Stepline database at" in proc.stderr and "nothing-here.db" in proc.stderr
    assert not (tmp_path / "nothing-here.db").exists()


def test_the_worker_exit_line_counts_runs_not_executions(tmp_path: Path) -> None:
    shutil.copy(APP_SOURCE, tmp_path / "app.py")
    w = start_worker(tmp_path, "--db", "tmp.db")
    try:
        napping = [send(tmp_path, "test/nap") for _ in range(2)]
        for run_id in napping:  # each run executes twice: before and after its sleep
            wait_for("the nap to end", lambda r=run_id: run_with(tmp_path, r, lambda x: x["status"] == "completed"))
    finally:
        assert w.stop() == 0
    assert "stepline worker stopped: started 2 runs, resumed runs 2 times (after sleeps, waits and retries)" in (
        w.stderr()
    )


def test_database_passwords_stay_out_of_messages(tmp_path: Path) -> None:
    proc = cli(tmp_path, "runs", "list", "--db", "postgresql://stepline:topsecret@127.0.0.1:1/stepline")
    assert proc.returncode == 1
    assert "cannot open database postgresql://stepline:***@127.0.0.1:1/stepline" in proc.stderr
    assert "topsecret" not in proc.stderr
