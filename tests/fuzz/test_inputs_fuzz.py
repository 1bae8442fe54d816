"""Hypothesis against a real ``stepline dev`` process (issue: hardening): generated JSON bodies and events at the
event API, generated CEL expressions registered as triggers, flow-control keys and wait conditions, and generated
filter values at the REST API and the dashboard. Properties: never a 5xx, the process never dies, and every event
the API accepted can be read back. Bounded by ``max_examples`` (about 30 s in all on this machine).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..compat.harness import STEPLINE, Proc, _clean_env, free_port, spawn
from ..server.fake_app import fn_config, register_body

APP_URL = "http://127.0.0.1:9/api/inngest"  # never called: the functions only route events
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Proc]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    cmd = [*STEPLINE, "dev", "--port", str(port), "--host", "127.0.0.1", "--no-discovery", "--db", str(tmp / "fz.db")]
    proc = spawn("stepline dev", cmd, cwd=tmp, env=_clean_env(), log=tmp / "server.log")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.monotonic() + 30
    while True:
        assert proc.alive(), proc.output()
        try:
            if http.get("/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.1)
    yield http, proc
    http.close()
    proc.stop()


def no_5xx(resp: httpx.Response, proc: Proc) -> httpx.Response:
    assert resp.status_code < 500, f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text[:500]}"
    assert proc.alive(), proc.output()
    return resp


# --- JSON and events ---------------------------------------------------------------------------------------------
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from(["\ud800", "\x00", "9" * 30, "\U0001d518"]))  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=20,
)
EVENTS = st.fixed_dictionaries({"name": st.text(max_size=20) | st.sampled_from(["fz/e", "fz/w", "t\x00"])},
                               optional={"data": JSON, "id": JSON, "ts": JSON, "user": JSON, "v": JSON})  # fmt: skip


def raw_body(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


@SETTINGS
@given(body=EVENTS | st.lists(EVENTS, max_size=4) | JSON, depth=st.integers(0, 130))
def test_event_bodies(server: tuple[httpx.Client, Proc], body: Any, depth: int) -> None:
    http, proc = server
    for _ in range(depth):
        body = {"name": "fz/deep", "data": {"d": body}} if depth % 7 == 0 else body
    resp = no_5xx(http.post("/e/key", content=raw_body(body), headers={"content-type": "application/json"}), proc)
    if resp.status_code == 200:
        for internal_id in resp.json()["ids"]:
            no_5xx(http.get(f"/v1/events/{internal_id}"), proc).raise_for_status()
            no_5xx(http.get(f"/dashboard/events/{internal_id}"), proc).raise_for_status()
        no_5xx(http.get("/v1/events?limit=10"), proc).raise_for_status()


# --- CEL expressions ---------------------------------------------------------------------------------------------
ATOMS = st.sampled_from(["event.data.x", "event.data.l", "async.data.x", "event.name", "1", "2.5", "-3", "'s'",
                         "true", "null", "[1, 2]", "{'a': 1}", "b'x'", "9223372036854775807", "event.data['k']",
                         "size(event.data.l)", "x", "''", "1u", "0x7f"])  # fmt: skip
OPS = st.sampled_from([" + ", " - ", " * ", " / ", " % ", " == ", " != ", " < ", " >= ", " && ", " || ", " in "])


def _grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, OPS, inner).map("".join),
        inner.map(lambda e: f"({e})"),
        inner.map(lambda e: f"!{e}"),
        st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} ? {t[1]} : {t[2]}"),
        st.tuples(st.sampled_from(["map", "filter", "all", "exists", "exists_one"]), inner).map(
            lambda t: f"event.data.l.{t[0]}(x, {t[1]})"),
        inner.map(lambda e: f"[{e}, {e}]"),
    )  # fmt: skip


CEL = (
    st.recursive(ATOMS, _grow, max_leaves=40)
    | st.builds(lambda n, op, atom: op.join([atom] * n), st.integers(1, 20_000), OPS, ATOMS)
    | st.text(max_size=60)
)


@SETTINGS
@given(trigger=CEL, key=CEL, wait=CEL, data=JSON)
def test_generated_expressions(server: tuple[httpx.Client, Proc], trigger: str, key: str, wait: str,
                               data: Any) -> None:  # fmt: skip
    http, proc = server
    fn = fn_config(APP_URL, "gen", event="fz/e", concurrency=[{"limit": 1, "key": key}],
                   cancel=[{"event": "fz/w", "if": wait}])  # fmt: skip
    fn["triggers"] = [{"event": "fz/e", "expression": trigger}]
    resp = no_5xx(http.post("/fn/register", json=register_body(APP_URL, [fn], app_id="fz")), proc)
    assert resp.status_code in (200, 400), resp.text[:300]
    for name in ("fz/e", "fz/w"):
        sent = no_5xx(http.post("/e/key", content=raw_body({"name": name, "data": {"x": data, "l": [data] * 3}})),
                      proc)  # fmt: skip
        assert sent.status_code in (200, 400)
    no_5xx(http.post("/v1/cancellations", json={"app_id": "fz", "function_id": "gen", "started_before": "0",
                                                "if": trigger}), proc)  # fmt: skip
    no_5xx(http.get("/v1/functions"), proc).raise_for_status()
    no_5xx(http.get("/dashboard/functions/fz-gen"), proc)


# --- filters -----------------------------------------------------------------------------------------------------
FILTER_VALUES = st.text(max_size=30) | st.integers().map(str) | st.sampled_from(["9" * 40, "-1", "0", "1e400",
                                                                                 "2026-13-45T25:61:61Z"])  # fmt: skip


@SETTINGS
@given(params=st.dictionaries(st.sampled_from(["status", "function_id", "app_id", "created_after", "created_before",
                                               "limit", "cursor", "name", "from", "to", "range", "q", "before"]),
                              FILTER_VALUES, max_size=5))  # fmt: skip
def test_filter_values(server: tuple[httpx.Client, Proc], params: dict[str, str]) -> None:
    http, proc = server
    for path in ("/v1/runs", "/v1/events", "/v1/cancellations", "/dashboard/runs", "/dashboard/events"):
        no_5xx(http.get(path, params=params), proc)


def test_the_server_survived_every_input(server: tuple[httpx.Client, Proc], tmp_path: Path) -> None:
    http, proc = server
    assert proc.alive(), proc.output()
    assert http.get("/health").status_code == 200
    assert "Traceback" not in proc.log.read_text(errors="replace"), proc.output()
