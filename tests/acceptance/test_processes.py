"""``stepline dev --processes N``: several server processes on one port; a child killed with -9 is restarted while
the port keeps answering; SIGTERM drains every child (a run in progress completes before they exit)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..pg_cluster import free_port
from .test_cli import STEPLINE, _env, cli, wait_for

APP = """
import time
from stepline import Context, Stepline

client = Stepline("procs-test")


@client.function(id="slow", trigger="test/slow")
def slow(ctx: Context) -> str:
    ctx.step.run("nap", lambda: time.sleep(3) or "napped")
    return "done"
"""
STARTED = re.compile(r"process (\d+) started \(pid (\d+)\)")
SERVING = re.compile(r"process (\d+) \(pid (\d+)\) serves")  # the supervisor's line once a child accepts


class Server:
    def __init__(self, cwd: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"server-{self.port}.log"
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [*STEPLINE, "dev", "--port", str(self.port), "--host", "127.0.0.1", "--no-discovery", "--db",
                 "tmp.db", "--app-dir", str(cwd), *args], cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
                stderr=err,
            )  # fmt: skip

    def stderr(self) -> str:
        return self.log.read_text()

    def serving(self) -> dict[int, int]:
        """Process index -> pid of the children that said they serve (the latest of each index)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited with {self.proc.returncode}: {self.stderr()}")
        return {int(i): int(pid) for i, pid in SERVING.findall(self.stderr())}

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            assert response.status == 200
            return json.loads(response.read()) if "json" in response.headers.get("content-type", "") else None

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def serving_pid(client: tuple[str, int], pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server's end of the TCP connection whose client end is ``client`` (from /proc)."""
    peer = f"0100007F:{client[1]:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == peer:
            inode = fields[9]
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "procs_app.py").write_text(APP)
    s = Server(tmp_path, "--processes", "2", "--app", "procs_app:client")
    try:
        wait_for("both processes to serve", lambda: len(s.serving()) == 2, timeout=90)
        yield s
    finally:
        s.stop()


def test_a_killed_child_is_restarted_while_the_port_keeps_answering(server: Server) -> None:
    before = server.serving()
    victim = before[1]
    os.kill(victim, signal.SIGKILL)
    # The other process accepts from the same listening socket: no request is refused meanwhile.
    for _ in range(30):
        assert server.get("/health") == {"status": 200, "message": "OK", "kind": "dev"}
    wait_for("process 1 to come back", lambda: server.serving().get(1, victim) != victim, timeout=90)
    after = server.serving()
    assert after[0] == before[0] and after[1] != victim and alive(after[1])
    assert f"process 1 (pid {victim}) exited with signal SIGKILL" in server.stderr()
    # Both children count in the metrics a scrape of either shows (one multiprocess directory).
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        assert b"stepline_build_info" in response.read()
    assert server.stop() == 0


def test_sigterm_drains_every_child(server: Server) -> None:
    pids = list(server.serving().values())
    sent = server.post("/e/key", {"name": "test/slow", "data": {}})
    [event_id] = sent["ids"]

    def running() -> bool:
        runs = server.get(f"/v1/events/{event_id}/runs")["data"]
        return bool(runs) and runs[0]["status"] == "Running"

    wait_for("the run to start", running, timeout=30)
    assert server.stop() == 0, server.stderr()
    assert not any(alive(pid) for pid in pids)
    assert server.stderr().count("SIGTERM: stopping") == 3  # the supervisor and each child
    listed = cli(server.log.parent, "runs", "list", "--json", "--db", "tmp.db")
    [run] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert run["status"] == "completed", run  # the step in progress finished before its process exited


def test_a_child_that_cannot_start_stops_the_command(tmp_path: Path) -> None:
    s = Server(tmp_path, "--processes", "2", "--app", "no_such_module:client")
    try:
        code = s.proc.wait(timeout=90)
    finally:
        s.stop()
    assert code == 2, s.stderr()
    assert "cannot import module 'no_such_module'" in s.stderr()
    assert "restarting" not in s.stderr()


async def test_realtime_messages_reach_subscribers_of_every_process(server: Server) -> None:
    """Subscribers held by each child get what is published through each child (the hubs learn of each other's
    messages through the store and the wake channel)."""
    pids = list(server.serving().values())
    query = "channel=orders&topic=status"
    subscribers: dict[int, list[Any]] = {}  # pid -> what its SSE streams received (one stream per process)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(40):  # new connections until each process holds a subscription
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=server.url, timeout=10))
            resp = await stack.enter_async_context(client.stream("GET", f"/v1/realtime/sse?{query}"))
            assert resp.status_code == 200
            pid = serving_pid(resp.extensions["network_stream"].get_extra_info("client_addr"), pids)
            if pid is not None and pid not in subscribers:
                got = subscribers[pid] = []
                stack.push_async_callback(_cancel, asyncio.create_task(_read_sse(resp, got)))
            if len(subscribers) == len(pids):
                break
        assert len(subscribers) == 2
        published: dict[int, int] = {}  # pid -> the n it published
        for n in range(40):  # one publish per new connection until each process has published one
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                async with client.stream("POST", f"/v1/realtime/publish?{query}", json={"n": n}) as resp:
                    assert resp.status_code == 200
                    pid = serving_pid(resp.extensions["network_stream"].get_extra_info("client_addr"), pids)
                    await resp.aread()
            if pid is not None and pid not in published:
                published[pid] = n
            if len(published) == len(pids):
                break
        assert len(published) == 2
        wanted = sorted(published.values())
        async with asyncio.timeout(10):
            while any(sorted(m["data"]["n"] for m in got if m["data"]["n"] in wanted) != wanted
                      for got in subscribers.values()):  # fmt: skip
                await asyncio.sleep(0.05)


async def _read_sse(resp: httpx.Response, got: list[Any]) -> None:
    async for line in resp.aiter_lines():
        if line.startswith("data: "):
            got.append(json.loads(line[6:]))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
