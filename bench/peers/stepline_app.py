"""The Stepline side of the peer benchmarks (run by the project's interpreter), on PostgreSQL or SQLite.

Workers are the real CLI: ``python -m stepline.cli.main worker stepline_app:client --app-dir bench/peers
--db URL`` (see ``bench/run_postgres.py``). This script only creates the schema and produces events:

    python bench/peers/stepline_app.py setup --url postgresql://...
    python bench/peers/stepline_app.py produce --url postgresql://... --kind one --n 5000 --inflight 50
    python bench/peers/stepline_app.py produce --url /tmp/bench.db --kind one --n 5000 --inflight 1   # SQLite
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import parser, produce, report_latency

from stepline import Stepline
from stepline.storage import store_from_url

# The CLI's --db replaces this store before the client is used.
client = Stepline("bench", os.environ.get("STEPLINE_DB") or "postgresql://127.0.0.1/stepline_bench")


async def noop(i: int) -> int:
    return i


@client.function(id="one", trigger="bench/one")
async def one(ctx):  # type: ignore[no-untyped-def]
    return await ctx.step.run("s", noop, ctx.event.data["i"])


@client.function(id="ten", trigger="bench/ten")
async def ten(ctx):  # type: ignore[no-untyped-def]
    total = 0
    for k in range(10):
        total += await ctx.step.run(f"s{k}", noop, k)
    return total


@client.function(id="lat", trigger="bench/lat")
async def lat(ctx):  # type: ignore[no-untyped-def]
    report_latency(ctx.event.data["sent"])
    return None


async def _setup(url: str) -> None:
    """The schema and this app's functions (so that events sent before any worker starts already start runs)."""
    client.use_store(store_from_url(url, migrate=True))
    await client.ready()
    await client.close()


async def _produce(args) -> None:  # type: ignore[no-untyped-def]
    sender = Stepline("bench-producer", args.url)  # no functions: it only sends
    await sender.ready()
    name = f"bench/{args.kind}"

    async def send(i: int, sent: float | None) -> None:
        data = {"i": i} if sent is None else {"i": i, "sent": sent}
        await sender.send({"name": name, "data": data})

    try:
        await produce(send, args.kind, args.n, args.inflight, args.gap)
    finally:
        await sender.close()


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    if args.cmd == "setup":
        asyncio.run(_setup(args.url))
    elif args.cmd == "produce":
        asyncio.run(_produce(args))
    else:
        raise SystemExit("workers run through the CLI: python -m stepline.cli.main worker stepline_app:client ...")


if __name__ == "__main__":
    main()
