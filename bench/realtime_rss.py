#!/usr/bin/env python
"""Realtime memory over time: 1,000 subscribers on a ``stepline dev`` server for 10 minutes, while messages are
published and subscribers come and go; the server's RSS is sampled every ``--every`` seconds (a benchmark, not a
test). RSS should rise while the subscribers connect, then stay steady.

    .venv/bin/python bench/realtime_rss.py                          # 1,000 subscribers, 10 minutes
    .venv/bin/python bench/realtime_rss.py --subscribers 200 --duration 60

Subscribers: half server-sent events (``GET /v1/realtime/sse``), half WebSockets (``/v1/realtime/connect``), each
on one of ``--channels`` channels, each with its own token. Every ``--churn-every`` seconds ``--churn`` of them
disconnect (without a goodbye: the socket is just closed) and as many new ones connect. A publisher sends
``--rate`` messages per second (to random channels, 1 KB of data each). Received messages are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

BIN = Path(sys.executable).with_name("stepline")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Subscribers:
    def __init__(self, base: str, channels: int) -> None:
        self.base = base
        self.channels = channels
        self.tasks: list[asyncio.Task[None]] = []
        self.received = 0
        self.connected = 0
        self.errors = 0

    async def token(self, http: httpx.AsyncClient, channel: str) -> str:
        r = await http.post(f"{self.base}/v1/realtime/token?expires_in=3600", json=[{"channel": channel, "name": "t"}])
        return str(r.json()["jwt"])

    async def sse(self, token: str) -> None:
        host, port = self.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET /v1/realtime/sse?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            self.connected += 1
            while line := await reader.readline():
                if line.startswith(b"data: "):
                    self.received += 1
        finally:
            self.connected -= 1
            writer.close()

    async def ws(self, token: str) -> None:
        url = self.base.replace("http://", "ws://") + f"/v1/realtime/connect?token={token}"
        async with connect(url, max_queue=64) as ws:
            self.connected += 1
            try:
                async for _ in ws:
                    self.received += 1
            finally:
                self.connected -= 1

    async def add(self, http: httpx.AsyncClient, n: int) -> None:
        for i in range(n):
            token = await self.token(http, f"ch-{random.randrange(self.channels)}")
            run = self.sse if (len(self.tasks) + i) % 2 == 0 else self.ws
            task = asyncio.create_task(run(token))
            task.add_done_callback(self._count_error)
            self.tasks.append(task)

    def _count_error(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.errors += 1

    def drop(self, n: int) -> None:
        random.shuffle(self.tasks)
        for task in self.tasks[:n]:
            task.cancel()  # the connection closes without a goodbye
        self.tasks = self.tasks[n:]


async def main_async(args: argparse.Namespace) -> None:
    tmp = tempfile.TemporaryDirectory(prefix="stepline-rss-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(Path(tmp.name) / "server.log", "wb")
    server = subprocess.Popen([str(BIN), "dev", "--no-discovery", "--port", str(port), "--host", "127.0.0.1",
                               "--db", str(Path(tmp.name) / "rss.db"), "--max-connections",
                               str(args.subscribers + 200), "--log-level", "warning"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    subs = Subscribers(base, args.channels)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(100):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{base}/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            print(f"server pid {server.pid}; RSS before subscribers: {rss_mb(server.pid):.1f} MB", flush=True)
            await subs.add(http, args.subscribers)
            payload = json.dumps({"pad": "x" * 1000})
            t0 = time.monotonic()
            next_sample = next_churn = t0
            published = 0
            print(f"{'t s':>5} {'RSS MB':>7} {'connected':>9} {'published':>9} {'received':>9} {'errors':>6}")
            while (now := time.monotonic()) - t0 < args.duration:
                if now >= next_sample:
                    print(f"{now - t0:>5.0f} {rss_mb(server.pid):>7.1f} {subs.connected:>9} {published:>9} "
                          f"{subs.received:>9} {subs.errors:>6}", flush=True)  # fmt: skip
                    next_sample += args.every
                if now >= next_churn and now > t0:
                    subs.drop(args.churn)
                    await subs.add(http, args.churn)
                    next_churn += args.churn_every
                elif now >= next_churn:
                    next_churn += args.churn_every
                channel = f"ch-{random.randrange(args.channels)}"
                r = await http.post(f"{base}/v1/realtime/publish?channel={channel}&topic=t", content=payload,
                                    headers={"content-type": "application/json"})  # fmt: skip
                published += r.status_code == 200
                await asyncio.sleep(1 / args.rate)
            print(f"{time.monotonic() - t0:>5.0f} {rss_mb(server.pid):>7.1f} {subs.connected:>9} {published:>9} "
                  f"{subs.received:>9} {subs.errors:>6}")  # fmt: skip
    finally:
        subs.drop(len(subs.tasks))
        await asyncio.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)
        log.close()
        tmp.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--duration", type=float, default=600.0, help="seconds (600)")
    p.add_argument("--channels", type=int, default=100)
    p.add_argument("--rate", type=float, default=20.0, help="messages published per second (20)")
    p.add_argument("--churn", type=int, default=50, help="subscribers replaced at each churn (50)")
    p.add_argument("--churn-every", type=float, default=10.0, help="seconds between churns (10)")
    p.add_argument("--every", type=float, default=30.0, help="seconds between RSS samples (30)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
