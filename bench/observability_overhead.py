#!/usr/bin/env python
"""What metrics and tracing cost (a benchmark, not a test): one-step runs/s with each turned on and off.

Run from the project root:

    .venv/bin/python bench/observability_overhead.py                    # in-process, 5 alternated repeats
    .venv/bin/python bench/observability_overhead.py --baseline-rev main # also the code before observability
    .venv/bin/python bench/observability_overhead.py --http              # the HTTP path: tracing off, 10 %, 100 %
    .venv/bin/python bench/observability_overhead.py --runs 2000 --repeat 7 --json out.json

In-process (bench/run_sqlite.py's ``one-batch``: a one-step async function, N events sent in batches of 100, a
worker in the same process, SQLite synchronous=FULL), each measurement in a fresh process so that nothing turned on
in one leaks into the next, the modes alternated within every repeat (so a change of machine load hits all alike):

  baseline   the code of --baseline-rev (extracted with ``git archive``), when given: before any instrumentation
  off        this code, nothing configured (no metrics, no OTEL_* variables): the hooks' cost alone
  metrics    this code with Prometheus metrics on (what ``stepline worker --metrics-port`` does)
  trace10    metrics and OpenTelemetry traces, parent-based ratio sampler at 10 %, exported over OTLP/HTTP to a
             receiver subprocess on loopback (it reads and discards the bodies)
  trace100   the same at 100 %: every run and step span written and exported
  trace0     (diagnosis, with --modes) tracing configured with a 0 % sampler: the decisions alone, no span

--http: bench/run_http.py's stack (the official PyPI ``inngest`` SDK app under uvicorn, ``stepline dev`` as
subprocesses), one-step runs, the server started without the OTEL_* variables and with them at 10 % and 100 %,
alternated.
(The server always has metrics on: /metrics is part of it.)

Each row reports the median runs/s of the repeats, its min..max, and the ratio to ``off`` (and to ``baseline``)
computed from the medians. The machine may be shared: the ratios from alternated repeats are what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
IN_PROCESS = ["baseline", "off", "metrics", "trace10", "trace100"]
TRACED = {"trace0": "0.0", "trace10": "0.1", "trace100": "1.0"}  # sampler ratio of each tracing mode


# --------------------------------------------------------------------------------------------- receiver
def receiver_main(port: int) -> None:
    """An OTLP/HTTP receiver that accepts every export (200, empty response) and counts the bytes."""
    from aiohttp import web

    received = {"requests": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        received["requests"] += 1
        received["bytes"] += len(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------- one measurement
async def child_main(mode: str, runs: int, batch: int, endpoint: str | None) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    import run_sqlite  # the one-batch scenario, unchanged

    if mode == "metrics" or mode in TRACED:
        from stepline.observability import enable_metrics

        enable_metrics()
    if mode in TRACED:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint or ""
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = TRACED[mode]
        from stepline.observability.tracing import configure_from_env

        tracing = configure_from_env()
        assert tracing is not None
        # Steady state: a long-running process made its first export long ago (the exporter's HTTP client imports
        # and compiles what it needs then, ~0.1 s once), so one span is exported before the measurement.
        now = time.time_ns()
        tracing.emit("bench warm-up", 1, 1, None, now, now, {})
        tracing.processor.force_flush(10_000)
    # As `stepline dev|start|worker` do once started (observability.settle_heap), in every mode (the baseline's code
    # predates the helper): the startup heap out of the cyclic collector's reach.
    gc.collect()
    gc.freeze()
    args = run_sqlite.parse_args(["--runs", str(runs), "--batch", str(batch), "--only", "one-batch"])
    args.runs = runs
    result = await run_sqlite.scenario_one_step(args, "batch")
    out = {"mode": mode, "runs_per_s": result["runs_per_s"], "cpu_us_per_run": result["cpu_s"] / runs * 1e6}
    if mode in TRACED:
        from stepline.observability import current_metrics, current_tracing

        t = current_tracing()
        if t is not None:
            t.shutdown(10.0)
        m = current_metrics()
        if m is not None:
            m.flush()
            out["spans"] = {s.labels["outcome"]: s.value for fam in m.spans.collect() for s in fam.samples
                            if s.name.endswith("_total")}  # fmt: skip
    return out


def measure(mode: str, args: argparse.Namespace, endpoint: str, baseline_src: Path | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STEPLINE_", "PROMETHEUS_"))}
    env["PYTHONHASHSEED"] = "0"  # one source of variance between processes fewer
    if mode == "baseline":
        assert baseline_src is not None
        env["PYTHONPATH"] = str(baseline_src)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--runs", str(args.runs),
           "--batch", str(args.batch), "--endpoint", endpoint]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def extract(rev: str, into: Path) -> Path:
    """The ``src`` tree of ``rev`` (read with git archive, nothing checked out)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


# --------------------------------------------------------------------------------------------- HTTP path
async def http_main(
    args: argparse.Namespace, endpoint: str, server_cpu: dict[str, list[float]]
) -> dict[str, list[float]]:
    sys.path.insert(0, str(BENCH))
    import run_http

    hargs = run_http.parse_args(["--targets", "python", "--runs", str(args.runs), "--batch", str(args.batch)])
    hargs.runs = args.runs
    out: dict[str, list[float]] = {"http-off": [], "http-trace10": [], "http-trace100": []}
    for repeat in range(args.repeat):
        for mode in out:
            for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
                os.environ.pop(k, None)
            if mode != "http-off":
                os.environ.update(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                                  OTEL_TRACES_SAMPLER_ARG=TRACED[mode.removeprefix("http-")])  # fmt: skip
            stack = run_http.HttpStack(hargs, "python")
            try:
                await stack.start()
                # Steady state: the warm-up runs' spans are exported (the batch processor's 5 s delay) before the
                # measurement, so the exporter's one-time first-export work is not in it.
                await asyncio.sleep(6.0)
                result = await run_http.http_throughput(stack, hargs, "one-batch")
            finally:
                await stack.stop()
            out[mode].append(result["runs_per_s"])
            server_cpu.setdefault(mode, []).append(result["cpu_s"]["server"] / args.runs * 1e6)
            print(f"  repeat {repeat + 1} {mode}: {result['runs_per_s']:.0f} runs/s, server "
                  f"{server_cpu[mode][-1]:.0f} us CPU/run", file=sys.stderr, flush=True)  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------- report
def summarize(samples: dict[str, list[float]], reference: str) -> list[dict[str, Any]]:
    rows = []
    ref = statistics.median(samples[reference]) if samples.get(reference) else None
    base = statistics.median(samples["baseline"]) if samples.get("baseline") else None
    for mode, values in samples.items():
        if not values:
            continue
        med = statistics.median(values)
        row: dict[str, Any] = {"mode": mode, "median_runs_per_s": med, "min": min(values), "max": max(values),
                               "all": values}  # fmt: skip
        if ref:
            row[f"vs_{reference}"] = med / ref
        if base and mode != "baseline":
            row["vs_baseline"] = med / base
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], reference: str) -> str:
    lines = [f"{'mode':<14} {'runs/s (median)':>16} {'min..max':>17} {'vs ' + reference:>10} {'vs baseline':>12}"]
    for r in rows:
        vs = r.get(f"vs_{reference}")
        vb = r.get("vs_baseline")
        lines.append(f"{r['mode']:<14} {r['median_runs_per_s']:>16.0f} {r['min']:>8.0f}..{r['max']:<8.0f} "
                     f"{(f'{vs:.3f}' if vs else '-'):>10} {(f'{vb:.3f}' if vb else '-'):>12}")  # fmt: skip
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3000, help="one-step runs per measurement (3000)")
    p.add_argument("--batch", type=int, default=100, help="events per send (100)")
    p.add_argument("--repeat", type=int, default=5, help="alternated repeats of every mode (5)")
    p.add_argument("--baseline-rev", default=None, help="also measure the code of this git revision (e.g. main)")
    p.add_argument("--modes", default=None, help=f"comma-separated subset of {IN_PROCESS}")
    p.add_argument("--http", action="store_true", help="measure the HTTP path instead (tracing off, 10 %%, 100 %%)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--timeout", type=float, default=300.0, help="per measurement, seconds (300)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--endpoint", default=None, help=argparse.SUPPRESS)
    p.add_argument("--receiver", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.receiver is not None:
        receiver_main(args.receiver)
        return
    if args.child is not None:
        print(json.dumps(asyncio.run(child_main(args.child, args.runs, args.batch, args.endpoint))))
        return
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    receiver = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--receiver", str(port)])
    started = time.time()
    load0 = os.getloadavg()
    cpu: dict[str, list[float]] = {}
    try:
        time.sleep(1.0)
        if args.http:
            samples = asyncio.run(http_main(args, endpoint, cpu))
            reference = "http-off"
        else:
            modes = args.modes.split(",") if args.modes else list(IN_PROCESS)
            with tempfile.TemporaryDirectory(prefix="stepline-bench-baseline-") as tmp:
                baseline_src = extract(args.baseline_rev, Path(tmp)) if args.baseline_rev else None
                if baseline_src is None and "baseline" in modes:
                    modes.remove("baseline")
                samples = {m: [] for m in modes}
                for repeat in range(args.repeat):
                    for mode in modes:
                        result = measure(mode, args, endpoint, baseline_src)
                        samples[mode].append(result["runs_per_s"])
                        cpu.setdefault(mode, []).append(result["cpu_us_per_run"])
                        spans = f" spans {result['spans']}" if "spans" in result else ""
                        print(f"  repeat {repeat + 1} {mode}: {result['runs_per_s']:.0f} runs/s, "
                              f"{result['cpu_us_per_run']:.0f} us CPU/run{spans}",
                              file=sys.stderr, flush=True)  # fmt: skip
            reference = "off"
    finally:
        receiver.terminate()
        receiver.wait(10)
    rows = summarize(samples, reference)
    print(
        f"\nobservability overhead: {args.runs} one-step runs per measurement, {args.repeat} alternated repeats "
        f"({time.time() - started:.0f} s; loadavg {load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end)"
    )
    print(render(rows, reference))
    if cpu:
        print("\nCPU time of the measured process per run (median; less sensitive to other processes' load):")
        ref_cpu = statistics.median(cpu[reference]) if cpu.get(reference) else None
        for mode, values in cpu.items():
            med = statistics.median(values)
            ratio = f"  {med / ref_cpu:.3f} x {reference}" if ref_cpu else ""
            print(f"  {mode:<10} {med:7.1f} us ({min(values):.0f}..{max(values):.0f}){ratio}")
            for row in rows:
                if row["mode"] == mode:
                    row["cpu_us_per_run"] = med
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
