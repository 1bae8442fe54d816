#!/usr/bin/env python
"""Stepline benchmark for the embedded SQLite setup (a benchmark, not a test).

Run from the project root:

    .venv/bin/python bench/run_sqlite.py                 # every scenario, default sizes, synchronous=FULL
    .venv/bin/python bench/run_sqlite.py --quick         # small sizes, for a smoke check (~15 s)
    .venv/bin/python bench/run_sqlite.py --synchronous NORMAL --json out.json
    .venv/bin/python bench/run_sqlite.py --only one-batch,ten-step

Scenarios (each on a fresh SQLite file in a fresh temporary directory, worker in this process with default
options, system clock):

  one-single     one-step async function; N events, one ``send`` call per event from P concurrent producers
  one-batch      one-step async function; N events sent in batches of B (sequential sends)
  one-sync       as one-batch, but the handler is a plain ``def`` (runs in the worker's thread pool)
  ten-step       ten sequential ``ctx.step.run`` steps; N runs sent in batches of B; steps/s = 10 N / elapsed
  latency-inproc idle worker, one event at a time from this process: time from just before ``send`` to the
                 first line of the function body (perf_counter)
  latency-subproc the same, with the events sent by a separate process on the same file (time.time() in
                 both processes; the send timestamp travels in the event data)

Throughput is measured from just before the first ``send`` to the moment the store shows no run queued or
running any more (a read-only connection probes every 5 ms, so the figure is at most 5 ms pessimistic; the
runs are then checked to be ``completed``). Group commit shows as writer ops per commit
(``store.writer.ops`` / ``store.writer.commits``, counted from after registration).

Options worth knowing: --repeat K (median of K runs, latency samples pooled), --synchronous NORMAL,
--history K (pre-fill K completed runs, as a long-lived database holds) and --analyze (run ANALYZE after
that, an experiment on planner statistics). The header records the machine, the fdatasync latency of the
database's disk (what a FULL commit costs), and which Stepline code ran (source hash, git commit).

Every scenario is bounded: it is abandoned with a clear message after --timeout seconds (default 120), and a
watchdog thread kills the process if even that cleanup hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from stepline import Stepline
from stepline.storage.sqlite.store import SQLiteStore

APP = "bench"
TARGETS = {"one_step_runs_per_s": 2000.0, "steps_per_s": 5000.0, "p50_ms": 5.0, "p99_ms": 25.0}
ALL_SCENARIOS = ["one-single", "one-batch", "one-sync", "ten-step", "latency-inproc", "latency-subproc"]
POLL_INTERVAL = 0.005


class ScenarioError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------- helpers
def percentile(values: list[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _fs_type(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (fsync cost depends on it: tmpfs makes FULL free)."""
    best, fstype = "", "?"
    try:
        real = str(path.resolve())
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")):
                    if len(parts[1]) >= len(best):
                        best, fstype = parts[1], parts[2]
    except OSError:
        pass
    return f"{fstype} ({best})" if best else fstype


def code_info() -> dict[str, Any]:
    """Which Stepline code ran: its location, a hash of its sources, and the git commit (read-only git)."""
    import hashlib

    import stepline

    pkg = Path(stepline.__file__).resolve().parent
    h = hashlib.sha1()
    for f in sorted(pkg.rglob("*")):
        if f.suffix in (".py", ".sql") and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(pkg)).encode())
            h.update(f.read_bytes())
    info: dict[str, Any] = {"stepline_path": str(pkg), "stepline_src_sha1": h.hexdigest()[:12]}
    try:
        head = subprocess.run(["git", "-C", str(pkg), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        if head.returncode == 0:
            info["git_head"] = head.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(pkg), "status", "--porcelain", "--", "."],
                                   capture_output=True, text=True, timeout=10)  # fmt: skip
            info["git_dirty_files"] = [ln[3:] for ln in dirty.stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def fsync_ms(directory: Path, n: int = 100) -> dict[str, float]:
    """Latency of write(4 KiB) + fdatasync in ``directory``: what one durable commit costs on this disk."""
    times = []
    fd, name = tempfile.mkstemp(prefix="stepline-bench-fsync-", dir=directory)
    try:
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(name)
    return {"p50": percentile(times, 50), "p99": percentile(times, 99)}


def machine_info(db_dir: Path) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "db_filesystem": _fs_type(db_dir),
        "fdatasync_ms": fsync_ms(db_dir),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        **code_info(),
    }


class RunCounter:
    """A read-only connection on the benchmark database, for cheap progress checks.

    Completion is detected with an O(1) existence probe ("is any run still queued or running?") through the
    runs_status_created index rather than count(*), whose cost grows with the number of completed runs.
    It is only meaningful once every run has been inserted (all sends awaited), which is how it is used.
    """

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        self.history = 0  # completed runs pre-filled by --history, not part of the scenario

    def any_live(self) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM runs WHERE status IN ('queued', 'running') LIMIT 1").fetchone() is not None
        )

    def by_status(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())

    async def wait_all_done(self, n: int, interval: float = POLL_INTERVAL) -> float:
        """Wait until no run is queued or running; returns perf_counter() at detection. Then checks that
        ``n`` runs completed (history rows inserted by --history are not counted)."""
        while self.any_live():
            await asyncio.sleep(interval)
        t = time.perf_counter()
        statuses = self.by_status()
        if statuses.get("completed", 0) - self.history < n:
            raise ScenarioError(f"not every run completed: {statuses}")
        return t

    def close(self) -> None:
        self.conn.close()


def insert_history(path: Path, function_ids: list[str], k: int) -> None:
    """Synthetic history: ``k`` completed runs (round-robin over ``function_ids``), as a long-lived database
    would hold. Only the runs table is filled: that is what claiming and scheduling read."""
    if k <= 0:
        return
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        now = int(time.time() * 1000) - 86_400_000
        conn.executemany(
            "INSERT INTO runs (id, function_id, event_id, status, attempt, output, created_at, started_at, "
            "ended_at, due_at) VALUES (?, ?, ?, 'completed', 0, '1', ?, ?, ?, NULL)",
            (
                (f"0HIST{i:021d}", function_ids[i % len(function_ids)], f"0HISTEV{i:019d}", now + i, now + i, now + i)
                for i in range(k)
            ),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


class Env:
    """A fresh temp dir, store, client and (started) worker for one scenario."""

    def __init__(self, args: argparse.Namespace, name: str) -> None:
        self.args = args
        self.tmp = tempfile.TemporaryDirectory(prefix=f"stepline-bench-{name}-", dir=args.dir)
        self.path = Path(self.tmp.name) / "bench.db"
        self.store = SQLiteStore(self.path, synchronous=args.synchronous)
        self.client = Stepline(APP, self.store)
        self.worker: Any = None
        self._task: asyncio.Task[None] | None = None
        self.counter: RunCounter | None = None
        self.commits0 = 0
        self.ops0 = 0

    async def start(self, **worker_options: Any) -> None:
        await self.client.ready()
        insert_history(self.path, list(self.client.functions), self.args.history)
        if self.args.analyze:
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("ANALYZE")  # planner statistics (sqlite_stat1); Stepline itself does not run it
            conn.close()
        self.counter = RunCounter(self.path)
        self.counter.history = self.args.history
        self.worker = self.client.worker(**worker_options)
        self._task = asyncio.create_task(self.worker.run(), name="bench-worker")
        await asyncio.sleep(0.05)  # let the worker reach its idle wait
        self.commits0, self.ops0 = self.store.writer.commits, self.store.writer.ops

    def writer_delta(self) -> tuple[int, int]:
        return self.store.writer.commits - self.commits0, self.store.writer.ops - self.ops0

    async def stop(self) -> None:
        try:
            if self.worker is not None:
                self.worker.stop()
            if self._task is not None:
                try:
                    await asyncio.wait_for(self._task, 15)
                except (TimeoutError, asyncio.CancelledError):
                    print("  (worker did not stop within 15 s)", file=sys.stderr)
        finally:
            if self.counter is not None:
                self.counter.close()
            await self.client.close()
            self.tmp.cleanup()


def throughput_result(env: Env, n_runs: int, steps_per_run: int, t0: float, cpu0: float, t_sent: float,
                      t_done: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    elapsed = t_done - t0
    cpu = time.process_time() - cpu0
    commits, ops = env.writer_delta()
    assert env.counter is not None
    statuses = env.counter.by_status()
    res: dict[str, Any] = {
        "kind": "throughput",
        "runs": n_runs,
        "steps_per_run": steps_per_run,
        "elapsed_s": elapsed,
        "send_phase_s": t_sent - t0,
        "runs_per_s": n_runs / elapsed,
        "steps_per_s": n_runs * steps_per_run / elapsed,
        "writer_commits": commits,
        "writer_ops": ops,
        "ops_per_commit": ops / commits if commits else 0.0,
        "cpu_s": cpu,
        "cpu_cores": cpu / elapsed,
        "statuses": statuses,
    }
    if extra:
        res.update(extra)
    return res


# --------------------------------------------------------------------------------------------- throughput
async def scenario_one_step(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """mode: 'single' (one send per event, concurrent producers), 'batch', or 'sync' (def handler, batches)."""
    n = args.runs
    env = Env(args, f"one-{mode}")
    try:
        if mode == "sync":

            @env.client.function(id="one-sync", trigger="bench/one")
            def one_sync(ctx):  # type: ignore[no-untyped-def]
                return ctx.step.run("s1", lambda: ctx.event.data["i"])

        else:

            @env.client.function(id="one", trigger="bench/one")
            async def one(ctx):  # type: ignore[no-untyped-def]
                return await ctx.step.run("s1", lambda: ctx.event.data["i"])

        await env.start()
        assert env.counter is not None
        extra: dict[str, Any] = {}
        t0, cpu0 = time.perf_counter(), time.process_time()
        if mode == "single":
            producers = min(args.producers, n)

            async def produce(k: int) -> None:
                for i in range(k, n, producers):
                    await env.client.send({"name": "bench/one", "data": {"i": i}})

            await asyncio.gather(*(produce(k) for k in range(producers)))
            extra = {"producers": producers, "send_calls": n}
        else:
            for start in range(0, n, args.batch):
                await env.client.send(
                    [{"name": "bench/one", "data": {"i": i}} for i in range(start, min(start + args.batch, n))]
                )
            extra = {"batch": args.batch, "send_calls": (n + args.batch - 1) // args.batch}
        t_sent = time.perf_counter()
        t_done = await env.counter.wait_all_done(n)
        return throughput_result(env, n, 1, t0, cpu0, t_sent, t_done, extra)
    finally:
        await env.stop()


async def scenario_ten_step(args: argparse.Namespace) -> dict[str, Any]:
    n = args.step_runs
    env = Env(args, "ten-step")
    try:

        @env.client.function(id="ten", trigger="bench/ten")
        async def ten(ctx):  # type: ignore[no-untyped-def]
            total = 0
            for k in range(10):
                total += await ctx.step.run(f"s{k}", lambda k=k: k)
            return total

        await env.start()
        assert env.counter is not None
        t0, cpu0 = time.perf_counter(), time.process_time()
        for start in range(0, n, args.batch):
            await env.client.send(
                [{"name": "bench/ten", "data": {"i": i}} for i in range(start, min(start + args.batch, n))]
            )
        t_sent = time.perf_counter()
        t_done = await env.counter.wait_all_done(n)
        return throughput_result(env, n, 10, t0, cpu0, t_sent, t_done, {"batch": args.batch})
    finally:
        await env.stop()


# --------------------------------------------------------------------------------------------- latency
def latency_result(lat_ms: list[float], send_ms: list[float], busy: int, extra: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {
        "kind": "latency",
        "samples": len(lat_ms),
        "p50_ms": percentile(lat_ms, 50),
        "p95_ms": percentile(lat_ms, 95),
        "p99_ms": percentile(lat_ms, 99),
        "max_ms": max(lat_ms),
        "min_ms": min(lat_ms),
        "mean_ms": sum(lat_ms) / len(lat_ms),
        "send_call_p50_ms": percentile(send_ms, 50) if send_ms else None,
        "send_call_p99_ms": percentile(send_ms, 99) if send_ms else None,
        "non_idle_samples": busy,
        "latencies_ms": [round(x, 3) for x in lat_ms],
        "send_calls_ms": [round(x, 3) for x in send_ms],
    }
    res.update(extra)
    return res


async def scenario_latency_inproc(args: argparse.Namespace) -> dict[str, Any]:
    n = args.samples
    env = Env(args, "latency-inproc")
    rng = random.Random(args.seed)
    started: dict[int, tuple[float, int]] = {}
    arrived = asyncio.Event()
    try:

        @env.client.function(id="lat", trigger="bench/lat")
        async def lat(ctx):  # type: ignore[no-untyped-def]
            i = ctx.event.data["i"]
            if i not in started:
                started[i] = (time.perf_counter(), len(env.worker._active))
                arrived.set()
            return await ctx.step.run("s1", lambda: i)

        await env.start()
        assert env.counter is not None
        lat_ms: list[float] = []
        send_ms: list[float] = []
        busy = 0
        for i in range(n):
            await asyncio.sleep(rng.uniform(args.pause_min, args.pause_max) / 1000)
            arrived.clear()
            t_send = time.perf_counter()
            await env.client.send({"name": "bench/lat", "data": {"i": i}})
            send_ms.append((time.perf_counter() - t_send) * 1000)
            while i not in started:
                await arrived.wait()
                arrived.clear()
            t_start, active = started[i]
            lat_ms.append((t_start - t_send) * 1000)
            busy += active > 1
            # wait until the run is completed, so the worker is idle again before the next send
            while env.counter.any_live():
                await asyncio.sleep(0.001)
        return latency_result(lat_ms, send_ms, busy, {"sender": "same process"})
    finally:
        await env.stop()


async def scenario_latency_subproc(args: argparse.Namespace) -> dict[str, Any]:
    n = args.samples
    env = Env(args, "latency-subproc")
    started: dict[int, tuple[float, float, int]] = {}
    try:

        @env.client.function(id="lat", trigger="bench/lat")
        async def lat(ctx):  # type: ignore[no-untyped-def]
            i = ctx.event.data["i"]
            if i not in started:
                started[i] = (time.time(), ctx.event.data["sent_at"], len(env.worker._active))
            return await ctx.step.run("s1", lambda: i)

        await env.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.abspath(__file__), "--_sender", str(env.path),
            "--samples", str(n), "--synchronous", args.synchronous, "--seed", str(args.seed),
            "--pause-min", str(args.pause_min), "--pause-max", str(args.pause_max),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        try:
            line = await proc.stdout.readline()
            if line.strip() != b"READY":
                raise ScenarioError(f"sender process did not start: {line!r}")
            proc.stdin.write(b"GO\n")
            await proc.stdin.drain()
            report_line = await proc.stdout.readline()
            rc = await proc.wait()
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if rc != 0 or not report_line:
            raise ScenarioError(f"sender process failed (exit {rc})")
        report = json.loads(report_line)
        assert env.counter is not None
        await env.counter.wait_all_done(n)
        missing = n - len(started)
        if missing:
            raise ScenarioError(f"{missing} runs never started")
        lat_ms = [(t_start - sent_at) * 1000 for t_start, sent_at, _ in started.values()]
        busy = sum(1 for *_, active in started.values() if active > 1)
        return latency_result(lat_ms, report["send_ms"], busy, {"sender": "separate process"})
    finally:
        await env.stop()


async def sender_main(args: argparse.Namespace) -> None:
    """The separate sender process of latency-subproc: waits for GO on stdin, then sends one event at a time."""
    rng = random.Random(args.seed + 1)
    client = Stepline(APP + "-sender", SQLiteStore(Path(args._sender), synchronous=args.synchronous))
    await client.ready()  # registers no functions of its own; routes by the worker's registered triggers
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    send_ms: list[float] = []
    for i in range(args.samples):
        # the worker finishes a one-step run in a few ms, so after this pause it is idle again
        await asyncio.sleep(rng.uniform(args.pause_min, args.pause_max) / 1000 + 0.010)
        t = time.perf_counter()
        await client.send({"name": "bench/lat", "data": {"i": i, "sent_at": time.time()}})
        send_ms.append((time.perf_counter() - t) * 1000)
    await client.close()
    print(json.dumps({"send_ms": send_ms}), flush=True)


# --------------------------------------------------------------------------------------------- driver
SCENARIOS: dict[str, tuple[str, Callable[[argparse.Namespace], Awaitable[dict[str, Any]]]]] = {
    "one-single": ("1-step, 1 send/event, concurrent producers", lambda a: scenario_one_step(a, "single")),
    "one-batch": ("1-step, sends of --batch events", lambda a: scenario_one_step(a, "batch")),
    "one-sync": ("1-step sync def handler, batched sends", lambda a: scenario_one_step(a, "sync")),
    "ten-step": ("10-step async, batched sends", scenario_ten_step),
    "latency-inproc": ("event->start latency, sender in-process", scenario_latency_inproc),
    "latency-subproc": ("event->start latency, sender in other process", scenario_latency_subproc),
}


async def run_once(name: str, args: argparse.Namespace, attempt: int) -> dict[str, Any]:
    _, fn = SCENARIOS[name]

    def hard_abort() -> None:
        print(f"\nABORT: scenario {name!r} did not finish or clean up within {args.timeout + 60:g} s; "
              "killing the benchmark", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(3)

    watchdog = threading.Timer(args.timeout + 60, hard_abort)
    watchdog.name = "bench-watchdog"
    watchdog.daemon = True
    watchdog.start()
    run_args = argparse.Namespace(**{**vars(args), "seed": args.seed + 1000 * attempt})
    try:
        return await asyncio.wait_for(fn(run_args), args.timeout)
    except TimeoutError:
        msg = f"TIMEOUT: scenario {name!r} exceeded {args.timeout:g} s and was abandoned"
        print(msg, file=sys.stderr, flush=True)
        return {"error": msg}
    except Exception as exc:
        msg = f"FAILED: scenario {name!r}: {type(exc).__name__}: {exc}"
        print(msg, file=sys.stderr, flush=True)
        return {"error": msg}
    finally:
        watchdog.cancel()


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from --repeat runs: throughput -> the median run by its key figure, with the min..max range;
    latency -> percentiles over the pooled samples."""
    if len(results) == 1:
        return results[0]
    if results[0]["kind"] == "throughput":
        key = "runs_per_s" if results[0]["steps_per_run"] == 1 else "steps_per_s"
        ranked = sorted(results, key=lambda r: r[key])
        res = dict(ranked[(len(ranked) - 1) // 2])  # the lower median for even counts
        res["repeats"] = len(results)
        res["range"] = [ranked[0][key], ranked[-1][key]]
        res["all"] = [r[key] for r in results]
        return res
    lat = [x for r in results for x in r["latencies_ms"]]
    sends = [x for r in results for x in r["send_calls_ms"]]
    res = latency_result(lat, sends, sum(r["non_idle_samples"] for r in results), {"sender": results[0]["sender"]})
    res["repeats"] = len(results)
    res["range"] = [min(r["p99_ms"] for r in results), max(r["p99_ms"] for r in results)]  # of p99
    return res


async def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    title, _ = SCENARIOS[name]
    t = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for attempt in range(args.repeat):
        print(f"-- {name}: {title}" + (f" (run {attempt + 1}/{args.repeat})" if args.repeat > 1 else "") + " ...",
              file=sys.stderr, flush=True)  # fmt: skip
        r = await run_once(name, args, attempt)
        if "error" in r:
            runs = [r]
            break
        runs.append(r)
    res = runs[0] if "error" in runs[0] else combine(runs)
    res["title"] = title
    res["wall_s"] = time.perf_counter() - t
    return res


def _ok(value: float, target: float, lower_is_better: bool = False) -> str:
    good = value <= target if lower_is_better else value >= target
    return "ok" if good else "MISS"


def render(results: dict[str, dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    out = []
    out.append(f"Stepline SQLite benchmark - {machine['date']}")
    load = machine.get("loadavg_at_start")
    out.append(
        f"machine : {machine['nproc']} CPUs usable ({machine['cpu']}), {machine['platform']}"
        + (f", load average at start {load[0]:.2f} (other work on the machine skews the figures)" if load else "")
    )
    out.append(f"python  : {machine['python']} ({machine['python_impl']}), SQLite {machine['sqlite']}")
    out.append(
        f"store   : synchronous={args.synchronous}, db on {machine['db_filesystem']}, "
        f"fdatasync p50 {machine['fdatasync_ms']['p50']:.2f} ms / p99 {machine['fdatasync_ms']['p99']:.2f} ms"
        + (f", history {args.history} completed runs pre-filled" if args.history else "")
        + (", ANALYZE run before the scenario" if args.analyze else "")
    )
    code = f"code    : stepline src sha1 {machine['stepline_src_sha1']} ({machine['stepline_path']})"
    if "git_head" in machine:
        dirty = machine["git_dirty_files"]
        code += f", git {machine['git_head']}" + (f" + {len(dirty)} modified file(s)" if dirty else "")
    out.append(code)
    out.append("")
    rows = [(k, v) for k, v in results.items() if v.get("kind") == "throughput"]
    if rows:
        rep = args.repeat > 1
        hdr = (f"{'scenario':<12} {'runs':>6} {'elapsed s':>9} {'runs/s':>8} {'steps/s':>8} "
               + (f"{'range (of ' + str(args.repeat) + ')':>15} " if rep else "")
               + f"{'send s':>7} {'commits':>8} {'ops':>7} {'ops/commit':>10} {'CPU cores':>9}  target")  # fmt: skip
        out.append(hdr)
        out.append("-" * len(hdr))
        for k, v in rows:
            if v["steps_per_run"] == 1:
                tgt = f"{_ok(v['runs_per_s'], TARGETS['one_step_runs_per_s'])} (>= 2000 runs/s)"
            else:
                tgt = f"{_ok(v['steps_per_s'], TARGETS['steps_per_s'])} (>= 5000 steps/s)"
            rng = ""
            if rep:
                rng = f"{v['range'][0]:.0f}-{v['range'][1]:.0f}" if "range" in v else "-"
                rng = f"{rng:>15} "
            out.append(
                f"{k:<12} {v['runs']:>6} {v['elapsed_s']:>9.2f} {v['runs_per_s']:>8.0f} {v['steps_per_s']:>8.0f} "
                f"{rng}{v['send_phase_s']:>7.2f} {v['writer_commits']:>8} {v['writer_ops']:>7} "
                f"{v['ops_per_commit']:>10.1f} {v['cpu_cores']:>9.2f}  {tgt}"
            )  # fmt: skip
        if rep:
            out.append(f"(each row is the median of {args.repeat} runs; range = min-max of runs/s, or steps/s for "
                       "ten-step)")  # fmt: skip
        out.append("")
    rows = [(k, v) for k, v in results.items() if v.get("kind") == "latency"]
    if rows:
        hdr = (f"{'scenario':<16} {'n':>5} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} "
               f"{'send() p50':>10} {'non-idle':>8}  target")  # fmt: skip
        out.append(hdr)
        out.append("-" * len(hdr))
        for k, v in rows:
            tgt = (f"p50 {_ok(v['p50_ms'], TARGETS['p50_ms'], True)} (< 5), "
                   f"p99 {_ok(v['p99_ms'], TARGETS['p99_ms'], True)} (< 25)")  # fmt: skip
            out.append(
                f"{k:<16} {v['samples']:>5} {v['p50_ms']:>7.2f} {v['p95_ms']:>7.2f} {v['p99_ms']:>7.2f} "
                f"{v['max_ms']:>7.2f} {v['send_call_p50_ms']:>10.2f} {v['non_idle_samples']:>8}  {tgt}"
            )
        if args.repeat > 1:
            out.append(f"(percentiles over the samples of {args.repeat} runs pooled)")
        out.append("")
    for k, v in results.items():
        if "error" in v:
            out.append(f"{k}: {v['error']}")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=None, help="runs for the one-step scenarios (default 5000)")
    p.add_argument("--step-runs", type=int, default=None, help="runs for ten-step (default 1000)")
    p.add_argument("--samples", type=int, default=None, help="latency samples per latency scenario (default 500)")
    p.add_argument("--producers", type=int, default=50, help="concurrent producers in one-single (default 50)")
    p.add_argument("--batch", type=int, default=100, help="events per send in batched scenarios (default 100)")
    p.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL", help="SQLite synchronous (FULL)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (500 / 100 / 50)")
    p.add_argument("--only", default=",".join(ALL_SCENARIOS), help=f"comma-separated subset of: {ALL_SCENARIOS}")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each scenario this many times: throughput reports the median run and the range, "
        "latency pools the samples (default 1)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="abandon a scenario after this many s (120)")
    p.add_argument("--dir", default=None, help="directory for the temporary databases (default: system temp)")
    p.add_argument("--seed", type=int, default=1234, help="seed for the random pauses of the latency scenarios")
    p.add_argument("--pause-min", type=float, default=5.0, help="min pause between latency sends, ms (5)")
    p.add_argument("--pause-max", type=float, default=15.0, help="max pause between latency sends, ms (15)")
    p.add_argument(
        "--history",
        type=int,
        default=0,
        help="pre-fill each database with this many completed runs (a long-lived database)",
    )
    p.add_argument(
        "--analyze",
        action="store_true",
        help="run ANALYZE on each database after --history is inserted (an experiment: planner statistics)",
    )
    p.add_argument("--_sender", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    args.runs = args.runs or (500 if quick else 5000)
    args.step_runs = args.step_runs or (100 if quick else 1000)
    args.samples = args.samples or (50 if quick else 500)
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {ALL_SCENARIOS}")
    args.scenarios = names
    return args


async def main_async(args: argparse.Namespace) -> int:
    db_dir = Path(args.dir or tempfile.gettempdir())
    machine = machine_info(db_dir)
    results: dict[str, dict[str, Any]] = {}
    for name in args.scenarios:
        results[name] = await run_one(name, args)
    print(render(results, machine, args))
    if args.json:
        config = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "json"}
        doc = {"machine": machine, "config": config, "targets": TARGETS, "results": results}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"(results written to {args.json})", file=sys.stderr)
    return 1 if any("error" in r for r in results.values()) else 0


def main() -> None:
    args = parse_args()
    if args._sender:
        asyncio.run(sender_main(args))
        return
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
