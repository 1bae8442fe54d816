"""What the terminal says: every failed attempt and failed run with its function, run id and error (with the run's
dashboard link in ``dev``), one line per run end in ``dev`` (``start``/``worker``: at debug level only), and
``--log-format json`` for log shippers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from .harness import STEPLINE, env, free_port, process, wait_for

APP = """
import datetime as dt

from stepline import Backoff, Context, Stepline

client = Stepline("loud")
QUICK = Backoff(schedule=(dt.timedelta(milliseconds=20),), jitter=dt.timedelta(0))


@client.function(id="fine", trigger="log/fine")
async def fine(ctx: Context) -> int:
    return await ctx.step.run("one", lambda: 1)


@client.function(id="divide", trigger="log/divide", retries=1, backoff=QUICK)
async def divide(ctx: Context) -> float:
    return await ctx.step.run("by-zero", lambda: 1 / 0)
"""


def _lines(log: Path, needle: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if needle in line]


def test_dev_logs_failed_attempts_failed_runs_and_every_run_end_with_links(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [*STEPLINE, "dev", "--host", "127.0.0.1", "--port", str(port), "--db", str(tmp_path / "d.db"),
           "--no-discovery", "--app", "app:client", "--app-dir", str(tmp_path)]  # fmt: skip
    with process("stepline dev", cmd, tmp_path, f"{base}/health"):
        ids = httpx.post(f"{base}/e/dev", json=[{"name": "log/fine"}, {"name": "log/divide"}]).json()["ids"]
        log = tmp_path / "stepline-dev.log"
        wait_for("the failed run's line", lambda: _lines(log, "ERROR stepline.runs"), timeout=20.0)
        runs = {r["function_id"]: r["run_id"] for i in ids
                for r in httpx.get(f"{base}/v1/events/{i}/runs").json()["data"]}  # fmt: skip
    fine, divide = runs["loud-fine"], runs["loud-divide"]
    [ended] = _lines(log, f"run {fine} of loud-fine completed in ")
    assert "INFO stepline.runs" in ended and f"({base}/dashboard/runs/{fine})" in ended
    [first, last] = _lines(log, "WARNING stepline.runs")  # every failed attempt, the last one too
    assert f"step 'by-zero' of run {divide} (loud-divide) failed (attempt 1), retrying at " in first
    assert "ZeroDivisionError: division by zero" in first and f"/dashboard/runs/{divide}" in first
    assert f"step 'by-zero' of run {divide} (loud-divide) failed (attempt 2), not retried: " in last
    [failed] = _lines(log, "ERROR stepline.runs")
    assert f"run {divide} of loud-divide failed in " in failed and "ZeroDivisionError: division by zero" in failed
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "1 / 0" in text  # the stack follows the line


def test_worker_json_logs_carry_the_fields_and_run_ends_only_at_debug(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    db = tmp_path / "w.db"
    for level in ("info", "debug"):
        log = tmp_path / f"worker-{level}.log"
        cmd = [*STEPLINE, "worker", "app:client", "--db", str(db), "--log-format", "json", "--log-level", level]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=out)
        try:
            wait_for("the worker to start", lambda: "stepline worker: app loud" in log.read_text(), timeout=30.0)
            for name in ("log/fine", "log/divide"):
                sender = subprocess.run([*STEPLINE, "send", name, "--db", str(db)], cwd=tmp_path, env=env(),
                                        capture_output=True, text=True, timeout=60)  # fmt: skip
                assert sender.returncode == 0, sender.stderr
            wait_for("the failure", lambda: '"level": "ERROR"' in log.read_text(), timeout=20.0)
        finally:
            proc.terminate()
            proc.wait(15)
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        [failure] = [r for r in records if r["level"] == "ERROR"]
        assert failure["logger"] == "stepline.runs" and failure["function"] == "loud-divide"
        assert failure["status"] == "failed" and failure["error"]["name"] == "ZeroDivisionError"
        assert failure["run_id"] in failure["message"] and isinstance(failure["duration_ms"], int)
        [first, last] = [r for r in records if r["level"] == "WARNING" and r["logger"] == "stepline.runs"]
        assert first["step"] == "by-zero" and first["attempt"] == 0 and first["retry_at"] > 0
        assert last["attempt"] == 1 and "retry_at" not in last and last["error"]["name"] == "ZeroDivisionError"
        ends = [r for r in records if r.get("status") == "completed"]
        if level == "info":
            assert ends == []  # thousands a second on a busy node: only at debug level
        else:
            [end] = ends
            assert end["level"] == "DEBUG" and end["function"] == "loud-fine" and end["duration_ms"] >= 0
        assert "url" not in failure  # no dashboard in a worker


def test_a_bad_alert_rule_is_a_usage_error() -> None:
    result = subprocess.run([*STEPLINE, "dev", "--alert-rule", "* ftp://nope"], env=env(), capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert "--alert-rule: the alert rule '* ftp://nope' needs an http(s) webhook URL" in result.stderr
