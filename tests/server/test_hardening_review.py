"""What an attacker's review of the hardened server still broke (issue: hardening), each on both stores where the
store matters: expressions cheap in shape but costly over large data, keys too long for PostgreSQL's indexes,
events of millions of values, one conversion per waiting run, unbounded event pages, bodies that never finish,
NUL characters in paths, queries and bodies, and IPv4 addresses carried inside IPv6."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stepline import Context, Stepline, Throttle
from stepline.core import cel_sandbox
from stepline.core.expressions import Bindings, ExpressionError, compile_expression
from stepline.server.outbound import OutboundPolicy, OutboundRefused

from ..integration.helpers import drain, runs
from .asgi import asgi_server


def _balanced(leaves: list[str]) -> str:
    if len(leaves) == 1:
        return leaves[0]
    mid = len(leaves) // 2
    return f"({_balanced(leaves[:mid])}+{_balanced(leaves[mid:])})"


CONCAT_BOMB = f"size({_balanced(['event.data.l'] * 240)}) > 0"  # passes every static limit


@pytest.fixture
async def api(client: Stepline) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_server(client, timeout=60) as http:
        yield http


def test_an_expression_cheap_in_shape_but_costly_over_large_data_goes_to_the_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """240 concatenations of a 100k-element list allocate gigabytes in the CEL library (it crashed the server);
    weighed by the data they touch, they are evaluated in the sandbox, on its budget and memory cap."""
    cel_sandbox.shutdown()
    monkeypatch.setenv("STEPLINE_CEL_BUDGET_MS", "300")
    expr = compile_expression(CONCAT_BOMB)
    assert not expr.isolated and expr.shape.heavy == 239
    assert expr.check({"event": {"data": {"l": [1, 2]}}}) is True  # small data: evaluated in this process
    started = time.monotonic()
    with pytest.raises(ExpressionError, match="budget of 300 ms|crashed the expression sandbox"):
        expr.check({"event": {"data": {"l": list(range(100_000))}}})
    assert time.monotonic() - started < 3


def test_a_wait_condition_converts_the_candidate_event_once_for_every_waiting_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stepline.core import engine

    conversions: list[str] = []
    real_set = Bindings.set

    def counting_set(self: Bindings, name: str, value: Any) -> None:
        conversions.append(name)
        real_set(self, name, value)

    monkeypatch.setattr(Bindings, "set", counting_set)
    candidate = {"name": "order/cancelled", "data": {"order_id": 7, "pad": "x" * 100_000}}
    condition = "event.data.order_id == async.data.order_id"
    matched = [engine.match_wait(condition, {"name": "order/created", "data": {"order_id": i}}, candidate)
               for i in range(20)]  # fmt: skip
    assert matched.count(True) == 1
    assert conversions.count("async") == 1 and conversions.count("event") == 20


async def test_keys_too_long_for_an_index_are_hashed(client: Stepline) -> None:
    """An 8,000-character throttle key used to stall PostgreSQL's writer for 120 s (an index entry too large,
    retried as if the connection had dropped), then lose the request's other events."""

    @client.function(id="keyed", trigger="t/keyed", throttle=Throttle(limit=10, period="1s", key="event.data.k"),
                     idempotency="event.data.k")  # fmt: skip
    async def keyed(ctx: Context) -> str:
        return "ran"

    await client.ready()
    started = time.monotonic()
    await client.send([{"name": "t/keyed", "data": {"k": "k" * 8000}}, {"name": "t/keyed", "data": {"k": "small"}}])
    await drain(client)
    assert time.monotonic() - started < 10
    assert sorted(r.status for r in await runs(client, "keyed")) == ["completed", "completed"]


def test_a_statement_over_postgresqls_limits_is_not_a_lost_connection() -> None:
    import psycopg
    from psycopg import errors as pg_errors

    from stepline.storage.postgres.store import _is_disconnect, _is_transient

    too_big = pg_errors.ProgramLimitExceeded("index row size 8032 exceeds btree version 4 maximum 2704")
    assert not _is_disconnect(too_big) and not _is_transient(too_big)
    assert _is_disconnect(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert _is_disconnect(pg_errors.AdminShutdown("terminating connection"))


async def test_events_of_too_many_values_are_refused_at_once(api: httpx.AsyncClient, client: Stepline) -> None:
    body = json.dumps({"name": "t/many", "data": {"l": [[] for _ in range(300_000)]}}).encode()
    started = time.monotonic()
    resp = await api.post("/e/key", content=body)
    assert resp.status_code == 400 and "holds more than 250,000 values" in resp.json()["error"]
    assert time.monotonic() - started < 3
    with pytest.raises(ValueError, match="holds more than 250,000 values"):
        await client.send({"name": "t/many", "data": {"l": list(range(300_000))}})


async def test_a_page_of_events_stops_at_its_byte_budget(api: httpx.AsyncClient, client: Stepline) -> None:
    for i in range(5):
        await client.send({"name": "t/big", "data": {"i": i, "pad": "p" * 2_500_000}})
    page = await client.store.list_events(None, 100)
    assert len(page) == 4  # 3 x 2.5 MB before the 4th would pass 8 MiB; the 4th starts past it
    resp = (await api.get("/v1/events?limit=100")).json()
    assert len(resp["data"]) == 4 and resp["cursor"] == resp["data"][-1]["internal_id"]
    rest = (await api.get(f"/v1/events?limit=100&cursor={resp['cursor']}")).json()
    assert [e["data"]["i"] for e in rest["data"]] == [0] and rest["cursor"] is None


@pytest.mark.parametrize(
    "path",
    ["/v1/runs/a%00b", "/v1/events/x%00/runs", "/v1/runs?cursor=%00", "/v1/runs?function_id=f%00",
     "/v1/events?name=n%00", "/dashboard/runs?q=%00", "/dashboard/events/%00"],
)  # fmt: skip
async def test_nul_in_paths_and_queries_is_a_400(api: httpx.AsyncClient, path: str) -> None:
    resp = await api.get(path)
    assert resp.status_code == 400 and "NUL" in resp.text


async def test_nul_in_register_and_api_bodies_is_a_400(api: httpx.AsyncClient) -> None:
    register = {"url": "http://127.0.0.1:9/api", "appName": "a\u0000", "functions": []}
    resp = await api.post("/fn/register", json=register)
    assert resp.status_code == 400 and "NUL" in resp.json()["error"]
    resp = await api.post("/v1/apps/sync", json={"url": "http://127.0.0.1:9/\u0000"})
    assert resp.status_code == 400 and "NUL" in resp.json()["error"]
    # event data may hold one (it is stored as JSON text, which keeps it)
    resp = await api.post("/e/key", json={"name": "t/nul", "data": {"s": "a\u0000b"}})
    assert resp.status_code == 200


@pytest.mark.parametrize("url", ["http://[64:ff9b::a9fe:a9fe]/", "http://[2002:a9fe:a9fe::1]/",
                                 "http://[::a9fe:a9fe]/"])  # fmt: skip
def test_ipv4_carried_in_ipv6_is_judged_as_that_ipv4_address(url: str) -> None:
    with pytest.raises(OutboundRefused, match="169.254.169.254"):
        OutboundPolicy().check_url(url)


def test_the_connection_cap_fits_the_open_file_limit() -> None:
    code = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))
        from stepline.server.http_limits import connections_within_fd_limit
        print(connections_within_fd_limit(1000), connections_within_fd_limit(100))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["384", "100"], out.stderr


async def test_a_body_that_never_finishes_holds_no_connection(tmp_path: Any) -> None:
    """The server answers a request refused on its head (a wrong key) at once; it used to keep reading the body
    for as long as bytes kept coming, one byte every few seconds."""
    from ..compat.harness import STEPLINE, _clean_env, free_port, spawn

    port = free_port()
    cmd = [*STEPLINE, "start", "--host", "127.0.0.1", "--port", str(port), "--db", str(tmp_path / "s.db"),
           "--signing-key", "signkey-test-" + "ab" * 32, "--event-key", "k", "--admin-token", "t" * 24]  # fmt: skip
    server = spawn("stepline start", cmd, cwd=tmp_path, env=_clean_env(), log=tmp_path / "server.log")
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            await asyncio.sleep(0.1)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /e/wrong HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nx")
        sock.settimeout(5)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401")
        closed = False
        for _ in range(20):  # the client goes on sending a byte at a time: the server has closed
            try:
                sock.sendall(b"x")
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except OSError:
                closed = True
                break
        assert closed
        sock.close()
    finally:
        server.stop()


async def test_a_request_of_too_many_values_is_refused_before_it_is_parsed(api: httpx.AsyncClient) -> None:
    events = [{"name": "t/many", "data": {"l": [0] * 200_000}} for _ in range(6)]  # 1.2 million values
    resp = await api.post("/e/key", content=json.dumps(events).encode())
    assert resp.status_code == 400 and "more than 1,000,000 JSON values" in resp.json()["error"]
