"""DBOS Transact side of the PostgreSQL benchmark (run by bench/.peers-venv/bin/python).

Workflows are enqueued on a DBOS queue by a ``DBOSClient`` (one ``enqueue`` call per workflow, from
``--inflight`` threads) and dequeued by worker processes that each ``DBOS.launch()`` with the system database
on the benchmark's PostgreSQL. Each step is a ``@DBOS.step``, so DBOS checkpoints its output like Stepline does.

Knobs (environment, set by run_postgres.py): ``BENCH_DBOS_ASYNC=1`` uses ``async def`` workflows and steps
(default: plain ``def``, which DBOS runs on its thread pool). The queue's polling interval and per-process
concurrency come from ``setup --poll`` / ``--concurrency`` (stored with the queue in the system database).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import parser, produce, ready, report_latency
from dbos import DBOS, DBOSClient

APP = "bench"
VERSION = "bench-1"  # fixed, so client-enqueued workflows match the workers' version
QUEUE = "bench"
ASYNC = os.environ.get("BENCH_DBOS_ASYNC", "") == "1"
DEFAULT_CONCURRENCY = 200  # per process, like Stepline's worker default
DEFAULT_POLL = 1.0  # DBOS's default queue polling interval


@DBOS.step()
def noop(i: int) -> int:
    return i


@DBOS.workflow(name="one")
def one(i: int) -> int:
    return noop(i)


@DBOS.workflow(name="ten")
def ten(i: int) -> int:
    total = 0
    for k in range(10):
        total += noop(k)
    return total


@DBOS.workflow(name="lat")
def lat(i: int, sent: float) -> None:
    report_latency(sent)


@DBOS.step()
async def anoop(i: int) -> int:
    return i


@DBOS.workflow(name="one_a")
async def one_a(i: int) -> int:
    return await anoop(i)


@DBOS.workflow(name="ten_a")
async def ten_a(i: int) -> int:
    total = 0
    for k in range(10):
        total += await anoop(k)
    return total


@DBOS.workflow(name="lat_a")
async def lat_a(i: int, sent: float) -> None:
    report_latency(sent)


def config(url: str, executor_id: str) -> dict:  # type: ignore[type-arg]
    return {
        "name": APP,
        "system_database_url": url,
        "application_version": VERSION,
        "executor_id": executor_id,
        "log_level": "WARNING",
    }


def setup(url: str, concurrency: int, poll: float) -> None:
    DBOS(config=config(url, "setup"))  # type: ignore[arg-type]
    DBOS.launch()  # creates the system schema
    DBOS.register_queue(QUEUE, worker_concurrency=concurrency or DEFAULT_CONCURRENCY,
                        polling_interval_sec=poll or DEFAULT_POLL, on_conflict="always_update")  # fmt: skip
    DBOS.destroy()


def worker(url: str, index: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    DBOS(config=config(url, f"worker-{index}-{os.getpid()}"))  # type: ignore[arg-type]
    DBOS.launch()
    ready()
    stop.wait()
    DBOS.destroy(workflow_completion_timeout_sec=5)
    sys.stdout.flush()
    os._exit(0)


def _produce(args) -> None:  # type: ignore[no-untyped-def]
    client = DBOSClient(system_database_url=args.url, system_database_pool_size=max(args.inflight, 5))
    name = args.kind + ("_a" if ASYNC else "")
    options = {"workflow_name": name, "queue_name": QUEUE, "app_version": VERSION}
    pool = ThreadPoolExecutor(max_workers=max(args.inflight, 1))

    async def send(i: int, sent: float | None) -> None:
        params = (i,) if sent is None else (i, sent)
        await asyncio.get_running_loop().run_in_executor(pool, lambda: client.enqueue(options, *params))  # type: ignore[arg-type]

    try:
        asyncio.run(produce(send, args.kind, args.n, args.inflight, args.gap))
    finally:
        pool.shutdown()
        client.destroy()


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    if args.cmd == "setup":
        setup(args.url, int(os.environ.get("BENCH_CONCURRENCY", "0")), float(os.environ.get("BENCH_POLL", "0")))
    elif args.cmd == "worker":
        worker(args.url, args.index)
    else:
        _produce(args)


if __name__ == "__main__":
    main()
