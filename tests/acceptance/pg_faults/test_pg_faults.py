"""Fault tests on PostgreSQL with real processes: worker nodes share one database while a load generator (this
test process) sends events continuously, and a fault hits mid-load.

1. Three nodes, one SIGKILLed mid-step: the other two finish everything.
2. The PostgreSQL server is restarted mid-load (fast, then immediate): the nodes reconnect on their own.
3. Rolling restart: each node in turn is stopped with SIGTERM and replaced, under load.

Each test checks: every event whose send returned is stored, and started exactly one run per function (events
carry an explicit ``id``, so an event re-sent after an ambiguous failure starts no second run); every run
completed with the right output; every step is recorded exactly once; and no completed step re-executed. For
the last, the side-effect log has a line per step execution and the worker launcher adds a line per claimed
run with the completed steps the claim returned (its memo), while a monitor snapshots the database a few times
a second: every claim must return every step seen committed before the claim was made, and no worker may run
a step that was in the memo of its claim. A step may run twice only when the worker running it died or lost
its lease before its result committed, and the run was claimed again before that commit.

Each test prints a one-line count summary (``pytest -s``) and adds its counts to ``pg_faults_counts.json`` in
pytest's base temporary directory (its path is printed).

The databases use ``synchronous_commit = on`` (the shared test cluster runs with it off, for speed): with it off,
an immediate shutdown loses commits already acknowledged to clients, which is PostgreSQL's documented
trade-off, not something Stepline can guard against.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stepline import Stepline
from stepline.storage.postgres.store import PostgresStore
from tests.acceptance.pg_faults.app import APP_ID, EVENT, SLUGS, STEP_SECONDS, STEPS, expected_output, step_id
from tests.eventually import eventually
from tests.pg_cluster import PgCluster, get_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

WORKER_SCRIPT = Path(__file__).parent / "run_worker.py"
# Worker leases: short where a takeover is what the test waits for, long where takeovers would only come from
# CPU starvation of this small (and possibly shared) machine and would hide what the test is about.
KILL_LEASE = 3.0  # a killed node's runs are taken over after at most this
RESTART_LEASE = 2.0  # short on purpose: leases expire while the server is down, and are taken over
ROLLING_LEASE = 10.0  # a graceful stop needs no takeover
FUNCTIONS = len(SLUGS)  # every event starts one run of each function (sync and async)
STEP_IDS = [step_id(i) for i in range(STEPS)]
COMPLETE_WITHIN = 90.0  # seconds, after the load ends: longer means a run is stuck
SEND_RETRY_FOR = 60.0  # seconds a send is retried before the test gives up on it

Key = tuple[str, str]  # (run id, step display id)


# --- the database ---
@pytest.fixture
def cluster() -> PgCluster:
    found = get_cluster()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found: CI should have installed them")
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl not found)")
    return found


@pytest.fixture
def db_url(cluster: PgCluster) -> Iterator[str]:
    """A fresh, migrated database with ``synchronous_commit = on`` for every connection to it."""
    url = cluster.create_database()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
    yield url
    with contextlib.suppress(Exception):
        cluster.drop_database(url)


@pytest.fixture
async def sender(db_url: str) -> AsyncIterator[Stepline]:
    """The load generator's client: the same app id, no functions (a producer process registers nothing)."""
    client = Stepline(APP_ID, PostgresStore(db_url, writers=2, pool_size=4))
    await client.ready()
    yield client
    await client.close()


# --- worker processes ---
class WorkerProcess:
    """``run_worker.py`` as a subprocess; stdout and stderr go to files (shown when a test fails)."""

    def __init__(self, name: str, url: str, log: Path, tmp: Path, lease: float) -> None:
        self.name = name
        self.out_path = tmp / f"{name}.stdout"
        self.err_path = tmp / f"{name}.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PGF_", "STEPLINE_DB"))}
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER_SCRIPT), url, name, str(log), str(lease)],
                stdout=out,
                stderr=err,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def output(self) -> str:
        out = self.out_path.read_text(errors="replace")
        return f"--- {self.name} stdout ---\n{out}--- {self.name} stderr (tail) ---\n{self.stderr()[-6000:]}"

    async def wait_ready(self, timeout: float = 30.0) -> None:
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

    async def stop_gracefully(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def side_log(tmp_path: Path) -> Path:
    return tmp_path / "side-effects.log"


Spawn = Callable[[str, float], WorkerProcess]  # (name, lease seconds) -> a started worker process


@pytest.fixture
def spawn(db_url: str, side_log: Path, tmp_path: Path) -> Iterator[Spawn]:
    started: list[WorkerProcess] = []

    def start(name: str, lease: float) -> WorkerProcess:
        w = WorkerProcess(name, db_url, side_log, tmp_path, lease)
        started.append(w)
        return w

    yield start
    for w in started:
        w.cleanup()


# --- observations ---
@dataclass(frozen=True)
class LogLine:
    kind: str  # "exec", or "raised:<ExceptionName>"
    worker: str
    run_id: str
    step: str
    at: float  # unix time


def read_log(path: Path) -> list[LogLine]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        kind, worker, run_id, step, at = raw.split()
        lines.append(LogLine(kind, worker, run_id, step, float(at)))
    return lines


class LogTail:
    """Reads the lines appended to the side-effect log since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[LogLine]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [LogLine(*x.split()[:4], float(x.split()[4])) for x in complete.decode().splitlines()]


def executions(lines: list[LogLine], worker: str | None = None) -> Counter[Key]:
    return Counter((x.run_id, x.step) for x in lines if x.kind == "exec" and worker in (None, x.worker))


@dataclass(frozen=True)
class StepView:
    status: str
    attempts: int
    output: Any
    started_at: int
    ended_at: int | None


@dataclass
class RunView:
    id: str
    function_id: str
    event_id: str
    status: str
    output: Any
    error: Any
    lease_owner: str | None
    lease_expires_at: int | None
    steps: dict[str, StepView] = field(default_factory=dict)  # by display id, in recorded order

    def completed(self) -> set[str]:
        return {d for d, s in self.steps.items() if s.status == "completed"}


@dataclass
class Snapshot:
    runs: dict[str, RunView]
    events: dict[str, str]  # internal id -> user id, for this app's trigger event
    taken_by: float  # unix time by which everything in it was committed (the query had returned)

    def completed_keys(self) -> set[Key]:
        return {(run_id, d) for run_id, rv in self.runs.items() for d in rv.completed()}


def take_snapshot(url: str) -> Snapshot:
    """Runs, steps and events in one REPEATABLE READ transaction (one consistent view of the database)."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            run_rows = conn.execute(
                "SELECT id, function_id, event_id, status, output, error, lease_owner, lease_expires_at FROM runs"
            ).fetchall()
            step_rows = conn.execute(
                "SELECT run_id, display_id, status, attempts, output, started_at, ended_at FROM steps "
                "ORDER BY run_id, seq"
            ).fetchall()
            event_rows = conn.execute("SELECT internal_id, id FROM events WHERE name = %s", [EVENT]).fetchall()
    taken_by = time.time()
    runs = {r[0]: RunView(*r) for r in run_rows if r[1].endswith(SLUGS)}
    for run_id, display_id, *rest in step_rows:
        if run_id in runs:
            runs[run_id].steps[display_id] = StepView(*rest)
    return Snapshot(runs, dict(event_rows), taken_by)


async def snapshot(url: str) -> Snapshot:
    return await asyncio.to_thread(take_snapshot, url)


class Monitor:
    """Snapshots the database every ``interval`` s: when each step result was first seen committed."""

    def __init__(self, url: str, interval: float = 0.25) -> None:
        self.url = url
        self.interval = interval
        self.committed_by: dict[Key, float] = {}
        self.snapshots = 0
        self.failed = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def note(self, snap: Snapshot) -> None:
        self.snapshots += 1
        for key in snap.completed_keys():
            self.committed_by.setdefault(key, snap.taken_by)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.note(await snapshot(self.url))
            except psycopg.Error:
                self.failed += 1  # the server is down (restart test)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


class Load:
    """Sends ``count`` events, evenly spread over ``duration`` seconds, each with an explicit id. A send that
    raises is retried (same event id, so no second run starts if the failed attempt was in fact stored) until it
    succeeds."""

    def __init__(self, client: Stepline, prefix: str, count: int, duration: float, parallel: int = 4) -> None:
        self.client = client
        self.parallel = parallel
        self.prefix = prefix
        self.count = count
        self.duration = duration
        self.event_n: dict[str, int] = {}  # user id -> n, for every event whose send returned
        self.accepted: dict[str, str] = {}  # internal id returned by send -> user id
        self.retried_sends = 0  # sends that raised at least once
        self.failed_attempts: Counter[str] = Counter()  # exception type -> count
        self.longest_send = 0.0
        self.stopped = False  # set to end the load before ``count`` events

    @property
    def sent(self) -> int:
        return len(self.event_n)

    async def send(self, n: int) -> None:
        uid = f"{self.prefix}-{n:05d}"
        started = time.monotonic()
        retried = False
        while True:
            try:
                (internal_id,) = await self.client.send({"name": EVENT, "data": {"n": n}, "id": uid})
            except Exception as exc:
                self.failed_attempts[type(exc).__name__] += 1
                if not retried:
                    retried = True
                    self.retried_sends += 1
                if time.monotonic() - started > SEND_RETRY_FOR:
                    raise
                await asyncio.sleep(0.1)
                continue
            self.accepted[internal_id] = uid
            self.event_n[uid] = n
            self.longest_send = max(self.longest_send, time.monotonic() - started)
            return

    async def run(self) -> None:
        """``parallel`` senders, each on its share of the schedule (event ``n`` is due at ``n * duration /
        count``), so several sends are in flight when a fault hits."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def sender(first: int) -> None:
            for n in range(first, self.count, self.parallel):
                if self.stopped:
                    return
                delay = t0 + n * self.duration / self.count - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.send(n)

        await asyncio.gather(*(sender(k) for k in range(self.parallel)))


async def wait_for(what: str, predicate: Callable[[], Any], timeout: float, *workers: WorkerProcess) -> None:
    """Poll ``predicate`` (sync or async) every 50 ms until it is true; fail after ``timeout`` seconds."""
    await eventually(
        what, predicate, timeout, interval=0.05, diagnostics=lambda: "\n".join(w.output() for w in workers)
    )


async def wait_all_completed(url: str, load: Load, workers: list[WorkerProcess]) -> Snapshot:
    """Wait (bounded) until every event sent has its runs, all completed; return the final snapshot."""
    deadline = time.monotonic() + COMPLETE_WITHIN
    while True:
        snap = await snapshot(url)
        uids = {snap.events.get(rv.event_id) for rv in snap.runs.values()}
        done = all(rv.status == "completed" for rv in snap.runs.values())
        if done and set(load.event_n) <= uids and len(snap.runs) >= FUNCTIONS * load.sent:
            return snap
        if time.monotonic() > deadline:
            stuck = [
                (rv.id, rv.status, rv.lease_owner, rv.lease_expires_at, sorted(rv.completed()))
                for rv in snap.runs.values()
                if rv.status != "completed"
            ]
            logs = "\n".join(w.output() for w in workers)
            raise AssertionError(
                f"not every run completed within {COMPLETE_WITHIN}s: {len(stuck)} of {len(snap.runs)} runs not "
                f"completed (first 20: {stuck[:20]}); events without runs: "
                f"{sorted(set(load.event_n) - uids)[:20]}\n{logs}"
            )
        await asyncio.sleep(0.1)


@dataclass
class Outcome:
    counts: dict[str, Any]
    executed: Counter[Key]
    duplicated: set[Key]


@dataclass
class MemoCheck:
    """Checks, from the claim and exec lines of the log and the monitor's snapshots, that no completed step
    re-executed: (1) a claim returns every step result committed before it was made (a result the monitor saw
    committed before the claim started must be in the claim's memo), and (2) a worker never runs a step that
    was in the memo of its current claim of the run."""

    claims: int = 0
    resumed_claims: int = 0  # claims that returned some completed steps
    verified: int = 0  # (claim, step seen committed before it) pairs checked
    stale_claims: list[str] = field(default_factory=list)
    memo_reexecuted: list[str] = field(default_factory=list)
    orphan_execs: list[str] = field(default_factory=list)

    def run(self, lines: list[LogLine], monitor: Monitor) -> MemoCheck:
        memo_of: dict[tuple[str, str], set[str]] = {}  # (worker, run id) -> memo of its latest claim
        for x in lines:  # in log order: a claim line is written before the claimed run starts executing
            if x.kind == "claim":
                memo = set() if x.step == "-" else set(x.step.split(","))
                memo_of[x.worker, x.run_id] = memo
                self.claims += 1
                self.resumed_claims += bool(memo)
                for sid in STEP_IDS:
                    seen = monitor.committed_by.get((x.run_id, sid))
                    if seen is not None and seen <= x.at:
                        self.verified += 1
                        if sid not in memo:
                            self.stale_claims.append(f"{x}: {sid} was committed by {seen:.3f}, not in the memo")
            elif x.kind == "exec":
                memo_claimed = memo_of.get((x.worker, x.run_id))
                if memo_claimed is None:
                    self.orphan_execs.append(str(x))
                elif x.step in memo_claimed:
                    self.memo_reexecuted.append(str(x))
        return self

    def assert_ok(self) -> None:
        assert not self.orphan_execs, f"step executions without a claim by that worker: {self.orphan_execs[:5]}"
        assert not self.stale_claims, f"claims that missed committed steps: {self.stale_claims[:5]}"
        assert not self.memo_reexecuted, f"steps re-executed although memoized: {self.memo_reexecuted[:5]}"


def describe_runs(keys: set[Key], lines: list[LogLine], limit: int = 6) -> str:
    """The log lines (claims, executions, raises) of the runs of ``keys``, for failure messages."""
    run_ids = sorted({r for r, _ in keys})[:limit]
    out = [f"{len(keys)} keys; log of {len(run_ids)} of their runs:"]
    for run_id in run_ids:
        out.append(f"  run {run_id}:")
        out += [f"    {x.at:.3f} {x.kind} {x.worker} {x.step}" for x in lines if x.run_id == run_id]
    return "\n".join(out)


def check_outcome(final: Snapshot, load: Load, lines: list[LogLine], monitor: Monitor) -> Outcome:
    """What every fault test asserts once every run completed."""
    # No accepted event lost; each event (by its id) started exactly one run of each function.
    lost = set(load.accepted) - set(final.events)
    assert not lost, f"{len(lost)} accepted events are not stored: {sorted(lost)[:10]}"
    assert set(final.events.values()) == set(load.event_n), "stored events that no send was made for"
    stored_per_uid = Counter(final.events.values())
    runs_per_uid = Counter((final.events[rv.event_id], rv.function_id) for rv in final.runs.values())
    assert set(runs_per_uid.values()) == {1}, [k for k, c in runs_per_uid.items() if c != 1][:10]
    assert len(final.runs) == FUNCTIONS * load.sent

    # Every run completed with the right output, built from its steps, each recorded exactly once.
    for run_id, rv in final.runs.items():
        n = load.event_n[final.events[rv.event_id]]
        assert rv.status == "completed", (run_id, rv.status, rv.error)
        assert list(rv.steps) == STEP_IDS, (run_id, list(rv.steps))
        for sid, s in rv.steps.items():
            assert (s.status, s.attempts) == ("completed", 1), (run_id, sid, s)
        assert rv.output == expected_output(n, [rv.steps[sid].output["worker"] for sid in STEP_IDS]), run_id
        assert [rv.steps[sid].output["value"] for sid in STEP_IDS] == rv.output["values"], run_id

    executed = executions(lines)
    all_keys = {(run_id, sid) for run_id in final.runs for sid in STEP_IDS}
    assert set(executed) == all_keys, "every recorded step ran, and no step ran that is not recorded"
    duplicated = {k for k, c in executed.items() if c > 1}
    # No completed step re-executed: every claim returned the steps committed before it, and were not re-run.
    memo = MemoCheck().run(lines, monitor)
    memo.assert_ok()
    counts = {
        "events_sent": load.sent,
        "sends_retried": load.retried_sends,
        "failed_send_attempts": dict(load.failed_attempts),
        "longest_send_s": round(load.longest_send, 2),
        "events_stored": len(final.events),
        "events_stored_twice": sum(1 for c in stored_per_uid.values() if c > 1),
        "events_lost": len(lost),
        "runs_expected": FUNCTIONS * load.sent,
        "runs_completed": sum(rv.status == "completed" for rv in final.runs.values()),
        "steps": len(all_keys),
        "step_executions": sum(executed.values()),
        "duplicated_step_executions": sum(executed.values()) - len(all_keys),
        "steps_executed_more_than_once": len(duplicated),
        "max_executions_of_a_step": max(executed.values()),
        "claims": memo.claims,
        "resumed_claims": memo.resumed_claims,
        "committed_steps_checked_in_claims": memo.verified,
        "completed_steps_reexecuted": len(memo.stale_claims) + len(memo.memo_reexecuted),
        "monitor_snapshots": monitor.snapshots,
    }
    return Outcome(counts, executed, duplicated)


def report(test: str, counts: dict[str, Any], counts_file: Path, *shown: str) -> None:
    """Print the test's count summary on one line (the four headline counts, then ``shown`` ones), and add all
    its counts to the JSON file."""
    c = counts
    extra = " ".join(f"{k}={c[k]}" for k in ("sends_retried", "events_stored_twice", *shown, "seconds"))
    print(
        f"\n[{test}] runs sent={c['runs_expected']} completed={c['runs_completed']} "
        f"duplicated step executions={c['duplicated_step_executions']} lost={c['events_lost']} "
        f"(completed steps re-executed={c['completed_steps_reexecuted']}) | {extra}"
    )
    data = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    data[test] = counts
    counts_file.write_text(json.dumps(data, indent=2, sort_keys=True))
    print(f"[{test}] all counts in {counts_file}")


@pytest.fixture
def counts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "pg_faults_counts.json"


async def start_workers(spawn: Spawn, names: list[str], lease: float) -> list[WorkerProcess]:
    workers = [spawn(n, lease) for n in names]
    for w in workers:
        await w.wait_ready()
    return workers


async def stop_all(workers: list[WorkerProcess]) -> None:
    for w in workers:
        assert await w.stop_gracefully() == 0, w.output()
        assert "stopped" in w.out_path.read_text(), w.output()


def log_problems(workers: list[WorkerProcess]) -> dict[str, int]:
    """Count a few log lines of interest across the workers' stderr."""
    text = "".join(w.stderr() for w in workers)
    return {
        "tracebacks": text.count("Traceback"),
        "transient_write_retries": text.count("transient write error"),
        "deadlocks": text.count("deadlock detected"),
        "listen_reconnects": text.count("LISTEN connection lost"),
        "executor_failures": text.count("the executor failed"),
        "renew_failures": text.count("renewing leases failed"),
    }


# --- test 1: three nodes, one SIGKILLed mid-step ---
async def test_three_nodes_one_killed(
    db_url: str,
    sender: Stepline,
    spawn: Spawn,
    side_log: Path,
    counts_file: Path,
) -> None:
    started = time.monotonic()
    workers = await start_workers(spawn, ["node-A", "node-B", "node-C"], KILL_LEASE)
    victim = workers[1]
    survivors = [workers[0], workers[2]]
    load = Load(sender, "kill", count=240, duration=6.0)
    monitor = Monitor(db_url)
    monitor.start()
    load_task = asyncio.create_task(load.run())
    try:
        # Mid-load, once the victim has been running steps for a while: kill it just after it started a step
        # (in the first half of the step's sleep, so that step's result cannot have been committed).
        await wait_for(
            "the victim to run steps under load",
            lambda: load.sent >= load.count * 0.4 and sum(executions(read_log(side_log), victim.name).values()) >= 30,
            30,
            *workers,
        )
        tail = LogTail(side_log)
        tail.new_lines()
        deadline = time.monotonic() + 10
        while True:
            fresh = [x for x in tail.new_lines() if x.worker == victim.name and x.kind == "exec"]
            if fresh and time.time() - fresh[-1].at < STEP_SECONDS / 2:
                break
            assert time.monotonic() < deadline, "the victim started no step in 10 s"
            await asyncio.sleep(0.001)
        victim.sigkill()
        killed_at_ms = int(time.time() * 1000)
        # A COMMIT the victim sent just before it died may still be processed by its server backend.
        await asyncio.sleep(0.05)
        at_kill = await snapshot(db_url)
        monitor.note(at_kill)
        log_at_kill = read_log(side_log)
        assert at_kill.taken_by * 1000 < killed_at_ms + KILL_LEASE * 1000, "snapshot too late: leases expired"

        done_at_kill = at_kill.completed_keys()
        victim_runs = {r for r, rv in at_kill.runs.items() if rv.lease_owner == victim.name}
        victim_executed = executions(log_at_kill, victim.name)
        in_flight = set(victim_executed) - done_at_kill  # the victim ran these steps, their results not committed
        assert in_flight, "the kill did not land while the victim was executing a step"
        assert {r for r, _ in in_flight} <= victim_runs, "the victim executed steps of runs it did not hold"
        for run_id in victim_runs:  # still held by the dead victim when it died
            lease = at_kill.runs[run_id].lease_expires_at
            assert lease is not None and lease > killed_at_ms - 100, (run_id, lease, killed_at_ms)

        await load_task
        final = await wait_all_completed(db_url, load, survivors)
    finally:
        load_task.cancel()
        await monitor.stop()
    assert victim.proc.returncode == -signal.SIGKILL
    await stop_all(survivors)
    lines = read_log(side_log)
    outcome = check_outcome(final, load, lines, monitor)

    assert outcome.counts["max_executions_of_a_step"] <= 2
    # Steps committed before the kill never ran again, and their records are untouched.
    assert not outcome.duplicated & done_at_kill, sorted(outcome.duplicated & done_at_kill)[:10]
    for run_id, sid in done_at_kill:
        assert final.runs[run_id].steps[sid] == at_kill.runs[run_id].steps[sid], (run_id, sid)
    # Only steps in flight on the killed node at the kill ran twice (at most one per run), re-run by a survivor.
    assert outcome.duplicated <= in_flight, sorted(outcome.duplicated - in_flight)[:10]
    assert max(Counter(r for r, _ in outcome.duplicated).values(), default=0) <= 1
    assert executions(lines, victim.name) == victim_executed, "the victim did nothing after the kill"
    for run_id, sid in in_flight:
        assert final.runs[run_id].steps[sid].output["worker"] != victim.name, (run_id, sid)
    # The victim's runs were taken over only after their leases expired.
    for run_id in victim_runs:
        expired = at_kill.runs[run_id].lease_expires_at
        assert expired is not None
        for sid in set(STEP_IDS) - at_kill.runs[run_id].completed():
            s = final.runs[run_id].steps[sid]
            assert s.output["worker"] != victim.name and s.started_at >= expired, (run_id, sid, s, expired)
    assert not [x for x in lines if x.kind.startswith("raised:")], "no step call raised"
    for w in survivors:
        assert "Traceback" not in w.stderr(), w.output()

    counts = {
        **outcome.counts,
        "victim_runs_at_kill": len(victim_runs),
        "steps_committed_before_kill": len(done_at_kill),
        "steps_in_flight_on_victim_at_kill": len(in_flight),
        "steps_committed_before_kill_reexecuted": len(outcome.duplicated & done_at_kill),
        "seconds": round(time.monotonic() - started, 1),
    }
    report(
        "three_nodes_one_killed",
        counts,
        counts_file,
        "victim_runs_at_kill",
        "steps_in_flight_on_victim_at_kill",
        "steps_committed_before_kill_reexecuted",
    )


# --- test 2: the PostgreSQL server restarts mid-load ---
async def test_postgres_restart_mid_load(
    cluster: PgCluster,
    db_url: str,
    sender: Stepline,
    spawn: Spawn,
    side_log: Path,
    counts_file: Path,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    workers = await start_workers(spawn, ["node-A", "node-B", "node-C"], RESTART_LEASE)
    # 30 events a second until every node ran steps after the last restart (the count is only an upper bound).
    load = Load(sender, "restart", count=900, duration=30.0)
    monitor = Monitor(db_url)
    monitor.start()
    load_task = asyncio.create_task(load.run())
    restarts: list[dict[str, Any]] = []
    try:
        for mode, at_event in (("fast", 70), ("immediate", 150)):
            await wait_for(f"load before the {mode} restart", lambda: load.sent >= at_event, 30)
            t0, began = time.monotonic(), time.time()
            await asyncio.to_thread(cluster.restart, mode)
            restarts.append(
                {
                    "mode": mode,
                    "at_event": load.sent,
                    "down_s": round(time.monotonic() - t0, 2),
                    "began": began,
                    "ended": time.time(),
                }
            )
            assert all(w.alive() for w in workers), "\n".join(w.output() for w in workers if not w.alive())
        # Every node reconnected on its own and kept working: each runs steps after the last restart.
        last_restart = restarts[-1]["ended"]

        def every_node_ran_steps_since_last_restart() -> bool:
            dead = [w for w in workers if not w.alive()]
            assert not dead, "workers died:\n" + "\n".join(w.output() for w in dead)
            ran = {x.worker for x in read_log(side_log) if x.kind == "exec" and x.at > last_restart}
            return ran == {w.name for w in workers}

        await wait_for(
            "every node to run steps after the restart", every_node_ran_steps_since_last_restart, 30, *workers
        )
        await asyncio.sleep(2.0)
        load.stopped = True
        await load_task
        final = await wait_all_completed(db_url, load, workers)
    finally:
        load_task.cancel()
        await monitor.stop()
        with contextlib.suppress(OSError):  # the server's log, for diagnosis
            shutil.copy(cluster.root / "server.log", tmp_path / "postgres-server.log")
    dead = [w for w in workers if not w.alive()]
    assert not dead, "workers died:\n" + "\n".join(w.output() for w in dead)
    problems = log_problems(workers)
    await stop_all(workers)
    lines = read_log(side_log)
    outcome = check_outcome(final, load, lines, monitor)

    # Steps may have run again where a worker lost its lease while its writes waited for the server (the lease
    # is short here): check_outcome verified that none of them had been committed when the run was claimed.

    counts = {
        **outcome.counts,
        "restarts": [{k: v for k, v in r.items() if k not in ("began", "ended")} for r in restarts],
        "raised_in_steps": dict(Counter(x.kind for x in lines if x.kind.startswith("raised:"))),
        **problems,
        "monitor_snapshots_failed": monitor.failed,
        "seconds": round(time.monotonic() - started, 1),
    }
    report(
        "postgres_restart_mid_load",
        counts,
        counts_file,
        "restarts",
        "transient_write_retries",
        "deadlocks",
        "listen_reconnects",
        "raised_in_steps",
    )


# --- test 3: rolling restart of every node under load ---
async def test_rolling_restart(
    db_url: str,
    sender: Stepline,
    spawn: Spawn,
    side_log: Path,
    counts_file: Path,
) -> None:
    started = time.monotonic()
    workers = await start_workers(spawn, ["node-A", "node-B", "node-C"], ROLLING_LEASE)
    # 30 events a second until 2 s after the last node was replaced (the count is only an upper bound).
    load = Load(sender, "rolling", count=900, duration=30.0)
    monitor = Monitor(db_url)
    monitor.start()
    load_task = asyncio.create_task(load.run())
    replaced: list[dict[str, Any]] = []
    live = list(workers)
    try:
        await wait_for("load before the rolling restart", lambda: load.sent >= 40, 30)
        for i, old in enumerate(workers):
            t0, began = time.monotonic(), time.time()
            assert await old.stop_gracefully() == 0, old.output()
            stop_s = time.monotonic() - t0
            new = spawn(f"{old.name}-2", ROLLING_LEASE)
            live[i] = new
            await new.wait_ready()
            replaced.append(
                {"node": old.name, "stop_s": round(stop_s, 2), "at_event": load.sent, "sigterm_at": round(began, 3)}
            )
            await asyncio.sleep(0.8)  # let the new node take load before the next one goes
        await wait_for(
            "the last new node to run steps",
            lambda: any(x.worker == live[-1].name and x.kind == "exec" for x in read_log(side_log)),
            30,
        )
        await asyncio.sleep(1.2)
        load.stopped = True
        await load_task
        final = await wait_all_completed(db_url, load, live)
    finally:
        load_task.cancel()
        await monitor.stop()
    problems = log_problems(workers + live)
    await stop_all(live)
    lines = read_log(side_log)
    outcome = check_outcome(final, load, lines, monitor)

    # A graceful stop finishes the node's active runs: nothing is re-executed.
    assert not outcome.duplicated, f"{describe_runs(outcome.duplicated, lines)}\nreplaced: {replaced}\n" + "\n".join(
        f"{w.name}: {log_problems([w])}" for w in workers + live
    )
    assert not [x for x in lines if x.kind.startswith("raised:")], "no step call raised"
    for w in workers + live:
        assert "Traceback" not in w.stderr(), w.output()
        assert "stopped" in w.out_path.read_text(), w.output()
    for w in live:  # every replacement did work
        assert any(x.worker == w.name and x.kind == "exec" for x in lines), f"{w.name} ran no step\n{w.output()}"

    counts = {
        **outcome.counts,
        "replaced": [{k: v for k, v in r.items() if k != "sigterm_at"} for r in replaced],
        **problems,
        "seconds": round(time.monotonic() - started, 1),
    }
    report("rolling_restart", counts, counts_file, "replaced")
