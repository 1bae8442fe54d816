#!/usr/bin/env python
"""Commits from several processes on one SQLite file, with and without Stepline's write lock (a benchmark).

    .venv/bin/python bench/sqlite_write_lock.py                 # 1, 2 and 3 processes, 300 commits each
    .venv/bin/python bench/sqlite_write_lock.py --commits 1000 --processes 2

Each process commits one-row transactions (``BEGIN IMMEDIATE``, ``INSERT``, ``COMMIT``, synchronous=FULL, WAL),
pausing 1 ms between them, as ``--processes N`` servers and several ``stepline worker`` processes do. ``busy``: SQLite's
busy handler alone (a writer that finds the file locked sleeps 1, 2, 5 ... 100 ms and tries again); ``lock``: the
writers first queue on ``<db>-writelock`` (``stepline.storage.sqlite.store.WriteLock``, what the store does). Prints
the commit latency percentiles (mean over the processes) and the wall time, both modes in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import sqlite3
import tempfile
import time
from pathlib import Path

from stepline.storage.sqlite.store import WriteLock


def writer(db: str, commits: int, locked: bool, out: mp.Queue) -> None:  # type: ignore[type-arg]
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = FULL")
    lock = WriteLock(Path(db))
    lat = []
    for i in range(commits):
        t = time.perf_counter()
        with lock.held() if locked else contextlib.nullcontext():
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?)", (i,))
            conn.execute("COMMIT")
        lat.append((time.perf_counter() - t) * 1000)
        time.sleep(0.001)
    lat.sort()
    out.put([lat[len(lat) // 2], lat[int(len(lat) * 0.95)], lat[int(len(lat) * 0.99)], lat[-1]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commits", type=int, default=300)
    p.add_argument("--processes", default="1,2,3")
    args = p.parse_args()
    print(f"{'processes':>9} {'mode':>5} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'wall s':>7}")
    with tempfile.TemporaryDirectory(prefix="stepline-write-lock-") as tmp:
        for n in (int(x) for x in args.processes.split(",")):
            for locked in (False, True):
                db = str(Path(tmp) / f"{n}-{locked}.db")
                with sqlite3.connect(db) as c:
                    c.execute("PRAGMA journal_mode = WAL")
                    c.execute("CREATE TABLE t (x)")
                q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
                procs = [mp.Process(target=writer, args=(db, args.commits, locked, q)) for _ in range(n)]
                t = time.perf_counter()
                for proc in procs:
                    proc.start()
                for proc in procs:
                    proc.join()
                wall = time.perf_counter() - t
                rows = [q.get() for _ in procs]
                p50, p95, p99, mx = (sum(r[i] for r in rows) / n for i in range(4))
                mode = "lock" if locked else "busy"
                print(f"{n:>9} {mode:>5} {p50:>7.2f} {p95:>7.2f} {p99:>7.2f} {mx:>7.1f} {wall:>7.2f}")


if __name__ == "__main__":
    main()
