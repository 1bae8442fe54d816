"""The ``stepline`` console script end to end: a real worker subprocess, events sent and runs inspected and
cancelled from other processes, and the error paths' exit codes and messages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..eventually import eventually_sync

_SCRIPT = Path(sys.executable).with_name("stepline")
STEPLINE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "stepline.cli.main"]
APP_SOURCE = Path(__file__).with_name("fixtures_cli_app.py")
DEADLINE_S = 20.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STEPLINE_DB"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPLINE, *args], cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=30, check=False
    )


def ok(cwd: Path, *args: str) -> str:
    proc = cli(cwd, *args)
    assert proc.returncode == 0, f"stepline {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def wait_for(what: str, probe: Callable[[], Any], timeout: float = DEADLINE_S) -> Any:
    return eventually_sync(what, probe, timeout, interval=0.1)


@dataclass
class WorkerProc:
    cwd: Path
    proc: subprocess.Popen[str]
    log: Path

    def stderr(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_worker(cwd: Path, *args: str) -> WorkerProc:
    log = cwd / f"worker-{time.monotonic_ns()}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*STEPLINE, "worker", "app:client", *args], cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
            stderr=err, text=True,
        )  # fmt: skip
    worker = WorkerProc(cwd, proc, log)

    def started() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited with {proc.returncode}: {worker.stderr()}")
        return "stepline worker: app cli-test" in worker.stderr()

    try:
        wait_for("the worker to start", started)
    except BaseException:
        worker.stop()
        raise
    return worker


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-app")
    shutil.copy(APP_SOURCE, path / "app.py")
    return path


@pytest.fixture(scope="module")
def worker(app_dir: Path) -> Iterator[WorkerProc]:
    w = start_worker(app_dir, "--db", "tmp.db", "--concurrency", "10", "--threads", "4")
    try:
        yield w
    finally:
        w.stop()


def runs(cwd: Path, *args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ok(cwd, "runs", "list", "--json", "--db", "tmp.db", *args).splitlines()]


def run_with(cwd: Path, run_id: str, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    return next((r for r in runs(cwd) if r["id"] == run_id and pred(r)), None)


def sent(cwd: Path, name: str, *args: str) -> tuple[str, dict[str, list[str]]]:
    """The event id `stepline send` printed, and the run ids it listed under each effect ("started", ...)."""
    proc = cli(cwd, "send", name, "--db", "tmp.db", *args)
    assert proc.returncode == 0, proc.stderr
    event_id = proc.stdout.strip()
    assert len(event_id) == 26  # a ULID
    effects: dict[str, list[str]] = {}
    current: list[str] = []
    for line in proc.stderr.splitlines():
        if line.startswith("    "):
            current.append(line.split()[0])
        else:
            current = effects.setdefault(line.split(" ")[0], [])
            effects.setdefault("said", []).append(line)
    return event_id, effects


def send(cwd: Path, name: str, *args: str) -> str:
    """Send an event that starts one run; its id."""
    _, effects = sent(cwd, name, *args)
    assert effects["said"][0] == "started 1 run:", effects
    [run_id] = effects["started"]
    return run_id


def test_worker_logs_app_db_and_functions(worker: WorkerProc) -> None:
    line = next(ln for ln in worker.stderr().splitlines() if "stepline worker:" in ln)
    assert str((worker.cwd / "tmp.db").resolve()) in line
    assert "cli-test-hello" in line and "cli-test-sleeper" in line


def test_send_runs_to_completion_and_show(worker: WorkerProc) -> None:
    cwd = worker.cwd
    run_id = send(cwd, "test/hello", "--data", '{"n": 2}')
    done = wait_for("the run to complete", lambda: run_with(cwd, run_id, lambda r: r["status"] == "completed"))
    assert done["function_id"] == "cli-test-hello"
    assert done["output"] == {"plus_one": 3, "times_ten": 30}
    assert done["ended_at"].endswith("Z")

    text = ok(cwd, "runs", "show", run_id, "--db", "tmp.db")
    assert "completed" in text and '{"plus_one":3,"times_ten":30}' in text
    assert "test/hello" in text and '{"n":2}' in text
    assert text.index("add-one") < text.index("times-ten")

    shown = json.loads(ok(cwd, "runs", "show", run_id, "--json", "--db", "tmp.db"))
    assert [(s["id"], s["kind"], s["status"], s["attempts"], s["output"]) for s in shown["steps"]] == [
        ("add-one", "run", "completed", 1, 3),
        ("times-ten", "run", "completed", 1, 30),
    ]
    assert shown["event"]["name"] == "test/hello" and shown["event"]["data"] == {"n": 2}

    assert [r["id"] for r in runs(cwd, "--function", "hello", "--status", "completed")] == [run_id]
    table = ok(cwd, "runs", "list", "--db", "tmp.db")
    assert "RUN ID" in table and run_id in table


def test_cancel_a_sleeping_run(worker: WorkerProc) -> None:
    cwd = worker.cwd
    run_id = send(cwd, "test/sleep")
    sleeping = wait_for("the run to sleep", lambda: run_with(cwd, run_id, lambda r: bool(r["idle_reason"])))
    assert sleeping["status"] == "running"
    assert sleeping["idle_reason"]["kind"] == "sleeping"
    assert "Sleeping in step 'nap' until" in ok(cwd, "runs", "show", run_id, "--db", "tmp.db")

    cancelled = cli(cwd, "runs", "cancel", run_id, "--db", "tmp.db")
    assert cancelled.returncode == 0
    assert cancelled.stderr.strip() == f"cancelled run {run_id} (cli-test-sleeper)"
    assert run_with(cwd, run_id, lambda r: r["status"] == "cancelled")
    again = cli(cwd, "runs", "cancel", run_id, "--db", "tmp.db")
    assert again.returncode == 0 and "already ended (cancelled); nothing to cancel" in again.stderr


def test_functions_list_and_the_env_var(worker: WorkerProc) -> None:
    env = {**_env(), "STEPLINE_DB": "tmp.db"}
    proc = cli(worker.cwd, "functions", "list", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("cli-test-hello" in ln and "test/hello" in ln for ln in lines)
    assert any("cli-test-sleeper" in ln and "test/sleep" in ln for ln in lines)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["send", "test/hello", "--data", "{bad"], 2, "Error: --data is not valid JSON"),
        (["send", "test/hello", "--data", "[1, 2]"], 2, "Error: --data must be a JSON object"),
        (["send", "inngest/function.failed"], 2, "reserved"),
        (["send", "stepline/anything"], 2, "reserved"),
        (["runs", "show", "01NOSUCHRUN"], 1, "Error: no run with id '01NOSUCHRUN'"),
        (["runs", "cancel", "01NOSUCHRUN"], 1, "Error: no run with id '01NOSUCHRUN'"),
        (["worker", "app"], 2, "Error: expected MODULE:ATTR"),
        (["worker", "app:missing"], 2, "Error: module 'app' has no attribute 'missing'"),
        (["worker", "app:not_a_client"], 2, "Error: 'app:not_a_client' is a int, not a stepline.Stepline client"),
        (["worker", "no_such_module:client"], 2, "Error: cannot import module 'no_such_module'"),
        (["worker", "broken:client"], 2, "Error: importing module 'broken' failed: ZeroDivisionError"),
    ],
)
def test_error_paths(app_dir: Path, worker: WorkerProc, args: list[str], code: int, message: str) -> None:
    (app_dir / "broken.py").write_text("value = 1 / 0\n")
    proc = cli(app_dir, *args, "--db", "tmp.db")
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_read_commands_report_a_missing_database(tmp_path: Path) -> None:
    proc = cli(tmp_path, "runs", "list", "--db", "missing.db")
    assert proc.returncode == 1
    assert "Error: no Stepline database at" in proc.stderr
    assert not (tmp_path / "missing.db").exists()


def test_version_and_python_dash_m(tmp_path: Path) -> None:
    assert "0.1.0" in ok(tmp_path, "--version")
    proc = subprocess.run(
        [sys.executable, "-m", "stepline.cli.main", "--version"], cwd=tmp_path, env=_env(),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "0.1.0" in proc.stdout


def test_worker_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    shutil.copy(APP_SOURCE, tmp_path / "app.py")
    w = start_worker(tmp_path, "--db", "tmp.db")
    assert w.stop() == 0
    assert "stepline worker stopped" in w.stderr()
