"""The REST API and its OpenAPI document agree: schemathesis, every check on, against a real ``stepline dev``
process on SQLite and on PostgreSQL (issue: hardening). Bounded: ``--max-examples`` per operation and a time
budget per run (``STEPLINE_FUZZ_SECONDS``, 30 by default); a longer soak is the same command with a bigger budget.

Two checks are off where the document says why:
- ``positive_data_acceptance`` for ``POST /v1/cancellations``: an ``if`` that is not CEL within Stepline's limits,
  and a window whose start is after its end, are 400s that JSON Schema cannot express;
- ``use_after_free``: ``DELETE /v1/runs/{id}`` cancels the run (Inngest's meaning), which stays readable.

``?wait=`` is pinned to 50 ms: a valid wait holds the request up to 300 s (runs of the fuzz app sleep an hour),
longer than a fuzzing request may take; its values are checked by tests/server/test_wait_api.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..backends import Backend
from ..compat.harness import STEPLINE, _clean_env, free_port, spawn

REPO = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = """
[checks]
enabled = true
use_after_free.enabled = false

[parameters]
"query.wait" = "0.05s"

[[operations]]
include-path = "/v1/cancellations"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""
pytestmark = pytest.mark.slow


async def test_the_rest_api_matches_its_openapi_document(backend: Backend, engine_store: object,
                                                         tmp_path: Path) -> None:  # fmt: skip
    location = backend.location(engine_store)  # type: ignore[arg-type]
    await engine_store.close()  # type: ignore[attr-defined]  # the server process owns the database now
    port = free_port()
    env = {**_clean_env(), "PYTHONPATH": str(REPO)}
    server = spawn("stepline dev", [*STEPLINE, "dev", "--port", str(port), "--host", "127.0.0.1", "--no-discovery",
                                    "--db", location, "--app", "tests.fuzz.fuzz_app:client"],
                   cwd=tmp_path, env=env, log=tmp_path / "server.log")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.alive(), server.output()
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        events = [{"name": "fuzz/go", "data": {"n": i, "nap": i % 2 == 0}} for i in range(6)]
        assert httpx.post(f"{base}/e/key", json=events).status_code == 200
        (tmp_path / "schemathesis.toml").write_text(CONFIG)
        budget = os.environ.get("STEPLINE_FUZZ_SECONDS", "20")
        proc = subprocess.run(
            [str(SCHEMATHESIS), "--config-file", str(tmp_path / "schemathesis.toml"), "run", f"{base}/openapi.json",
             "--max-examples", "25", "--max-time", budget, "--seed", "20261207",
             "--no-color", "--request-timeout", "10"],
            capture_output=True, text=True, timeout=float(budget) * 3 + 60, cwd=tmp_path)  # fmt: skip
        summary = proc.stdout[-6000:]
        assert proc.returncode == 0, f"schemathesis found failures:\n{summary}\n{server.output()}"
        assert "passed" in summary and " 0 passed" not in summary, summary
        assert server.alive(), server.output()
    finally:
        server.stop()
