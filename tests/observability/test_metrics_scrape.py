"""Real scrapes of a real server and a real worker after a known workload: the values a dashboard would show.

- ``stepline start`` serving an app on the official PyPI ``inngest`` SDK: N runs complete, M fail (a
  ``ZeroDivisionError`` in a step, no retries); ``/metrics`` needs the admin token or the signing key; the
  ``--metrics-port`` listener answers without one, on loopback.
- ``stepline worker --metrics-port`` with in-process functions: completed, failed and sleeping runs, the
  cluster-wide gauges of the one leader, the terminal's lines.
- ``stepline start`` on PostgreSQL: while the database is down, ``/metrics`` still answers within a scrape
  timeout, with the process's own metrics and ``stepline_store_up 0``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stepline import Stepline

from ..compat.harness import AppSpec, Stack
from ..pg_cluster import PgCluster, find_bindir
from .harness import HERE, STEPLINE, free_port, process, python_app, scrape, value, wait_for

N_DONE, M_FAILED = 4, 3


class MetricsStack(Stack):
    """The compatibility stack (``stepline start`` + the traced app) with an admin token and a metrics port."""

    admin_token = "admin-token-for-metrics"
    metrics_port = 0

    def server_command(self) -> list[str]:
        self.metrics_port = self.metrics_port or free_port()
        return [*super().server_command(), "--admin-token", self.admin_token, "--metrics-port",
                str(self.metrics_port)]  # fmt: skip


def test_server_scrape_counts_the_runs_calls_and_events_of_a_known_workload(tmp_path: Path) -> None:
    spec = AppSpec("traced app", "traced-py", HERE, lambda port: python_app("traced_app", port))
    with _running(MetricsStack(spec, "signed", tmp_path)) as s:
        done = [s.trigger("obs/signup", {"user": f"u{i}"})[1] for i in range(N_DONE)]
        failed = [s.trigger("obs/fail", {})[1] for _ in range(M_FAILED)]
        assert {r["status"] for r in done} == {"Completed"} and {r["status"] for r in failed} == {"Failed"}
        url = f"{s.server_url}/metrics"
        # In start mode a scrape needs the admin token or the signing key.
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer not-it"}).status_code == 401
        by_key = scrape(url, Authorization=f"Bearer {s.signing_key}")
        samples = scrape(url, Authorization=f"Bearer {s.admin_token}")
        ok, bad = "traced-py-signup-flow", "traced-py-always-fails"
        for got in (samples, by_key):
            assert value(got, "stepline_runs_ended_total", function=ok, status="completed") == N_DONE
            assert value(got, "stepline_runs_ended_total", function=bad, status="failed") == M_FAILED
        assert value(samples, "stepline_runs_started_total", function=ok) == N_DONE
        assert value(samples, "stepline_run_start_lag_seconds_count", function=ok) == N_DONE
        assert value(samples, "stepline_run_start_lag_seconds_count", function=bad) == M_FAILED
        assert value(samples, "stepline_run_duration_seconds_count", function=bad, status="failed") == M_FAILED
        assert value(samples, "stepline_step_attempts_total", function=ok, kind="run", outcome="completed") == N_DONE
        assert value(samples, "stepline_step_attempts_total", function=bad, kind="run", outcome="failed") == M_FAILED
        # Two calls per run: the one that ran the step, then the one that ended the run (for a failed run, the
        # function's error: an answer of the app's that is not ok).
        calls = value(samples, "stepline_app_calls_total", app="traced-py", outcome="ok")
        errors = value(samples, "stepline_app_calls_total", app="traced-py", outcome="function_error")
        assert errors == M_FAILED and calls >= 2 * N_DONE + M_FAILED
        assert value(samples, "stepline_app_call_duration_seconds_count", app="traced-py") == calls + errors
        # Every event came through the event API (pings included); the store committed the work.
        accepted = value(samples, "stepline_events_received_total", outcome="accepted")
        assert accepted >= N_DONE + M_FAILED
        assert value(samples, "stepline_event_requests_total", code="200") == accepted
        assert value(samples, "stepline_store_commits_total") > 0
        assert value(samples, "stepline_store_up") == 1
        assert value(samples, "stepline_cluster_leader") == 1
        # The separate listener needs no token (it is bound to loopback).
        plain = scrape(f"http://127.0.0.1:{s.metrics_port}/metrics")
        assert value(plain, "stepline_runs_ended_total", function=ok, status="completed") == N_DONE


@contextlib.contextmanager
def _running(stack: MetricsStack) -> Iterator[MetricsStack]:
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


WORKER_APP = """
from stepline import Context, Stepline

client = Stepline("scraped")


@client.function(id="ok", trigger="obs/ok")
async def ok(ctx: Context) -> int:
    return await ctx.step.run("add", lambda: ctx.event.data["n"] + 1)


@client.function(id="boom", trigger="obs/boom", retries=0)
async def boom(ctx: Context) -> float:
    return await ctx.step.run("divide", lambda: 1 / 0)


@client.function(id="nap", trigger="obs/nap")
async def nap(ctx: Context) -> str:
    await ctx.step.sleep("nap", "1h")
    return "rested"
"""


def test_worker_scrape_after_a_known_workload(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(WORKER_APP)
    db = tmp_path / "w.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    cmd = [*STEPLINE, "worker", "app:client", "--db", str(db), "--metrics-port", str(port)]
    with process("stepline worker", cmd, tmp_path, url) as worker:
        sender = Stepline("sender", str(db))
        sender.send_sync([{"name": "obs/ok", "data": {"n": i}} for i in range(5)]
                         + [{"name": "obs/boom"}] * 2 + [{"name": "obs/nap"}] * 3)  # fmt: skip
        sender.close_sync()

        def settled() -> bool:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                rows = conn.execute("SELECT status, idle_reason FROM runs").fetchall()
            ended = [r for r in rows if r[0] in ("completed", "failed")]
            napping = [r for r in rows if r[1] and '"sleeping"' in r[1]]
            return len(ended) == 7 and len(napping) == 3

        wait_for("the runs to end or sleep", settled, timeout=30.0)
        # The cluster-wide gauges come from the leader's next read (every 5 s at most).
        samples = wait_for("the leader's gauges", lambda: s if value(s := scrape(url), "stepline_idle_runs",
                           function="scraped-nap", reason="sleeping") == 3 else None, timeout=20.0)  # fmt: skip
        assert value(samples, "stepline_runs_started_total", function="scraped-ok") == 5
        assert value(samples, "stepline_runs_ended_total", function="scraped-ok", status="completed") == 5
        assert value(samples, "stepline_runs_ended_total", function="scraped-boom", status="failed") == 2
        assert value(samples, "stepline_run_start_lag_seconds_count", function="scraped-ok") == 5
        assert value(samples, "stepline_run_start_lag_seconds_count", function="scraped-nap") == 3
        assert value(samples, "stepline_step_attempts_total", function="scraped-boom", kind="run",
                     outcome="failed") == 2  # fmt: skip
        assert value(samples, "stepline_runs_ended_total", function="scraped-nap", status="completed") == 0
        assert value(samples, "stepline_backlog_runs", function="scraped-ok") == 0
        assert value(samples, "stepline_cluster_leader") == 1
        assert value(samples, "stepline_store_up") == 1
        worker.stop()
    log = (tmp_path / "stepline-worker.log").read_text()
    # The terminal: each failure with its function, run id and error (and its stack); no line per run end at INFO.
    failures = [line for line in log.splitlines() if "ERROR stepline.runs" in line]
    assert len(failures) == 2 and all("scraped-boom failed" in f and "ZeroDivisionError" in f for f in failures)
    assert "Traceback" in log and "1 / 0" in log
    assert " completed in " not in log


@pytest.fixture
def private_cluster() -> Iterator[PgCluster]:
    """A cluster of its own: the test stops it."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed")
    cluster = PgCluster(bindir)
    cluster.init()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_metrics_answer_with_store_up_0_while_the_database_is_down(tmp_path: Path, private_cluster: PgCluster) -> None:
    port = free_port()
    key = "signkey-test-" + "ab" * 32
    cmd = [*STEPLINE, "start", "--host", "127.0.0.1", "--port", str(port), "--db", private_cluster.url(),
           "--signing-key", key, "--event-key", "evkey", "--admin-token", "tok"]  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    with process("stepline start", cmd, tmp_path, f"http://127.0.0.1:{port}/health") as server:
        auth = {"Authorization": "Bearer tok"}
        assert httpx.post(f"http://127.0.0.1:{port}/e/evkey", json={"name": "obs/x"}).status_code == 200
        assert value(scrape(url, **auth), "stepline_store_up") == 1
        private_cluster.stop("immediate")
        try:
            started = time.monotonic()
            samples = scrape(url, **auth)
            took = time.monotonic() - started
            assert value(samples, "stepline_store_up") == 0
            assert took < 5.0, f"the scrape took {took:.1f} s with the database down"
            # The process's own metrics are still there.
            assert value(samples, "stepline_events_received_total", outcome="accepted") == 1
            assert value(samples, "stepline_event_requests_total", code="200") == 1
            again = time.monotonic()
            assert value(scrape(url, **auth), "stepline_store_up") == 0
            assert time.monotonic() - again < 5.0
        finally:
            private_cluster.start()
        wait_for("stepline_store_up 1 again", lambda: value(scrape(url, **auth), "stepline_store_up") == 1,
                 timeout=30.0)  # fmt: skip
        assert server.alive()
