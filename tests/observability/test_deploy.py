"""deploy/: every metric the Grafana dashboard and the Prometheus rules query is in a real scrape of a real server
(after a workload that makes runs complete, fail, retry, sleep and get throttled), and the configuration is sound."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stepline.observability.metrics import METRIC_NAMES

from .harness import STEPLINE, free_port, process, wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "stepline-dashboard.json"
_METRIC = re.compile(r"\bstepline_[a-z_]+\b")

APP = """
import datetime as dt

from stepline import Backoff, Context, Stepline, Throttle

client = Stepline("deployed")
_failed_once = set()


@client.function(id="ok", trigger="dep/ok")
async def ok(ctx: Context) -> int:
    return await ctx.step.run("one", lambda: 1)


@client.function(id="flaky", trigger="dep/flaky", retries=2,
                 backoff=Backoff(schedule=(dt.timedelta(milliseconds=50),), jitter=dt.timedelta(0)))
async def flaky(ctx: Context) -> str:
    def once() -> str:
        if ctx.run_id not in _failed_once:
            _failed_once.add(ctx.run_id)
            raise RuntimeError("first attempt fails")
        return "ok"

    return await ctx.step.run("once", once)


@client.function(id="boom", trigger="dep/boom", retries=0)
async def boom(ctx: Context) -> None:
    raise ValueError("boom")


@client.function(id="nap", trigger="dep/nap")
async def nap(ctx: Context) -> None:
    await ctx.step.sleep("nap", "1h")


@client.function(id="slow", trigger="dep/slow", throttle=Throttle(limit=1, period="1m"))
async def slow(ctx: Context) -> int:
    return 1
"""


def _exprs(node: Any) -> list[str]:
    """Every ``expr``/``query`` string in a Grafana dashboard (panels, rows, template variables)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                found.append(value)
            else:
                found += _exprs(value)
    elif isinstance(node, list):
        for item in node:
            found += _exprs(item)
    return found


def _families(text: str) -> tuple[set[str], set[str]]:
    """(family names, sample names) of a scrape. Counters are families without ``_total``; histograms have
    ``_bucket``/``_sum``/``_count`` samples."""
    families, samples = set(), set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        samples.update(s.name for s in family.samples)
    return families, samples


def _exported(name: str, families: set[str]) -> bool:
    candidates = {name, re.sub(r"_(total|bucket|sum|count)$", "", name)}
    return bool(candidates & families)


def test_every_metric_the_dashboard_and_rules_query_is_in_a_real_scrape(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {m for e in _exprs(dashboard) for m in _METRIC.findall(e)}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "stepline-alerts.yml").read_text())
    queried |= {m for g in rules["groups"] for r in g["rules"] for m in _METRIC.findall(r["expr"])}
    assert len(queried) >= 20, queried  # the dashboard covers runs, steps, backlog, calls, events, store, spans

    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [*STEPLINE, "dev", "--host", "127.0.0.1", "--port", str(port), "--db", str(tmp_path / "d.db"),
           "--no-discovery", "--app", "app:client", "--app-dir", str(tmp_path)]  # fmt: skip
    with process("stepline dev", cmd, tmp_path, f"{base}/health", STEPLINE_BACKOFF_SCALE="0.001"):
        events = [{"name": n} for n in ("dep/ok", "dep/flaky", "dep/boom", "dep/nap", "dep/slow", "dep/slow")]
        assert httpx.post(f"{base}/e/dev", json=events).status_code == 200

        def scraped() -> str | None:
            text = httpx.get(f"{base}/metrics").text
            wanted = (
                'stepline_runs_ended_total{function="deployed-flaky",status="completed"}',
                'stepline_idle_runs{function="deployed-nap",reason="sleeping"}',
                'stepline_flow_control_total{action="delayed",function="deployed-slow",gate="throttle"}',
            )
            return text if all(w in text for w in wanted) else None

        text = wait_for("a scrape after the workload", scraped, timeout=30.0)
    families, samples = _families(text)
    missing = sorted(m for m in queried if not _exported(m, families))
    assert not missing, f"the dashboard or the rules query metrics the server does not export: {missing}"
    # What docs/metrics.md lists is what a server exports, and the workload gave most of them values.
    assert {m for m in METRIC_NAMES if not _exported(m, families)} == set()
    # Without an HTTP app, tracing or a backlog, these have no series yet (test_metrics_scrape.py and
    # test_tracing_robustness.py give them values); every other one has.
    idle = {"stepline_app_calls_total", "stepline_app_call_duration_seconds_bucket", "stepline_backlog_runs",
            "stepline_backlog_oldest_seconds", "stepline_running_runs", "stepline_trace_spans_total",
            "stepline_userland_spans_total"}  # fmt: skip
    without = {m for m in queried if not {m, f"{m}_total", f"{m}_count"} & samples}
    assert without <= idle, sorted(without - idle)


def test_the_prometheus_configuration_scrapes_metrics_of_servers_and_workers() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"stepline-server", "stepline-worker"}
    assert all(job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] for job in jobs.values())
    assert jobs["stepline-server"]["authorization"]["type"] == "Bearer"  # start mode needs the admin token
    assert config["rule_files"] == ["stepline-alerts.yml"]
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(ids) == len(set(ids)) and all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in graphs)
