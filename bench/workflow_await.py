"""The ``await`` scenario of bench/run_http.py: a three-step workflow triggered by an event and awaited by its caller
(send, then wait for the result), as a web handler waiting for a job would.

- in-process: ``client.send_and_wait(event)`` (the worker in the same process; no query per waiter, the run's end
  settles the waiter directly);
- over HTTP: ``POST /e/<key>`` then ``GET /v1/events/{id}/runs?wait=30s`` on ``stepline dev``, the function in an
  official-SDK app.

Latency: one caller, one workflow at a time (after a short pause), send to result; p50/p95/p99. Throughput:
``--await-callers`` callers, each sending and waiting in a loop, for ``--await-runs`` workflows; workflows/s.
For orientation only (another machine, a competitor's draft harness of this workload, Windmill PR 8708): Restate
4.1 ms median and 2,057 workflows/s; Inngest's dev server 260 ms and 90 workflows/s.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

EVENT = "bench/three"
Caller = Callable[[int], Awaitable[Any]]  # sends workflow i and returns its output once it has ended


def expected(i: int) -> int:
    """What the three-step function returns for ``data.i = i``: ((i + 1) * 2) + 3."""
    return (i + 1) * 2 + 3


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(call: Caller, samples: int, runs: int, callers: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    lat: list[float] = []
    for i in range(samples):
        await asyncio.sleep(rng.uniform(0.005, 0.015))
        t = time.perf_counter()
        out = await call(i)
        lat.append((time.perf_counter() - t) * 1000)
        if out != expected(i):
            raise RuntimeError(f"workflow {i} returned {out!r}, expected {expected(i)}")
    next_i = samples
    done = 0

    async def caller() -> None:
        nonlocal next_i, done
        while next_i < samples + runs:
            i = next_i
            next_i += 1
            if await call(i) != expected(i):
                raise RuntimeError(f"workflow {i} returned a wrong output")
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - t0
    return {"kind": "await", "samples": samples, "p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95),
            "p99_ms": percentile(lat, 0.99), "max_ms": max(lat), "runs": done, "callers": callers,
            "elapsed_s": elapsed, "workflows_per_s": done / elapsed}  # fmt: skip


def define_inproc(client: Any) -> None:
    @client.function(id="three", trigger=EVENT)
    async def three(ctx):  # type: ignore[no-untyped-def]
        a = await ctx.step.run("add", lambda: ctx.event.data["i"] + 1)
        b = await ctx.step.run("double", lambda: a * 2)
        return await ctx.step.run("plus", lambda: b + 3)


def inproc_caller(client: Any) -> Caller:
    async def call(i: int) -> Any:
        [run] = await client.send_and_wait({"name": EVENT, "data": {"i": i}}, timeout=30)
        if run.status != "completed":
            raise RuntimeError(f"workflow {i} ended {run.status}: {run.error}")
        return run.output

    return call


class DbWatcher:
    """Awaits runs without asking the server (the ``unpolled`` baseline): one task reads the ended runs of the events
    awaited from the server's database file (read-only, every ``interval`` s) and settles their callers."""

    def __init__(self, ended: Callable[[list[str]], dict[str, Any]], interval: float = 0.005) -> None:
        self.ended = ended  # event ids -> {event id: (status, output)} of the runs that have ended
        self.interval = interval
        self.pending: dict[str, asyncio.Future[Any]] = {}

    async def wait(self, event_id: str) -> Any:
        fut = self.pending[event_id] = asyncio.get_running_loop().create_future()
        return await fut

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.pending:
                for event_id, result in self.ended(list(self.pending)).items():
                    fut = self.pending.pop(event_id)
                    if not fut.done():
                        fut.set_result(result)


def http_caller(http: httpx.AsyncClient, events_url: str, server_url: str, fn_id: str, *,
                poll_s: float | None = None, ids: dict[int, str] | None = None,
                db: DbWatcher | None = None) -> Caller:  # fmt: skip
    """``poll_s`` None: one ``GET /v1/events/{id}/runs?wait=30s``; else that GET without ``wait`` every ``poll_s``
    seconds until the run has ended (the published harness's way). ``ids`` collects the event id of each workflow."""

    async def call(i: int) -> Any:
        r = await http.post(events_url, json=[{"name": EVENT, "data": {"i": i}}])
        r.raise_for_status()
        [event_id] = r.json()["ids"]
        if ids is not None:
            ids[i] = event_id
        if db is not None:
            status, output = await db.wait(event_id)
            if status != "completed":
                raise RuntimeError(f"workflow {i} ended {status}")
            return output
        while True:
            if poll_s is not None:
                await asyncio.sleep(poll_s)
            params = {"wait": "30s"} if poll_s is None else None
            r = await http.get(f"{server_url}/v1/events/{event_id}/runs", params=params)
            r.raise_for_status()
            runs = [x for x in r.json()["data"] if x["function_id"] == fn_id]
            if runs and runs[0]["status"] not in ("Queued", "Running"):
                break
            if poll_s is None:
                raise RuntimeError(f"workflow {i} had not ended after its wait: {runs}")
        [run] = runs
        if run["status"] != "Completed":
            raise RuntimeError(f"workflow {i} ended {run['status']}: {run['error']}")
        return run["output"]

    return call


RunTimes = Callable[[list[str]], list[float]]  # event ids -> each run's created -> ended time in ms (the database)
Counters = Callable[[], Awaitable[dict[str, float]]]  # CPU seconds of the server and the app, the app's calls


async def measure_polled(http: httpx.AsyncClient, events_url: str, server_url: str, fn_id: str,
                         run_ms: RunTimes, ended: Callable[[list[str]], dict[str, Any]], counters: Counters,
                         samples: int, runs: int, callers: int, seed: int,
                         poll_s: float) -> dict[str, Any]:  # fmt: skip
    """The issue-16 workload three times in one run: callers awaiting their runs out of band (``unpolled``: the
    benchmark reads the server's database file), with ``?wait=``, then polling every ``poll_s``; each time
    ``samples`` sequential workflows, then ``runs`` with ``callers`` concurrent callers. Besides the callers' view:
    each run's own time (event stored -> run ended, from the database), and per workflow the CPU of the server and
    of the app and the app's time in its handler (``counters`` before and after each part)."""
    out: dict[str, Any] = {"kind": "await-poll", "poll_ms": poll_s * 1000}
    rng = random.Random(seed)
    watcher = DbWatcher(ended)
    task = asyncio.create_task(watcher.run())
    try:
        for k, (mode, poll) in enumerate((("unpolled", None), ("wait", None), ("poll", poll_s))):
            ids: dict[int, str] = {}
            db = watcher if mode == "unpolled" else None
            call = http_caller(http, events_url, server_url, fn_id, poll_s=poll, ids=ids, db=db)
            out[mode] = await _phase(call, ids, k * (samples + runs), run_ms, counters, samples, runs, callers, rng)
    finally:
        task.cancel()
    out["conc_run_p50_ratio"] = out["poll"]["conc_run_p50_ms"] / max(out["unpolled"]["conc_run_p50_ms"], 1e-9)
    return out


async def _phase(call: Caller, ids: dict[int, str], base: int, run_ms: RunTimes, counters: Counters, samples: int,
                 runs: int, callers: int, rng: random.Random) -> dict[str, Any]:  # fmt: skip
    res: dict[str, Any] = {"samples": samples, "runs": runs, "callers": callers}
    lat: list[float] = []
    c0 = await counters()
    for i in range(base, base + samples):
        await asyncio.sleep(rng.uniform(0.005, 0.015))
        t = time.perf_counter()
        if await call(i) != expected(i):
            raise RuntimeError(f"workflow {i} returned a wrong output")
        lat.append((time.perf_counter() - t) * 1000)
    c1 = await counters()
    end = base + samples + runs
    t0 = time.perf_counter()
    await _concurrently(call, base + samples, end, callers)
    elapsed = time.perf_counter() - t0
    c2 = await counters()
    seq = run_ms([ids[i] for i in range(base, base + samples)])
    conc = run_ms([ids[i] for i in range(base + samples, end)])
    split = _split(sum(seq) / len(seq), _per_workflow(c0, c1, samples))
    res.update(split_per_step=split, p50_ms=percentile(lat, 0.5), p95_ms=percentile(lat, 0.95),
               run_p50_ms=percentile(seq, 0.5),
               run_p95_ms=percentile(seq, 0.95), conc_run_p50_ms=percentile(conc, 0.5),
               conc_run_p95_ms=percentile(conc, 0.95), elapsed_s=elapsed, workflows_per_s=runs / elapsed,
               seq=_per_workflow(c0, c1, samples), conc=_per_workflow(c1, c2, runs))  # fmt: skip
    return res


def _split(run_mean_ms: float, seq: dict[str, float]) -> dict[str, float]:
    """Where a step's time goes (sequential samples, means, ms per step): the app's own time in its handler (SDK and
    Express), and the server's: outside the app's handler (event stored -> claim -> call; answer -> next call or
    the run's end) plus the checkpoint requests the app waits for inside it."""
    outside = max(0.0, run_mean_ms - seq["app_handler_ms"])
    app_own = seq["app_handler_ms"] - seq["checkpoint_wait_ms"]
    server = outside + seq["checkpoint_wait_ms"]
    return {"run_ms": run_mean_ms / 3, "app_own_ms": app_own / 3, "server_ms": server / 3,
            "checkpoint_ms": seq["checkpoint_wait_ms"] / 3, "outside_handler_ms": outside / 3}  # fmt: skip


async def _concurrently(call: Caller, start: int, end: int, callers: int) -> None:
    todo = iter(range(start, end))

    async def caller() -> None:
        for i in todo:
            if await call(i) != expected(i):
                raise RuntimeError(f"workflow {i} returned a wrong output")

    await asyncio.gather(*(caller() for _ in range(callers)))


def _per_workflow(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in before}
    calls = d.get("app_calls", 0.0)
    return {"server_cpu_ms": 1000 * d["server_cpu_s"] / n, "app_cpu_ms": 1000 * d["app_cpu_s"] / n,
            "app_calls": calls / n, "checkpoints": d.get("checkpoints", 0.0) / n,
            "app_handler_ms": 1000 * d.get("app_call_s", 0.0) / n,
            "checkpoint_wait_ms": 1000 * d.get("checkpoint_s", 0.0) / n}  # fmt: skip


def render(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    out = []
    hdr = (f"{'target/scenario':<18} {'n':>4} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} | "
           f"{'runs':>5} {'callers':>7} {'workflows/s':>11}")  # fmt: skip
    out.append(hdr)
    out.append("-" * len(hdr))
    for k, v in rows:
        out.append(f"{k:<18} {v['samples']:>4} {v['p50_ms']:>7.2f} {v['p95_ms']:>7.2f} {v['p99_ms']:>7.2f} "
                   f"{v['max_ms']:>7.2f} | {v['runs']:>5} {v['callers']:>7} {v['workflows_per_s']:>11.0f}")  # fmt: skip
    out.append("(await: a three-step workflow sent and awaited by its caller: latency one at a time, send -> output; "
               "throughput with concurrent callers; goal: under 10 ms median in-process)")  # fmt: skip
    out.append("")
    return out


def render_polled(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    out = []
    hdr = (f"{'target/mode':<24} {'caller p50':>10} {'p95':>6} | {'run p50':>7} {'p95':>6} {'/step':>5} "
           f"{'app/step':>8} | {'callers':>7} {'runs':>5} {'wf/s':>5} {'run p50':>7} {'p95':>6} | "
           f"{'CPU ms/wf: server':>17} {'app':>5} {'calls':>5} {'ckpt':>4}")  # fmt: skip
    out += [hdr, "-" * len(hdr)]
    for k, v in rows:
        for mode in ("unpolled", "wait", "poll"):
            r = v[mode]
            seq, conc = r["seq"], r["conc"]
            label = f"{k} {mode}" if mode != "poll" else f"{k} poll {v['poll_ms']:.0f}ms"
            out.append(f"{label:<24} {r['p50_ms']:>10.1f} {r['p95_ms']:>6.1f} | {r['run_p50_ms']:>7.1f} "
                       f"{r['run_p95_ms']:>6.1f} {r['run_p50_ms'] / 3:>5.1f} {seq['app_handler_ms'] / 3:>8.2f} | "
                       f"{r['callers']:>7} {r['runs']:>5} {r['workflows_per_s']:>5.0f} {r['conc_run_p50_ms']:>7.1f} "
                       f"{r['conc_run_p95_ms']:>6.1f} | {conc['server_cpu_ms']:>17.2f} {conc['app_cpu_ms']:>5.2f} "
                       f"{conc['app_calls']:>5.2f} {conc['checkpoints']:>4.1f}")  # fmt: skip
        sp = v["unpolled"]["split_per_step"]
        out.append(f"{k}: concurrent run p50 polled / unpolled = {v['conc_run_p50_ratio']:.2f} (goal <= 1.5); "
                   f"a step (sequential, unpolled, means): {sp['run_ms']:.1f} ms = app (SDK, Express) "
                   f"{sp['app_own_ms']:.1f} + "
                   f"server {sp['server_ms']:.1f} (checkpoint requests {sp['checkpoint_ms']:.1f}, outside the app's "
                   f"handler {sp['outside_handler_ms']:.1f})")  # fmt: skip
    out.append("(await-poll: a three-step workflow, POST /e/{key}, then awaited: `unpolled` out of band (the "
               "benchmark reads the server's database file), `wait` with GET /v1/events/{id}/runs?wait=30s, `poll` "
               "with that GET every poll interval. Left: sequential samples: the caller's send -> result, the "
               "run's own event stored -> ended (database, ms), that / 3 per step, and the app's time in its handler "
               "per step; the rest of a step is the server, the network and the claim loop. Right: concurrent "
               "callers: workflows/s, the runs' own times, CPU per workflow of the server and of the app, the app's "
               "calls and checkpoint requests per workflow)")  # fmt: skip
    out.append("")
    return out
