"""Screenshots of the dashboard's main pages into ``docs/screenshots/`` (run by ``scripts/screenshots``).

Starts ``stepline dev`` on a scratch database with the dashboard tests' functions in-process
(``tests/dashboard/dash_app.py``), sends a few events (runs that complete, fail, get rerun from their failed step,
and sleep), and photographs each page with Debian's chromium through Playwright, at laptop and phone sizes::

    .venv/bin/python bench/dashboard_screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "tests" / "dashboard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(what: str, probe: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stepline = Path(sys.executable).with_name("stepline")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPLINE_", "INNGEST_"))}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(stepline), "dev", "--host", "127.0.0.1", "--port", str(port), "--no-discovery", "--db",
               f"{tmp}/stepline.db", "--app", "dash_app:client", "--app-dir", str(APP_DIR)]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with httpx.Client(base_url=url, timeout=10) as http:
                shoot(http, url, out, args.chromium)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(15)


def shoot(http: httpx.Client, url: str, out: Path, chromium: str) -> None:
    def healthy() -> bool:
        try:
            return http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    wait("the server", healthy)

    def send(name: str, data: dict[str, Any]) -> str:
        event_id: str = http.post("/e/key", json={"name": name, "data": data}).json()["ids"][0]
        return event_id

    def run_of(event_id: str) -> dict[str, Any]:
        runs = wait("a run", lambda: http.get(f"/v1/events/{event_id}/runs").json()["data"])
        return dict(runs[0])

    def ended(run_id: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            run: dict[str, Any] = http.get(f"/v1/runs/{run_id}").json()["data"]
            return run if run["status"] in ("Completed", "Failed", "Cancelled") else None

        return dict(wait("a run to end", probe))

    for name in ("ada", "grace", "linus"):
        ended(run_of(send("dash/greet", {"name": name}))["run_id"])
    failed = ended(run_of(send("dash/checkout", {"key": "order-1042"}))["run_id"])["run_id"]
    ended(run_of(send("dash/checkout", {"key": "order-1043"}))["run_id"])
    steps = http.get(f"/v1/runs/{failed}/steps").json()["data"]
    charge = next(s["id"] for s in steps if s["name"] == "charge")
    rerun = http.post(f"/v1/runs/{failed}/rerun", json={"from_step": charge}).json()["data"]["run_id"]
    ended(rerun)
    sleeping = run_of(send("dash/nap", {"reason": "wait an hour before the reminder"}))["run_id"]
    wait("the nap to sleep", lambda: http.get(f"/v1/runs/{sleeping}").json()["data"]["idle_reason"])
    event_id = send("dash/greet", {"name": "margaret"})
    ended(run_of(event_id)["run_id"])
    retried = ended(run_of(send("dash/rates", {"key": "eur-usd"}))["run_id"])["run_id"]  # two failed attempts

    pages = [
        ("runs", "/dashboard/runs"),
        ("run-failed", f"/dashboard/runs/{failed}"),
        ("run-rerun", f"/dashboard/runs/{rerun}"),
        ("run-sleeping", f"/dashboard/runs/{sleeping}"),
        ("run-retried", f"/dashboard/runs/{retried}"),
        ("charts", "/dashboard/charts"),
        ("functions", "/dashboard/functions"),
        ("function", "/dashboard/functions/dash-checkout"),
        ("events", "/dashboard/events"),
        ("event", f"/dashboard/events/{event_id}"),
        ("apps", "/dashboard/apps"),
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            laptop = browser.new_page(viewport={"width": 1280, "height": 800})
            for name, path in pages:
                laptop.goto(url + path)
                laptop.wait_for_selector("#live-status.on, #live-status.off", timeout=5000)
                laptop.screenshot(path=str(out / f"{name}.png"), full_page=name != "runs")
                print(f"wrote {out / f'{name}.png'}")
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            for name, path in (("phone-runs", "/dashboard/runs"), ("phone-run", f"/dashboard/runs/{retried}"),
                               ("phone-charts", "/dashboard/charts")):  # fmt: skip
                phone.goto(url + path)
                phone.screenshot(path=str(out / f"{name}.png"))
                print(f"wrote {out / f'{name}.png'}")
            dark = browser.new_page(viewport={"width": 1280, "height": 800}, color_scheme="dark")
            dark.goto(url + f"/dashboard/runs/{retried}")
            dark.screenshot(path=str(out / "run-retried-dark.png"), full_page=True)
            print(f"wrote {out / 'run-retried-dark.png'}")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
