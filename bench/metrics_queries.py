#!/usr/bin/env python
"""What the cluster-wide gauges' read costs with a million runs (a benchmark, not a test).

``Store.cluster_gauges`` counts the backlog (due, not executing), the idle runs by reason and the running runs per
function, reading only the live part of the ``runs_due`` and ``runs_lease_owner`` indexes. Its cost should follow
the live runs, not the runs kept after they ended. Two databases of ``--runs`` runs (default 1,000,000), filled with
SQL (10 functions):

  history   the usual shape: all but ``--live`` runs ended (kept for retention), ``--live`` live ones: a tenth due now,
            the rest sleeping, waiting, retrying or throttled until later
  all-live  every run live and idle (a million sleeping runs): the worst case

Each read is timed ``--repeat`` times (median shown). The leader reads at most every 5 s and spends at most 5 % of
its time on it (observability/cluster.py), so a read of T seconds comes at most every max(5 s, 20 T).

    .venv/bin/python bench/metrics_queries.py
    .venv/bin/python bench/metrics_queries.py --runs 200000 --live 20000
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

from stepline.storage.sqlite.store import SQLiteStore

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
KINDS = ("sleeping", "waiting", "retrying", "throttled")


def ulid(ms: int, rand: int) -> str:
    value = (ms << 80) | rand
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


async def fill(path: Path, total: int, live: int, now: int) -> None:
    store = SQLiteStore(path, synchronous="OFF")
    await store.open()  # the schema
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    rng = random.Random(7)
    rows = []
    for i in range(total):
        created = now - (total - i) * 10
        fn = f"app-fn{i % 10}"
        if i < live // 10:  # due now, nobody executes them
            row = (ulid(created, rng.getrandbits(80)), fn, "queued", created, None, created, None)
        elif i < live:
            kind = KINDS[i % len(KINDS)]
            row = (ulid(created, rng.getrandbits(80)), fn, "running", created, None, now + 3_600_000,
                   f'{{"kind":"{kind}"}}')  # fmt: skip
        else:
            row = (ulid(created, rng.getrandbits(80)), fn, "completed", created, created + 5, None, None)
        rows.append(row)
        if len(rows) == 50_000:
            conn.executemany("INSERT INTO runs (id, function_id, event_id, status, created_at, ended_at, due_at, "
                             "idle_reason) VALUES (?, ?, 'E', ?, ?, ?, ?, ?)", rows)  # fmt: skip
            rows.clear()
    if rows:
        conn.executemany("INSERT INTO runs (id, function_id, event_id, status, created_at, ended_at, due_at, "
                         "idle_reason) VALUES (?, ?, 'E', ?, ?, ?, ?, ?)", rows)  # fmt: skip
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


async def measure(path: Path, repeat: int, now: int) -> tuple[float, int, int]:
    store = SQLiteStore(path, synchronous="OFF")
    await store.open()
    try:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            gauges = await store.cluster_gauges(now)
            times.append(time.perf_counter() - started)
        backlog = sum(n for _, n, _ in gauges.backlog)
        idle = sum(n for _, _, n in gauges.idle)
        return statistics.median(times), backlog, idle
    finally:
        await store.close()


async def main(args: argparse.Namespace) -> None:
    now = int(time.time() * 1000)
    print(f"cluster_gauges on SQLite, {args.runs:,} runs, median of {args.repeat} reads")
    for name, live in (("history", args.live), ("all-live", args.runs)):
        with tempfile.TemporaryDirectory(prefix="stepline-bench-gauges-", dir=args.dir) as tmp:
            path = Path(tmp) / "g.db"
            started = time.perf_counter()
            await fill(path, args.runs, live, now)
            filled = time.perf_counter() - started
            seconds, backlog, idle = await measure(path, args.repeat, now)
            print(f"  {name:<9} {live:>9,} live runs: {seconds * 1000:8.1f} ms per read (backlog {backlog:,}, idle "
                  f"{idle:,}; filled in {filled:.0f} s) -> the leader reads at most every "
                  f"{max(5.0, seconds / 0.05):.0f} s")  # fmt: skip


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--live", type=int, default=10_000, help="live runs in the history database (10,000)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dir", default=None, help="directory for the temporary databases")
    asyncio.run(main(p.parse_args()))
