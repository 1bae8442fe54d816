"""Send the events a web shop would, to the dev server's event API (as an HTTP handler does).

python examples/shop/send.py [--url http://127.0.0.1:8288] [--orders 10]
"""

from __future__ import annotations

import argparse
import json
import urllib.request


def post(url: str, events: list[dict[str, object]]) -> list[str]:
    req = urllib.request.Request(f"{url}/e/example", data=json.dumps(events).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return list(json.load(resp)["ids"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8288")
    p.add_argument("--orders", type=int, default=10)
    args = p.parse_args()
    paid = [{"name": "shop/order.paid", "data": {"order_id": n, "customer": f"c{n % 3}"}}
            for n in range(1, args.orders + 1)]  # fmt: skip
    post(args.url, paid)
    shipped = [{"name": "shop/order.shipped", "data": {"order_id": n}} for n in range(1, args.orders + 1, 2)]
    print(f"sent {len(paid)} orders; {len(shipped)} of them will be marked shipped in a few seconds")
    import time

    time.sleep(6)
    post(args.url, shipped)
    print(f"sent {len(shipped)} shipping confirmations")


if __name__ == "__main__":
    main()
