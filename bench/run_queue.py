#!/usr/bin/env python
"""The one-call-per-job workload: Stepline beside huey (SQLite) and pgqueuer (PostgreSQL), with that day's
physical limits, all in one run (a benchmark, not a test).

Run from the project root:

    .venv/bin/python bench/run_queue.py                          # both stores, 1 and 2 workers, 5,000 jobs
    .venv/bin/python bench/run_queue.py --stores sqlite --runs 2000 --idle-sends 1000 --http-sends 1000
    .venv/bin/python bench/run_queue.py --url postgresql://user@host/postgres     # an existing server

Peers run from their own venv (``--peers-python``; default ``bench/.peers-venv``, as ``run_postgres.py``, else
``.venv-peers``; create it with ``python3 -m venv .venv-peers && .venv-peers/bin/pip install -r
bench/requirements-peers.txt``). PostgreSQL is
a throwaway cluster with durability on (``bench/run_postgres.py``'s ``DurableCluster``) unless ``--url``.

What is measured, for each store and system (each scenario on a fresh database or file):

  limit   the store's physical limit from one client: SQLite one-row INSERT commits/s in WAL mode with
          ``synchronous=FULL`` (on the directory the benchmark's files live in), PostgreSQL one-row INSERT
          commits/s from one autocommit connection.
  idle    ``--idle-sends`` calls, one job per call, one after the other from one client (``inflight`` 1), with
          no worker running: calls/s and the p50 of one call, and calls/s as a share of the limit.
  drain   K worker processes (``--workers``, default 1,2) started and ready, then ``--runs`` jobs enqueued the
          same way while they drain: jobs/s from just before the first call to the moment a 20 ms poll of the
          system's own table shows them all durably completed, and the p50 of one enqueue call meanwhile.
  http    (Stepline on SQLite) ``POST /e/{key}`` to ``stepline dev`` over one keep-alive connection, one event
          per request, one after the other: p50 of a request, beside the in-process ``send`` p50 of ``idle``
          (the difference is the HTTP share: uvicorn, Starlette, the event API's checks).

Stepline's producer is an in-process ``client.send`` (``bench/peers/stepline_app.py``), its workers the real
CLI (``stepline worker``); huey's producer calls the task (``SqliteHuey(fsync=True)``), its consumers poll
every 10 ms backing off to 50 ms; pgqueuer's producer calls ``Queries.enqueue``, its workers ``PgQueuer.run``
(LISTEN/NOTIFY). Logs of every process are kept in the run directory printed at the start.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run_postgres import PEERS, PEERS_VENV, ROOT, DurableCluster, Proc, Server, code_info, find_bindir  # noqa: E402

POLL = 0.02


@dataclass
class System:
    name: str
    store: str  # sqlite | postgres
    python: str
    script: Path
    ready_marker: str
    done_sql: str
    failed_sql: str | None

    def worker_cmd(self, url: str, index: int) -> list[str]:
        if self.name == "stepline":
            return [self.python, "-m", "stepline.cli.main", "worker", "stepline_app:client", "--app-dir", str(PEERS),
                    "--db", url, "--log-level", "info"]  # fmt: skip
        return [self.python, str(self.script), "worker", "--url", url, "--index", str(index)]

    def run(self, cmd: str, url: str, *extra: str, timeout: float = 600) -> dict[str, Any]:
        res = subprocess.run([self.python, str(self.script), cmd, "--url", url, *extra], capture_output=True,
                             text=True, cwd=str(ROOT), env=env(), timeout=timeout)  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(
                f"{self.name} {cmd} failed ({res.returncode}):\n{res.stdout[-1500:]}{res.stderr[-1500:]}"
            )
        for line in reversed(res.stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]
        return {}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("STEPLINE_DB", None)
    e["PYTHONUNBUFFERED"] = "1"
    return e


def systems(args: argparse.Namespace) -> list[System]:
    me, peers = sys.executable, args.peers_python
    stepline_done = "SELECT count(*) FROM runs WHERE status = 'completed'"
    stepline_failed = "SELECT count(*) FROM runs WHERE status IN ('failed', 'cancelled')"
    return [
        System("stepline", "sqlite", me, PEERS / "stepline_app.py", "stepline worker: app", stepline_done,
               stepline_failed),
        System("huey", "sqlite", peers, PEERS / "huey_app.py", "READY", "SELECT count(*) FROM kv", None),
        System("stepline", "postgres", me, PEERS / "stepline_app.py", "stepline worker: app", stepline_done,
               stepline_failed),
        System("pgqueuer", "postgres", peers, PEERS / "pgqueuer_app.py", "READY",
               "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
               "SELECT count(*) FROM pgqueuer_log WHERE status IN ('exception', 'failed', 'canceled')"),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------ limits
def sqlite_limit(directory: Path, seconds: float) -> dict[str, float]:
    path = directory / "limit.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    each = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t = time.perf_counter()
        conn.execute("INSERT INTO t (v) VALUES (?)", ("x" * 40,))  # autocommit: one transaction, one fsync
        each.append(time.perf_counter() - t)
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {"commits_per_s": len(each) / sum(each), "p50_ms": statistics.median(each) * 1000}


def pg_limit(server: Server, seconds: float) -> dict[str, float]:
    url = server.create_db("bench_limit")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, v text)")
            each = []
            stop = time.perf_counter() + seconds
            while time.perf_counter() < stop:
                t = time.perf_counter()
                conn.execute("INSERT INTO t (v) VALUES (%s)", ("x" * 40,))
                each.append(time.perf_counter() - t)
    finally:
        server.drop_db("bench_limit")
    return {"commits_per_s": len(each) / sum(each), "p50_ms": statistics.median(each) * 1000}


# ------------------------------------------------------------------------------------------------ scenarios
class Target:
    """A fresh database (PostgreSQL) or file (SQLite) for one scenario, and a way to count in it."""

    def __init__(self, system: System, label: str, rundir: Path, server: Server | None) -> None:
        self.system, self.server = system, server
        self.db = f"bench_{system.name}_{label}"
        if system.store == "sqlite":
            self.url = str(rundir / f"{system.name}-{label}.db")
        else:
            assert server is not None
            self.url = server.create_db(self.db)
        self._conn: Any = None

    def count(self, sql: str) -> int:
        try:
            if self._conn is None:
                if self.system.store == "sqlite":
                    self._conn = sqlite3.connect(f"file:{self.url}?mode=ro", uri=True, isolation_level=None)
                else:
                    self._conn = psycopg.connect(self.url, autocommit=True)
            row = self._conn.execute(sql).fetchone()
            return int(row[0]) if row else 0
        except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
            return 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self.server is not None:
            self.server.drop_db(self.db)


def produce(system: System, url: str, n: int) -> dict[str, Any]:
    out = system.run("produce", url, "--kind", "one", "--n", str(n), "--inflight", "1")
    if out.get("errors"):
        raise RuntimeError(f"{system.name}: {out['errors']} sends failed: {out.get('first_error')}")
    return out


def scenario_idle(system: System, n: int, rundir: Path, server: Server | None) -> dict[str, Any]:
    target = Target(system, "idle", rundir, server)
    try:
        system.run("setup", target.url)
        out = produce(system, target.url, n)
    finally:
        target.close()
    return {"calls_per_s": n / (out["t_sent"] - out["t0"]), "call_p50_ms": out["call_p50_ms"],
            "call_p99_ms": out["call_p99_ms"]}  # fmt: skip


def scenario_drain(system: System, workers: int, n: int, rundir: Path, server: Server | None,
                   timeout: float) -> dict[str, Any]:  # fmt: skip
    label = f"drain{workers}"
    target = Target(system, label, rundir, server)
    procs: list[Proc] = []
    try:
        system.run("setup", target.url)
        for i in range(workers):
            log = rundir / f"{system.store}-{system.name}-{label}-w{i}.log"
            procs.append(Proc(system.worker_cmd(target.url, i), log, env()))
        deadline = time.monotonic() + 60
        while not all(system.ready_marker in p.text() for p in procs):
            if time.monotonic() > deadline or any(p.p.poll() is not None for p in procs):
                raise RuntimeError(f"{system.name} workers did not start:\n" + "\n".join(p.tail() for p in procs))
            time.sleep(0.05)
        time.sleep(1.0)  # LISTEN connections, first polls
        producer = subprocess.Popen([system.python, str(system.script), "produce", "--url", target.url, "--kind",
                                     "one", "--n", str(n), "--inflight", "1"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=str(ROOT), env=env())  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if target.count(system.done_sql) >= n:
                t_done = time.time()
                break
            if system.failed_sql and target.count(system.failed_sql):
                raise RuntimeError(f"{system.name}: jobs failed; see {rundir}")
            if producer.poll() not in (None, 0) or time.monotonic() > deadline:
                why = producer.stderr.read() if producer.stderr and producer.poll() is not None else "timeout"
                raise RuntimeError(f"{system.name}: {target.count(system.done_sql)}/{n} done; producer "
                                   f"{producer.poll()}: {why}")  # fmt: skip
            time.sleep(POLL)
        stdout, _ = producer.communicate(timeout=60)
        out = next(json.loads(ln) for ln in reversed(stdout.splitlines()) if ln.startswith("{"))
    finally:
        for p in procs:
            p.stop()
        target.close()
    return {"jobs_per_s": n / (t_done - out["t0"]), "calls_per_s": n / (out["t_sent"] - out["t0"]),
            "call_p50_ms": out["call_p50_ms"], "call_p99_ms": out["call_p99_ms"]}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scenario_http(system: System, n: int, rundir: Path) -> dict[str, Any]:
    """Stepline on SQLite: ``POST /e/{key}`` over one keep-alive connection to ``stepline dev``."""
    target = Target(system, "http", rundir, None)
    system.run("setup", target.url)  # registers the functions: each event starts a run, as in-process
    port = free_port()
    cmd = [sys.executable, "-m", "stepline.cli.main", "dev", "--db", target.url, "--port", str(port), "--host",
           "127.0.0.1", "--no-discovery", "--no-poll", "--log-level", "warning"]  # fmt: skip
    server = Proc(cmd, rundir / "sqlite-stepline-http-server.log", env())
    try:
        deadline = time.monotonic() + 60
        conn: http.client.HTTPConnection | None = None
        while conn is None:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                c.request("GET", "/health")
                c.getresponse().read()
                conn = c
            except OSError:
                if time.monotonic() > deadline or server.p.poll() is not None:
                    raise RuntimeError(f"stepline dev did not start:\n{server.tail()}") from None
                time.sleep(0.1)

        def post(i: int) -> float:
            body = json.dumps([{"name": "bench/one", "data": {"i": i}}]).encode()
            t = time.perf_counter()
            conn.request("POST", "/e/benchkey", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
            took = time.perf_counter() - t
            if resp.status != 200:
                raise RuntimeError(f"POST /e returned {resp.status}: {payload[:300]!r}")
            return took

        for i in range(min(200, n)):  # warm up (imports, first statements)
            post(i)
        each = [post(i) for i in range(n)]
    finally:
        server.stop()
        target.close()
    return {"calls_per_s": len(each) / sum(each), "call_p50_ms": statistics.median(each) * 1000,
            "call_p99_ms": sorted(each)[int(0.99 * len(each))] * 1000}  # fmt: skip


# ------------------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", default="sqlite,postgres")
    p.add_argument("--systems", default="stepline,huey,pgqueuer")
    p.add_argument("--workers", default="1,2", help="worker processes per drain (comma-separated; empty: none)")
    p.add_argument("--runs", type=int, default=5000, help="jobs in each drain scenario (5000)")
    p.add_argument("--idle-sends", type=int, default=2000, help="calls in each idle scenario (2000)")
    p.add_argument("--http-sends", type=int, default=2000, help="requests in the http scenario (2000; 0: skip)")
    p.add_argument("--limit-seconds", type=float, default=3.0, help="seconds of each physical-limit probe (3)")
    venvs = [PEERS_VENV, ROOT / ".venv-peers"]  # run_postgres.py's, or one at the root
    peers = next((v for v in venvs if (v / "bin" / "python").exists()), PEERS_VENV) / "bin" / "python"
    p.add_argument("--peers-python", default=str(peers), help=f"the peers' interpreter ({peers})")
    p.add_argument("--url", default=None, help="an existing PostgreSQL server's maintenance database URL")
    p.add_argument("--dir", default=None, help="directory for the run (default: a new temporary directory)")
    p.add_argument("--timeout", type=float, default=300.0, help="abandon a drain after this many seconds")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    stores = args.stores.split(",")
    wanted = args.systems.split(",")
    workers = [int(w) for w in args.workers.split(",") if w]
    rundir = Path(tempfile.mkdtemp(prefix="stepline-queue-", dir=args.dir))
    print(f"run directory: {rundir}", flush=True)
    cluster: DurableCluster | None = None
    server: Server | None = None
    results: dict[str, Any] = {"code": code_info(), "args": vars(args), "limits": {}, "systems": {}}
    try:
        if "postgres" in stores:
            if args.url:
                server = Server(args.url)
            else:
                bindir = find_bindir()
                if bindir is None:
                    raise SystemExit("PostgreSQL binaries not found (set STEPLINE_PG_BINDIR) or pass --url")
                cluster = DurableCluster(bindir)
                cluster.init()
                server = Server(cluster.url(), cluster)
        srv = server

        def limits(suffix: str) -> list[tuple[str, Callable[[], Any]]]:
            """The physical limits, measured at the start and again at the end (the machine's load drifts)."""
            out: list[tuple[str, Callable[[], Any]]] = []
            if "sqlite" in stores:
                out.append((f"limit sqlite{suffix}", lambda: results["limits"].__setitem__(
                    f"sqlite{suffix}", sqlite_limit(rundir, args.limit_seconds))))  # fmt: skip
            if srv is not None:
                out.append((f"limit postgres{suffix}", lambda: results["limits"].__setitem__(
                    f"postgres{suffix}", pg_limit(srv, args.limit_seconds))))  # fmt: skip
            return out

        steps = limits("")
        for system in systems(args):
            if system.store not in stores or system.name not in wanted:
                continue
            key = f"{system.store}/{system.name}"
            res: dict[str, Any] = results["systems"].setdefault(key, {})
            steps.append((f"{key} idle", lambda s=system, r=res: r.__setitem__(
                "idle", scenario_idle(s, args.idle_sends, rundir, server))))  # fmt: skip
            for w in workers:
                steps.append((f"{key} drain {w}w", lambda s=system, r=res, w=w: r.__setitem__(
                    f"drain_{w}", scenario_drain(s, w, args.runs, rundir, server, args.timeout))))  # fmt: skip
            if system.name == "stepline" and system.store == "sqlite" and args.http_sends:
                steps.append((f"{key} http", lambda s=system, r=res: r.__setitem__(
                    "http", scenario_http(s, args.http_sends, rundir))))  # fmt: skip
        steps += limits("_end")
        for label, step in steps:
            print(f"  {label} ...", flush=True)
            try:
                step()
            except Exception as exc:
                print(f"    FAILED: {exc}", flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
    print(render(results, workers))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def render(results: dict[str, Any], workers: list[int]) -> str:
    lim = results["limits"]
    head = ["store", "system", "idle calls/s", "idle p50 ms", "share of limit"]
    head += [f"{w}w {what}" for w in workers for what in ("jobs/s", "call p50 ms")]
    lines = ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for key, res in results["systems"].items():
        store, name = key.split("/")
        idle = res.get("idle", {})
        limit = lim.get(store, {}).get("commits_per_s")
        share = f"{idle['calls_per_s'] / limit:.0%}" if idle and limit else "-"
        cells = [store, name, f"{idle.get('calls_per_s', 0):,.0f}", f"{idle.get('call_p50_ms', 0):.3f}", share]
        for w in workers:
            d = res.get(f"drain_{w}", {})
            cells += [f"{d.get('jobs_per_s', 0):,.0f}", f"{d.get('call_p50_ms', 0):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for store, peer in (("sqlite", "huey"), ("postgres", "pgqueuer")):
        mine, theirs = results["systems"].get(f"{store}/stepline", {}), results["systems"].get(f"{store}/{peer}", {})
        for w in workers:
            a, b = mine.get(f"drain_{w}", {}).get("jobs_per_s"), theirs.get(f"drain_{w}", {}).get("jobs_per_s")
            if a and b:
                lines.append(f"{store}, {w} worker process(es): Stepline / {peer} = {a / b:.2f}x")
    for name, v in lim.items():
        lines.append(f"limit {name}: {v['commits_per_s']:,.0f} one-row commits/s (p50 {v['p50_ms']:.3f} ms)")
    http = results["systems"].get("sqlite/stepline", {}).get("http")
    idle = results["systems"].get("sqlite/stepline", {}).get("idle")
    if http and idle:
        lines.append(f"http (SQLite): POST /e p50 {http['call_p50_ms']:.3f} ms = in-process send p50 "
                     f"{idle['call_p50_ms']:.3f} ms + HTTP {http['call_p50_ms'] - idle['call_p50_ms']:.3f} ms "
                     f"({http['calls_per_s']:,.0f} requests/s)")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
