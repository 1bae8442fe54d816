"""The run page shows the run's log lines (level, time, step, message), also in its live part, and says that runs
of HTTP functions have none."""

from __future__ import annotations

import re
from typing import Any

from stepline import Context
from stepline.storage.records import FunctionRecord, RunFilter

from .conftest import Dash


async def test_run_page_shows_the_log_lines_of_the_run(dash: Dash) -> None:
    @dash.client.function(id="chatty", trigger="dash/chatty")
    async def chatty(ctx: Context) -> Any:
        ctx.logger.info("loading <cart> %s", ctx.event.data["key"])
        await ctx.step.run("charge", lambda: ctx.logger.warning("card needs 3-D Secure"))

    run_id = await dash.run_of(await dash.send("dash/chatty", {"key": "k1"}))
    for page in (await dash.page(f"/dashboard/runs/{run_id}"),
                 await dash.page(f"/dashboard/runs/{run_id}", headers={"X-Stepline-Fragment": "live"})):  # fmt: skip
        table = re.search(r'<table class="logs" id="run-logs">.*?</table>', page, re.S)
        assert table, page
        rows = re.findall(r'<tr class="log-(\w+)" data-seq="(\d+)">(.*?)</tr>', table.group(0), re.S)
        assert [(level, seq) for level, seq, _ in rows] == [("info", "1"), ("warning", "2")]
        first, second = rows[0][2], rows[1][2]
        assert "loading &lt;cart&gt; k1" in first and ">function<" in first and "stepline.fn.chatty" in first
        assert "<time data-ms=" in first
        assert "card needs 3-D Secure" in second and ">charge<" in second and ">WARNING<" in second


async def test_run_page_says_http_runs_have_no_captured_logs(dash: Dash) -> None:
    store = dash.client.store
    await store.register_functions("shop", [FunctionRecord(
        "shop-remote", "shop", "remote", "Remote", {"triggers": [{"event": "dash/remote"}], "runtime": "http"})],
        dash.clock.now_ms())  # fmt: skip
    await dash.client.engine.refresh_registry(force=True)  # PostgreSQL: checked every second otherwise
    await dash.client.send({"name": "dash/remote"})
    [run] = await store.list_runs(RunFilter(function_id="shop-remote"))
    page = await dash.page(f"/dashboard/runs/{run.id}")
    assert "Logs are not captured for runs of HTTP functions" in page
