"""How fast the Events page and ``GET /v1/events`` answer with a million runs in a SQLite store (a benchmark, not a
test).

Inserts ``--runs`` runs (default 1,000,000) straight into a fresh SQLite database with SQL, each with its own
trigger event (``bench/0`` .. ``bench/9``) and, for the 99% that ended, the ``stepline/function.finished`` event the
engine stores at a run's end (about 2,000,000 events, interleaved as the engine writes them), plus one ``rare/event``
stored first (the oldest). Then times whole pages (HTTP request to rendered HTML or JSON, in-process): the default
page (internal events hidden), with them, name searches (exact, prefix, pattern) and a deep cursor::

    .venv/bin/python bench/run_events_page.py                 # 1,000,000 runs (a few minutes to insert)
    .venv/bin/python bench/run_events_page.py --runs 100000
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
from run_dashboard import _create, ulid  # bench/ is the script's folder: its sibling's helpers

from stepline.core.engine import Engine
from stepline.server.app import create_app
from stepline.server.config import ServerConfig
from stepline.storage.records import FunctionRecord
from stepline.storage.sqlite.store import SQLiteStore

DAY_MS = 24 * 3600 * 1000
EVENT_SQL = (
    "INSERT INTO events (internal_id, id, name, data, user, ts, v, received_at) VALUES (?, ?, ?, ?, '{}', ?, NULL, ?)"
)
RUN_SQL = ("INSERT INTO runs (id, function_id, event_id, status, output, error, created_at, started_at, ended_at) "
           "VALUES (?, ?, ?, ?, 'null', NULL, ?, ?, ?)")  # fmt: skip


def fill(path: Path, n: int, now: int) -> list[str]:
    rng = random.Random(7)
    start = now - 30 * DAY_MS
    step = (30 * DAY_MS) / n
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    rare = ulid(start - 1, rng.getrandbits(80))
    conn.execute(EVENT_SQL, (rare, rare, "rare/event", "{}", start - 1, start - 1))
    events, runs, ids = [], [], []
    for i in range(n):
        created = int(start + i * step)
        kind = i % 10
        event_id = ulid(created, rng.getrandbits(80))
        ids.append(event_id)
        events.append((event_id, event_id, f"bench/{kind}", f'{{"i":{i}}}', created, created))
        run_id = ulid(created, rng.getrandbits(80))
        ended = None if rng.random() < 0.01 else created + rng.randint(5, 5000)
        runs.append((run_id, f"app-fn{kind}", event_id, "running" if ended is None else "completed", created,
                     created, ended))  # fmt: skip
        if ended is not None:
            done = ulid(ended, rng.getrandbits(80))
            events.append((done, done, "stepline/function.finished", f'{{"run_id":"{run_id}"}}', ended, ended))
        if len(runs) == 50_000:
            conn.executemany(EVENT_SQL, events)
            conn.executemany(RUN_SQL, runs)
            events.clear()
            runs.clear()
    conn.executemany(EVENT_SQL, events)
    conn.executemany(RUN_SQL, runs)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return ids


async def measure(path: Path, ids: list[str], repeat: int) -> list[tuple[str, float, float, int]]:
    store = SQLiteStore(path, synchronous="OFF")
    await store.open()
    engine = Engine(store)
    records = [FunctionRecord(f"app-fn{k}", "app", f"fn{k}", f"Function {k}", {"triggers": [{"event": f"bench/{k}"}]})
               for k in range(10)]  # fmt: skip
    await engine.register("app", records)
    app = create_app(engine, ServerConfig(discovery=False, poll=False))
    deep = ids[len(ids) // 2]
    cases = [
        ("events page (internal hidden)", "/dashboard/events"),
        ("events page with internal events", "/dashboard/events?internal=1"),
        ("events page, prefix bench/ (dense)", "/dashboard/events?name=bench/"),
        ("events page, exact-name prefix bench/3", "/dashboard/events?name=bench/3"),
        ("events page, pattern */3", "/dashboard/events?name=*/3"),
        ("events page, page at the middle (cursor)", f"/dashboard/events?before={deep}"),
        ("events page, prefix rare/ (1 event, the oldest)", "/dashboard/events?name=rare/"),
        ("GET /v1/events (internal hidden)", "/v1/events?limit=100"),
        ("GET /v1/events?name=bench/3 (exact)", "/v1/events?name=bench/3&limit=100"),
        ("GET /v1/events?name=bench/* (pattern)", "/v1/events?name=bench/*&limit=100"),
    ]
    out = []
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://localhost") as http:
            for name, url in cases:
                times = []
                rows = 0
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    resp = await http.get(url)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert resp.status_code == 200, (url, resp.status_code, resp.text[:300])
                    rows = resp.text.count("<tr data-event-id=") or resp.text.count('"internal_id"')
                out.append((name, statistics.median(times), max(times), rows))
    await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stepline.db"
        asyncio.run(_create(path))
        now = int(time.time() * 1000)
        t0 = time.perf_counter()
        ids = fill(path, args.runs, now)
        print(f"inserted {args.runs:,} runs and their events in {time.perf_counter() - t0:.1f} s "
              f"({path.stat().st_size / 1e6:.0f} MB)")  # fmt: skip
        results = asyncio.run(measure(path, ids, args.repeat))
    print(f"\n| page ({args.runs:,} runs, ~{2 * args.runs:,} events, SQLite) | median ms | max ms | rows |\n"
          "| --- | ---: | ---: | ---: |")  # fmt: skip
    for name, median, worst, rows in results:
        print(f"| {name} | {median:.1f} | {worst:.1f} | {rows} |")


if __name__ == "__main__":
    main()
