"""Run the fault app's worker on a PostgreSQL database until killed (or SIGTERM: graceful stop).

Usage: python run_worker.py <postgresql_url> <worker_name> <side_effect_log> [lease_seconds]

The worker's lease owner is ``<worker_name>``; it is also put in ``PGF_WORKER`` so step results and the
side-effect log name the worker that executed them; the runs it claims are logged there too. Prints ``ready``
once the functions are registered and ``stopped`` after a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root, for `tests.acceptance...`

from stepline.storage.postgres.store import PostgresStore
from stepline.storage.records import ClaimedRun
from tests.acceptance.pg_faults.app import append_lines, make_client


def log_claims(store: PostgresStore) -> None:
    """Log every run this worker claims: ``claim <worker> <run_id> <memo> <time>``, where ``memo`` lists the
    completed steps the claim returned (``-``: none) and ``time`` is taken *before* the claim was made, so any
    step result committed before that time must be in the memo. Written before the runs start executing."""
    inner = store.claim_runs

    async def claim_runs(
        owner: str,
        function_ids: list[str],
        now: int,
        limit: int,
        lease_ms: int,
        gated_ids: frozenset[str] = frozenset(),
    ) -> list[ClaimedRun]:
        before = time.time()
        claimed = await inner(owner, function_ids, now, limit, lease_ms, gated_ids)
        lines = []
        for c in claimed:
            memo = sorted(s.display_id for s in c.steps.values() if s.status == "completed")
            lines.append(("claim", c.run.id, ",".join(memo) or "-", before))
        if lines:
            append_lines(lines)
        return claimed

    store.claim_runs = claim_runs  # type: ignore[method-assign]


async def main(url: str, name: str, lease_seconds: float) -> None:
    store = PostgresStore(url)
    log_claims(store)
    client = make_client(store)
    await client.ready()
    worker = client.worker(lease_seconds=lease_seconds, owner=name)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    print("ready", flush=True)
    try:
        await worker.run()
    finally:
        await client.close()
    print(f"stopped runs_started={worker.runs_started}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    os.environ["PGF_WORKER"] = sys.argv[2]
    os.environ["PGF_LOG"] = sys.argv[3]
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[4]) if len(sys.argv) > 4 else 2.0))
