#!/usr/bin/env python
"""CPU per event of the send path's planning: validation, trigger matching, keys (a benchmark, not a test).

What ``client.send`` / ``POST /e`` spend before the store's write, on one realistic registry: five functions on
``shop/order`` (one plain, one with a CEL ``if``, one with a concurrency key, one with an idempotency expression, one
with both a throttle key and an ``if``) and two on other names. Measured as CPU time of this process
(``time.process_time``), not wall time, so other work on a shared machine skews it little; the median of the
rounds is printed.

    .venv/bin/python bench/plan_ingest_cpu.py                 # the code of this checkout
    PYTHONPATH=other/src .venv/bin/python other/bench/plan_ingest_cpu.py   # another checkout, to compare

Compare two checkouts by alternating them in one session (``--rounds`` each, several times).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from stepline import Concurrency, Stepline, Throttle  # noqa: E402


def define(client: Stepline) -> None:
    async def handler(ctx: Any) -> None:
        return None

    client.function(id="plain", trigger="shop/order")(handler)
    client.function(id="big", trigger={"event": "shop/order", "if": "event.data.amount > 100"})(handler)
    client.function(id="per-user", trigger="shop/order", concurrency=Concurrency(limit=2, key="event.data.user"))(
        handler
    )
    client.function(id="once", trigger="shop/order", idempotency="event.data.order_id")(handler)
    client.function(id="vip", trigger={"event": "shop/order", "if": "event.data.tier == 'vip'"},
                    throttle=Throttle(limit=10, period="1s", key="event.data.user"))(handler)  # fmt: skip
    client.function(id="refund", trigger="shop/refund")(handler)
    client.function(id="audit", trigger="audit/*")(handler)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        client = Stepline("bench", Path(tmp) / "b.db")
        define(client)
        await client.ready()
        engine = client.engine
        event = {"name": "shop/order", "data": {"order_id": 1, "user": "u-42", "amount": 250, "tier": "gold",
                                                 "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}],
                                                 "address": {"city": "Lyon", "zip": "69001"}}}  # fmt: skip
        for _ in range(200):  # warm caches
            await engine.plan_ingest(event)
        per_event: list[float] = []
        for _ in range(args.rounds):
            started = time.process_time()
            for i in range(args.events):
                event["data"]["order_id"] = i
                await engine.plan_ingest(event)
            per_event.append((time.process_time() - started) / args.events * 1e6)
        await client.close()
    print(f"plan_ingest CPU per event: median {statistics.median(per_event):.1f} us "
          f"(rounds {', '.join(f'{x:.1f}' for x in per_event)}) [{ROOT.name}]")  # fmt: skip


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(p.parse_args()))
