#!/usr/bin/env python
"""What flow control costs (a benchmark, not a test).

Run from the project root:

    .venv/bin/python bench/run_flow.py                       # SQLite, every scenario
    .venv/bin/python bench/run_flow.py --backend postgres    # a throwaway PostgreSQL cluster (tests/pg_cluster.py)
    .venv/bin/python bench/run_flow.py --runs 2000 --repeat 3 --json out.json

Scenarios (each on a fresh database, one in-process worker with default options in this process, system clock,
events sent in batches of 100; the clock starts just before the first send):

  none      one-step function without flow control: N runs. The baseline.
  keyed     the same function with ``concurrency=Concurrency(limit=L, key="event.data.k")`` over K keys (default
            1,000 keys, limit 2): every run is claimed through the flow-controlled path (a slot count per key).
  hot-key   the same limit on a single key with limit 10: most claims find the key full, runs wait and are woken
            one by one as slots free (the worst case for the wake-up path).
  throttle  ``throttle=Throttle(limit=R, period="1s")`` with N runs sent at once: the queue drains at R runs/s.
            Reports the achieved start rate and each run's lateness: its start time minus the time the throttle
            scheduled it for (p50/p99), i.e. how promptly a throttled queue is served.

runs/s is measured from just before the first send until every run is completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from stepline import Concurrency, Stepline, Throttle  # noqa: E402
from stepline.storage.base import Store  # noqa: E402
from stepline.storage.records import RunFilter  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@contextlib.asynccontextmanager
async def fresh_store(args: argparse.Namespace, tmp: Path, name: str) -> AsyncIterator[Store]:
    if args.backend == "sqlite":
        from stepline.storage.sqlite.store import SQLiteStore

        store: Store = SQLiteStore(tmp / f"{name}.db")
    else:
        import psycopg

        from stepline.storage.postgres.store import PostgresStore

        db = f"flow_{name.replace('-', '_')}_{int(time.time() * 1000) % 10**8}"
        with psycopg.connect(args.pg_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {db}")
        store = PostgresStore(args.pg_url.rsplit("/", 1)[0] + "/" + db)
    try:
        yield store
    finally:
        await store.close()


async def count_live(store: Store, function_id: str) -> int:
    live = 0
    for status in ("queued", "running"):
        live += len(await store.list_runs(RunFilter(status=status, function_id=function_id, limit=1)))
    return live


async def wait_done(store: Store, function_id: str, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while await count_live(store, function_id):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"runs still live after {timeout:.0f} s")
        await asyncio.sleep(0.005)


async def scenario(args: argparse.Namespace, tmp: Path, name: str, attempt: int) -> dict[str, Any]:
    async with fresh_store(args, tmp, f"{name}-{attempt}") as store:
        client = Stepline("bench", store)
        starts: dict[str, float] = {}
        options: dict[str, Any] = {}
        if name == "keyed":
            options["concurrency"] = Concurrency(limit=args.limit, key="event.data.k")
        elif name == "hot-key":
            options["concurrency"] = Concurrency(limit=10, key="event.data.k")
        elif name == "throttle":
            options["throttle"] = Throttle(limit=args.rate, period="1s")

        @client.function(id="one", trigger="bench/one", **options)
        async def one(ctx: Any) -> Any:
            starts[ctx.run_id] = time.time()
            return await ctx.step.run("s", lambda: 1)

        await client.ready()
        worker = client.worker()
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.1)
        n = args.throttle_runs if name == "throttle" else args.runs
        keys = 1 if name == "hot-key" else args.keys
        events = [{"name": "bench/one", "data": {"k": f"key-{i % keys}"}} for i in range(n)]
        t0 = time.perf_counter()
        sent_at = time.time()
        for i in range(0, n, 100):
            await client.send(events[i : i + 100])
        t_sent = time.perf_counter()
        await wait_done(store, "bench-one", args.timeout)
        elapsed = time.perf_counter() - t0
        worker.stop()
        await task
        result: dict[str, Any] = {"runs": n, "elapsed_s": round(elapsed, 3), "runs_per_s": round(n / elapsed, 1),
                                  "send_s": round(t_sent - t0, 3)}  # fmt: skip
        if name == "throttle":
            runs = await store.list_runs(RunFilter(function_id="bench-one", limit=n))
            runs.sort(key=lambda r: r.id)
            # The throttle's schedule: `rate` starts at once, then one every 1/rate s from the first send.
            interval = 1.0 / args.rate
            ideal = [sent_at + max(0, i - args.rate + 1) * interval for i in range(n)]
            began = sorted(starts.values())
            late_ms = [(b - s) * 1000 for b, s in zip(began, ideal, strict=False)]
            span = began[-1] - began[0] if len(began) > 1 else 0.0
            result.update({
                "configured_rate_per_s": args.rate,
                "achieved_start_rate_per_s": round((n - args.rate) / span, 1) if span else None,
                "lateness_ms_p50": round(pct(late_ms, 50), 1),
                "lateness_ms_p99": round(pct(late_ms, 99), 1),
                "lateness_ms_max": round(max(late_ms), 1),
            })  # fmt: skip
        await client.close()
        return result


async def main(args: argparse.Namespace) -> None:
    cluster = None
    if args.backend == "postgres" and not args.pg_url:
        from tests.pg_cluster import PgCluster, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("no PostgreSQL binaries found (initdb, pg_ctl); pass --pg-url")
        cluster = PgCluster(bindir)  # the test cluster: fsync off (this compares flow control with none)
        cluster.init()
        args.pg_url = cluster.url("postgres")
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="stepline-flow-") as tmp:
            for name in args.scenarios.split(","):
                tries = [await scenario(args, Path(tmp), name, i) for i in range(args.repeat)]
                best = max(tries, key=lambda r: float(r["runs_per_s"]))
                if name == "throttle":
                    best = min(tries, key=lambda r: float(r["lateness_ms_p99"]))
                results[name] = best
                print(f"{name:9s} {json.dumps(best)}", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    if "none" in results and "keyed" in results:
        ratio = results["keyed"]["runs_per_s"] / results["none"]["runs_per_s"]
        print(f"keyed concurrency ({args.keys} keys, limit {args.limit}) runs at {ratio:.0%} of the baseline")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--pg-url", default="", help="an existing server's maintenance database (default: throwaway)")
    p.add_argument("--scenarios", default="none,keyed,hot-key,throttle")
    p.add_argument("--runs", type=int, default=5000)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--limit", type=int, default=2, help="concurrency limit per key in 'keyed' (default 2)")
    p.add_argument("--rate", type=int, default=50, help="throttle starts per second (default 50)")
    p.add_argument("--throttle-runs", type=int, default=500)
    p.add_argument("--repeat", type=int, default=1, help="best of N tries per scenario")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", metavar="PATH")
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
