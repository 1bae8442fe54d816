"""Run the crash app's worker until killed (or SIGTERM: graceful stop).

Usage: python run_worker.py <db_path> <worker_name> [lease_seconds]

The worker's lease owner is ``<worker_name>``; it is also put in ``CRASH_APP_WORKER`` so step results and the
side-effect log name the worker that executed them. Prints ``ready`` once the functions are registered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root, for `tests.acceptance...`

from tests.acceptance.crash_app.app import make_client


async def main(db_path: str, name: str, lease_seconds: float) -> None:
    os.environ["CRASH_APP_WORKER"] = name
    client = make_client(db_path)
    await client.ready()
    worker = client.worker(lease_seconds=lease_seconds, owner=name)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    print("ready", flush=True)
    try:
        await worker.run()
    finally:
        await client.close()
    print("stopped", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    lease = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    asyncio.run(main(sys.argv[1], sys.argv[2], lease))
