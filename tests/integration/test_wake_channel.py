"""SQLite: an idle worker sleeps without polling the database, and a run sent from another process wakes it at once
(the local wake channel, ``stepline.storage.wake``)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepline import Context, Stepline
from stepline.storage.sqlite.store import SQLiteStore

SENDER = """
import asyncio, sys, time
from stepline import Stepline
from stepline.storage.sqlite.store import SQLiteStore

async def main():
    client = Stepline("sender", SQLiteStore(sys.argv[1], synchronous="OFF"))
    await client.ready()
    sent = time.time()
    await client.send({"name": "wake/go", "data": {}})
    await client.close()
    print(sent)

asyncio.run(main())
"""


async def test_an_idle_worker_does_not_poll_and_a_run_sent_from_another_process_starts_at_once(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "wake.db", synchronous="OFF")
    client = Stepline("wake-app", store)
    started: list[float] = []

    @client.function(id="go", trigger="wake/go")
    async def go(ctx: Context) -> None:
        started.append(time.time())

    await client.ready()
    polls = 0
    data_version = store.data_version

    def counted() -> int:
        nonlocal polls
        polls += 1
        return data_version()

    store.data_version = counted  # type: ignore[method-assign]
    worker = client.worker(poll_interval=60)  # no safety poll within this test
    task = asyncio.create_task(worker.run())
    try:
        out = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", SENDER, str(store.path)], capture_output=True, text=True,
            timeout=120, check=True,
        )  # fmt: skip
        sent = float(out.stdout)
        async with asyncio.timeout(30):
            while not started:
                await asyncio.sleep(0.01)
        assert started[0] - sent < 5  # within ms on an idle machine; without a wake-up, after the 60 s poll
        assert polls == 0  # the worker never polled data_version (it did every 2 ms before the channel)
    finally:
        worker.stop()
        await task
        await client.close()


def test_a_malformed_wake_message_means_look_now_and_logs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any process of the user can send to the sockets: ``w`` with a due time that is not one (or one past any
    clock) is a plain wake-up, not a traceback in the log per datagram."""
    store = SQLiteStore(tmp_path / "wake.db", synchronous="OFF")
    got: list[int | None] = []
    assert store.watch_commits(got.append)
    for message in (b"wnope", b"w-5", b"w" + b"9" * 400, b"w12"):
        store.wake_channel.notify(message)
    assert got == [None, None, None, 12]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
