"""Shared by the benchmark's app scripts (Stepline, DBOS, Procrastinate, huey, pgqueuer). Standard library only:
it is imported by the project's interpreter (Stepline) and by the peers' venv alike.

Every app script has the same command line, driven by ``bench/run_postgres.py``:

    APP.py setup   --url URL                       create the schema in a fresh database
    APP.py worker  --url URL --index I [...]       run one worker process until SIGTERM; prints READY
    APP.py produce --url URL --kind KIND --n N     enqueue N jobs/events (one per call), then print a JSON line

(driven by ``bench/run_postgres.py`` and ``bench/run_queue.py``; URL is a file path for the SQLite systems).

``KIND`` is ``one`` (a one-step function), ``ten`` (ten sequential steps) or ``lat`` (event-to-start latency:
the job carries ``time.time()`` taken just before the send, the function body prints ``LAT <seconds>`` as its
first action; sends are sequential and spaced out so the workers are idle when each one arrives).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

KINDS = ("one", "ten", "lat")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--url", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--url", required=True)
    w.add_argument("--index", type=int, default=0)
    w.add_argument("--concurrency", type=int, default=0, help="0: the script's default")
    w.add_argument("--poll", type=float, default=0.0, help="polling interval in seconds (0: the script's default)")
    pr = sub.add_parser("produce")
    pr.add_argument("--url", required=True)
    pr.add_argument("--kind", choices=KINDS, required=True)
    pr.add_argument("--n", type=int, required=True)
    pr.add_argument("--inflight", type=int, default=50, help="concurrent sends (throughput kinds)")
    pr.add_argument("--gap", type=float, default=0.03, help="seconds between sends (lat)")
    return p


def report_latency(sent: float) -> None:
    """First thing a ``lat`` function body does: print how long ago the producer sent its job."""
    # One write(2) per line: DBOS runs workflows on many threads, and print() writes the newline separately.
    os.write(1, f"LAT {time.time() - sent:.6f}\n".encode())


def ready() -> None:
    print("READY", flush=True)


async def produce(send: Callable[[int, float | None], Awaitable[Any]], kind: str, n: int, inflight: int,
                  gap: float) -> None:  # fmt: skip
    """Call ``send(i, sent_at)`` n times: ``inflight`` concurrent callers (one job per call), or for ``lat``
    one at a time with ``gap`` (+-30 % jitter) between sends. Prints {"t0", "t_sent", "n", "errors", "cpu_s",
    "call_p50_ms", "call_p99_ms"} as JSON: t0 is time.time() just before the first send, t_sent after the last
    one returned; the percentiles are of each call's duration (perf_counter around the awaited call)."""
    calls: list[float] = []
    errors = 0
    first_error = ""
    t0 = time.time()
    if kind == "lat":
        for i in range(n):
            try:
                start = time.perf_counter()
                await send(i, time.time())
                calls.append(time.perf_counter() - start)
            except Exception as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(gap * random.uniform(0.7, 1.3))
    else:
        next_i = 0

        async def lane() -> None:
            nonlocal next_i, errors, first_error
            while next_i < n:
                i = next_i
                next_i += 1
                try:
                    start = time.perf_counter()
                    await send(i, None)
                    calls.append(time.perf_counter() - start)
                except Exception as exc:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"

        await asyncio.gather(*(lane() for _ in range(max(1, min(inflight, n)))))
    t_sent = time.time()
    result = {
        "t0": t0,
        "t_sent": t_sent,
        "n": n,
        "errors": errors,
        "first_error": first_error,
        "cpu_s": time.process_time(),
        "call_p50_ms": _pct(calls, 0.50) * 1000,
        "call_p99_ms": _pct(calls, 0.99) * 1000,
    }  # the producer's own CPU, imports and setup included
    print(json.dumps(result), flush=True)
    if errors:
        print(f"{errors} send(s) failed, first: {first_error}", file=sys.stderr, flush=True)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]
