"""The event API (``POST /e/{key}``, ``POST /invoke/{id}``) on a real store, SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import inngest
import pytest
import uvicorn
from inngest._internal.errors import SendEventsError
from starlette.applications import Starlette

from stepline import Context, FakeClock, Stepline
from stepline.protocol.signing import hashed_signing_key
from stepline.server import events_api
from stepline.server.config import ServerConfig
from stepline.server.event_ids import event_ids
from stepline.server.state import ServerState
from stepline.storage.records import RunFilter

from ..eventually import eventually_sync
from ..pg_cluster import free_port

SEED = "1767225600000," + base64.b64encode(bytes(range(10))).decode()
SIGNING_KEY = "signkey-test-" + "ab" * 32
MiB = 1024 * 1024

MakeApi = Callable[..., Awaitable[httpx.AsyncClient]]


def build_app(client: Stepline, config: ServerConfig, http: httpx.AsyncClient) -> Starlette:
    app = Starlette(routes=events_api.routes())
    app.state.stepline = ServerState(engine=client.engine, config=config, http=http)
    return app


@pytest.fixture
async def orders(client: Stepline) -> Stepline:
    """Two functions triggered by ``shop/order`` and one by ``shop/refund``."""

    @client.function(id="charge", trigger="shop/order")
    async def charge(ctx: Context) -> None: ...

    @client.function(id="email", trigger="shop/order")
    async def email(ctx: Context) -> None: ...

    @client.function(id="refund", trigger="shop/refund")
    async def refund(ctx: Context) -> None: ...

    await client.ready()
    return client


@pytest.fixture
async def make_api(orders: Stepline) -> AsyncIterator[MakeApi]:
    opened: list[httpx.AsyncClient] = []

    async def make(config: ServerConfig | None = None) -> httpx.AsyncClient:
        http = httpx.AsyncClient()
        app = build_app(orders, config or ServerConfig(), http)
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")
        opened.extend([http, api])
        return api

    yield make
    for c in opened:
        await c.aclose()


@pytest.fixture
async def api(make_api: MakeApi) -> httpx.AsyncClient:
    return await make_api()


async def all_runs(client: Stepline) -> list[Any]:
    return await client.store.list_runs(RunFilter(limit=1000))


async def all_events(client: Stepline) -> list[Any]:
    return await client.store.list_events(None, 1000)


async def post_events(api: httpx.AsyncClient, body: Any, *, seed: str | None = SEED, key: str = "dev_key") -> Any:
    headers = {"x-inngest-event-id-seed": seed} if seed else {}
    return await api.post(f"/e/{key}", json=body, headers=headers)


# --- success ---
async def test_an_array_of_events_starts_runs_and_returns_the_seeded_ids(
    api: httpx.AsyncClient, orders: Stepline
) -> None:
    res = await post_events(api, [{"name": "shop/order", "data": {"n": 1}}, {"name": "shop/refund", "data": {}}])
    assert res.status_code == 200
    ids = event_ids(SEED, 2)
    assert res.json() == {"ids": ids, "status": 200}
    order_runs = await orders.runs_for_event(ids[0])
    assert sorted(r.function_id for r in order_runs) == ["test-app-charge", "test-app-email"]
    assert [r.function_id for r in await orders.runs_for_event(ids[1])] == ["test-app-refund"]
    stored = await orders.store.get_event(ids[0])
    assert stored is not None
    assert (stored.name, stored.data, stored.id) == ("shop/order", {"n": 1}, ids[0])  # no id: the internal id


async def test_a_single_event_object_is_accepted(api: httpx.AsyncClient, orders: Stepline) -> None:
    res = await post_events(api, {"name": "shop/refund", "data": {"x": 1}}, seed=None)
    assert res.status_code == 200
    [event_id] = res.json()["ids"]
    assert len(await orders.runs_for_event(event_id)) == 1


async def test_an_empty_array_stores_nothing(api: httpx.AsyncClient, orders: Stepline) -> None:
    res = await post_events(api, [])
    assert (res.status_code, res.json()) == (200, {"ids": [], "status": 200})
    assert await all_events(orders) == []


async def test_fields_are_normalised(api: httpx.AsyncClient, orders: Stepline, clock: FakeClock) -> None:
    body = [
        {"name": "shop/refund", "data": {"a": 1, "_inngest": {"fn_id": "x"}}, "meta": {"sessions": {}}, "extra": 1,
         "user": {"email": "a@b.c"}, "v": "2024-01-01.1", "ts": 1_700_000_000_000},
        {"name": "shop/refund", "data": None, "id": "", "ts": 0},
    ]  # fmt: skip
    res = await post_events(api, body)
    assert res.status_code == 200, res.json()
    first, second = [await orders.store.get_event(i) for i in res.json()["ids"]]
    assert first is not None and second is not None
    assert first.data == {"a": 1}  # data._inngest dropped; meta and unknown fields ignored
    assert (first.user, first.v, first.ts) == ({"email": "a@b.c"}, "2024-01-01.1", 1_700_000_000_000)
    assert (second.data, second.user, second.ts) == ({}, {}, clock.now_ms())
    assert second.id == second.internal_id  # an empty id counts as none


async def test_the_content_type_is_not_checked(api: httpx.AsyncClient, orders: Stepline) -> None:
    res = await api.post("/e/k", content=b'[{"name":"shop/refund"}]', headers={"content-type": "text/plain"})
    assert res.status_code == 200
    assert len(await all_runs(orders)) == 1


# --- idempotency ---
async def test_a_retried_request_reuses_the_ids_and_starts_no_run(api: httpx.AsyncClient, orders: Stepline) -> None:
    body = [
        {"name": "shop/order", "data": {"n": 1}},
        {"name": "shop/order", "data": {"n": 2}, "id": "order-2"},
        {"name": "shop/refund", "data": {}, "id": "refund-1"},
    ]
    first = await post_events(api, body)
    runs_before = await all_runs(orders)
    assert len(runs_before) == 5
    second = await post_events(api, body)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json() == {"ids": event_ids(SEED, 3), "status": 200}
    assert sorted(r.id for r in await all_runs(orders)) == sorted(r.id for r in runs_before)
    assert len(await all_events(orders)) == 3
    explicit = await orders.store.get_event(first.json()["ids"][1])
    assert explicit is not None and explicit.id == "order-2"


async def test_explicit_ids_deduplicate_across_seeds(api: httpx.AsyncClient, orders: Stepline) -> None:
    other_seed = "1767225600001," + base64.b64encode(b"\xff" * 10).decode()
    body = [{"name": "shop/order", "id": "order-9"}, {"name": "shop/refund"}]
    first = await post_events(api, body)
    second = await post_events(api, body, seed=other_seed)
    assert first.json()["ids"] != second.json()["ids"]
    assert len(await all_events(orders)) == 4  # a new request: both events are stored again
    runs = await all_runs(orders)
    assert sorted(r.function_id for r in runs) == ["test-app-charge", "test-app-email", "test-app-refund",
                                                   "test-app-refund"]  # fmt: skip
    assert await orders.runs_for_event(second.json()["ids"][0]) == []  # "order-9" already started its runs


async def test_two_events_sharing_an_id_start_one_run_per_function(api: httpx.AsyncClient, orders: Stepline) -> None:
    res = await post_events(api, [{"name": "shop/order", "id": "dup"}, {"name": "shop/order", "id": "dup"}])
    assert res.status_code == 200
    assert sorted(r.function_id for r in await all_runs(orders)) == ["test-app-charge", "test-app-email"]


async def test_a_retried_request_cancels_nothing(api: httpx.AsyncClient, orders: Stepline) -> None:
    @orders.function(id="latest", trigger="doc/edited", cancel_on=[{"event": "doc/edited", "match": "data.doc"}])
    async def latest(ctx: Context) -> None: ...

    await orders.ready()
    body = [{"name": "doc/edited", "data": {"doc": 1}}]
    first = await post_events(api, body)
    assert (await post_events(api, body)).json() == first.json()
    [run] = await orders.runs_for_event(first.json()["ids"][0])
    assert run.status == "queued"


async def test_without_a_seed_every_request_is_new(api: httpx.AsyncClient, orders: Stepline) -> None:
    a = await post_events(api, [{"name": "shop/refund"}], seed=None)
    b = await post_events(api, [{"name": "shop/refund"}], seed="garbage")
    assert a.json()["ids"] != b.json()["ids"]
    assert len(await all_runs(orders)) == 2


# --- rejected requests ---
async def assert_rejected(res: httpx.Response, status: int, *fragments: str) -> None:
    body = res.json()
    assert res.status_code == status, body
    assert body["status"] == status and body["ids"] == []
    for fragment in fragments:
        assert fragment in body["error"]


async def test_invalid_json_is_a_400(api: httpx.AsyncClient, orders: Stepline) -> None:
    for raw in [b"{not json", b"", b'[{"name": "shop/order", "data": {"x": NaN}}]', b"\xff\xfe\x00"]:
        await assert_rejected(await api.post("/e/k", content=raw), 400, "request body")
    await assert_rejected(await post_events(api, 42), 400, "expected a JSON event or an array")
    await assert_rejected(await post_events(api, ["shop/order"]), 400, "the event is not a JSON object")
    assert await all_events(orders) == []


async def test_one_bad_event_stores_nothing(api: httpx.AsyncClient, orders: Stepline) -> None:
    res = await post_events(api, [{"name": "shop/order"}, {"data": {}}, {"name": "shop/refund"}])
    await assert_rejected(res, 400, "event 1 of 3", "'name'")
    assert await all_events(orders) == []
    assert await all_runs(orders) == []


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        ({"name": "inngest/function.finished"}, "reserved"),
        ({"name": "stepline/function.failed"}, "reserved"),
        ({"name": ""}, "'name'"),
        ({"name": "a", "data": [1]}, "'data' must be a JSON object"),
        ({"name": "a", "ts": 1000}, "ts 1000"),
        ({"name": "a", "ts": 4_102_444_800_001}, "between 1980 and 2100"),
        ({"name": "a", "ts": "1700000000000"}, "'ts' must be an integer"),
        ({"name": "a", "ts": 1.7e12}, "'ts' must be an integer"),
        ({"name": "a", "id": 5}, "'id' must be a string"),
        ({"name": "a", "user": "x"}, "'user'"),
        ({"name": "a", "v": 1}, "'v'"),
    ],
)
async def test_invalid_events_are_a_400(api: httpx.AsyncClient, orders: Stepline, event: Any, fragment: str) -> None:
    await assert_rejected(await post_events(api, [event]), 400, fragment)
    assert await all_events(orders) == []


async def test_more_than_5000_events_is_a_400(api: httpx.AsyncClient, orders: Stepline) -> None:
    await assert_rejected(await post_events(api, [{"name": "shop/refund"}] * 5001), 400, "5001 events", "5000")
    assert await all_events(orders) == []
    assert (await post_events(api, [{"name": "nobody/listens"}] * 5000)).status_code == 200


async def test_an_event_over_3_mib_is_a_400_naming_it(api: httpx.AsyncClient, orders: Stepline) -> None:
    big = {"name": "shop/refund", "data": {"blob": "x" * (3 * MiB)}}
    res = await post_events(api, [{"name": "shop/refund"}, big])
    await assert_rejected(res, 400, "event 1 of 2", str(3 * MiB))
    assert await all_events(orders) == []
    fits = {"name": "shop/refund", "data": {"blob": "x" * (3 * MiB - 100)}}
    assert (await post_events(api, [fits])).status_code == 200


async def test_a_body_over_the_limit_is_a_413_read_no_further(make_api: MakeApi, orders: Stepline) -> None:
    api = await make_api(ServerConfig(max_body_bytes=10_000))
    body = json.dumps([{"name": "shop/refund", "data": {"x": "y" * 20_000}}]).encode()
    await assert_rejected(await api.post("/e/k", content=body), 413, "10000 bytes")

    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the server must count
        for i in range(100):
            sent.append(i)
            yield b" " * 1000

    await assert_rejected(await api.post("/e/k", content=chunks()), 413)
    assert len(sent) < 20  # stopped soon after the 10th chunk instead of reading all 100
    assert await all_events(orders) == []


# --- event keys ---
async def test_dev_accepts_any_event_key(api: httpx.AsyncClient) -> None:
    for key in ["dev_key", "NO_EVENT_KEY_SET", "anything"]:
        assert (await post_events(api, {"name": "shop/refund"}, seed=None, key=key)).status_code == 200


@pytest.mark.parametrize(
    ("config", "key", "accepted"),
    [
        (ServerConfig(kind="cloud", event_keys=frozenset({"k1", "k2"})), "k2", True),
        (ServerConfig(kind="cloud", event_keys=frozenset({"k1", "k2"})), "k3", False),
        (ServerConfig(kind="cloud", event_keys=frozenset({"k1"})), "K1", False),
        (ServerConfig(kind="cloud"), "anything", False),
        (ServerConfig(kind="dev", event_keys=frozenset({"k1"})), "k1", True),
        (ServerConfig(kind="dev", event_keys=frozenset({"k1"})), "nope", False),
    ],
)
async def test_event_keys(make_api: MakeApi, orders: Stepline, config: ServerConfig, key: str, accepted: bool) -> None:
    api = await make_api(config)
    res = await post_events(api, [{"name": "shop/refund"}], key=key)
    if accepted:
        assert res.status_code == 200
    else:
        assert res.status_code == 401
        assert res.json() == {"status": 401, "message": "", "error": "Event key not found"}
        assert await all_events(orders) == []


# --- invoke ---
async def test_invoke_starts_a_run_with_the_data(api: httpx.AsyncClient, orders: Stepline) -> None:
    for body, data in [({"data": {"x": 1, "_inngest": {"correlation_id": "forged"}}}, {"x": 1}),
                       ({"y": 2}, {"y": 2}), (None, {})]:  # fmt: skip
        res = await api.post("/invoke/test-app-charge", content=b"" if body is None else json.dumps(body))
        assert res.status_code == 200, res.json()
        [run_id] = res.json()["ids"]
        assert res.json() == {"ids": [run_id], "status": 200}
        run = await orders.get_run(run_id)
        assert run is not None and run.function_id == "test-app-charge"
        trigger = await orders.store.get_event(run.event_id)
        assert trigger is not None and trigger.data == data


async def test_invoke_errors(make_api: MakeApi, api: httpx.AsyncClient, orders: Stepline) -> None:
    res = await api.post("/invoke/charge", json={"data": {}})  # the bare slug is not enough: ids are <app>-<fn>
    assert res.status_code == 404
    assert res.json()["status"] == 404 and "charge" in res.json()["error"]
    res = await api.post("/invoke/test-app-charge", json=[1])
    assert (res.status_code, res.json()["status"]) == (400, 400)
    res = await api.post("/invoke/test-app-charge", content=b"{bad")
    assert res.status_code == 400
    assert await all_runs(orders) == []

    signed = await make_api(ServerConfig(kind="cloud", signing_keys=(SIGNING_KEY,)))
    assert (await signed.post("/invoke/test-app-charge", json={})).status_code == 401
    bearer = {"authorization": f"Bearer {hashed_signing_key(SIGNING_KEY)}"}
    assert (await signed.post("/invoke/test-app-charge", json={}, headers=bearer)).status_code == 200


# --- the official Python SDK, over a real socket ---
@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           ws="none"))  # fmt: skip
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "uvicorn stopped"
        return bool(server.started)

    eventually_sync("uvicorn to start", started, 10, interval=0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def test_the_python_sdk_sends_events(orders: Stepline) -> None:
    async with httpx.AsyncClient() as http:
        with serving(build_app(orders, ServerConfig(), http)) as url:
            sdk = inngest.Inngest(app_id="sdk-app", is_production=False, api_base_url=url, event_api_base_url=url)
            try:
                events = [inngest.Event(name="shop/order", data={"n": 1}), inngest.Event(name="shop/refund")]
                ids = await sdk.send(events)
                sync_ids = sdk.send_sync(inngest.Event(name="shop/refund", id="refund-7"))
                with pytest.raises(SendEventsError, match="reserved"):  # a 400 is not retried; its error is raised
                    await sdk.send(inngest.Event(name="inngest/nope"))
            finally:  # the SDK never closes its HTTP clients
                await sdk._http_client._http_client.aclose()
                sdk._http_client._http_client_sync.close()
    assert len(ids) == 2 and len(sync_ids) == 1
    stored = await orders.store.get_event(ids[0])
    assert stored is not None and (stored.name, stored.data) == ("shop/order", {"n": 1})
    assert len(await orders.runs_for_event(ids[0])) == 2
    assert len(await orders.runs_for_event(ids[1])) == 1
    refund = await orders.store.get_event(sync_ids[0])
    assert refund is not None and refund.id == "refund-7"
    assert len(await orders.runs_for_event(sync_ids[0])) == 1
