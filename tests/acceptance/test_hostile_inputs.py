"""Hostile inputs against real server processes (issue: hardening): an official-SDK app that registers the
expression which used to crash the server, a flood of huge bodies at the unauthenticated login, and slow request
heads. The server keeps serving through each, with bounded memory."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepline.storage.records import FunctionRecord
from stepline.storage.sqlite.store import SQLiteStore

from ..compat.harness import PY_APP_DIR, STEPLINE, Proc, _clean_env, free_port, spawn

HOSTILE_DIR = Path(__file__).parent / "hostile_app"
CRASHING_SUM = " + ".join(["1"] * 15_000) + " > 0"
SIGNING_KEY = "signkey-test-" + "ab" * 32
EVENT_KEY = "evkey-hostile"
ADMIN = "admin-" + "z" * 20
pytestmark = pytest.mark.slow


def wait_until(what: str, check: Any, timeout: float = 30.0, procs: tuple[Proc, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.alive(), f"{p.name} died while waiting for {what}\n{p.output()}"
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(p.output() for p in procs))


def uvicorn_app(name: str, cwd: Path, port: int, env: dict[str, str], log: Path) -> Proc:
    cmd = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port), "--log-level",
           "warning"]  # fmt: skip
    return spawn(name, cmd, cwd=cwd, env=env, log=log)


def start_server(tmp: Path, port: int, db: Path, *args: str, extra_env: dict[str, str] | None = None) -> Proc:
    env = {**_clean_env(), **(extra_env or {})}
    cmd = [*STEPLINE, "start", "--host", "127.0.0.1", "--port", str(port), "--db", str(db), "--signing-key",
           SIGNING_KEY, "--event-key", EVENT_KEY, "--admin-token", ADMIN, *args]  # fmt: skip
    proc = spawn("stepline start", cmd, cwd=tmp, env=env, log=tmp / f"server-{time.monotonic_ns()}.log")
    wait_until("the server", lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200, procs=(proc,))
    return proc


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_sdk_app_registering_the_crashing_expression_cannot_take_the_server_down(tmp_path: Path) -> None:
    good_port, evil_port, port = free_port(), free_port(), free_port()
    sdk_env = {**_clean_env(), "INNGEST_BASE_URL": f"http://127.0.0.1:{port}", "INNGEST_SIGNING_KEY": SIGNING_KEY,
               "INNGEST_EVENT_KEY": EVENT_KEY, "COMPAT_LOG": str(tmp_path / "records.jsonl")}  # fmt: skip
    good = uvicorn_app("good app", PY_APP_DIR, good_port, sdk_env, tmp_path / "good.log")
    evil = uvicorn_app("hostile app", HOSTILE_DIR, evil_port, sdk_env, tmp_path / "evil.log")
    db = tmp_path / "stepline.db"
    procs: list[Proc] = [good, evil]
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {SIGNING_KEY}"})
    try:
        server = start_server(tmp_path, port, db, "-u", f"http://127.0.0.1:{good_port}/api/inngest",
                              "-u", f"http://127.0.0.1:{evil_port}/api/inngest", "--poll-interval", "0.5")  # fmt: skip
        procs.append(server)

        def apps() -> dict[str, Any]:
            return {a["url"]: a for a in api.get("/v1/apps").json()["data"]}

        evil_url = f"http://127.0.0.1:{evil_port}/api/inngest"
        wait_until("the hostile app's refused sync", lambda: (apps().get(evil_url) or {}).get("error"),
                   procs=tuple(procs))  # fmt: skip
        assert "the expression is 60,001 characters long; the limit is 16,384" in apps()[evil_url]["error"]

        def pinged() -> bool:
            """A compat/ping (beside a shop/order the crashing trigger would have matched) completes."""
            ids = api.post(f"/e/{EVENT_KEY}", json=[{"name": "compat/ping"}, {"name": "shop/order"}]).json()["ids"]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                runs = api.get(f"/v1/events/{ids[0]}/runs").json()["data"]
                if runs and runs[0]["status"] == "Completed":
                    return True
                time.sleep(0.1)
            return False

        wait_until("a run of the good app", pinged, procs=tuple(procs))
        assert server.alive()

        # An expression stored before the limits (written straight into the database while the server is down):
        # the restarted server reports it and never evaluates it, even for matching events.
        server.stop()

        async def store_legacy() -> None:
            store = SQLiteStore(db)
            await store.open()
            rec = FunctionRecord(
                "legacy-crash",
                "legacy",
                "crash",
                "crash",
                {"triggers": [{"event": "shop/order", "expression": CRASHING_SUM}], "retries": 0},
            )
            await store.register_functions("legacy", [rec], int(time.time() * 1000))
            await store.close()

        asyncio.run(store_legacy())
        server = start_server(tmp_path, port, db, "-u", f"http://127.0.0.1:{good_port}/api/inngest")
        procs.append(server)
        for _ in range(5):
            assert api.post(f"/e/{EVENT_KEY}", json={"name": "shop/order", "data": {}}).status_code == 200
        wait_until("a run of the good app after the restart", pinged, procs=(server, good))
        legacy = next(f for f in api.get("/v1/functions").json()["data"] if f["id"] == "legacy-crash")
        assert "characters long" in legacy["problems"][0]
        assert server.alive()
    finally:
        api.close()
        for p in procs:
            p.stop()


def test_a_flood_of_huge_login_bodies_keeps_memory_bounded(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(tmp_path, port, tmp_path / "stepline.db")
    try:
        before = rss_kib(server.proc.pid)
        peak = before
        stop = False

        async def upload(declared: bool) -> int:
            async def body():  # type: ignore[no-untyped-def]
                for _ in range(4096):  # 256 MiB
                    yield b"token=" + b"x" * 65530
                    await asyncio.sleep(0)

            headers = {"content-type": "application/x-www-form-urlencoded"}
            if declared:
                headers["content-length"] = str(256 * 1024 * 1024)
            async with httpx.AsyncClient(timeout=60) as http:
                try:
                    return (await http.post(f"http://127.0.0.1:{port}/dashboard/login", content=body(),
                                            headers=headers)).status_code  # fmt: skip
                except httpx.HTTPError:
                    return -1  # the server stopped reading and closed: also a refusal

        async def sample() -> None:
            nonlocal peak
            while not stop:
                peak = max(peak, rss_kib(server.proc.pid))
                await asyncio.sleep(0.05)

        async def flood() -> list[int]:
            nonlocal stop
            sampler = asyncio.create_task(sample())
            results = await asyncio.gather(*(upload(i % 2 == 0) for i in range(4)))
            stop = True
            await sampler
            return list(results)

        statuses = asyncio.run(flood())
        assert all(s in (413, -1) for s in statuses), statuses
        after = rss_kib(server.proc.pid)
        mib = [round(x / 1024) for x in (before, peak, after)]
        print(f"login flood: RSS before {mib[0]} MiB, peak {mib[1]} MiB, after {mib[2]} MiB")
        assert peak - before < 32 * 1024, (before, peak)  # the old server grew by 1.4 GiB
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        server.stop()


def test_slow_request_heads_are_cut_off_and_the_server_keeps_serving(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(tmp_path, port, tmp_path / "stepline.db", extra_env={"STEPLINE_HEADER_TIMEOUT": "2"})
    conns: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /e/evkey HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            conns.append(sock)
        started = time.monotonic()
        for i in range(3):  # a header line every 0.8 s keeps each connection "busy" to a server without a timeout
            time.sleep(0.8)
            for sock in conns:
                with contextlib.suppress(OSError):
                    sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        closed = 0
        for sock in conns:
            sock.settimeout(5)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data == b"" or data.startswith(b"HTTP/1.1 408"):
                closed += 1
        assert closed == len(conns), f"{closed} of {len(conns)} slow connections were cut off"
        assert time.monotonic() - started < 10
    finally:
        for sock in conns:
            sock.close()
        server.stop()
