#!/usr/bin/env python
"""Realtime: publish-to-subscriber latency and messages/s, on SQLite and PostgreSQL, same node and across nodes (a
benchmark, not a test).

    .venv/bin/python bench/run_realtime.py                       # both backends, default sizes (~1 min)
    .venv/bin/python bench/run_realtime.py --backends sqlite --messages 5000 --samples 500
    .venv/bin/python bench/run_realtime.py --url postgresql://user@host:5432/postgres   # an existing server

Same node: the publisher and the subscriber share one hub (the message is stored, then handed to the subscriber's
queue). Across nodes: two stores, engines and hubs on one database (SQLite: what two processes of one machine do,
the subscriber's hub reading the table when ``data_version`` moves, every 5 ms; PostgreSQL: what two nodes do, the
storing transaction's NOTIFY), in this one process so one clock times both ends.

Latency: one message at a time after a 1-3 ms pause; publish call to the subscriber's ``get``; p50/p99.
Throughput: ``--publishers`` concurrent publishers, ``--messages`` in all, each publish awaited (its own write; the
group-commit writer batches them), a subscriber draining; messages/s from the first publish to the last receipt.

PostgreSQL: by default a throwaway cluster from tests/pg_cluster.py (fsync off: it measures the mechanism, not the
disk). SQLite: synchronous=FULL, the default. The machine is often shared: the header prints the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from stepline.realtime.hub import RealtimeHub, Subscription  # noqa: E402
from stepline.realtime.messages import new_message  # noqa: E402
from stepline.storage.base import Store  # noqa: E402
from stepline.storage.postgres.store import PostgresStore  # noqa: E402
from stepline.storage.sqlite.store import SQLiteStore  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hub_of(store: Store, big: int) -> RealtimeHub:
    from stepline.core.clock import SystemClock

    return RealtimeHub(store, SystemClock(), max_messages=big, max_bytes=1 << 30)


async def latency(pub: RealtimeHub, sub: Subscription, samples: int, rng: random.Random) -> dict[str, float]:
    lat: list[float] = []
    for i in range(samples):
        await asyncio.sleep(rng.uniform(0.001, 0.003))
        t = time.perf_counter()
        await pub.publish([new_message("bench", "lat", {"i": i}, int(time.time() * 1000))])
        d = await asyncio.wait_for(sub.get(), 10)
        lat.append((time.perf_counter() - t) * 1000)
        assert d is not None and d.message().data == {"i": i}, d
    return {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": max(lat)}


async def throughput(pub: RealtimeHub, sub: Subscription, messages: int, publishers: int) -> dict[str, float]:
    per = messages // publishers
    total = per * publishers

    async def publisher(k: int) -> None:
        for i in range(per):
            await pub.publish([new_message("bench", "tput", {"k": k, "i": i}, int(time.time() * 1000))])

    async def drain() -> float:
        for _ in range(total):
            await asyncio.wait_for(sub.get(), 30)
        return time.perf_counter()

    t0 = time.perf_counter()
    receiving = asyncio.create_task(drain())
    await asyncio.gather(*(publisher(k) for k in range(publishers)))
    t_sent = time.perf_counter()
    t_done = await receiving
    return {"messages": total, "msgs_per_s": total / (t_done - t0), "publish_s": t_sent - t0}


async def scenario(make: Any, cross: bool, args: argparse.Namespace) -> dict[str, Any]:
    big = args.messages + args.samples + 10
    a = make()
    await a.open()
    b = make() if cross else a
    if cross:
        await b.open()
    try:
        pub, subscriber_hub = hub_of(a, big), None
        subscriber_hub = hub_of(b, big) if cross else pub
        lat_sub = await subscriber_hub.subscribe([("bench", "lat")])
        tput_sub = await subscriber_hub.subscribe([("bench", "tput")])
        await asyncio.sleep(0.5)  # PostgreSQL: the listening connection is up
        res: dict[str, Any] = await latency(pub, lat_sub, args.samples, random.Random(args.seed))
        res.update(await throughput(pub, tput_sub, args.messages, args.publishers))
        subscriber_hub.close()
        return res
    finally:
        await a.close()
        if cross:
            await b.close()


async def main_async(args: argparse.Namespace) -> None:
    print(f"Stepline realtime - {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    la = os.getloadavg()
    print(f"machine : {os.cpu_count()} CPUs, load average at start {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} "
          "(the machine is shared: figures move with it)")  # fmt: skip
    print(f"sizes   : {args.samples} latency samples, {args.messages} messages from {args.publishers} publishers\n")
    hdr = (f"{'backend':<9} {'where':<12} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} | {'messages':>8} {'msgs/s':>7} "
           f"{'publish s':>9}")  # fmt: skip
    print(hdr)
    print("-" * len(hdr))
    tmp = tempfile.TemporaryDirectory(prefix="stepline-bench-realtime-", dir=args.dir)
    for backend in args.backends.split(","):
        if backend == "sqlite":
            path = Path(tmp.name) / "rt.db"

            def make(path: Path = path) -> Store:
                return SQLiteStore(path)

        else:
            url = args.url
            if url is None:
                from tests.pg_cluster import get_cluster

                cluster = get_cluster()
                if cluster is None:
                    print(f"{backend:<9} skipped: PostgreSQL is not installed")
                    continue
                url = cluster.create_database()
            else:
                import psycopg

                name = f"stepline_rt_{os.getpid()}"
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {name}")
                url = url.rsplit("/", 1)[0] + f"/{name}"

            def make(url: str = url) -> Store:
                return PostgresStore(url)

        for cross in (False, True):
            res = await scenario(make, cross, args)
            where = "across nodes" if cross else "same node"
            print(f"{backend:<9} {where:<12} {res['p50_ms']:>7.2f} {res['p99_ms']:>7.2f} {res['max_ms']:>7.2f} | "
                  f"{res['messages']:>8} {res['msgs_per_s']:>7.0f} {res['publish_s']:>9.2f}", flush=True)  # fmt: skip
    tmp.cleanup()
    la = os.getloadavg()
    print(f"\nload average at end {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--samples", type=int, default=300, help="latency samples per scenario (300)")
    p.add_argument("--messages", type=int, default=3000, help="messages in the throughput part (3000)")
    p.add_argument("--publishers", type=int, default=20, help="concurrent publishers (20)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--url", help="an existing PostgreSQL server's maintenance database (CREATE DATABASE allowed)")
    p.add_argument("--dir", default=None, help="directory of the SQLite database (default: system temp)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
