"""huey side of the SQLite queue benchmark (run by the peers' venv; see bench/run_queue.py).

One task (huey has no steps): enqueued by calling it (one call per job, a ``SqliteHuey`` with ``fsync=True``,
that is ``synchronous=FULL`` in WAL mode, as Stepline's default) and drained by consumer processes
(``huey.create_consumer``, thread workers). A task's result is stored in huey's ``kv`` table when it
completes: the benchmark counts those rows. The consumer polls (huey has no notifications): its first delay
and its ceiling come from ``worker --poll`` (default 10 ms, backing off to at most 50 ms, much faster than
huey's defaults of 100 ms up to 10 s, which would only make huey look slower).
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import parser, produce, ready, report_latency
from huey import SqliteHuey

DEFAULT_WORKERS = 4  # threads per consumer process
DEFAULT_POLL = 0.01


def make_huey(path: str) -> SqliteHuey:
    return SqliteHuey("bench", filename=path, fsync=True, journal_mode="wal", timeout=30)


huey = make_huey(os.environ.get("BENCH_HUEY_DB") or ":memory:")  # replaced in main() before use


@huey.task(name="one")
def one(i: int) -> int:
    return i


@huey.task(name="lat")
def lat(i: int, sent: float) -> None:
    report_latency(sent)


def bind(path: str) -> None:
    """Point the module's huey (and its tasks) at the benchmark's file."""
    fresh = make_huey(path)
    huey.storage = fresh.storage


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    bind(args.url)
    if args.cmd == "setup":
        huey.storage.enqueued_items()  # opens the file and creates the tables
    elif args.cmd == "worker":
        poll = args.poll or DEFAULT_POLL
        consumer = huey.create_consumer(workers=args.concurrency or DEFAULT_WORKERS, worker_type="thread",
                                        initial_delay=poll, backoff=1.15, max_delay=5 * poll,
                                        periodic=False, graceful_signal="TERM")  # fmt: skip
        ready()
        consumer.run()
    else:
        if args.kind == "ten":
            raise SystemExit("huey has no steps: no ten-step workload")

        async def send(i: int, sent: float | None) -> None:
            if sent is None:
                one(i)
            else:
                lat(i, sent)

        asyncio.run(produce(send, args.kind, args.n, args.inflight, args.gap))


if __name__ == "__main__":
    main()
