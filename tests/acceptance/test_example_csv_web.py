"""The CSV example's web page (examples/csv_bulk/web.py) in Debian's chromium, driven by Playwright: upload the sample
CSV, get 202 and a job id, watch the progress bar move from the job's realtime messages (published by the page's own
worker process, delivered by a separate ``stepline dev`` process on the same SQLite database), then the result with
the rows that failed.

Skipped only when chromium is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..serving.harness import Server, free_port, wait_for

CHROMIUM = os.environ.get("STEPLINE_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)",
                allow_module_level=True)  # fmt: skip

from playwright.sync_api import expect, sync_playwright  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "csv_bulk"
TIMEOUT_MS = 20_000


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    server = Server(workdir=tmp_path, app_urls=[]).start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPLINE_", "CSV_BULK_"))}
    env.update(STEPLINE_DB=str(tmp_path / f"s-{server.port}.db"), CSV_BULK_DB=str(tmp_path / "app.db"),
               STEPLINE_BACKOFF_SCALE="0.01")  # fmt: skip
    log = (tmp_path / "web.log").open("wb")
    web = subprocess.Popen([sys.executable, str(EXAMPLE / "web.py"), "--port", str(port), "--stepline-url",
                            server.url, "--crm-latency", "0.03"], env=env, stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert web.poll() is None, (tmp_path / "web.log").read_text()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url).status_code == 200
        return False

    try:
        wait_for("the example's page", up, timeout=30)
        yield server, url
    finally:
        web.terminate()
        web.wait(10)
        log.close()
        server.stop()


def test_upload_then_live_progress_then_the_failed_rows(stack: tuple[Server, str]) -> None:
    server, url = stack
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(url)
            page.set_input_files("#file", str(EXAMPLE / "sample.csv"))
            with page.expect_response("**/jobs") as answer:
                page.click("#upload")
            assert answer.value.status == 202, problems
            expect(page.locator("#status")).to_contain_text("Accepted (202): job job-")
            expect(page.locator("#outcome")).to_have_text("Done")
            expect(page.locator("#bar")).to_have_attribute("value", "100")
            expect(page.locator("#summary")).to_have_text("40 rows: 38 imported, 2 failed.")
            failed = page.locator("#failed tbody tr")
            expect(failed).to_have_count(2)
            expect(page.locator('#failed tr[data-row="7"]')).to_contain_text("is not a valid address")
            expect(page.locator('#failed tr[data-row="31"]')).to_contain_text("'twelve dollars' is not a number")
            seen = page.evaluate("window.progressLog")
            assert not problems, problems
        finally:
            browser.close()
    # Every batch's message, in order and once, from the first (published before the page subscribed: replayed).
    assert seen == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    runs = server.rest("/v1/runs?function_id=csv-bulk-process-csv")
    assert [r["status"] for r in runs] == ["Completed"]
