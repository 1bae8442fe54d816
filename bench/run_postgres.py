#!/usr/bin/env python
"""Stepline on PostgreSQL, beside DBOS Transact, Procrastinate and pgqueuer on one server (a benchmark, not a test).

Run from the project root:

    .venv/bin/python bench/run_postgres.py                    # everything (~15 min on 2 cores; more with --wait-quiet)
    .venv/bin/python bench/run_postgres.py --quick            # small sizes, 1 and 2 workers (~3 min)
    .venv/bin/python bench/run_postgres.py --skip-peers --workers 1,2,4 --runs 5000 --json out.json
    .venv/bin/python bench/run_postgres.py --url postgresql://user@host:5432/postgres   # an existing server

PostgreSQL: by default a throwaway cluster (``tests/pg_cluster.py``'s initdb/pg_ctl, run as the postgres user
when root) in a temporary directory, with durability ON (fsync, synchronous_commit, full_page_writes), on a
loopback port. ``--url`` uses an existing server instead: the URL's user must be allowed to CREATE DATABASE;
each scenario creates and drops its own database there.

Peers are installed into their own venv, ``bench/.peers-venv`` (created from ``bench/requirements-peers.txt``
on first use, or by hand: ``python3 -m venv bench/.peers-venv && bench/.peers-venv/bin/pip install -r
bench/requirements-peers.txt``), never into the project's environment.

Scenarios (each on a fresh database, worker processes started and ready before the first send):

  one   one-step function/workflow/task. A producer process makes N calls, one event/job per call, --inflight
        concurrent; K worker processes drain them. Measured from just before the first send (the producer's
        time.time()) until a 50 ms poll of the system's own table shows N completed. runs/s = N / elapsed.
  ten   ten sequential steps per run (Stepline ``ctx.step.run``, DBOS ``@DBOS.step``; Procrastinate has no
        steps and is skipped). steps/s = 10 N / elapsed.
  lat   event-to-start latency on idle workers (2 processes): sequential sends spaced --latency-gap apart; the
        send time (time.time()) travels in the event/job, the function body prints time.time() - sent first.
  idle  query cost of idle workers (2 processes): after a settle period, count for --idle-seconds the
        statements the server logs for the database (log_statement=all on that database; throwaway cluster
        only) and the pg_stat_database.xact_commit delta. Reported per node.
  stmts 500 one-step runs, 1 worker, log_statement=all: statements per run, by client (application_name).

Every scenario aborts with a clear message after --timeout seconds (default 180). Logs of every process are
kept in the run directory printed at the start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / "peers"
PEERS_VENV = BENCH / ".peers-venv"
REQUIREMENTS = BENCH / "requirements-peers.txt"
sys.path.insert(0, str(ROOT))

from tests.pg_cluster import PgCluster, find_bindir  # noqa: E402

POLL = 0.05
DURABLE_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "300",
    "log_line_prefix": "'%m [%p] %d [%a] '",
}
SHOW = ["server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "wal_level",
        "shared_buffers", "max_connections", "commit_delay", "checkpoint_timeout", "max_wal_size"]  # fmt: skip


class ScenarioError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------ cluster
class DurableCluster(PgCluster):
    """PgCluster with the test cluster's fsync/synchronous_commit=off replaced by PostgreSQL's durable
    defaults (a benchmark of commits must pay for them)."""

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8")
        lines = [f"port = {self.port}", "listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{self.root}'"]
        lines += [f"{k} = {v}" for k, v in DURABLE_SETTINGS.items()]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# stepline bench/run_postgres.py\n" + "\n".join(lines) + "\n")
        self.start()

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None


@dataclass
class Server:
    admin_url: str  # a URL to the maintenance database (postgres)
    cluster: DurableCluster | None = None
    settings: dict[str, str] = field(default_factory=dict)

    def db_url(self, name: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{name}"

    def create_db(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.db_url(name)

    def drop_db(self, name: str) -> None:
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error as exc:
            print(f"  (could not drop database {name}: {exc})", file=sys.stderr)

    def read_settings(self) -> dict[str, str]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            out = {}
            for s in SHOW:
                try:
                    out[s] = str(conn.execute(f"SHOW {s}").fetchone()[0])  # type: ignore[index]
                except psycopg.Error:
                    pass
        self.settings = out
        return out

    def pg_cpu(self) -> float:
        """CPU seconds of the server's processes (owned cluster): the postmaster, including what it reaped
        from exited backends (cutime/cstime), plus every live backend. Deltas of this count backends that
        connected or exited in between."""
        if self.cluster is None:
            return 0.0
        pm = self.cluster.postmaster_pid()
        if pm is None:
            return 0.0
        return cpu_seconds([pm], reaped=True) + cpu_seconds(children_of(pm))


def children_of(ppid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            if int(parts[1]) == ppid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return out


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores; /proc/stat minus idle and iowait)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (at most max_wait s) until the machine's other work uses under ``threshold`` cores over 1 s
    (other engineers' test suites share this machine). Returns the busy cores seen last."""
    deadline = time.monotonic() + max_wait
    while True:
        b0 = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - b0
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        time.sleep(2.0)


def cpu_seconds(pids: list[int], reaped: bool = False) -> float:
    """utime + stime of these processes (and with ``reaped``, of their waited-for children)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += int(parts[11]) + int(parts[12])  # utime, stime (fields 14, 15)
            if reaped:
                total += int(parts[13]) + int(parts[14])  # cutime, cstime
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


# ------------------------------------------------------------------------------------------------ systems
@dataclass
class System:
    name: str
    python: str
    script: Path
    kinds: tuple[str, ...]
    ready_marker: str
    done_sql: str  # count of completed runs/workflows/jobs
    failed_sql: str  # count of failed ones (a scenario aborts on any)
    env: dict[str, str] = field(default_factory=dict)
    concurrency: int = 0

    def setup_cmd(self, url: str) -> list[str]:
        return [self.python, str(self.script), "setup", "--url", url]

    def worker_cmd(self, url: str, index: int) -> list[str]:
        if self.name == "stepline":
            cmd = [self.python, "-m", "stepline.cli.main", "worker", "stepline_app:client", "--app-dir", str(PEERS),
                   "--db", url, "--log-level", "info"]  # fmt: skip
            if self.concurrency:
                cmd += ["--concurrency", str(self.concurrency)]
            return cmd
        cmd = [self.python, str(self.script), "worker", "--url", url, "--index", str(index)]
        if self.concurrency:
            cmd += ["--concurrency", str(self.concurrency)]
        return cmd

    def produce_cmd(self, url: str, kind: str, n: int, inflight: int, gap: float) -> list[str]:
        return [self.python, str(self.script), "produce", "--url", url, "--kind", kind, "--n", str(n),
                "--inflight", str(inflight), "--gap", str(gap)]  # fmt: skip


DBOS_DONE = "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'"
DBOS_FAILED = ("SELECT count(*) FROM dbos.workflow_status WHERE status IN ('ERROR', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED', "
               "'CANCELLED')")  # fmt: skip


def dbos_env(args: argparse.Namespace, poll: float) -> dict[str, str]:
    return {"BENCH_POLL": str(poll), "BENCH_CONCURRENCY": str(args.dbos_concurrency),
            "BENCH_DBOS_ASYNC": "1" if args.dbos_async else "0"}  # fmt: skip


def make_systems(args: argparse.Namespace) -> list[System]:
    peers_python = str(PEERS_VENV / "bin" / "python")
    systems = [
        System(
            "stepline",
            sys.executable,
            PEERS / "stepline_app.py",
            ("one", "ten", "lat", "idle", "stmts"),
            "stepline worker: app",
            "SELECT count(*) FROM runs WHERE status = 'completed'",
            "SELECT count(*) FROM runs WHERE status IN ('failed', 'cancelled')",
            concurrency=args.stepline_concurrency,
        ),
        System(
            "dbos",
            peers_python,
            PEERS / "dbos_app.py",
            ("one", "ten", "lat", "idle"),
            "READY",
            DBOS_DONE,
            DBOS_FAILED,
            env=dbos_env(args, args.dbos_poll),
        ),
        System(
            "dbos-fastpoll",
            peers_python,
            PEERS / "dbos_app.py",
            ("one", "ten", "lat", "idle", "stmts"),
            "READY",
            DBOS_DONE,
            DBOS_FAILED,
            env=dbos_env(args, args.dbos_fast_poll),
        ),
        System(
            "procrastinate",
            peers_python,
            PEERS / "procrastinate_app.py",
            ("one", "lat", "idle", "stmts"),
            "READY",
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('failed', 'aborted')",
            concurrency=args.procrastinate_concurrency,
        ),
        System(
            "pgqueuer",
            peers_python,
            PEERS / "pgqueuer_app.py",
            ("one", "lat", "idle", "stmts"),
            "READY",
            "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
            "SELECT count(*) FROM pgqueuer_log WHERE status IN ('exception', 'failed', 'canceled')",
        ),
    ]
    wanted = args.systems.split(",")
    if args.skip_peers:
        wanted = [w for w in wanted if w == "stepline"]
    unknown = set(wanted) - {s.name for s in systems}
    if unknown:
        raise SystemExit(f"unknown system(s): {', '.join(sorted(unknown))}")
    return [s for s in systems if s.name in wanted]


def ensure_peers_venv() -> None:
    py = PEERS_VENV / "bin" / "python"
    if py.exists():
        return
    print(f"creating {PEERS_VENV} from {REQUIREMENTS.name} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)


def peer_versions() -> dict[str, str]:
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        return {}
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['dbos', 'procrastinate', 'pgqueuer', 'huey', 'psycopg', 'sqlalchemy']}))")  # fmt: skip
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(res.stdout) if res.returncode == 0 else {}


# ------------------------------------------------------------------------------------------------ processes
class Proc:
    """A subprocess whose stdout+stderr go to a log file."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.cmd = cmd
        self.log = log
        self._fh = open(log, "wb")
        self.p = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))

    @property
    def pid(self) -> int:
        return self.p.pid

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 15) -> str:
        return "\n".join("    | " + ln for ln in self.text().splitlines()[-n:])

    def stop(self, grace: float = 15.0) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._fh.close()


def base_env(system: System) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("STEPLINE_DB", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(system.env)
    return env


class Scenario:
    """One scenario of one system: a fresh database, K ready workers, cleanup whatever happens."""

    def __init__(self, ctx: Ctx, system: System, label: str, workers: int) -> None:
        self.ctx = ctx
        self.system = system
        self.label = label
        self.n_workers = workers
        self.deadline: float = time.monotonic() + float(ctx.args.timeout)
        self.db = f"bench_{system.name}_{label}_{workers}w".replace("-", "_")
        self.url = ""
        self.workers: list[Proc] = []
        self.profilers: list[subprocess.Popen[bytes]] = []
        self.env = base_env(system)
        self.app_names = False  # tag connections with application_name (statement counts by client)
        self.logdir = ctx.rundir / f"{system.name}-{label}-{workers}w"
        self.logdir.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check_time(self, what: str) -> None:
        if self.left() <= 0:
            raise ScenarioError(f"timed out after {self.ctx.args.timeout:.0f} s while {what}")

    def __enter__(self) -> Scenario:
        self.url = self.ctx.server.create_db(self.db)
        res = subprocess.run(self.system.setup_cmd(self.url), capture_output=True, text=True, env=self.env,
                             cwd=str(ROOT), timeout=max(10.0, self.left()))  # fmt: skip
        if res.returncode != 0:
            raise ScenarioError(f"setup failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        return self

    def start_workers(self, extra_env: dict[str, str] | None = None) -> None:
        env = {**self.env, **(extra_env or {})}
        for i in range(self.n_workers):
            cmd = self.system.worker_cmd(self.tagged(f"bench-worker-{i}"), i)
            self.workers.append(Proc(cmd, self.logdir / f"worker-{i}.log", env))
        pending = list(self.workers)
        while pending:
            self.check_time("waiting for the workers to start")
            for w in list(pending):
                if self.system.ready_marker in w.text():
                    pending.remove(w)
                elif w.p.poll() is not None:
                    raise ScenarioError(f"worker exited with {w.p.returncode} before it was ready:\n{w.tail()}")
            time.sleep(0.05)
        time.sleep(self.ctx.args.settle)  # LISTEN connections, queue threads, first polls
        if self.ctx.args.pyspy and self.system.name == "stepline" and self.label in ("one", "ten"):
            self._start_profilers()

    @staticmethod
    def _pyspy() -> str:
        return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    def _start_profilers(self) -> None:
        pyspy = self._pyspy()
        outdir = Path(self.ctx.args.pyspy)
        outdir.mkdir(parents=True, exist_ok=True)
        for i, w in enumerate(self.workers):
            out = outdir / f"{self.label}-{self.n_workers}w-{i}.txt"
            cmd = [pyspy, "record", "-p", str(w.pid), "-r", str(self.ctx.args.pyspy_rate), "--threads",
                   "--format", "raw", "-o", str(out)]  # fmt: skip
            self.profilers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)

    def produce(self, kind: str, n: int, inflight: int, gap: float) -> Proc:
        cmd = self.system.produce_cmd(self.tagged("bench-producer"), kind, n, inflight, gap)
        if self.profilers:  # --pyspy: the producer (Stepline's send path) too
            out = Path(self.ctx.args.pyspy) / f"{self.label}-{self.n_workers}w-producer.txt"
            cmd = [self._pyspy(), "record", "-r", str(self.ctx.args.pyspy_rate), "--threads", "--format", "raw",
                   "-o", str(out), "--", *cmd]  # fmt: skip
        return Proc(cmd, self.logdir / "producer.log", self.env)

    def tagged(self, name: str) -> str:
        return f"{self.url}?application_name={name}" if self.app_names else self.url

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def __exit__(self, *exc: object) -> None:
        for prof in self.profilers:
            if prof.poll() is None:
                prof.send_signal(signal.SIGINT)
        for w in self.workers:
            w.stop()
        for prof in self.profilers:
            try:
                prof.wait(30)
            except subprocess.TimeoutExpired:
                prof.kill()
        if not self.ctx.args.keep_dbs:
            self.ctx.server.drop_db(self.db)


def producer_result(p: Proc) -> dict[str, Any]:
    for line in reversed(p.text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    raise ScenarioError(f"the producer printed no result (exit {p.p.returncode}):\n{p.tail()}")


def count(conn: psycopg.Connection[Any], sql: str) -> int:
    try:
        row = conn.execute(sql).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def wait_done(sc: Scenario, conn: psycopg.Connection[Any], n: int, producer: Proc) -> float:
    """Poll every 50 ms until n are completed; returns time.time() at detection. Aborts on failures, a
    failed producer, a dead worker or the scenario timeout."""
    last_report = time.monotonic()
    while True:
        done = count(conn, sc.system.done_sql)
        if done >= n:
            return time.time()
        if producer.p.poll() not in (None, 0):
            raise ScenarioError(f"the producer failed ({producer.p.returncode}):\n{producer.tail()}")
        for w in sc.workers:
            if w.p.poll() is not None:
                raise ScenarioError(f"a worker exited ({w.p.returncode}) before the runs completed:\n{w.tail()}")
        failed = count(conn, sc.system.failed_sql)
        if failed:
            raise ScenarioError(f"{failed} run(s) failed; see {sc.logdir}")
        if sc.left() <= 0:
            raise ScenarioError(f"timed out after {sc.ctx.args.timeout:.0f} s: {done}/{n} completed")
        if time.monotonic() - last_report > 15:
            print(f"    ... {done}/{n} completed", flush=True)
            last_report = time.monotonic()
        time.sleep(POLL)


# ------------------------------------------------------------------------------------------------ scenarios
@dataclass
class Ctx:
    args: argparse.Namespace
    server: Server
    rundir: Path


def scenario_throughput(ctx: Ctx, system: System, kind: str, workers: int, statements: bool = False) -> dict[str, Any]:
    """``statements``: also log every statement the producer and workers send (log_statement=all on this
    database; throwaway cluster only) and report them per run, split by client (application_name)."""
    n = ctx.args.runs if kind == "one" else ctx.args.ten_runs
    if statements:
        n = ctx.args.stmt_runs
    steps = 1 if kind == "one" else 10
    cluster = ctx.server.cluster
    with Scenario(ctx, system, "stmts" if statements else kind, workers) as sc:
        if statements:
            if cluster is None:
                raise ScenarioError("statement counts need the throwaway cluster (its server log)")
            with psycopg.connect(ctx.server.admin_url, autocommit=True) as conn:
                conn.execute(f"ALTER DATABASE \"{sc.db}\" SET log_statement = 'all'")
            sc.app_names = True
        sc.start_workers()
        cpu_w0, cpu_pg0, busy0 = cpu_seconds(sc.worker_pids()), ctx.server.pg_cpu(), machine_busy_seconds()
        with psycopg.connect(sc.url, autocommit=True) as conn:
            conn.execute("SET log_statement = 'none'")  # the completion poller is not part of the workload
            off0 = cluster.log_path.stat().st_size if statements and cluster else 0
            sampler = WaitSampler(ctx.server.admin_url, sc.db) if ctx.args.pg_waits else None
            producer = sc.produce(kind, n, ctx.args.inflight, 0)
            if sampler:
                sampler.start()
            t_end = wait_done(sc, conn, n, producer)
            waits = sampler.stop() if sampler else None
            cpu_w, cpu_pg = cpu_seconds(sc.worker_pids()) - cpu_w0, ctx.server.pg_cpu() - cpu_pg0
            busy = machine_busy_seconds() - busy0
            try:
                producer.p.wait(max(1.0, sc.left()))
            except subprocess.TimeoutExpired:
                raise ScenarioError("the producer did not exit after every run completed") from None
            producer.stop()
            if statements and cluster:
                time.sleep(0.3)
                off1 = cluster.log_path.stat().st_size
        pr = producer_result(producer)
        if pr.get("errors"):
            raise ScenarioError(f"{pr['errors']} send(s) failed: {pr.get('first_error')}")
        elapsed = t_end - pr["t0"]
        ours = cpu_w + cpu_pg + pr.get("cpu_s", 0.0)
        out: dict[str, Any] = {
            "runs": n,
            "steps_per_run": steps,
            "elapsed_s": round(elapsed, 3),
            "runs_per_s": round(n / elapsed, 1),
            "steps_per_s": round(n * steps / elapsed, 1),
            "send_s": round(pr["t_sent"] - pr["t0"], 3),
            "sends_per_s": round(n / max(1e-9, pr["t_sent"] - pr["t0"]), 1),
            "cpu_s": {"workers": round(cpu_w, 2), "postgres": round(cpu_pg, 2),
                      "producer": round(pr.get("cpu_s", 0.0), 2),
                      "machine_busy": round(busy, 2), "other_processes": round(max(0.0, busy - ours), 2)},
        }  # fmt: skip
        if waits:
            out["pg_activity"] = waits
        if statements and cluster:
            by_app: Counter[str] = Counter()
            kinds: dict[str, Counter[str]] = {"producer": Counter(), "worker": Counter()}
            for line in read_log(cluster, off0, off1):
                m = STATEMENT.match(line)
                if not m or m.group("db") != sc.db:
                    continue
                role = "producer" if m.group("app") == "bench-producer" else "worker"
                by_app[role] += 1
                sql = " ".join(m.group("sql").split())
                kinds[role][" ".join(sql.split()[:4])[:60] or "(empty query)"] += 1
            out["statements_per_run"] = {k: round(v / n, 2) for k, v in by_app.items()}
            out["statements_per_run"]["total"] = round(sum(by_app.values()) / n, 2)
            out["top_statements_per_run"] = {
                role: [{"sql": k, "per_run": round(v / n, 2)} for k, v in c.most_common(20)]
                for role, c in kinds.items()
            }  # fmt: skip
        return out


class WaitSampler(threading.Thread):
    """Samples pg_stat_activity of one database every 20 ms: what its backends are doing (state and wait
    event), to tell a server-bound run (CPU, WALSync, locks) from a client-bound one (idle in transaction
    waiting for the client's next statement: ``ClientRead``)."""

    def __init__(self, admin_url: str, db: str) -> None:
        super().__init__(daemon=True)
        self.admin_url = admin_url
        self.db = db
        self.samples: Counter[str] = Counter()
        self.n = 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        sql = (
            "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND state IS NOT NULL AND state <> 'idle'"
        )
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            while not self._stop_evt.wait(0.02):
                self.n += 1
                for state, wait in conn.execute(sql, (self.db,)).fetchall():
                    self.samples[f"{state} / {wait}"] += 1

    def stop(self) -> dict[str, Any]:
        self._stop_evt.set()
        self.join(5)
        n = max(1, self.n)
        return {
            "samples": self.n,
            "avg_busy_backends": round(sum(self.samples.values()) / n, 2),
            "by_state_wait": {k: round(v / n, 2) for k, v in self.samples.most_common(8)},
        }


def read_log(cluster: DurableCluster, start: int, end: int) -> list[str]:
    with open(cluster.log_path, "rb") as f:
        f.seek(start)
        return f.read(end - start).decode(errors="replace").splitlines()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def scenario_latency(ctx: Ctx, system: System) -> dict[str, Any]:
    n = ctx.args.latency_sends
    workers = ctx.args.idle_workers
    with Scenario(ctx, system, "lat", workers) as sc:
        sc.start_workers()
        with psycopg.connect(sc.url, autocommit=True) as conn:
            producer = sc.produce("lat", n, 1, ctx.args.latency_gap)
            wait_done(sc, conn, n, producer)
            producer.p.wait(max(1.0, sc.left()))
            producer.stop()
        time.sleep(0.2)
        lats = [float(m) * 1000 for w in sc.workers for m in re.findall(r"^LAT (\S+)$", w.text(), re.M)]
    if len(lats) != n:
        raise ScenarioError(f"expected {n} latency samples, found {len(lats)}")
    return {
        "sends": n,
        "workers": workers,
        "gap_ms": ctx.args.latency_gap * 1000,
        "p50_ms": round(pct(lats, 50), 2),
        "p95_ms": round(pct(lats, 95), 2),
        "p99_ms": round(pct(lats, 99), 2),
        "max_ms": round(max(lats), 2),
        "mean_ms": round(statistics.fmean(lats), 2),
    }


STATEMENT = re.compile(
    r"^\S+ \S+ \S+ \[\d+\] (?P<db>\S+) \[(?P<app>.*?)\] LOG:  (?:statement|execute [^:]*): (?P<sql>.*)$"
)


def scenario_idle(ctx: Ctx, system: System) -> dict[str, Any]:
    workers = ctx.args.idle_workers
    seconds = ctx.args.idle_seconds
    cluster = ctx.server.cluster
    with Scenario(ctx, system, "idle", workers) as sc:
        logged = False
        if cluster is not None:
            with psycopg.connect(ctx.server.admin_url, autocommit=True) as conn:
                conn.execute(f"ALTER DATABASE \"{sc.db}\" SET log_statement = 'all'")
            logged = True
        sc.start_workers()
        time.sleep(2.0)  # past startup bursts (registration, first polls)

        def xacts() -> int:
            with psycopg.connect(ctx.server.admin_url, autocommit=True) as conn:
                row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                                   (sc.db,)).fetchone()  # fmt: skip
            return int(row[0]) if row else 0

        x0 = xacts()
        off0 = cluster.log_path.stat().st_size if logged and cluster else 0
        cpu0 = cpu_seconds(sc.worker_pids())
        time.sleep(seconds)
        off1 = cluster.log_path.stat().st_size if logged and cluster else 0
        cpu1 = cpu_seconds(sc.worker_pids())
        x1 = xacts()
        result: dict[str, Any] = {
            "workers": workers,
            "seconds": seconds,
            "xacts_per_s_per_node": round((x1 - x0) / seconds / workers, 2),
            "worker_cpu_pct_per_node": round(100 * (cpu1 - cpu0) / seconds / workers, 2),
        }
        if logged and cluster:
            kinds: Counter[str] = Counter()
            total = 0
            for line in read_log(cluster, off0, off1):
                m = STATEMENT.match(line)
                if m and m.group("db") == sc.db:
                    total += 1
                    kinds[" ".join(m.group("sql").split())[:90]] += 1
            result["statements_per_s_per_node"] = round(total / seconds / workers, 2)
            result["top_statements"] = [{"sql": k, "count": v} for k, v in kinds.most_common(6)]
        return result


def baseline(ctx: Ctx) -> dict[str, Any]:
    """Raw one-row commit rate from 1 and 4 clients for 3 s each (what the server can do without batching)."""
    name = "bench_baseline"
    url = ctx.server.create_db(name)
    out: dict[str, Any] = {}
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, v int)")
        for clients in (1, 4):
            counts = [0] * clients
            stop = time.monotonic() + 3.0

            def hammer(k: int, counts: list[int], stop: float) -> None:
                with psycopg.connect(url, autocommit=True) as c:
                    while time.monotonic() < stop:
                        c.execute("INSERT INTO t (v) VALUES (1)")
                        counts[k] += 1

            threads = [threading.Thread(target=hammer, args=(k, counts, stop)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out[f"commits_per_s_{clients}_client"] = round(sum(counts) / 3.0)
    finally:
        ctx.server.drop_db(name)
    return out


# ------------------------------------------------------------------------------------------------ report
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    mem = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    info.update(code_info())
    return info


def code_info() -> dict[str, Any]:
    """Which Stepline code ran: a hash of its sources and the git commit (read-only git commands)."""
    import hashlib

    import stepline

    pkg = Path(stepline.__file__).resolve().parent
    h = hashlib.sha1()
    for f in sorted(pkg.rglob("*")):
        if f.suffix in (".py", ".sql") and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(pkg)).encode())
            h.update(f.read_bytes())
    info: dict[str, Any] = {"stepline_src_sha1": h.hexdigest()[:12]}
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)  # fmt: skip
        if head.returncode == 0:
            info["git_head"] = head.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                                   capture_output=True, text=True, timeout=10)  # fmt: skip
            info["src_dirty_files"] = [ln[3:] for ln in dirty.stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def fmt(v: Any, nd: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def render(results: list[dict[str, Any]]) -> str:
    head = ["system", "scenario", "workers", "runs/s", "steps/s", "p50 ms", "p99 ms", "idle q/s/node", "note"]
    rows = []
    for r in results:
        m = r.get("metrics") or {}
        idle = r["scenario"] == "idle"
        note = r.get("error", "")
        if note:
            note = "FAILED: " + note.splitlines()[0][:70]
        elif "statements_per_run" in m:
            spr = m["statements_per_run"]
            note = (
                f"statements/run {spr.get('total')} (producer {spr.get('producer', 0)}, workers {spr.get('worker', 0)})"
            )
        elif "cpu_s" in m:
            c = m["cpu_s"]
            note = (
                f"cpu s: workers {c['workers']}, pg {c['postgres']}, producer {c['producer']}, "
                f"others {c.get('other_processes', '?')}"
            )
        elif r["scenario"] == "idle":
            note = f"xacts/s/node {m.get('xacts_per_s_per_node')}, cpu {m.get('worker_cpu_pct_per_node')}%/node"
        rows.append([
            r["system"], r["scenario"], str(r["workers"]),
            fmt(m.get("runs_per_s"), 0) if r["scenario"] in ("one", "ten") else "-",
            fmt(m.get("steps_per_s"), 0) if r["scenario"] == "ten" else "-",
            fmt(m.get("p50_ms"), 1), fmt(m.get("p99_ms"), 1),
            fmt(m.get("statements_per_s_per_node", m.get("xacts_per_s_per_node")), 2) if idle else "-",
            note,
        ])  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def comparison(results: list[dict[str, Any]]) -> list[str]:
    def get(system: str, scenario: str, workers: int) -> float | None:
        for r in results:
            if (r["system"], r["scenario"], r["workers"]) == (system, scenario, workers) and "metrics" in r:
                return float(r["metrics"]["runs_per_s"])
        return None

    out = []
    for peer in ("dbos", "dbos-fastpoll", "procrastinate"):
        for scenario in ("one", "ten"):
            for w in sorted({r["workers"] for r in results if r["scenario"] == scenario}):
                s, d = get("stepline", scenario, w), get(peer, scenario, w)
                if s and d:
                    target = f" ({'meets' if s >= 5 * d else 'BELOW'} the 5x target)" if peer.startswith("dbos") else ""
                    out.append(f"{scenario}-step, {w} worker(s): Stepline {s:,.0f} runs/s vs {peer} {d:,.0f}/s "
                               f"= {s / d:.1f}x{target}")  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an existing server's maintenance database (postgresql://user@host/postgres)")
    p.add_argument("--runs", type=int, default=5000, help="one-step runs per scenario (default 5000)")
    p.add_argument("--ten-runs", type=int, default=1000, help="ten-step runs per scenario (default 1000)")
    p.add_argument("--workers", default="1,2,4", help="worker process counts (default 1,2,4)")
    p.add_argument("--inflight", type=int, default=50, help="concurrent sends by the producer (default 50)")
    p.add_argument("--latency-sends", type=int, default=300)
    p.add_argument("--latency-gap", type=float, default=0.03, help="seconds between latency sends (+-30%%)")
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--idle-workers", type=int, default=2, help="worker processes for lat and idle (default 2)")
    p.add_argument("--settle", type=float, default=0.5, help="seconds between workers ready and the first send")
    p.add_argument("--scenarios", default="one,ten,lat,idle,stmts")
    p.add_argument("--stmt-runs", type=int, default=500, help="one-step runs in the stmts scenario (default 500)")
    p.add_argument("--stmt-workers", type=int, default=1, help="worker processes in the stmts scenario (default 1)")
    p.add_argument("--pg-waits", action="store_true", help="sample pg_stat_activity (state / wait event) "
                   "every 20 ms during one/ten runs: average backends in each")  # fmt: skip
    p.add_argument("--repeat", type=int, default=1, help="run each one/ten scenario N times, report the fastest")
    p.add_argument(
        "--systems",
        default="stepline,dbos,dbos-fastpoll,procrastinate,pgqueuer",
        help="dbos: DBOS's default queue polling (1 s); dbos-fastpoll: --dbos-fast-poll (0.1 s)",
    )
    p.add_argument("--skip-peers", action="store_true", help="Stepline only")
    p.add_argument("--quick", action="store_true", help="1000/200 runs, workers 1,2, 100 latency sends, 5 s idle")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds before a scenario is abandoned")
    p.add_argument("--json", metavar="PATH", help="write every figure and the setup as JSON")
    p.add_argument("--stepline-concurrency", type=int, default=0, help="worker --concurrency (0: CLI default)")
    p.add_argument("--dbos-poll", type=float, default=1.0, help="system dbos: queue polling_interval_sec "
                   "(default 1.0, DBOS's own default)")  # fmt: skip
    p.add_argument("--dbos-fast-poll", type=float, default=0.1, help="system dbos-fastpoll: queue "
                   "polling_interval_sec (default 0.1; 0.02 measured no faster)")  # fmt: skip
    p.add_argument("--dbos-concurrency", type=int, default=200, help="DBOS queue worker_concurrency (default 200)")
    p.add_argument("--dbos-async", action="store_true", help="async def DBOS workflows and steps")
    p.add_argument("--procrastinate-concurrency", type=int, default=50, help="jobs at once per worker (default 50)")
    p.add_argument("--no-baseline", action="store_true", help="skip the raw commit-rate check")
    p.add_argument("--pyspy", metavar="DIR", help="py-spy record (raw format) every Stepline worker in one/ten")
    p.add_argument("--pyspy-rate", type=int, default=100)
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S", help="before each scenario, wait up "
                   "to S seconds for the machine to be idle (other work under 0.25 cores)")  # fmt: skip
    p.add_argument("--keep-dbs", action="store_true", help="do not drop the scenario databases")
    args = p.parse_args()
    if args.quick:
        args.runs, args.ten_runs, args.latency_sends, args.idle_seconds = 1000, 200, 100, 5.0
        if args.workers == "1,2,4":
            args.workers = "1,2"
    return args


def main() -> int:
    args = parse_args()
    worker_counts = [int(x) for x in args.workers.split(",") if x.strip()]
    scenarios = args.scenarios.split(",")
    systems = make_systems(args)
    if any(s.name != "stepline" for s in systems):
        ensure_peers_venv()
    rundir = Path(tempfile.mkdtemp(prefix="stepline-bench-pg-"))
    print(f"logs: {rundir}", flush=True)

    cluster: DurableCluster | None = None
    if args.url:
        server = Server(args.url)
    else:
        bindir = find_bindir()
        if bindir is None:
            print("PostgreSQL binaries not found (initdb/pg_ctl): install postgresql or pass --url", file=sys.stderr)
            return 2
        cluster = DurableCluster(bindir)
        print(f"starting a throwaway cluster in {cluster.root} ({bindir}) ...", flush=True)
        cluster.init()
        server = Server(cluster.url(), cluster)
    info: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "peers": peer_versions()}
    results: list[dict[str, Any]] = []
    try:
        info["postgres"] = server.read_settings()
        info["postgres"]["source"] = "--url (existing server)" if args.url else "throwaway cluster (initdb)"
        m = info["machine"]
        print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']}, Python {m['python']}, {m['date']}")
        print(
            f"stepline: git {m.get('git_head', '?')}, src sha1 {m['stepline_src_sha1']}"
            + (f", uncommitted: {' '.join(m['src_dirty_files'])}" if m.get("src_dirty_files") else "")
        )
        print("postgres: " + ", ".join(f"{k}={v}" for k, v in info["postgres"].items()), flush=True)
        if info["peers"]:
            print("peers: " + ", ".join(f"{k} {v}" for k, v in info["peers"].items()), flush=True)
        if not args.no_baseline:
            info["baseline"] = baseline(Ctx(args, server, rundir))
            print(f"raw commits/s (one-row INSERT, autocommit): {info['baseline']}", flush=True)
        ctx = Ctx(args, server, rundir)
        plan: list[tuple[System, str, int]] = []
        for system in systems:
            for scenario in scenarios:
                if scenario not in system.kinds:
                    continue
                if scenario in ("one", "ten"):
                    plan += [(system, scenario, w) for w in worker_counts]
                elif scenario == "stmts":
                    if cluster is not None:
                        plan.append((system, scenario, args.stmt_workers))
                else:
                    plan.append((system, scenario, args.idle_workers))
        for system, scenario, workers in plan:
            label = f"{system.name} {scenario} x{workers}"
            print(f"- {label} ...", flush=True)
            busy_before = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
            t = time.monotonic()
            entry: dict[str, Any] = {"system": system.name, "scenario": scenario, "workers": workers,
                                     "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                                     "busy_cores_before": busy_before}  # fmt: skip
            if system.name == "stepline":  # the code may change between scenarios (others commit meanwhile)
                entry["stepline_src_sha1"] = code_info()["stepline_src_sha1"]
            try:
                if scenario in ("one", "ten"):
                    tries = []
                    for k in range(args.repeat):
                        if k and args.wait_quiet > 0:
                            wait_quiet(args.wait_quiet)
                        tries.append(scenario_throughput(ctx, system, scenario, workers))
                    entry["metrics"] = max(tries, key=lambda m: float(m["runs_per_s"]))
                    if args.repeat > 1:
                        entry["metrics"]["runs_per_s_all_tries"] = [m["runs_per_s"] for m in tries]
                elif scenario == "stmts":
                    entry["metrics"] = scenario_throughput(ctx, system, "one", workers, statements=True)
                elif scenario == "lat":
                    entry["metrics"] = scenario_latency(ctx, system)
                else:
                    entry["metrics"] = scenario_idle(ctx, system)
                print(f"  {json.dumps(entry['metrics'])}  [{time.monotonic() - t:.0f} s]", flush=True)
            except (ScenarioError, psycopg.Error, subprocess.SubprocessError, OSError) as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ScenarioError) else str(exc)
                print(f"  FAILED: {entry['error']}", flush=True)
            results.append(entry)
    finally:
        if cluster is not None:
            cluster.destroy()
    print()
    print(render(results))
    cmp_lines = comparison(results)
    if cmp_lines:
        print()
        print("\n".join(cmp_lines))
    if args.json:
        Path(args.json).write_text(json.dumps({**info, "results": results, "comparison": cmp_lines}, indent=2))
        print(f"\nwrote {args.json}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
