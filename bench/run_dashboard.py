"""How fast dashboard pages load with a million runs in a SQLite store (a benchmark, not a test).

Inserts ``--runs`` runs (default 1,000,000) straight into a fresh SQLite database with SQL (10 functions of 2 apps,
created over the last 30 days, started 0-2 s after; 90% completed, 7% failed, 2% cancelled, 1% running), with
``--steps-per-run`` steps each (default 10: 10,000,000 steps) and the charts' statistics (``run_stats``) those runs
would have written, then times whole dashboard pages (HTTP request to rendered HTML, through the server app
in-process) for the runs list under each filter, a deep page reached by cursor, a run page (its timeline), the
functions page (run counts) and the charts page per range, overall and of one function; and each chart query
(``Store.run_stats``) on its own::

    .venv/bin/python bench/run_dashboard.py                 # 1,000,000 runs, 10,000,000 steps (a few minutes)
    .venv/bin/python bench/run_dashboard.py --runs 100000 --steps-per-run 2
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from stepline.core.engine import Engine
from stepline.server.app import create_app
from stepline.server.config import ServerConfig
from stepline.server.dashboard.charts import RANGES
from stepline.storage.records import FunctionRecord
from stepline.storage.sql import load_queries
from stepline.storage.sql_stats import HOUR, SETTLE_MS, StatsBatch
from stepline.storage.sqlite.store import SQLiteStore

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
DAY_MS = 24 * 3600 * 1000


def ulid(ms: int, rand: int) -> str:
    value = (ms << 80) | rand
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


def _flush_steps(conn: sqlite3.Connection, steps: list[tuple[object, ...]]) -> None:
    conn.executemany("INSERT INTO steps (run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, "
                     "started_at, ended_at, seq) VALUES (?, ?, ?, 'run', 'completed', 1, '1', NULL, NULL, ?, ?, ?)",
                     steps)  # fmt: skip
    steps.clear()


def _stats(conn: sqlite3.Connection, stats: StatsBatch, now: int) -> int:
    """The minute rows the runs' transactions would have added, and the hour rows rolled up from them (as the
    first hourly read or a prune does: see storage/sql_stats.py)."""
    queries = load_queries("stepline.storage.sqlite", "stats.sql")
    rows = [{"res": res, "at": at, "function_id": fid, "shard": 0, **d.params()}
            for (res, at, fid), d in stats.deltas.items()]  # fmt: skip
    conn.executemany(queries["add_run_stats"], rows)
    settled = now - SETTLE_MS
    rolled = conn.execute(queries["roll_up_hours"], {"from": 0, "to": settled - settled % HOUR}).rowcount
    return len(rows) + rolled


def fill(path: Path, n: int, now: int, steps_per_run: int = 10) -> list[str]:
    functions = [f"app{a}-fn{f}" for a in range(2) for f in range(5)]
    rng = random.Random(7)
    start = now - 30 * DAY_MS
    step = (30 * DAY_MS) / n
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO events (internal_id, id, name, data, user, ts, v, received_at) "
                 "VALUES ('01EVENT', '01EVENT', 'bench/event', '{}', '{}', ?, NULL, ?)", (now, now))  # fmt: skip
    batch = []
    ids = []
    steps: list[tuple[object, ...]] = []
    stats = StatsBatch()
    for i in range(n):
        created = int(start + i * step)
        roll = rng.random()
        status = "completed" if roll < 0.90 else "failed" if roll < 0.97 else "cancelled" if roll < 0.99 else "running"
        started = created + rng.randint(0, 2000)
        ended = None if status == "running" else started + rng.randint(5, 5000)
        error = '{"name":"Error","message":"boom"}' if status == "failed" else None
        run_id = ulid(created, rng.getrandbits(80))
        ids.append(run_id)
        fid = functions[i % len(functions)]
        batch.append((run_id, fid, "01EVENT", status, error, created, started, ended))
        stats.started(fid, started - created, started)
        if ended is not None:
            stats.ended(fid, status, started, ended)
        stop = ended if ended is not None else started + 5000
        for k in range(steps_per_run):
            at = started + (stop - started) * k // steps_per_run
            steps.append((run_id, f"{k:040x}", f"step-{k}", at, at + 1, k + 1))
        if len(steps) >= 200_000:
            _flush_steps(conn, steps)
        if len(batch) == 50_000:
            conn.executemany("INSERT INTO runs (id, function_id, event_id, status, output, error, created_at, "
                             "started_at, ended_at) VALUES (?, ?, ?, ?, 'null', ?, ?, ?, ?)", batch)  # fmt: skip
            batch.clear()
    if batch:
        conn.executemany("INSERT INTO runs (id, function_id, event_id, status, output, error, created_at, "
                         "started_at, ended_at) VALUES (?, ?, ?, ?, 'null', ?, ?, ?, ?)", batch)  # fmt: skip
    _flush_steps(conn, steps)
    print(f"run_stats rows: {_stats(conn, stats, now):,}")
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return ids


async def measure(path: Path, ids: list[str], repeat: int) -> list[tuple[str, float, float, int]]:
    store = SQLiteStore(path, synchronous="OFF")
    await store.open()
    engine = Engine(store)
    for a in range(2):
        config = {"triggers": [{"event": f"bench/{a}"}]}
        records = [FunctionRecord(f"app{a}-fn{f}", f"app{a}", f"fn{f}", f"Function {f}", config) for f in range(5)]
        await engine.register(f"app{a}", records)
    app = create_app(engine, ServerConfig(discovery=False, poll=False))
    deep = ids[len(ids) // 2]
    mid = engine.clock.now_ms() - 15 * DAY_MS
    cases = [
        ("runs, no filter", "/dashboard/runs"),
        ("runs, status failed", "/dashboard/runs?status=failed"),
        ("runs, function", "/dashboard/runs?function_id=app1-fn3"),
        ("runs, function + status failed", "/dashboard/runs?function_id=app1-fn3&status=failed"),
        ("runs, app", "/dashboard/runs?app_id=app0"),
        ("runs, status failed, last 24 h", "/dashboard/runs?status=failed&range=24h"),
        ("runs, status running (1%)", "/dashboard/runs?status=running"),
        ("runs, page at the 500,000th run (cursor)", f"/dashboard/runs?before={deep}"),
        ("runs, failed, page at the middle (cursor)", f"/dashboard/runs?status=failed&before={deep}"),
        ("runs, created 15 days ago (1 h window)", f"/dashboard/runs?from={mid}&to={mid + 3600_000}"),
        ("search by run id", f"/dashboard/runs?q={deep}"),
        ("run page", f"/dashboard/runs/{deep}"),
        ("functions page (run counts, 1 h / 24 h)", "/dashboard/functions"),
        *((f"charts, all functions, {r}", f"/dashboard/charts?range={r}") for r in RANGES),
        *((f"charts, one function, {r}", f"/dashboard/charts?range={r}&function_id=app1-fn3") for r in RANGES),
    ]
    out = []
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://localhost") as http:
            for name, url in cases:
                times = []
                rows = 0
                for _ in range(repeat):
                    if "functions" in url:
                        app.state.dashboard.forget_counts()  # measure the uncached read
                    t0 = time.perf_counter()
                    resp = await http.get(url)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert resp.status_code in (200, 303), (url, resp.status_code, resp.text[:300])
                    rows = resp.text.count('class="run-row"') or resp.text.count("<tr data-function=")
                out.append((name, statistics.median(times), max(times), rows))
    now = engine.clock.now_ms()
    for r, (span, res) in RANGES.items():
        for fid in (None, "app1-fn3"):
            times, cpu = [], []
            for _ in range(repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                got = await store.run_stats(res, now - span, fid)
                times.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
            label = f"chart query (Store.run_stats), {'one function' if fid else 'all functions'}, {r}"
            out.append((label, statistics.median(times), max(times), len(got)))
            out.append((f"{label}: CPU time (this process, a loaded machine's wall time aside)",
                        statistics.median(cpu), max(cpu), len(got)))  # fmt: skip
    await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps-per-run", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stepline.db"
        asyncio.run(_create(path))
        now = int(time.time() * 1000)
        t0 = time.perf_counter()
        ids = fill(path, args.runs, now, args.steps_per_run)
        print(f"inserted {args.runs:,} runs and {args.runs * args.steps_per_run:,} steps in "
              f"{time.perf_counter() - t0:.1f} s "
              f"({path.stat().st_size / 1e6:.0f} MB)")  # fmt: skip
        results = asyncio.run(measure(path, ids, args.repeat))
    size = f"{args.runs:,} runs, {args.runs * args.steps_per_run:,} steps"
    print(f"\n| page ({size}, SQLite) | median ms | max ms | rows |\n| --- | ---: | ---: | ---: |")
    for name, median, worst, rows in results:
        print(f"| {name} | {median:.1f} | {worst:.1f} | {rows} |")


async def _create(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.close()


if __name__ == "__main__":
    main()
