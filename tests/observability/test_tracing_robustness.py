"""A collector that never answers never slows or blocks runs: spans wait in a bounded queue, those beyond it are
dropped and counted (``stepline_trace_spans_total{outcome="dropped"}``), and the worker still stops promptly."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from stepline import Stepline

from .harness import STEPLINE, free_port, process, scrape, value, wait_for

APP = """
from stepline import Context, Stepline

client = Stepline("traced")


@client.function(id="one", trigger="rob/one")
async def one(ctx: Context) -> int:
    return await ctx.step.run("only", lambda: ctx.event.data["i"])
"""
RUNS = 300


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port that takes connections (the kernel's backlog) and never answers: the worst collector there is."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def completed(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()[0])


def test_a_collector_that_never_answers_neither_slows_nor_blocks_runs(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    db = tmp_path / "r.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with black_hole() as collector:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector}", "OTEL_BSP_MAX_QUEUE_SIZE": "50",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10", "OTEL_BSP_SCHEDULE_DELAY": "50"}  # fmt: skip
        cmd = [*STEPLINE, "worker", "app:client", "--db", str(db), "--metrics-port", str(port)]
        with process("stepline worker", cmd, tmp_path, url, **otel) as worker:
            sender = Stepline("sender", str(db))
            started = time.monotonic()
            sender.send_sync([{"name": "rob/one", "data": {"i": i}} for i in range(RUNS)])
            sender.close_sync()
            wait_for(f"{RUNS} runs to complete", lambda: completed(db) == RUNS, timeout=30.0)
            took = time.monotonic() - started
            # Without tracing these take well under a second here; the exporter is stuck on its first batch for
            # its whole timeout (10 s) meanwhile, so a run that waited on it would show.
            assert took < 8.0, f"{RUNS} runs took {took:.1f} s with a collector that never answers"
            samples = scrape(url)
            dropped = value(samples, "stepline_trace_spans_total", outcome="dropped")
            assert dropped >= 2 * RUNS - 50 - 10 * 2, samples  # two spans a run, a queue of 50
            assert value(samples, "stepline_trace_spans_total", outcome="exported") == 0
            assert value(samples, "stepline_runs_ended_total", function="traced-one", status="completed") == RUNS
            stopping = time.monotonic()
            worker.stop()
            assert worker.proc.returncode == 0
            assert time.monotonic() - stopping < 9.0  # the final flush gives up after 5 s
