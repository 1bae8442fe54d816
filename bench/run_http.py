#!/usr/bin/env python
"""Stepline over HTTP: an official Inngest SDK app against ``stepline dev``, beside the same functions in-process
(a benchmark, not a test).

Run from the project root:

    .venv/bin/python bench/run_http.py                    # inproc and python, every scenario, default sizes (~3 min)
    .venv/bin/python bench/run_http.py --targets node     # the npm SDK app (~2-3 min)
    .venv/bin/python bench/run_http.py --quick            # small sizes, a smoke check
    .venv/bin/python bench/run_http.py --runs 1000 --json out.json
    .venv/bin/python bench/run_http.py --app-workers 2    # uvicorn --workers 2 for the Python app
    .venv/bin/python bench/run_http.py --py-spy /tmp/prof # profile the server (and app) during throughput runs

Targets (the same three functions in each: ``one`` = one ``step.run``, ``ten`` = ten sequential ``step.run``,
``lat`` = one ``step.run`` whose first line records ``time.time()``):

  inproc   a Stepline client and worker in this process on a fresh SQLite file (as bench/run_sqlite.py)
  python   bench/http_apps/py_app.py: the official PyPI ``inngest`` SDK served by FastAPI
           (``inngest.fast_api.serve``) under uvicorn, one process (``--app-workers N``: uvicorn --workers N);
           and ``stepline dev --host 127.0.0.1 --port P --db <tmp> --no-discovery -u <app>/api/inngest``,
           both subprocesses
  node     bench/http_apps/node_app.js: the official npm ``inngest`` SDK under Express (the node_modules of
           tests/compat/node_app via NODE_PATH); skipped with a note when node or those modules are missing

Scenarios:

  one-batch   N one-step runs; events sent in requests of B (POST /e/<key> with a JSON array; ``client.send``
              of B events in-process), one request after the other
  one-single  N one-step runs; one event per request, from P concurrent senders (keep-alive connections)
  ten-step    M ten-step runs, events in requests of B; steps/s = 10 M / elapsed. The npm SDK checkpoints (the
              server offers it: ctx.fn_id, ctx.qi_id): one call per run, each step POSTed to /v1/checkpoint/{run}/async
  ten-classic the same function with the SDK's checkpointing off (`checkpointing: false`, npm): one call per step
              (the Python SDK and in-process runs have only this flow: there it is ten-step again)
  ten-buffered  checkpointing with `bufferedSteps: 10` (npm): the results travel in the one call's answer
  await       a three-step workflow sent and awaited by its caller (bench/workflow_await.py): in-process
              client.send_and_wait; over HTTP POST /e/<key> then GET /v1/events/{id}/runs?wait=30s
  await-poll  issue 16's workload (bench/workflow_await.py, HTTP targets only): the three-step workflow awaited
              out of band (unpolled), with ?wait=, then polled every --poll-ms (50); --samples sequential, then
              --await-runs with --await-callers; --server-processes N, --node-modules for the npm SDK 3.x
  latency     an idle system; one event at a time, a pause of --pause-min..--pause-max ms after the previous run
              completed; latency = the function's first line (time.time() in the app) minus the send time
              carried in the event data (time.time() just before the request)

Throughput: elapsed is from just before the first send to the moment the database shows no run of the
function queued or running (a read-only SQLite connection on the server's database file probes every 5 ms,
after every send was answered); every run is then checked to be completed. Calls per run: the POSTs the app
answered on /api/inngest (the app counts them per function). CPU ms/call: CPU time of the server / the app
process(es) per call; cores: CPU seconds / elapsed of the server, the app and this benchmark process (which sends
the events), all from /proc.

Latency rows also split each sample with the run's timestamps in the database (milliseconds): send -> event
stored (created_at) -> run claimed (started_at) -> function's first line in the app -> run ended (ended_at).

--server-variant SPEC runs the server through bench/http_apps/server_variant.py with experimental patches (a cap on
calls in flight, pool limits, sniffio, aiohttp for the calls: see that file; BENCH_VARIANT_PATH points at optional
libraries), to measure a change to the server before making it; the header then says VARIANT.

The machine is often shared: the header prints os.getloadavg() at start and end. Every scenario is
bounded by --timeout, and a watchdog kills the subprocesses and the benchmark if even the cleanup hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import workflow_await  # noqa: E402
from run_sqlite import Env, ScenarioError, machine_info, percentile  # noqa: E402

APPS_DIR = BENCH_DIR / "http_apps"
REPO_ROOT = BENCH_DIR.parent
NODE_MODULES = REPO_ROOT / "tests" / "compat" / "node_app" / "node_modules"
_SCRIPT = Path(sys.executable).with_name("stepline")
STEPLINE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "stepline.cli.main"]
PY_SPY = Path(sys.executable).with_name("py-spy")

ALL_TARGETS = ["inproc", "python", "node"]
ALL_SCENARIOS = ["one-batch", "one-single", "ten-step", "ten-classic", "ten-buffered", "latency", "await", "await-poll"]
APP_IDS = {"python": "bench-py", "node": "bench-node"}
POLL_INTERVAL = 0.005
STARTUP_S = 60.0
EVENT_KEY = "bench"

_PROCS: list[Proc] = []  # every subprocess started, for the cleanup and the watchdog


# --------------------------------------------------------------------------------------------- processes
class Proc:
    """A subprocess in its own process group (uvicorn workers, py-spy children), output to a log file."""

    def __init__(self, name: str, cmd: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.pid = self.popen.pid
        _PROCS.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.signal_group(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait()
        self.signal_group(signal.SIGKILL)  # what is left of the group (none, normally)
        if self in _PROCS:
            _PROCS.remove(self)


def kill_all() -> None:
    for p in list(_PROCS):
        p.signal_group(signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system, all threads) of ``root`` and its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[int(d)] = int(fields[1])
        cpu[int(d)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo, seen = 0.0, [root], set()
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += cpu.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def clean_env() -> dict[str, str]:
    """This environment without anything that would point a server or an SDK elsewhere."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "STEPLINE_", "BENCH_"))
            and k not in {"PORT", "NODE_PATH"}}  # fmt: skip


def node_problem() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not (NODE_MODULES / "inngest" / "package.json").exists() or not (NODE_MODULES / "express").exists():
        return f"{NODE_MODULES} lacks inngest or express (npm ci --prefix tests/compat/node_app)"
    return None


def package_version(sdk: str) -> str:
    if sdk == "python":
        try:
            from importlib.metadata import version

            return f"inngest {version('inngest')} (PyPI), fastapi {version('fastapi')}, uvicorn {version('uvicorn')}"
        except Exception:
            return "inngest (PyPI)"
    try:
        inn = json.loads((NODE_MODULES / "inngest" / "package.json").read_text())["version"]
        exp = json.loads((NODE_MODULES / "express" / "package.json").read_text())["version"]
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        return f"inngest {inn} (npm), express {exp}, node {node}"
    except Exception:
        return "inngest (npm)"


class PySpy:
    """``py-spy record --pid`` on a process for the duration of one scenario (``--py-spy DIR``)."""

    def __init__(self, pid: int, out: Path, rate: int, subprocesses: bool) -> None:
        cmd = [str(PY_SPY), "record", "--pid", str(pid), "-r", str(rate), "--format", "raw", "--threads",
               "--nonblocking", "-o", str(out)] + (["--subprocesses"] if subprocesses else [])  # fmt: skip
        self.out = out
        self.proc = Proc(f"py-spy {out.name}", cmd, env=dict(os.environ), cwd=out.parent, log=out.with_suffix(".log"))

    def stop(self) -> None:
        self.proc.stop(signal.SIGINT, timeout=30)  # py-spy writes its file on SIGINT


# --------------------------------------------------------------------------------------------- HTTP stack
class HttpStack:
    """One SDK app and one ``stepline dev`` server (subprocesses on free loopback ports), a fresh database."""

    def __init__(self, args: argparse.Namespace, sdk: str) -> None:
        self.args = args
        self.sdk = sdk
        self.app_id = APP_IDS[sdk]
        self.tmp = tempfile.TemporaryDirectory(prefix=f"stepline-bench-http-{sdk}-", dir=args.dir)
        self.dir = Path(self.tmp.name)
        self.db = self.dir / "stepline.db"
        self.stats_dir = self.dir / "stats"
        self.stats_dir.mkdir()
        self.lat_log = self.dir / "lat.jsonl"
        self.server_port = free_port()
        self.app_port = free_port()
        self.server: Proc | None = None
        self.app: Proc | None = None
        self.conn: sqlite3.Connection | None = None
        # keep-alive shorter than the server's (5 s): a connection it closes while idle is never reused
        self.http = httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=250,
                                      max_keepalive_connections=250, keepalive_expiry=2.0))  # fmt: skip

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}/api/inngest"

    @property
    def events_url(self) -> str:
        return f"{self.server_url}/e/{EVENT_KEY}"

    def fn_id(self, local: str) -> str:
        return f"{self.app_id}-{local}"

    def app_command(self) -> tuple[list[str], dict[str, str]]:
        env = clean_env()
        env.update(PORT=str(self.app_port), INNGEST_DEV=self.server_url, BENCH_APP_ID=self.app_id,
                   BENCH_STATS_DIR=str(self.stats_dir), BENCH_LAT_LOG=str(self.lat_log),
                   PYTHONUNBUFFERED="1")  # fmt: skip
        if self.sdk == "node":
            env["NODE_PATH"] = str(NODE_MODULES)
            return ["node", str(APPS_DIR / "node_app.js")], env
        cmd = [sys.executable, "-m", "uvicorn", "py_app:app", "--app-dir", str(APPS_DIR), "--host", "127.0.0.1",
               "--port", str(self.app_port), "--log-level", "warning", "--no-access-log"]  # fmt: skip
        if self.args.app_workers > 1:
            cmd += ["--workers", str(self.args.app_workers)]
        return cmd, env

    def server_command(self) -> list[str]:
        exe = [sys.executable, str(APPS_DIR / "server_variant.py")] if self.args.server_variant else STEPLINE
        return [*exe, "dev", "--host", "127.0.0.1", "--port", str(self.server_port), "--db", str(self.db),
                "--no-discovery", "-u", self.serve_url, "--processes", str(self.args.server_processes)]  # fmt: skip

    def check_alive(self) -> None:
        for p in (self.app, self.server):
            if p is not None and not p.alive():
                raise ScenarioError(f"{p.name} exited (code {p.popen.returncode}):\n{p.tail()}")

    async def _wait(self, what: str, probe: Callable[[], Awaitable[bool]], timeout: float = STARTUP_S) -> None:
        deadline = time.monotonic() + timeout
        while not await probe():
            self.check_alive()
            if time.monotonic() > deadline:
                raise ScenarioError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(0.05)

    async def _get_ok(self, url: str) -> bool:
        try:
            return (await self.http.get(url, timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def start(self) -> None:
        cmd, env = self.app_command()
        self.app = Proc(f"{self.sdk} app", cmd, env=env, cwd=self.dir, log=self.dir / "app.log")
        await self._wait(f"the {self.sdk} app on port {self.app_port}",
                         lambda: self._get_ok(f"http://127.0.0.1:{self.app_port}/healthz"))  # fmt: skip
        senv = clean_env()
        if self.args.server_variant:
            senv["BENCH_SERVER_VARIANT"] = self.args.server_variant
            if os.environ.get("BENCH_VARIANT_PATH"):  # where an optional client library of a variant is installed
                senv["BENCH_VARIANT_PATH"] = os.environ["BENCH_VARIANT_PATH"]
        self.server = Proc("stepline dev", self.server_command(), env=senv, cwd=self.dir, log=self.dir / "server.log")
        await self._wait("the server's GET /health", lambda: self._get_ok(f"{self.server_url}/health"))
        wanted = {self.fn_id(f) for f in ("one", "ten", "ten-classic", "ten-buffered", "lat")}
        last_sync = [time.monotonic()]

        async def synced() -> bool:
            try:
                r = await self.http.get(f"{self.server_url}/v1/functions", params={"app_id": self.app_id})
                have = {f["id"] for f in r.json()["data"]} if r.status_code == 200 else set()
            except (httpx.HTTPError, ValueError, KeyError):
                have = set()
            if wanted <= have:
                return True
            if time.monotonic() - last_sync[0] > 2.0:  # the -u sync at start failed or is slow: ask again
                last_sync[0] = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    await self.http.post(f"{self.server_url}/v1/apps/sync", json={"url": self.serve_url})
            return False

        await self._wait("the app's functions to sync (GET /v1/functions)", synced)
        self.conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, isolation_level=None)
        # warm-up: connections, imports and caches on both sides; these runs are not measured
        await post_events(self.http, self.events_url, [{"name": "bench/one", "data": {"i": -1 - k}} for k in range(20)])
        for ten in ("ten", "ten-classic", "ten-buffered"):
            await post_events(self.http, self.events_url, [{"name": f"bench/{ten}", "data": {"i": -1 - k}}
                                                           for k in range(3)])  # fmt: skip
        await self.wait_idle(self.fn_id("one"), timeout=60)
        await self.wait_idle(self.fn_id("ten"), timeout=60)
        await self.wait_idle(self.fn_id("ten-classic"), timeout=60)
        await self.wait_idle(self.fn_id("ten-buffered"), timeout=60)
        await asyncio.sleep(0.3)  # let the app flush its call counts

    # --- reading the server's database (read-only) ---
    def any_live(self, fn_id: str) -> bool:
        assert self.conn is not None
        row = self.conn.execute("SELECT 1 FROM runs WHERE status IN ('queued', 'running') AND function_id = ? "
                                "LIMIT 1", (fn_id,)).fetchone()  # fmt: skip
        return row is not None

    def by_status(self, fn_id: str) -> dict[str, int]:
        assert self.conn is not None
        rows = self.conn.execute("SELECT status, count(*) FROM runs WHERE function_id = ? GROUP BY status", (fn_id,))
        return dict(rows.fetchall())

    async def wait_idle(self, fn_id: str, timeout: float | None = None) -> float:
        """Wait until no run of ``fn_id`` is queued or running; returns perf_counter() at detection."""
        deadline = None if timeout is None else time.monotonic() + timeout
        n = 0
        while self.any_live(fn_id):
            n += 1
            if n % 200 == 0:
                self.check_alive()
            if deadline is not None and time.monotonic() > deadline:
                raise ScenarioError(f"runs of {fn_id} still live after {timeout:g} s: {self.by_status(fn_id)}")
            await asyncio.sleep(POLL_INTERVAL)
        return time.perf_counter()

    def app_stats(self) -> dict[str, dict[str, float]]:
        totals: dict[str, dict[str, float]] = {"calls": {}, "seconds": {}, "checkpoints": {}, "checkpoint_seconds": {}}
        for f in self.stats_dir.glob("calls-*.json"):
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(f.read_text())
                for kind, values in totals.items():  # checkpoints: the npm SDK's checkpoint requests, per function
                    for k, v in doc.get(kind, {}).items():
                        values[k] = values.get(k, 0) + v
        return totals

    def cpu(self) -> tuple[float, float]:
        assert self.server is not None and self.app is not None
        return tree_cpu_s(self.server.pid), tree_cpu_s(self.app.pid)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.http.aclose()
        if self.conn is not None:
            self.conn.close()
        for p in (self.server, self.app):
            if p is not None:
                await asyncio.to_thread(p.stop)
        if self.args.keep:
            print(f"  (kept {self.dir}: server.log, app.log, stepline.db)", file=sys.stderr)
        else:
            self.tmp.cleanup()


async def post_events(http: httpx.AsyncClient, url: str, events: list[dict[str, Any]]) -> list[str]:
    body = json.dumps(events[0] if len(events) == 1 else events).encode()
    resp = await http.post(url, content=body, headers={"Content-Type": "application/json"})
    if resp.status_code != 200:
        raise ScenarioError(f"POST {url} answered {resp.status_code}: {resp.text[:300]}")
    ids = resp.json().get("ids") or []
    if len(ids) != len(events):
        raise ScenarioError(f"POST {url} returned {len(ids)} ids for {len(events)} events")
    return list(ids)


# --------------------------------------------------------------------------------------------- throughput
def _events(name: str, start: int, stop: int) -> list[dict[str, Any]]:
    return [{"name": name, "data": {"i": i}} for i in range(start, stop)]


async def _send_all(send: Callable[[list[dict[str, Any]]], Awaitable[Any]], name: str, n: int, mode: str,
                    args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Sends n events: in requests of --batch (one after the other), or one per request from --producers tasks."""
    if mode == "batch":
        for start in range(0, n, args.batch):
            await send(_events(name, start, min(start + args.batch, n)))
        return {"batch": args.batch, "send_calls": (n + args.batch - 1) // args.batch}
    producers = min(args.producers, n)

    async def produce(k: int) -> None:
        for i in range(k, n, producers):
            await send(_events(name, i, i + 1))

    await asyncio.gather(*(produce(k) for k in range(producers)))
    return {"producers": producers, "send_calls": n}


SCENARIO_SHAPE = {  # scenario -> (function, event name, steps per run, send mode)
    "one-batch": ("one", "bench/one", 1, "batch"),
    "one-single": ("one", "bench/one", 1, "single"),
    "ten-step": ("ten", "bench/ten", 10, "batch"),
    "ten-classic": ("ten-classic", "bench/ten-classic", 10, "batch"),
    "ten-buffered": ("ten-buffered", "bench/ten-buffered", 10, "batch"),
}


def _runs_for(scenario: str, args: argparse.Namespace) -> int:
    return args.step_runs if scenario.startswith("ten-") else args.runs


def throughput_result(n: int, steps: int, t0: float, t_sent: float, t_done: float, cpu: dict[str, float],
                      extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    elapsed = t_done - t0
    res: dict[str, Any] = {
        "kind": "throughput",
        "runs": n,
        "steps_per_run": steps,
        "elapsed_s": elapsed,
        "send_phase_s": t_sent - t0,
        "runs_per_s": n / elapsed,
        "steps_per_s": n * steps / elapsed,
        "cpu_s": cpu,
        "cpu_cores": {k: v / elapsed for k, v in cpu.items()},
    }
    res.update(extra)
    return res


def sqlite_args(args: argparse.Namespace) -> argparse.Namespace:
    """What run_sqlite.Env reads: default store options, no pre-filled history."""
    return argparse.Namespace(dir=args.dir, synchronous="FULL", history=0, analyze=False)


def define_inproc(env: Env, which: str, started: dict[int, tuple[float, float]] | None = None) -> None:
    """The in-process twins of py_app.py's functions (the same as bench/run_sqlite.py's)."""
    if which == "one":

        @env.client.function(id="one", trigger="bench/one")
        async def one(ctx):  # type: ignore[no-untyped-def]
            return await ctx.step.run("s1", lambda: ctx.event.data["i"])

    elif which in ("ten", "ten-classic", "ten-buffered"):  # (in-process there is only one flow)

        @env.client.function(id=which, trigger=f"bench/{which}")
        async def ten(ctx):  # type: ignore[no-untyped-def]
            total = 0
            for k in range(10):
                total += await ctx.step.run(f"s{k}", lambda k=k: k)
            return total

    else:
        assert started is not None

        @env.client.function(id="lat", trigger="bench/lat")
        async def lat(ctx):  # type: ignore[no-untyped-def]
            now = time.time()  # the first line of the function body
            i = ctx.event.data["i"]
            started.setdefault(i, (now, ctx.event.data["sent_at"]))
            return await ctx.step.run("s1", lambda: i)


async def inproc_throughput(args: argparse.Namespace, scenario: str) -> dict[str, Any]:
    which, name, steps, mode = SCENARIO_SHAPE[scenario]
    n = _runs_for(scenario, args)
    env = Env(sqlite_args(args), f"http-inproc-{scenario}")
    try:
        define_inproc(env, which)
        await env.start()
        assert env.counter is not None
        t0, cpu0 = time.perf_counter(), time.process_time()
        extra = await _send_all(env.client.send, name, n, mode, args)
        t_sent = time.perf_counter()
        t_done = await env.counter.wait_all_done(n)
        cpu = {"bench+engine": time.process_time() - cpu0}
        commits, ops = env.writer_delta()
        extra.update(writer_commits=commits, writer_ops=ops, statuses=env.counter.by_status())
        return throughput_result(n, steps, t0, t_sent, t_done, cpu, extra)
    finally:
        await env.stop()


async def http_throughput(stack: HttpStack, args: argparse.Namespace, scenario: str) -> dict[str, Any]:
    which, name, steps, mode = SCENARIO_SHAPE[scenario]
    n = _runs_for(scenario, args)
    fn = stack.fn_id(which)
    before = stack.by_status(fn)
    stats0 = stack.app_stats()
    profilers: list[PySpy] = []
    if args.py_spy:
        out = Path(args.py_spy)
        out.mkdir(parents=True, exist_ok=True)
        assert stack.server is not None and stack.app is not None
        profilers.append(PySpy(stack.server.pid, out / f"{stack.sdk}-{scenario}-server.txt", args.py_spy_rate, False))
        if stack.sdk == "python":
            profilers.append(PySpy(stack.app.pid, out / f"{stack.sdk}-{scenario}-app.txt", args.py_spy_rate,
                                   args.app_workers > 1))  # fmt: skip
        await asyncio.sleep(1.0)  # py-spy attaches
    try:
        server0, app0 = stack.cpu()
        t0, cpu0 = time.perf_counter(), time.process_time()

        async def send(events: list[dict[str, Any]]) -> None:
            await post_events(stack.http, stack.events_url, events)

        extra = await _send_all(send, name, n, mode, args)
        t_sent = time.perf_counter()
        t_done = await stack.wait_idle(fn)
        bench_cpu = time.process_time() - cpu0
        server1, app1 = stack.cpu()
    finally:
        for p in profilers:
            await asyncio.to_thread(p.stop)
    after = stack.by_status(fn)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    if delta.get("completed", 0) != n or any(v for k, v in delta.items() if k != "completed"):
        raise ScenarioError(f"not every run completed: {delta}")
    await asyncio.sleep(0.3)  # the app writes its call counts every 0.2 s
    stats1 = stack.app_stats()
    calls = stats1["calls"].get(fn, 0) - stats0["calls"].get(fn, 0)
    checkpoints = stats1["checkpoints"].get(fn, 0) - stats0["checkpoints"].get(fn, 0)
    app_s = stats1["seconds"].get(fn, 0.0) - stats0["seconds"].get(fn, 0.0)
    cpu = {"server": server1 - server0, "app": app1 - app0, "bench": bench_cpu}
    extra.update(app_calls=int(calls), calls_per_run=calls / n, app_ms_per_call=1000 * app_s / calls if calls else 0,
                 checkpoints=int(checkpoints), checkpoints_per_run=checkpoints / n, statuses=delta)  # fmt: skip
    if profilers:
        extra["py_spy"] = [str(p.out) for p in profilers]
    return throughput_result(n, steps, t0, t_sent, t_done, cpu, extra)


# --------------------------------------------------------------------------------------------- latency
def latency_result(samples: list[dict[str, float]], send_ms: list[float], busy: int) -> dict[str, Any]:
    lat = [s["start_ms"] for s in samples]
    res: dict[str, Any] = {
        "kind": "latency",
        "samples": len(lat),
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat),
        "min_ms": min(lat),
        "mean_ms": sum(lat) / len(lat),
        "send_call_p50_ms": percentile(send_ms, 50),
        "send_call_p99_ms": percentile(send_ms, 99),
        "non_idle_samples": busy,
    }
    # the parts, from the run's millisecond timestamps in the database (medians)
    for part in ("stored_ms", "claimed_ms", "body_ms", "ended_ms", "total_ms"):
        values = [s[part] for s in samples if part in s]
        if values:
            res[f"{part[:-3]}_p50_ms"] = percentile(values, 50)
    res["latencies_ms"] = [round(x, 3) for x in lat]
    res["send_calls_ms"] = [round(x, 3) for x in send_ms]
    res["parts_ms"] = [{k: round(v, 3) for k, v in s.items()} for s in samples]
    return res


def _parts(sent_at: float, t_first: float, row: tuple[int, int | None, int | None] | None) -> dict[str, float]:
    """One sample: start latency, and the run's timestamps relative to the send (ms)."""
    out = {"start_ms": (t_first - sent_at) * 1000}
    if row is not None and row[1] is not None and row[2] is not None:
        created, started, ended = row
        sent_ms, first_ms = sent_at * 1000, t_first * 1000
        out.update(stored_ms=created - sent_ms, claimed_ms=started - created, body_ms=first_ms - started,
                   ended_ms=ended - first_ms, total_ms=ended - sent_ms)  # fmt: skip
    return out


_RUN_OF_EVENT = "SELECT status, created_at, started_at, ended_at FROM runs WHERE event_id = ?"


async def _wait_run_ended(conn: sqlite3.Connection, event_id: str, timeout: float,
                          check: Callable[[], None] | None = None) -> tuple[int, int | None, int | None]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(_RUN_OF_EVENT, (event_id,)).fetchone()
        if row is not None and row[0] in ("completed", "failed", "cancelled"):
            if row[0] != "completed":
                raise ScenarioError(f"the run of event {event_id} ended {row[0]}")
            return row[1], row[2], row[3]
        if time.monotonic() > deadline:
            if check is not None:
                check()
            raise ScenarioError(f"the run of event {event_id} did not end within {timeout:g} s (status {row})")
        await asyncio.sleep(0.001)


async def inproc_latency(args: argparse.Namespace) -> dict[str, Any]:
    n = args.samples
    rng = random.Random(args.seed)
    started: dict[int, tuple[float, float]] = {}
    env = Env(sqlite_args(args), "http-inproc-latency")
    try:
        define_inproc(env, "lat", started)
        await env.start()
        assert env.counter is not None
        conn = env.counter.conn
        samples: list[dict[str, float]] = []
        send_ms: list[float] = []
        busy = 0
        for i in range(n):
            await asyncio.sleep(rng.uniform(args.pause_min, args.pause_max) / 1000)
            busy += env.counter.any_live()
            t = time.perf_counter()
            [event_id] = await env.client.send({"name": "bench/lat", "data": {"i": i, "sent_at": time.time()}})
            send_ms.append((time.perf_counter() - t) * 1000)
            row = await _wait_run_ended(conn, event_id, 30)
            t_first, sent_at = started[i]
            samples.append(_parts(sent_at, t_first, row))
        res = latency_result(samples, send_ms, busy)
        res["sender"] = "same process (client.send)"
        return res
    finally:
        await env.stop()


async def http_latency(stack: HttpStack, args: argparse.Namespace) -> dict[str, Any]:
    n = args.samples
    rng = random.Random(args.seed)
    assert stack.conn is not None
    offset = stack.lat_log.stat().st_size if stack.lat_log.exists() else 0
    sent: list[tuple[float, str, tuple[int, int | None, int | None]]] = []
    send_ms: list[float] = []
    busy = 0
    for i in range(n):
        await asyncio.sleep(rng.uniform(args.pause_min, args.pause_max) / 1000)
        busy += stack.any_live(stack.fn_id("lat"))
        sent_at = time.time()
        t = time.perf_counter()
        [event_id] = await post_events(stack.http, stack.events_url,
                                       [{"name": "bench/lat", "data": {"i": i, "sent_at": sent_at}}])  # fmt: skip
        send_ms.append((time.perf_counter() - t) * 1000)
        row = await _wait_run_ended(stack.conn, event_id, 30, stack.check_alive)
        sent.append((sent_at, event_id, row))
    # the app's records: the first call of each run (the SDK runs the function body again on every call)
    first: dict[int, float] = {}
    with stack.lat_log.open() as f:
        f.seek(offset)
        for line in f:
            with contextlib.suppress(ValueError, KeyError):
                rec = json.loads(line)
                first[rec["i"]] = min(first.get(rec["i"], rec["t"]), rec["t"])
    missing = [i for i in range(n) if i not in first]
    if missing:
        raise ScenarioError(f"the app recorded no start for {len(missing)} samples (e.g. {missing[:5]})")
    samples = [_parts(sent_at, first[i], row) for i, (sent_at, _, row) in enumerate(sent)]
    res = latency_result(samples, send_ms, busy)
    res["sender"] = "this process, POST /e/<key> (httpx, keep-alive)"
    return res


# --------------------------------------------------------------------------------------------- driver
def _abort_timer(name: str, args: argparse.Namespace) -> threading.Timer:
    def hard_abort() -> None:
        print(f"\nABORT: {name!r} did not finish or clean up within {args.timeout + 60:g} s; killing the "
              "subprocesses and the benchmark", file=sys.stderr, flush=True)  # fmt: skip
        kill_all()
        os._exit(3)

    t = threading.Timer(args.timeout + 60, hard_abort)
    t.name = "bench-watchdog"
    t.daemon = True
    t.start()
    return t


async def bounded(name: str, args: argparse.Namespace, make: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    print(f"-- {name} ...", file=sys.stderr, flush=True)
    watchdog = _abort_timer(name, args)
    t = time.perf_counter()
    try:
        res = await asyncio.wait_for(make(), args.timeout)
    except TimeoutError:
        msg = f"TIMEOUT: {name!r} exceeded {args.timeout:g} s and was abandoned"
        print(msg, file=sys.stderr, flush=True)
        res = {"error": msg}
    except Exception as exc:
        msg = f"FAILED: {name!r}: {type(exc).__name__}: {exc}"
        print(msg, file=sys.stderr, flush=True)
        res = {"error": msg}
    finally:
        watchdog.cancel()
    res["wall_s"] = time.perf_counter() - t
    return res


async def inproc_await(args: argparse.Namespace) -> dict[str, Any]:
    env = Env(sqlite_args(args), "http-inproc-await")
    try:
        workflow_await.define_inproc(env.client)
        await env.start()
        call = workflow_await.inproc_caller(env.client)
        return await workflow_await.measure(call, args.samples, args.await_runs, args.await_callers, args.seed)
    finally:
        await env.stop()


async def http_await(stack: HttpStack, args: argparse.Namespace) -> dict[str, Any]:
    call = workflow_await.http_caller(stack.http, stack.events_url, stack.server_url, stack.fn_id("three"))
    return await workflow_await.measure(call, args.samples, args.await_runs, args.await_callers, args.seed)


async def http_await_poll(stack: HttpStack, args: argparse.Namespace) -> dict[str, Any]:
    def run_ms(event_ids: list[str]) -> list[float]:
        assert stack.conn is not None
        rows = [stack.conn.execute(_RUN_OF_EVENT, (e,)).fetchone() for e in event_ids]
        return [float(r[3] - r[1]) for r in rows]

    fn = stack.fn_id("three")

    async def counters() -> dict[str, float]:
        await asyncio.sleep(0.3)  # the app writes its call counts every 0.2 s
        server, app = stack.cpu()
        st = stack.app_stats()
        return {"server_cpu_s": server, "app_cpu_s": app, "app_calls": st["calls"].get(fn, 0),
                "app_call_s": st["seconds"].get(fn, 0.0), "checkpoints": st["checkpoints"].get(fn, 0),
                "checkpoint_s": st["checkpoint_seconds"].get(fn, 0.0)}  # fmt: skip

    def ended(event_ids: list[str]) -> dict[str, Any]:
        assert stack.conn is not None
        marks = ",".join("?" * len(event_ids))
        rows = stack.conn.execute(f"SELECT event_id, status, output FROM runs WHERE event_id IN ({marks}) AND status "
                                  "NOT IN ('queued', 'running')", event_ids)  # fmt: skip
        return {e: (status, json.loads(out) if out else None) for e, status, out in rows}

    return await workflow_await.measure_polled(stack.http, stack.events_url, stack.server_url, fn, run_ms, ended,
                                               counters,
                                               args.samples, args.await_runs, args.await_callers, args.seed,
                                               args.poll_ms / 1000)  # fmt: skip


async def run_target(target: str, args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    if target == "inproc":
        for sc in args.scenarios:
            make: Callable[[], Awaitable[dict[str, Any]]]
            make = partial(inproc_latency, args) if sc == "latency" else partial(inproc_throughput, args, sc)
            if sc == "await":
                make = partial(inproc_await, args)
            if sc == "await-poll":
                results[f"inproc/{sc}"] = {"skipped": "an HTTP workload"}
                continue
            results[f"inproc/{sc}"] = await bounded(f"inproc/{sc}", args, make)
        return
    stack = HttpStack(args, target)
    watchdog = _abort_timer(f"{target} startup", args)
    try:
        print(f"-- {target}: starting the app and stepline dev ...", file=sys.stderr, flush=True)
        try:
            await asyncio.wait_for(stack.start(), args.timeout)
        except (Exception, TimeoutError) as exc:
            diag = "\n".join(f"--- {p.name} log ---\n{p.tail()}" for p in (stack.server, stack.app) if p is not None)
            msg = f"FAILED: {target} stack did not start: {type(exc).__name__}: {exc}"
            print(f"{msg}\n{diag}", file=sys.stderr, flush=True)
            results[f"{target}/startup"] = {"error": msg}
            return
        finally:
            watchdog.cancel()
        for sc in args.scenarios:
            make = partial(http_latency, stack, args) if sc == "latency" else partial(http_throughput, stack, args, sc)
            if sc == "await":
                make = partial(http_await, stack, args)
            if sc == "await-poll":
                make = partial(http_await_poll, stack, args)
            results[f"{target}/{sc}"] = await bounded(f"{target}/{sc}", args, make)
            if "error" in results[f"{target}/{sc}"]:
                break  # the stack may be in any state: do not pile more work on it
            await asyncio.sleep(0.5)  # let the server settle (group commits, lease renewals) between scenarios
    finally:
        await stack.stop()


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(results: dict[str, dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    out = []
    out.append(f"Stepline over HTTP vs in-process - {machine['date']}")
    out.append(f"machine : {machine['nproc']} CPUs usable ({machine['cpu']}), {machine['platform']}")
    la0, la1 = machine["loadavg_at_start"], machine.get("loadavg_at_end")
    out.append(f"load    : load average (1/5/15 min) at start {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f}"
               + (f", at end {la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f}" if la1 else "")
               + f"; other processes used {machine.get('other_cpu_cores', 0):.2f} cores on average during the run "
               "(the machine is shared: figures move with it)")  # fmt: skip
    out.append(f"python  : {machine['python']}, SQLite {machine['sqlite']}; db on {machine['db_filesystem']}, "
               f"fdatasync p50 {machine['fdatasync_ms']['p50']:.2f} ms")  # fmt: skip
    for sdk, v in machine.get("sdks", {}).items():
        out.append(f"{sdk:<8}: {v}")
    code = f"code    : stepline src sha1 {machine['stepline_src_sha1']}"
    if "git_head" in machine:
        dirty = machine["git_dirty_files"]
        code += f", git {machine['git_head']}" + (f" + {len(dirty)} modified file(s)" if dirty else "")
    out.append(code)
    if args.server_variant:
        out.append(f"VARIANT : the server ran with experimental patches: {args.server_variant} "
                   "(bench/http_apps/server_variant.py), not as shipped")  # fmt: skip
    workers = f"python app: {args.app_workers} uvicorn worker(s); " if "python" in args.target_list else ""
    out.append(f"server  : stepline dev (SQLite, synchronous=FULL), --processes {args.server_processes}; {workers}"
               f"senders: requests of "
               f"{args.batch} events, or {args.producers} concurrent single-event senders")  # fmt: skip
    out.append("")
    rows = [(k, v) for k, v in results.items() if v.get("kind") == "throughput"]
    if rows:
        hdr = (f"{'target/scenario':<18} {'runs':>5} {'elapsed s':>9} {'runs/s':>7} {'steps/s':>7} {'send s':>6} "
               f"{'calls/run':>9} {'ckpt/run':>8} {'CPU ms/call: server':>19} {'app':>5} | {'cores: server':>13} "
               f"{'app':>5} {'bench':>5}")  # fmt: skip
        out.append(hdr)
        out.append("-" * len(hdr))
        for k, v in rows:
            c = v["cpu_cores"]
            if "server" in c:
                cpu = f"{c['server']:>13.2f} {c['app']:>5.2f} {c['bench']:>5.2f}"
                per = {k: 1000 * v["cpu_s"][k] / v["app_calls"] if v["app_calls"] else 0 for k in ("server", "app")}
                calls = (f"{v['calls_per_run']:>9.2f} {v.get('checkpoints_per_run', 0):>8.2f} {per['server']:>19.2f} "
                         f"{per['app']:>5.2f}")  # fmt: skip
            else:
                cpu = f"{'(all) ' + format(c['bench+engine'], '.2f'):>13} {'':>5} {'':>5}"
                per_step = 1000 * v["cpu_s"]["bench+engine"] / (v["runs"] * v["steps_per_run"])
                calls = f"{'-':>9} {'-':>8} {format(per_step, '.2f') + ' /step':>19} {'':>5}"
            out.append(f"{k:<18} {v['runs']:>5} {v['elapsed_s']:>9.2f} {v['runs_per_s']:>7.0f} "
                       f"{v['steps_per_s']:>7.0f} {v['send_phase_s']:>6.2f} {calls} {cpu}")  # fmt: skip
        out.append("(ckpt/run: the npm SDK's checkpoint requests to the server per run; CPU ms/call: CPU time of the "
                   "server / app process per SDK call (inproc: per step, the whole process); cores: CPU seconds / "
                   "elapsed of each process (inproc: one process for all))")  # fmt: skip
        out.append("")
    rows = [(k, v) for k, v in results.items() if v.get("kind") == "latency"]
    if rows:
        hdr = (f"{'target/scenario':<18} {'n':>4} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} "
               f"{'send() p50':>10} {'non-idle':>8} | {'stored':>6} {'claimed':>7} {'body':>6} {'ended':>6} "
               f"{'total':>6}")  # fmt: skip
        out.append(hdr)
        out.append("-" * len(hdr))
        for k, v in rows:
            out.append(f"{k:<18} {v['samples']:>4} {v['p50_ms']:>7.2f} {v['p95_ms']:>7.2f} {v['p99_ms']:>7.2f} "
                       f"{v['max_ms']:>7.2f} {v['send_call_p50_ms']:>10.2f} {v['non_idle_samples']:>8} | "
                       f"{_f(v.get('stored_p50_ms'), '6.1f')} {_f(v.get('claimed_p50_ms'), '7.1f')} "
                       f"{_f(v.get('body_p50_ms'), '6.1f')} {_f(v.get('ended_p50_ms'), '6.1f')} "
                       f"{_f(v.get('total_p50_ms'), '6.1f')}")  # fmt: skip
        out.append("(right of |: medians, in ms, from the run's timestamps in the database (1 ms resolution): send -> "
                   "event stored, stored -> run claimed, claimed -> function body starts, body -> run ended, "
                   "send -> run ended)")  # fmt: skip
        out.append("")
    rows = [(k, v) for k, v in results.items() if v.get("kind") == "await"]
    if rows:
        out += workflow_await.render(rows)
    rows = [(k, v) for k, v in results.items() if v.get("kind") == "await-poll"]
    if rows:
        out += workflow_await.render_polled(rows)
    for k, v in results.items():
        if "error" in v:
            out.append(f"{k}: {v['error']}")
        elif "skipped" in v:
            out.append(f"{k}: skipped: {v['skipped']}")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=None, help="runs in one-batch and one-single (default 500)")
    p.add_argument("--step-runs", type=int, default=None, help="runs in ten-step (default 200)")
    p.add_argument("--samples", type=int, default=None, help="latency samples (default 200)")
    p.add_argument("--batch", type=int, default=100, help="events per request in one-batch and ten-step (100)")
    p.add_argument("--producers", type=int, default=50, help="concurrent senders in one-single (50)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (200 / 40 / 30)")
    p.add_argument(
        "--targets", default="inproc,python", help=f"comma-separated subset of {ALL_TARGETS} (default inproc,python)"
    )
    p.add_argument("--only", default=",".join(ALL_SCENARIOS), help=f"comma-separated subset of {ALL_SCENARIOS}")
    p.add_argument("--app-workers", type=int, default=1, help="uvicorn worker processes for the Python app (1)")
    p.add_argument("--pause-min", type=float, default=20.0, help="min pause before each latency send, ms (20)")
    p.add_argument("--pause-max", type=float, default=40.0, help="max pause before each latency send, ms (40)")
    p.add_argument("--seed", type=int, default=1234, help="seed for the latency pauses")
    p.add_argument("--timeout", type=float, default=180.0, help="abandon a scenario after this many s (180)")
    p.add_argument("--dir", default=None, help="directory for the temporary databases (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the HTTP stacks' directories (logs, databases)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--py-spy", metavar="DIR", help="record the server (and the Python app) with py-spy during "
                   "the HTTP throughput scenarios, raw format, into DIR (see bench/pyspy_summary.py)")  # fmt: skip
    p.add_argument("--server-variant", metavar="SPEC", default="", help="run the server through "
                   "bench/http_apps/server_variant.py with these experimental patches, e.g. call_limit=64 "
                   "(see that file)")  # fmt: skip
    p.add_argument("--py-spy-rate", type=int, default=200, help="py-spy samples per second (200)")
    p.add_argument("--await-runs", type=int, default=None, help="workflows in the await throughput (default 500)")
    p.add_argument("--await-callers", type=int, default=20, help="concurrent callers in the await throughput (20)")
    p.add_argument("--poll-ms", type=float, default=50.0, help="await-poll: the callers' poll interval (50 ms)")
    p.add_argument("--server-processes", type=int, default=1, help="stepline dev --processes N (1)")
    p.add_argument("--node-modules", type=Path, default=NODE_MODULES, help="the npm SDK to use (default: the "
                   "compatibility tests' inngest 4.x; bench/http_apps/npm3/node_modules: inngest 3.x)")  # fmt: skip
    args = p.parse_args(argv)
    args.runs = args.runs or (200 if args.quick else 500)
    args.step_runs = args.step_runs or (40 if args.quick else 200)
    args.samples = args.samples or (30 if args.quick else 200)
    args.await_runs = args.await_runs or (100 if args.quick else 500)
    globals()["NODE_MODULES"] = args.node_modules.resolve()  # node_problem, package_version and the app read it
    args.target_list = [s.strip() for s in args.targets.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [t for t in args.target_list if t not in ALL_TARGETS] + [s for s in args.scenarios if s not in ALL_SCENARIOS]
    if bad:
        p.error(f"unknown target(s)/scenario(s) {bad}; targets: {ALL_TARGETS}, scenarios: {ALL_SCENARIOS}")
    if args.py_spy and not PY_SPY.exists():
        p.error(f"--py-spy needs {PY_SPY} (.venv/bin/pip install py-spy)")
    return args


def _own_cpu_s() -> float:
    """CPU seconds of this process and of its subprocesses that have been waited for (all of them, at the end)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _total_cpu_s() -> float:
    """CPU seconds all processes of the machine used (from /proc/stat: user + nice + system + irq + softirq)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


async def main_async(args: argparse.Namespace) -> int:
    db_dir = Path(args.dir or tempfile.gettempdir())
    machine = machine_info(db_dir)
    machine["sdks"] = {}
    results: dict[str, dict[str, Any]] = {}
    t0, all0, own0 = time.perf_counter(), _total_cpu_s(), _own_cpu_s()
    for target in args.target_list:
        if target == "node" and (problem := node_problem()):
            results["node"] = {"skipped": problem}
            print(f"-- node: skipped: {problem}", file=sys.stderr)
            continue
        if target != "inproc":
            machine["sdks"][target] = package_version(target)
        await run_target(target, args, results)
    wall = time.perf_counter() - t0
    # what other processes used: all CPU time minus this process and its (waited-for) subprocesses
    machine["other_cpu_cores"] = max(0.0, (_total_cpu_s() - all0 - (_own_cpu_s() - own0)) / wall)
    machine["loadavg_at_end"] = os.getloadavg()
    machine["wall_s"] = wall
    print(render(results, machine, args))
    if args.json:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
        doc = {"machine": machine, "config": config, "results": results}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"(results written to {args.json})", file=sys.stderr)
    return 1 if any("error" in r for r in results.values()) else 0


def main() -> None:
    args = parse_args()
    try:
        sys.exit(asyncio.run(main_async(args)))
    finally:
        kill_all()


if __name__ == "__main__":
    main()
