"""pgqueuer side of the PostgreSQL queue benchmark (run by the peers' venv; see bench/run_queue.py).

One entrypoint (pgqueuer has no steps): enqueued by ``Queries.enqueue`` (one call per job, on one psycopg
connection) and drained by worker processes running ``PgQueuer.run`` (LISTEN/NOTIFY, ``--concurrency`` jobs at
once per process). A finished job is moved to ``pgqueuer_log`` with status ``successful``: the benchmark counts
those rows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg
from _common import parser, produce, ready, report_latency
from pgqueuer import PgQueuer
from pgqueuer.db import PsycopgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

DEFAULT_CONCURRENCY = 50


async def connect(url: str) -> psycopg.AsyncConnection:  # type: ignore[type-arg]
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def setup(url: str) -> None:
    async with await connect(url) as conn:
        await Queries(PsycopgDriver(conn)).install()


async def worker(url: str, concurrency: int) -> None:
    async with await connect(url) as conn:
        pgq = PgQueuer(PsycopgDriver(conn))

        @pgq.entrypoint("one")
        async def one(job: Job) -> None:
            return None

        @pgq.entrypoint("lat")
        async def lat(job: Job) -> None:
            report_latency(float((job.payload or b"0").decode()))

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
        ready()
        await pgq.run(batch_size=10, max_concurrent_tasks=concurrency or DEFAULT_CONCURRENCY)


async def _produce(args) -> None:  # type: ignore[no-untyped-def]
    async with await connect(args.url) as conn:
        queries = Queries(PsycopgDriver(conn))

        async def send(i: int, sent: float | None) -> None:
            if sent is None:
                await queries.enqueue("one", str(i).encode())
            else:
                await queries.enqueue("lat", repr(sent).encode())

        await produce(send, args.kind, args.n, args.inflight, args.gap)


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    if args.cmd == "setup":
        asyncio.run(setup(args.url))
    elif args.cmd == "worker":
        asyncio.run(worker(args.url, args.concurrency))
    else:
        if args.kind == "ten":
            raise SystemExit("pgqueuer has no steps: no ten-step workload")
        asyncio.run(_produce(args))


if __name__ == "__main__":
    main()
