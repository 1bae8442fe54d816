"""The example `scripts/example` runs: `stepline dev` with examples/shop in-process, fed by examples/shop/send.py."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..pg_cluster import free_port

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
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "the dev server did not start"
                time.sleep(0.1)
        sent = subprocess.run([sys.executable, str(SHOP / "send.py"), "--url", url, "--orders", "5"],
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        assert "sent 5 orders" in sent.stdout
        deadline = time.monotonic() + 30
        while True:
            runs = _runs(url)
            by = collections.Counter((r["function_id"], r["status"]) for r in runs)
            if by[("shop-sync-crm", "Completed")] == 5 and by[("shop-fraud-check", "Failed")] == 1:
                break
            assert time.monotonic() < deadline, by
            time.sleep(0.2)
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
