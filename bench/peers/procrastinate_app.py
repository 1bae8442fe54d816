"""Procrastinate side of the PostgreSQL benchmark (run by bench/.peers-venv/bin/python).

One task (Procrastinate has no steps, so only the one-step workload and the latency probe): deferred with
``defer_async`` (one call per job, ``--inflight`` concurrent callers) and drained by worker processes running
``App.run_worker_async`` (LISTEN/NOTIFY on, ``--concurrency`` jobs at once per process).
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import procrastinate
from _common import parser, produce, ready, report_latency

DEFAULT_CONCURRENCY = 50
DEFAULT_POLL = 5.0  # Procrastinate's default fetch_job_polling_interval (LISTEN/NOTIFY does the waking)


def make_app(url: str, pool_max: int) -> procrastinate.App:
    return procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=pool_max),
    )


app = make_app("postgresql:///unused", 10)  # replaced in main() before use; tasks are registered on it


@app.task(name="one")
async def one(i: int) -> int:
    return i


@app.task(name="lat")
async def lat(i: int, sent: float) -> None:
    report_latency(sent)


async def setup(url: str) -> None:
    with app.replace_connector(procrastinate.PsycopgConnector(conninfo=url)) as a:
        async with a.open_async():
            await a.schema_manager.apply_schema_async()


async def worker(url: str, concurrency: int, poll: float) -> None:
    conc = concurrency or DEFAULT_CONCURRENCY
    connector = procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=max(10, conc + 2))
    with app.replace_connector(connector) as a:
        async with a.open_async():
            ready()
            await a.run_worker_async(concurrency=conc, fetch_job_polling_interval=poll or DEFAULT_POLL,
                                     listen_notify=True, install_signal_handlers=True, wait=True)  # fmt: skip


async def _produce(args) -> None:  # type: ignore[no-untyped-def]
    connector = procrastinate.PsycopgConnector(conninfo=args.url, min_size=1, max_size=max(args.inflight, 2))
    task = one if args.kind == "one" else lat
    with app.replace_connector(connector) as a:
        async with a.open_async():

            async def send(i: int, sent: float | None) -> None:
                if sent is None:
                    await task.defer_async(i=i)
                else:
                    await task.defer_async(i=i, sent=sent)

            await produce(send, args.kind, args.n, args.inflight, args.gap)


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    if args.cmd == "setup":
        asyncio.run(setup(args.url))
    elif args.cmd == "worker":
        asyncio.run(worker(args.url, args.concurrency, args.poll))
    else:
        if args.kind == "ten":
            raise SystemExit("procrastinate has no steps: no ten-step workload")
        asyncio.run(_produce(args))


if __name__ == "__main__":
    main()
