"""The example `scripts/example` runs: `stepline dev` with examples/shop in-process, fed by examples/shop/send.py."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from ..pg_cluster import free_port
from .servers import wait_for_health

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop"


def _runs(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/v1/runs?limit=100", timeout=5) as resp:
        return list(json.load(resp)["data"])


def test_the_example_server_runs_the_shop_app_and_shows_its_runs(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "STEPLINE_DB": str(tmp_path / "shop.db")}
    server = subprocess.Popen(
        [sys.executable, "-m", "stepline.cli.main", "dev", "--app", "app:client", "--app-dir", str(SHOP),
         "--port", str(port), "--host", "127.0.0.1", "--no-discovery"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_health(url, server)
        sent = subprocess.run([sys.executable, str(SHOP / "send.py"), "--url", url, "--orders", "6"],
                              capture_output=True, text=True, timeout=90, check=True)  # fmt: skip
        # Every promise it prints holds: orders 2 and 6 time out once and are retried, 5 fails its fraud check,
        # 1, 3 and 5 are shipped (their confirmations are sent once their runs wait for them), 2, 4, 6 are not.
        lines = sent.stdout.splitlines()
        assert lines[0].startswith("Sent 6 orders (shop/order.paid)") and "for order 5 and fails" in lines[0]
        assert lines[1].startswith("The card charge of orders 2, 6 times out once")
        assert lines[3].startswith("Sent 3 shipping confirmations (shop/order.shipped): orders 1, 3, 5 finish as "
                                   "'shipped' now; orders 2, 4, 6 finish as 'awaiting shipment'")  # fmt: skip
        assert lines[-1] == "All orders processed: 3 shipped (1, 3, 5), 3 awaiting shipment."
        runs = _runs(url)
        by = collections.Counter((r["function_id"], r["status"]) for r in runs)
        assert by[("shop-sync-crm", "Completed")] == 6 and by[("shop-fraud-check", "Failed")] == 1, by
        orders = {r["output"]["order"]: r["output"]["status"] for r in runs if r["function_id"] == "shop-process-order"}
        assert orders == {1: "shipped", 2: "awaiting shipment", 3: "shipped", 4: "awaiting shipment", 5: "shipped",
                          6: "awaiting shipment"}  # fmt: skip
        retried = [r for r in runs if r["function_id"] == "shop-process-order" and r["output"]["order"] in (2, 6)]
        for run in retried:
            with urllib.request.urlopen(f"{url}/v1/runs/{run['run_id']}/steps", timeout=5) as resp:
                steps = {s["name"]: s["attempts"] for s in json.load(resp)["data"]}
            assert steps["charge-card"] == 2
        (failed,) = [r for r in runs if r["status"] == "Failed"]
        assert "card country mismatch" in failed["error"]["message"]
        with urllib.request.urlopen(f"{url}/dashboard/runs", timeout=5) as resp:  # the dashboard lists them
            page = resp.read().decode()
        assert "shop-process-order" in page and "shop-fraud-check" in page
    finally:
        server.terminate()
        server.wait(timeout=20)
        if server.stderr:
            server.stderr.close()
