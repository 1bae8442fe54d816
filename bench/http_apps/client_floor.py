"""Client-side CPU per POST, for the server's calls to apps: httpx.AsyncClient (what Stepline uses), aiohttp (when
importable, e.g. ``pip install --target /tmp/aio aiohttp`` and BENCH_VARIANT_PATH=/tmp/aio) and hand-written
HTTP/1.1 on asyncio streams (the floor), against a minimal keep-alive HTTP/1.1 server in another process that
answers every POST with a small 206 (the server's CPU is not counted).

    .venv/bin/python bench/http_apps/client_floor.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

SERVER = r"""
import asyncio, sys
BODY = b'[{"op":"StepRun","id":"a9993e364706816aba3e25717850c26c9cd0d89d","data":1,"name":"s1","opts":{}}]'
RESP = (b"HTTP/1.1 206 Partial Content\r\ncontent-type: application/json\r\nx-inngest-sdk: py:v0.5.19\r\n"
        b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            cl = [x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")]
            n = int(cl[0].split(b":")[1]) if cl else 0
            await r.readexactly(n)
            w.write(RESP)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
async def main():
    s = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    print("up", flush=True)
    await s.serve_forever()
asyncio.run(main())
"""
CTX = {"run_id": "0" * 26, "attempt": 0, "stack": {"stack": [], "current": 0}}
BODY = json.dumps({"event": {"name": "bench/one", "data": {"i": 1}}, "events": [], "steps": {}, "ctx": CTX}).encode()
PATH = "/api/inngest?fnId=bench-py-one&stepId=step"


async def timed(n: int, in_flight: int, one: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    gate = asyncio.Semaphore(in_flight)

    async def gated() -> None:
        async with gate:
            await one()

    await asyncio.gather(*(gated() for _ in range(min(n, 50))))  # warm-up: connections
    t, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(gated() for _ in range(n)))
    return (time.process_time() - cpu) / n * 1000, n / (time.perf_counter() - t)


async def with_httpx(port: int, n: int, in_flight: int, limits: httpx.Limits) -> tuple[float, float]:
    async with httpx.AsyncClient(limits=limits) as client:

        async def one() -> None:
            async with client.stream("POST", f"http://127.0.0.1:{port}{PATH}", content=BODY,
                                     headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
                await resp.aread()

        return await timed(n, in_flight, one)


async def with_aiohttp(port: int, n: int, in_flight: int) -> tuple[float, float]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:

        async def one() -> None:
            async with session.post(f"http://127.0.0.1:{port}{PATH}", data=BODY,
                                    headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
                await resp.read()

        return await timed(n, in_flight, one)


async def with_streams(port: int, n: int, in_flight: int) -> tuple[float, float]:
    pool = [await asyncio.open_connection("127.0.0.1", port) for _ in range(in_flight)]
    head = (f"POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(BODY)}\r\n\r\n").encode()  # fmt: skip
    free = asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]()
    for conn in pool:
        free.put_nowait(conn)

    async def one() -> None:
        reader, writer = await free.get()
        writer.write(head + BODY)
        lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        length = next(int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        free.put_nowait((reader, writer))

    try:
        return await timed(n, in_flight, one)
    finally:
        for _, w in pool:
            w.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=3000)
    args = p.parse_args()
    for extra in filter(None, os.environ.get("BENCH_VARIANT_PATH", "").split(os.pathsep)):
        sys.path.insert(0, extra)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        try:
            import sniffio  # noqa: F401

            sniff = "importable"
        except ImportError:
            sniff = "NOT importable (httpcore then tries to import it several times per request)"
        print(f"load average at start {os.getloadavg()[0]:.2f}; {args.requests} POSTs per row; sniffio {sniff}")
        n = args.requests
        for in_flight in (1, 8, 64, 500):
            ms, rps = asyncio.run(with_httpx(port, n, in_flight, httpx.Limits()))
            print(f"httpx {httpx.__version__}, default Limits (100 connections, 20 kept alive), {in_flight:>3} in "
                  f"flight: {ms:.2f} ms CPU/request, {rps:,.0f} requests/s")  # fmt: skip
        for in_flight in (8, 64):
            lim = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
            ms, rps = asyncio.run(with_httpx(port, n, in_flight, lim))
            print(f"httpx, Limits({in_flight}, keep-alive {in_flight}), {in_flight:>3} in flight: {ms:.2f} ms "
                  f"CPU/request, {rps:,.0f} requests/s")  # fmt: skip
        try:
            import aiohttp

            for in_flight in (1, 8, 64):
                ms, rps = asyncio.run(with_aiohttp(port, n, in_flight))
                print(f"aiohttp {aiohttp.__version__}, {in_flight:>3} in flight: {ms:.2f} ms CPU/request, "
                      f"{rps:,.0f} requests/s")  # fmt: skip
        except ImportError:
            print("aiohttp: not importable (set BENCH_VARIANT_PATH to a directory holding it)")
        for in_flight in (1, 8):
            ms, rps = asyncio.run(with_streams(port, n, in_flight))
            print(f"asyncio streams, hand-written HTTP/1.1, {in_flight:>3} in flight: {ms:.2f} ms CPU/request, "
                  f"{rps:,.0f} requests/s")  # fmt: skip
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
