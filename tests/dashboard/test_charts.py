"""The charts page: server-rendered SVG of the run statistics, whose values match the store after a known workload."""

from __future__ import annotations

import re

from stepline.server.dashboard.charts import quantile
from stepline.storage.sql_stats import BOUNDS_MS, BUCKETS

from ..integration.helpers import advance
from .conftest import Dash


def _totals(page: str, chart: str) -> dict[str, str]:
    figure = re.search(rf'<figure class="chart" id="chart-{chart}".*?</figure>', page, re.S)
    assert figure, f"no chart {chart!r}"
    return dict(re.findall(r'data-series="(\w+)".*?data-total="([^"]*)"', figure.group(0), re.S))


def test_quantiles_interpolate_inside_their_bucket() -> None:
    counts = [0] * BUCKETS
    counts[9] = 10  # 10 runs between 500 ms and 1 s
    assert quantile(counts, 0.5) == 750.0 and quantile(counts, 0.99) == 995.0
    assert quantile([0] * BUCKETS, 0.5) is None
    counts[BUCKETS - 1] = 1000  # past the last bound: reported as that bound
    assert quantile(counts, 0.99) == float(BOUNDS_MS[-1])


async def test_the_charts_count_the_runs_of_a_known_workload(dash: Dash) -> None:
    for i in range(3):
        await dash.send("dash/greet", {"name": f"g{i}"})
    for i in range(2):
        await dash.send("dash/checkout", {"key": f"c{i}"})  # each fails its first run
    await dash.send("dash/nap")  # started, not ended
    await advance(dash.client, dash.clock, 1)
    page = await dash.page("/dashboard/charts")
    assert _totals(page, "runs") == {"started": "6.0", "completed": "3.0", "failed": "2.0"}
    assert 'class="series c-started"' in page and "<svg" in page
    durations = _totals(page, "duration")
    assert set(durations) == {"p50", "p95", "p99"} and all(durations.values())  # 5 ended runs
    greet = await dash.page("/dashboard/charts?function_id=test-app-greet&range=24h")
    assert _totals(greet, "runs") == {"started": "3.0", "completed": "3.0", "failed": "0.0"}
    week = await dash.page("/dashboard/charts?range=7d")
    assert _totals(week, "runs") == {"started": "6.0", "completed": "3.0", "failed": "2.0"}
    assert 'id="backlog-empty"' in page
    assert (await dash.http.get("/dashboard/charts?range=2y")).status_code == 400
    assert (await dash.http.get("/dashboard/charts?function_id=nope")).status_code == 404


async def test_the_backlog_lists_due_runs_that_nobody_executes(dash: Dash) -> None:
    [event_id] = await dash.client.send({"name": "dash/greet", "data": {}})  # stored, no worker ran it
    assert event_id
    page = await dash.page("/dashboard/charts")
    assert re.search(r'<tr data-function="test-app-greet">.*?</svg> 1</td>', page, re.S)
