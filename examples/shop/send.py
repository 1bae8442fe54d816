"""Send the events a web shop would, to the dev server's event API (as an HTTP handler does), and say what
they do as it happens.

python examples/shop/send.py [--url http://127.0.0.1:8288] [--orders 10] [--wait-ready SECONDS]

With ``--wait-ready``, it first waits for the server to answer (``scripts/example`` starts the server and
this script at once) and prints the dashboard's address as soon as it does. Every promise it prints is
checked before it is printed, or is what it then waits for: the shipping confirmations are sent only once
those orders' runs wait for them (a ``wait_for_event`` sees only events sent after it began).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from app import FLAKY_ORDERS  # examples/shop/app.py: the orders whose first card charge times out

WAIT_DEADLINE_S = 60.0  # a run still short of its shipping wait after this says so and is not shipped


def post(url: str, events: list[dict[str, object]]) -> list[str]:
    req = urllib.request.Request(f"{url}/e/example", data=json.dumps(events).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return list(json.load(resp)["ids"])


def get(url: str, path: str) -> Any:
    with urllib.request.urlopen(f"{url}{path}", timeout=10) as resp:
        return json.load(resp)


def wait_ready(url: str, timeout: float) -> float:
    """Seconds until ``GET /health`` answered; exits 1 if it did not within ``timeout``."""
    start = time.monotonic()
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).close()
            return time.monotonic() - start
        except OSError:
            if time.monotonic() - start > timeout:
                sys.exit(f"the server at {url} did not answer within {timeout:.0f} s")
            time.sleep(0.05)


def process_order_run(url: str, event_id: str) -> dict[str, Any] | None:
    runs = get(url, f"/v1/events/{event_id}/runs")["data"]
    return next((r for r in runs if r["function_id"] == "shop-process-order"), None)


def is_waiting(run: dict[str, Any] | None) -> bool:
    return run is not None and (run.get("idle_reason") or {}).get("kind") == "waiting"


def orders(numbers: list[int]) -> str:
    """``order 5``, ``orders 1, 3, 5`` or ``no orders``."""
    if not numbers:
        return "no orders"
    return ("order " if len(numbers) == 1 else "orders ") + ", ".join(str(n) for n in numbers)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8288")
    p.add_argument("--orders", type=int, default=10)
    p.add_argument("--wait-ready", type=float, default=0.0, metavar="SECONDS",
                   help="Wait up to this long for the server to answer first.")  # fmt: skip
    p.add_argument("--started-at", type=float, default=None, metavar="UNIX_TIME",
                   help="When the caller started, to say how long it took to be ready.")  # fmt: skip
    args = p.parse_args()
    url = args.url.rstrip("/")
    if args.wait_ready:
        took = wait_ready(url, args.wait_ready)
        if args.started_at is not None:
            took = time.time() - args.started_at
        print(f"Stepline dev server ready in {took:.1f} s. Dashboard: {url}/", flush=True)

    numbers = list(range(1, args.orders + 1))
    paid = [{"name": "shop/order.paid", "data": {"order_id": n, "customer": f"c{n % 3}"}} for n in numbers]
    event_ids = dict(zip(numbers, post(url, paid), strict=True))
    fraud = [n for n in numbers if n % 5 == 0]
    flaky = [n for n in numbers if n in FLAKY_ORDERS]
    print(f"Sent {len(paid)} orders (shop/order.paid): each starts process-order and sync-crm; "
          f"fraud-check also runs for {orders(fraud)} and fails on purpose.")  # fmt: skip
    if flaky:
        print(f"The card charge of {orders(flaky)} times out once: that step is retried 2-3 s later.")

    to_ship = numbers[::2]
    print(f"{orders(to_ship).capitalize()} will be shipped: waiting until their runs wait for the shipping event...",
          flush=True)  # fmt: skip
    waiting: list[int] = []
    deadline = time.monotonic() + WAIT_DEADLINE_S
    while len(waiting) < len(to_ship) and time.monotonic() < deadline:
        waiting = [n for n in to_ship if is_waiting(process_order_run(url, event_ids[n]))]
        time.sleep(0.2)
    late = [n for n in to_ship if n not in waiting]
    if late:
        print(f"{orders(late).capitalize()} did not reach their shipping wait within {WAIT_DEADLINE_S:.0f} s: "
              "they are not shipped (see their runs on the dashboard).")  # fmt: skip
    post(url, [{"name": "shop/order.shipped", "data": {"order_id": n}} for n in waiting])
    unshipped = [n for n in numbers if n not in waiting]
    print(f"Sent {len(waiting)} shipping confirmations (shop/order.shipped): {orders(waiting)} finish as "
          f"'shipped' now; {orders(unshipped)} finish as 'awaiting shipment' when their 20 s wait times out.",
          flush=True)  # fmt: skip

    outcome: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while len(outcome) < len(numbers) and time.monotonic() < deadline:
        for n in numbers:
            run = process_order_run(url, event_ids[n])
            if run is not None and run["status"] == "Completed":
                outcome[n] = run["output"]["status"]
        time.sleep(0.5)
    shipped = sorted(n for n, status in outcome.items() if status == "shipped")
    if len(outcome) < len(numbers):
        print(f"{len(numbers) - len(outcome)} orders are still being processed (see the dashboard).")
    else:
        print(f"All orders processed: {len(shipped)} shipped ({', '.join(map(str, shipped))}), "
              f"{len(outcome) - len(shipped)} awaiting shipment.")  # fmt: skip


if __name__ == "__main__":
    try:
        main()
    except urllib.error.URLError as exc:
        sys.exit(f"cannot reach the Stepline server: {exc.reason}")
    except KeyboardInterrupt:
        sys.exit(130)
