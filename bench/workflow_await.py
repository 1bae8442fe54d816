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


def http_caller(http: httpx.AsyncClient, events_url: str, server_url: str, fn_id: str, *,
                poll_s: float | None = None, ids: dict[int, str] | None = None) -> Caller:  # fmt: skip
    """``poll_s`` None: one ``GET /v1/events/{id}/runs?wait=30s``; else that GET without ``wait`` every ``poll_s``
    seconds until the run has ended (the published harness's way). ``ids`` collects the event id of each workflow."""

    async def call(i: int) -> Any:
        r = await http.post(events_url, json=[{"name": EVENT, "data": {"i": i}}])
        r.raise_for_status()
        [event_id] = r.json()["ids"]
        if ids is not None:
            ids[i] = event_id
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


async def measure_polled(http: httpx.AsyncClient, events_url: str, server_url: str, fn_id: str,
                         run_ms: RunTimes, samples: int, runs: int, callers: int, seed: int,
                         poll_s: float) -> dict[str, Any]:  # fmt: skip
    """The issue-16 workload twice in one run: callers awaiting with ``?wait=`` (unpolled), then polling every
    ``poll_s``; each time ``samples`` sequential workflows, then ``runs`` with ``callers`` concurrent callers. Besides
    the callers' view, each run's own time (event stored -> run ended, from the database) per phase."""
    out: dict[str, Any] = {"kind": "await-poll", "poll_ms": poll_s * 1000}
    for mode, poll in (("wait", None), ("poll", poll_s)):
        ids: dict[int, str] = {}
        call = http_caller(http, events_url, server_url, fn_id, poll_s=poll, ids=ids)
        res = await measure(call, samples, runs, callers, seed)
        seq = run_ms([ids[i] for i in range(samples)])
        conc = run_ms([ids[i] for i in range(samples, samples + runs)])
        res.update(run_p50_ms=percentile(seq, 0.5), run_p95_ms=percentile(seq, 0.95),
                   conc_run_p50_ms=percentile(conc, 0.5), conc_run_p95_ms=percentile(conc, 0.95))  # fmt: skip
        out[mode] = res
    out["conc_run_p50_ratio"] = out["poll"]["conc_run_p50_ms"] / max(out["wait"]["conc_run_p50_ms"], 1e-9)
    return out


def render_polled(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    out = []
    hdr = (f"{'target/mode':<22} {'caller p50':>10} {'p95':>7} | {'run p50':>7} {'p95':>6} {'per step':>8} | "
           f"{'callers':>7} {'runs':>5} {'workflows/s':>11} {'run p50':>7} {'p95':>6}")  # fmt: skip
    out += [hdr, "-" * len(hdr)]
    for k, v in rows:
        for mode in ("wait", "poll"):
            r = v[mode]
            label = f"{k} wait" if mode == "wait" else f"{k} poll {v['poll_ms']:.0f}ms"
            out.append(f"{label:<22} {r['p50_ms']:>10.1f} {r['p95_ms']:>7.1f} | {r['run_p50_ms']:>7.1f} "
                       f"{r['run_p95_ms']:>6.1f} {r['run_p50_ms'] / 3:>8.1f} | {r['callers']:>7} {r['runs']:>5} "
                       f"{r['workflows_per_s']:>11.0f} {r['conc_run_p50_ms']:>7.1f} "
                       f"{r['conc_run_p95_ms']:>6.1f}")  # fmt: skip
        out.append(f"{k}: concurrent run p50 polled / unpolled = {v['conc_run_p50_ratio']:.2f} (goal <= 1.5)")
    out.append("(await-poll: a three-step workflow, POST /e/{key} then GET /v1/events/{id}/runs: `wait` with "
               "?wait=30s, `poll` every poll interval; left: sequential samples (caller's send -> result, and the "
               "run's own event stored -> ended from the database, / 3 per step); right: concurrent callers, "
               "workflows/s and the runs' own times, ms)")  # fmt: skip
    out.append("")
    return out


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
