"""Durability acceptance tests with real worker processes (the crash app in ``crash_app/``).

1. SIGKILL a worker in the middle of multi-step runs, start another one: every run completes, every step
   result is recorded exactly once, no step whose result was committed before the kill runs again, and no
   accepted event is lost (including events sent while no worker was alive).
2. SIGSTOP a worker so its leases expire, let another worker take the runs over, then SIGCONT the first one:
   its writes are rejected (lost lease) and no recorded step result is overwritten.

What "exactly once" means here: a step's *result* is recorded exactly once. Its *code* may run a second time
only if the process executing it died (or lost its lease) after running it and before its result committed;
for sequential steps that is at most one step per run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stepline import Stepline
from stepline.storage.records import RunFilter, RunRecord, StepRecord
from stepline.storage.sqlite.store import SQLiteStore
from tests.acceptance.crash_app.app import (
    ASYNC_SLUG,
    EVENT,
    STEP_SECONDS,
    STEPS,
    SYNC_SLUG,
    make_client,
    step_id,
    step_value,
)
from tests.eventually import eventually

pytestmark = pytest.mark.slow

WORKER_SCRIPT = Path(__file__).parent / "crash_app" / "run_worker.py"
LEASE_SECONDS = 2.0
FUNCTIONS = 2  # every event starts one run of each function (sync and async)
STEP_IDS = [step_id(i) for i in range(STEPS)]

Key = tuple[str, str]  # (run id, step display id)


# --- worker processes ---
class WorkerProcess:
    """``crash_app/run_worker.py`` as a subprocess; stdout and stderr go to files (shown when a test fails)."""

    def __init__(self, name: str, db: Path, log: Path, tmp: Path, env: dict[str, str]) -> None:
        self.name = name
        self.out_path = tmp / f"{name}.stdout"
        self.err_path = tmp / f"{name}.stderr"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CRASH_APP_")}
        full_env.update(CRASH_APP_LOG=str(log), **env)
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER_SCRIPT), str(db), name, str(LEASE_SECONDS)],
                stdout=out,
                stderr=err,
                env=full_env,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        out = self.out_path.read_text(errors="replace")
        err = self.err_path.read_text(errors="replace")
        return f"--- {self.name} stdout ---\n{out}--- {self.name} stderr ---\n{err}"

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while "ready" not in self.out_path.read_text().split():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready after {timeout}s\n{self.output()}")
            await asyncio.sleep(0.02)

    def sigkill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def sigstop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not self._all_threads_stopped():
            assert time.monotonic() < deadline, f"{self.name} did not stop"
            time.sleep(0.001)

    def sigcont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def _all_threads_stopped(self) -> bool:
        for stat in Path(f"/proc/{self.pid}/task").glob("*/stat"):
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue  # a thread that just exited
            if state not in ("T", "t"):
                return False
        return True

    def stop_gracefully(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str, env: dict[str, str] | None = None) -> WorkerProcess:
        w = WorkerProcess(name, tmp_path / "stepline.db", tmp_path / "side-effects.log", tmp_path, env or {})
        started.append(w)
        return w

    yield start
    for w in started:
        w.cleanup()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Stepline]:
    """The test process's own client on the workers' SQLite file: the same app, used to send and to read."""
    c = make_client(SQLiteStore(tmp_path / "stepline.db"))
    await c.ready()
    yield c
    await c.close()


# --- observations ---
@dataclass(frozen=True)
class LogLine:
    kind: str  # "exec", or "raised:<ExceptionName>"
    worker: str
    run_id: str
    step: str


def read_log(path: Path) -> list[LogLine]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        kind, worker, run_id, step = raw.split()
        lines.append(LogLine(kind, worker, run_id, step))
    return lines


def executions(lines: list[LogLine], worker: str | None = None) -> Counter[Key]:
    return Counter((x.run_id, x.step) for x in lines if x.kind == "exec" and worker in (None, x.worker))


@dataclass
class RunState:
    run: RunRecord
    steps: dict[str, StepRecord]  # by display id

    def completed(self) -> set[str]:
        return {d for d, s in self.steps.items() if s.status == "completed"}


async def snapshot(store: Any) -> dict[str, RunState]:
    runs = await store.list_runs(RunFilter(limit=10_000))
    out = {}
    for r in runs:
        if r.function_id.endswith((SYNC_SLUG, ASYNC_SLUG)):
            out[r.id] = RunState(r, {s.display_id: s for s in await store.list_steps(r.id)})
    return out


def completed_keys(state: dict[str, RunState]) -> set[Key]:
    return {(run_id, d) for run_id, rs in state.items() for d in rs.completed()}


def step_view(s: StepRecord) -> tuple[Any, ...]:
    """Everything a later writer could change about a recorded step."""
    return (s.kind, s.status, s.attempts, s.output, s.error, s.started_at, s.ended_at)


async def wait_for(what: str, predicate: Callable[[], Any], timeout: float, *workers: WorkerProcess) -> None:
    """Poll ``predicate`` (sync or async) every 20 ms until it is true; fail after ``timeout`` seconds."""
    await eventually(
        what, predicate, timeout, interval=0.02, diagnostics=lambda: "\n".join(w.output() for w in workers)
    )


def db_write_locked(db: Path) -> bool:
    """Does some connection hold SQLite's write lock right now?"""
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return True
    else:
        conn.execute("ROLLBACK")
        return False
    finally:
        conn.close()


async def all_completed(store: Any, n_runs: int) -> bool:
    state = await snapshot(store)
    return len(state) == n_runs and all(rs.run.status == "completed" for rs in state.values())


async def send_staggered(client: Stepline, numbers: list[int]) -> dict[str, int]:
    """One send per event, a fraction of a step apart, so the runs are at different points when interrupted."""
    event_n = {}
    for n in numbers:
        (eid,) = await client.send({"name": EVENT, "data": {"n": n}})
        event_n[eid] = n
        await asyncio.sleep(STEP_SECONDS / len(numbers))
    return event_n


def n_of(state: RunState, events: dict[str, int]) -> int:
    return events[state.run.event_id]


def check_final_runs(final: dict[str, RunState], event_n: dict[str, int]) -> None:
    """Every run completed with the right output, built from its recorded steps, each recorded once."""
    assert len(final) == FUNCTIONS * len(event_n)
    per_event = Counter(rs.run.event_id for rs in final.values())
    assert per_event == {eid: FUNCTIONS for eid in event_n}, "each event started exactly one run per function"
    for run_id, rs in final.items():
        n = n_of(rs, event_n)
        assert rs.run.status == "completed", (run_id, rs.run.status, rs.run.error)
        # Exactly one record per step, listed in the order the steps ran (whichever worker recorded them).
        assert list(rs.steps) == STEP_IDS, (run_id, list(rs.steps))
        for i, sid in enumerate(STEP_IDS):
            s = rs.steps[sid]
            assert (s.kind, s.status, s.attempts) == ("run", "completed", 1), (run_id, sid, s)
            assert s.output["value"] == step_value(n, i), (run_id, sid, s.output)
        assert rs.run.output == {
            "n": n,
            "values": [step_value(n, i) for i in range(STEPS)],
            # the run's output was built from the recorded results, whoever executed them
            "workers": [rs.steps[sid].output["worker"] for sid in STEP_IDS],
        }, run_id


# --- test 1: SIGKILL mid-run ---
async def test_sigkill_mid_run_then_new_worker_completes_every_run_once(
    client: Stepline, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    log = tmp_path / "side-effects.log"
    store = client.store
    a = spawn("worker-A")
    await a.wait_ready()

    first = list(range(5))
    event_n = await send_staggered(client, first)
    runs_before_kill = FUNCTIONS * len(first)

    async def mid_flight() -> bool:  # about two of the eight steps of each run are recorded
        return len(completed_keys(await snapshot(store))) >= 2 * runs_before_kill

    await wait_for("worker A to record some steps", mid_flight, 20, a)
    jitter = random.uniform(0, STEP_SECONDS)  # land the kill at a different point of the steps on every run
    await asyncio.sleep(jitter)
    a.sigkill()
    killed_at = int(time.time() * 1000)

    at_kill = await snapshot(store)
    log_at_kill = read_log(log)
    done_at_kill = completed_keys(at_kill)  # step results committed before the kill
    executed_at_kill = executions(log_at_kill)
    assert len(at_kill) == runs_before_kill
    assert all(x.worker == "worker-A" and x.kind == "exec" for x in log_at_kill)
    # Precondition: the kill landed mid-run (runs started, none finished) while A held the runs' leases.
    mid_runs = [r for r, rs in at_kill.items() if rs.run.status == "running" and rs.completed()]
    assert mid_runs, "the kill did not land in the middle of any run"
    for run_id, rs in at_kill.items():
        assert rs.run.status == "running", (run_id, rs.run.status)
        assert rs.run.lease_owner == "worker-A", (run_id, rs.run.lease_owner)
        assert rs.run.lease_expires_at is not None and rs.run.lease_expires_at > killed_at  # still held
    # Every committed step had run its code first (the log is written before the step returns).
    assert done_at_kill <= set(executed_at_kill)
    in_flight_at_kill = set(executed_at_kill) - done_at_kill
    per_run_in_flight = Counter(run_id for run_id, _ in in_flight_at_kill)
    assert all(c == 1 for c in per_run_in_flight.values()), per_run_in_flight  # sequential: one at a time

    # Events accepted while no worker is alive must not be lost either.
    later = list(range(5, 8))
    for n in later:
        (eid,) = await client.send({"name": EVENT, "data": {"n": n}})
        event_n[eid] = n

    b = spawn("worker-B")
    await b.wait_ready()

    n_runs = FUNCTIONS * len(event_n)
    await wait_for("worker B to complete every run", lambda: all_completed(store, n_runs), 60, b)
    final = await snapshot(store)
    final_log = read_log(log)
    executed = executions(final_log)

    # No accepted event lost.
    stored_events = {e.internal_id for e in await store.list_events(EVENT, 10_000)}
    lost = set(event_n) - stored_events
    assert not lost
    assert stored_events == set(event_n)

    check_final_runs(final, event_n)

    all_keys = {(run_id, sid) for run_id in final for sid in STEP_IDS}
    duplicated = {k for k, c in executed.items() if c > 1}
    # Every step ran; none ran more than twice.
    assert set(executed) == all_keys
    assert max(executed.values()) <= 2
    # A step whose result was committed before the kill never ran again, and its record is untouched.
    assert not duplicated & done_at_kill, sorted(duplicated & done_at_kill)
    for run_id, sid in done_at_kill:
        assert step_view(final[run_id].steps[sid]) == step_view(at_kill[run_id].steps[sid])
        assert final[run_id].steps[sid].output["worker"] == "worker-A"
    # Re-execution only of the step that was in flight at the kill (executed by A, result not committed):
    # at most one per run, and its second execution was worker B's.
    assert duplicated <= in_flight_at_kill, sorted(duplicated - in_flight_at_kill)
    assert max(Counter(run_id for run_id, _ in duplicated).values(), default=0) <= 1
    assert executions(final_log, "worker-A") == executed_at_kill  # A did nothing after the kill
    # Every step not committed before the kill was recorded by B, after A's lease on the run expired.
    for run_id, sid in all_keys - done_at_kill:
        s = final[run_id].steps[sid]
        assert s.output["worker"] == "worker-B", (run_id, sid, s.output)
        if run_id in at_kill:
            expired = at_kill[run_id].run.lease_expires_at
            assert expired is not None and s.started_at >= expired, (run_id, sid, s.started_at, expired)
    assert not [x for x in final_log if x.kind != "exec"], "no step call raised"

    print(
        f"\n[sigkill] kill {jitter * 1000:.0f} ms after the trigger point | "
        f"events sent={len(event_n)} stored={len(stored_events)} lost={len(lost)} | "
        f"runs={len(final)} completed={sum(rs.run.status == 'completed' for rs in final.values())} "
        f"(mid-run at kill={len(mid_runs)}) | steps: committed before kill={len(done_at_kill)}, "
        f"in flight at kill={len(in_flight_at_kill)}, executions={sum(executed.values())} for "
        f"{len(all_keys)} steps, duplicated step executions={len(duplicated)}, "
        f"committed steps re-executed={len(duplicated & done_at_kill)}"
    )
    assert b.stop_gracefully() == 0, b.output()
    assert "Traceback" not in b.err_path.read_text(), b.output()


# --- test 2: SIGSTOP (leases expire), takeover, SIGCONT ---
async def test_paused_worker_loses_its_leases_and_its_late_writes_are_rejected(
    client: Stepline, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    db, log = tmp_path / "stepline.db", tmp_path / "side-effects.log"
    store = client.store
    a = spawn("worker-A")
    await a.wait_ready()
    numbers = list(range(5))
    event_n = await send_staggered(client, numbers)
    n_runs = FUNCTIONS * len(numbers)

    async def every_run_started() -> bool:
        state = await snapshot(store)
        return len(state) == n_runs and all(rs.completed() for rs in state.values())

    await wait_for("worker A to record a step of every run", every_run_started, 20, a)
    jitter = random.uniform(0, STEP_SECONDS)
    await asyncio.sleep(jitter)

    # Pause A at a moment it does not hold SQLite's write lock: a process frozen inside a write transaction
    # blocks every other writer of the file (SQLite has one writer at a time), which no lease can fix.
    for _ in range(200):
        a.sigstop()
        if not db_write_locked(db):
            break
        a.sigcont()
        await asyncio.sleep(0.005)
    else:
        pytest.fail("could not pause worker A outside a write transaction")
    at_pause = await snapshot(store)
    log_at_pause = read_log(log)
    done_at_pause = completed_keys(at_pause)
    assert all(rs.run.lease_owner == "worker-A" and rs.run.status == "running" for rs in at_pause.values())
    max_index = max(STEP_IDS.index(x.step) for x in log_at_pause)
    # Worker B stops before step `gate_at` until the gate opens, so that when A wakes up every step A could
    # still touch (its in-flight step, or the next one) already has B's recorded result, while B's runs are
    # still unfinished: A's writes must then be rejected as "lost lease", not merely as "run already ended".
    gate_at = max_index + 2
    assert gate_at <= STEPS - 1, f"A got too far before the pause (step {max_index}) for this test's gate"
    gate = tmp_path / "gate-open"
    b = spawn("worker-B", {"CRASH_APP_GATE_AT": str(gate_at), "CRASH_APP_GATE_FILE": str(gate)})
    await b.wait_ready()

    async def b_took_over() -> bool:
        state = await snapshot(store)
        return all(rs.run.lease_owner == "worker-B" and len(rs.completed()) >= gate_at for rs in state.values())

    await wait_for("worker B to take every run over up to the gate", b_took_over, 30, b)
    before_resume = await snapshot(store)
    assert all(rs.run.status == "running" for rs in before_resume.values())

    a.sigcont()

    def a_rejected_everywhere() -> bool:
        rejected = {x.run_id for x in read_log(log) if x.worker == "worker-A" and x.kind == "raised:LeaseLost"}
        return rejected == set(at_pause)

    await wait_for("worker A to get LeaseLost in every run it held", a_rejected_everywhere, 20, a, b)
    await asyncio.sleep(0.3)  # let anything else A might (wrongly) write land before we compare
    after_resume = await snapshot(store)
    # A wrote nothing: no step record added or changed, B still holds every lease.
    for run_id, rs in before_resume.items():
        assert {d: step_view(s) for d, s in after_resume[run_id].steps.items()} == {
            d: step_view(s) for d, s in rs.steps.items()
        }, run_id
        assert after_resume[run_id].run.lease_owner == "worker-B"
        assert after_resume[run_id].run.status == "running"

    gate.touch()
    await wait_for("worker B to complete every run", lambda: all_completed(store, n_runs), 30, a, b)
    final = await snapshot(store)
    final_log = read_log(log)
    check_final_runs(final, event_n)

    for run_id, sid in done_at_pause:  # recorded by A before the pause: never re-run, never overwritten
        assert step_view(final[run_id].steps[sid]) == step_view(at_pause[run_id].steps[sid])
        assert final[run_id].steps[sid].output["worker"] == "worker-A"
    for run_id, rs in final.items():  # everything else was recorded by B, whatever A did after waking up
        for sid in set(STEP_IDS) - at_pause[run_id].completed():
            assert rs.steps[sid].output["worker"] == "worker-B", (run_id, sid, rs.steps[sid].output)

    executed = executions(final_log)
    a_late = executions(final_log, "worker-A") - executions(log_at_pause, "worker-A")
    duplicated = {k for k, c in executed.items() if c > 1}
    rejections = [x for x in final_log if x.kind != "exec"]
    assert not duplicated & done_at_pause
    assert max(executed.values()) <= 2
    # After waking up, A ran at most one more step per run, and only steps B had already recorded.
    assert max(Counter(r for r, _ in a_late).values(), default=0) <= 1, a_late
    assert set(a_late) <= completed_keys(before_resume)
    assert all(x.worker == "worker-A" and x.kind == "raised:LeaseLost" for x in rejections), rejections
    assert len(rejections) == len(at_pause)  # one LeaseLost per run A held, then A let the run go

    print(
        f"\n[sigstop] pause {jitter * 1000:.0f} ms after the trigger point | "
        f"events sent={len(event_n)} stored={len(await store.list_events(EVENT, 10_000))} | "
        f"runs={len(final)} completed={sum(rs.run.status == 'completed' for rs in final.values())} | "
        f"steps recorded by A before pause={len(done_at_pause)}, gate at step {gate_at}, "
        f"A's step executions after SIGCONT={sum(a_late.values())}, A's writes rejected (LeaseLost)="
        f"{len(rejections)}, duplicated step executions={len(duplicated)}, "
        f"recorded steps overwritten=0"
    )
    assert a.stop_gracefully() == 0, a.output()
    assert b.stop_gracefully() == 0, b.output()
    for w in (a, b):
        assert "Traceback" not in w.err_path.read_text(), w.output()
