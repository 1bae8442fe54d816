"""Inputs that used to get a 500, or to be accepted and then break reads (issue: hardening), on both stores.

Every event the API accepts can be read back by every API and dashboard page (a hypothesis property), and what it
cannot serve back it refuses with a 400 naming the event and the field.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepline import Context, Stepline

from .asgi import asgi_server

HEADERS = {"content-type": "application/json"}


@pytest.fixture
async def api(client: Stepline) -> AsyncIterator[httpx.AsyncClient]:
    @client.function(id="echo", trigger="t/*")
    async def echo(ctx: Context) -> Any:
        return ctx.event.data

    await client.ready()
    async with asgi_server(client) as http:
        yield http


def nested(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (f'{{"name": "t/deep", "data": {nested(300)}}}', "the event: data.a.a"),
        (f'[{{"name": "t/ok"}}, {{"name": "t/deep", "data": {nested(150)}}}]', "event 1 of 2: data.a."),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply to be parsed"),
        ('{"name": "t/s", "data": {"x": "\\ud800"}}', "data.x: the string contains an unpaired UTF-16 surrogate"),
        ('{"name": "t/s", "data": {"\\udc00": 1}}', "contains an unpaired UTF-16 surrogate"),
        ('{"name": "t/\\ud800"}', "'name' contains an unpaired UTF-16 surrogate"),
        ('{"name": "t/nul\\u0000"}', "'name' contains a NUL character"),
        ('{"name": "t/id", "id": "a\\u0000b"}', "'id' contains a NUL character"),
        ('{"name": "t/big", "data": {"n": ' + "9" * 4000 + "}}", "data.n: an integer of 4000 digits is outside"),
        ('{"name": "t/big", "data": {"n": 9223372036854775808}}', "data.n: 9223372036854775808 is outside"),
        ('{"name": "t/inf", "data": {"x": [1e400]}}', "data.x[0]: inf is not a finite number"),
        ('{"name": "' + "n" * 600 + '"}', "'name' is 600 characters long; the limit is 512"),
        ('{"name": "t/u", "user": {"k": -9223372036854775809}}', "user.k: -9223372036854775809 is outside"),
    ],
)
async def test_events_the_api_cannot_serve_back_are_refused_by_index_and_field(
    api: httpx.AsyncClient, client: Stepline, body: str, error: str
) -> None:
    resp = await api.post("/e/key", content=body.encode(), headers=HEADERS)
    assert resp.status_code == 400, resp.text[:500]
    assert error in resp.json()["error"], resp.json()["error"][:500]
    assert await client.store.list_events(None, 10) == []  # nothing of the request was stored


async def test_the_same_checks_hold_for_the_python_client(client: Stepline) -> None:
    deep: Any = 1
    for _ in range(150):
        deep = {"a": deep}
    for event, error in [
        ({"name": "t/deep", "data": deep}, "nested more than 100 levels deep"),
        ({"name": "t/big", "data": {"n": 2**64}}, "outside the signed 64-bit integer range"),
        ({"name": "t/nul\x00"}, "the event's name contains a NUL character"),
        ({"name": "t/s", "data": {"s": "\ud800"}}, "unpaired UTF-16 surrogate"),
        ({"name": "t/nan", "data": {"x": float("nan")}}, "data.x: nan is not a finite number"),
    ]:
        with pytest.raises(ValueError, match=error):
            await client.send(event)


async def test_time_and_limit_filters_out_of_range_are_400s(api: httpx.AsyncClient) -> None:
    for query in ("created_after=99999999999999999999999", "created_before=" + "9" * 5000, "limit=0",
                  "limit=-3", "limit=100000", "limit=" + "9" * 5000, "created_after=\uff11\uff12\uff13"):  # fmt: skip
        resp = await api.get(f"/v1/runs?{query}")
        assert resp.status_code == 400, (query, resp.text[:300])
    for query in ("from=99999999999999999999", "to=" + "9" * 5000):
        resp = await api.get(f"/dashboard/runs?{query}")
        assert resp.status_code == 400, (query, resp.text[:300])


# --- every accepted event can be read back ----------------------------------------------------------------------
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
LEAVES = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
NAMES = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and "\x00" not in s).map(lambda s: "t/" + s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, data=st.dictionaries(st.text(max_size=10), VALUES, max_size=5), depth=st.integers(0, 95))
async def test_every_accepted_event_is_readable_everywhere(
    api: httpx.AsyncClient, name: str, data: dict[str, Any], depth: int
) -> None:
    for _ in range(depth):
        data = {"d": data}
    resp = await api.post("/e/key", content=json.dumps({"name": name, "data": data}).encode(), headers=HEADERS)
    if resp.status_code == 400:  # refused: it must say why, naming a field
        assert resp.json()["error"], resp.text
        return
    assert resp.status_code == 200, resp.text[:500]
    [internal_id] = resp.json()["ids"]
    got = await api.get(f"/v1/events/{internal_id}")
    assert got.status_code == 200 and got.json()["data"]["data"] == data
    for path in ("/v1/events?limit=5", f"/v1/events/{internal_id}/runs", "/dashboard/events",
                 f"/dashboard/events/{internal_id}"):  # fmt: skip
        page = await api.get(path)
        assert page.status_code == 200, (path, page.text[:300])


CRASHING_SUM = " + ".join(["1"] * 15_000) + " > 0"


async def test_the_crashing_expression_is_refused_at_every_entry_point(api: httpx.AsyncClient) -> None:
    cancel = {"app_id": "test-app", "function_id": "echo", "started_before": "2030-01-01T00:00:00Z", "if": CRASHING_SUM}
    resp = await api.post("/v1/cancellations", json=cancel)
    assert resp.status_code == 400 and "the limit is 16,384" in resp.json()["error"]
    url = "http://127.0.0.1:9/api/inngest"
    base = {"id": "a-f", "name": "f", "triggers": [{"event": "t/x"}],
            "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "http", "url": url}}}}  # fmt: skip
    for extra, field in [
        ({"triggers": [{"event": "t/x", "expression": CRASHING_SUM}]}, "triggers[0].expression"),
        ({"cancel": [{"event": "t/c", "if": CRASHING_SUM}]}, "cancel"),
        ({"concurrency": [{"limit": 1, "key": CRASHING_SUM}]}, "concurrency"),
        ({"idempotency": CRASHING_SUM}, "idempotency"),
        ({"priority": {"run": " + ".join(["1"] * 100)}}, "priority"),
    ]:
        body = {"url": url, "appName": "a", "functions": [{**base, **extra}]}
        resp = await api.post("/fn/register", json=body)
        assert resp.status_code == 400, (field, resp.text[:300])
        assert field in resp.json()["error"] and "refused" in resp.json()["error"], resp.json()["error"][:300]
