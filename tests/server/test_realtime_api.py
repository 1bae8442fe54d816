"""The realtime API as Inngest serves it (publish, tee, tokens, SSE and WebSocket subscriptions) on a real socket,
in dev (open) and cloud (signing key, tokens) mode, with the bad inputs the issue lists."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from stepline import Context, FakeClock, Stepline

from .live_server import LiveServer, live_server

KEY = "signkey-test-" + "ab" * 32
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def dev(client: Stepline) -> AsyncIterator[LiveServer]:
    async with live_server(client) as server:
        yield server


@pytest.fixture
async def cloud(client: Stepline) -> AsyncIterator[LiveServer]:
    async with live_server(client, kind="cloud", signing_keys=(KEY,), event_keys=frozenset({"ek"})) as server:
        yield server


async def token(server: LiveServer, channel: str, *topics: str, headers: dict[str, str] | None = None) -> str:
    resp = await server.http.post("/v1/realtime/token", json=[{"channel": channel, "name": t, "kind": "run"}
                                                             for t in topics], headers=headers)  # fmt: skip
    assert resp.status_code == 201, resp.text
    jwt_text: str = resp.json()["jwt"]
    return jwt_text


async def sse(server: LiveServer, query: str, count: int, headers: dict[str, str] | None = None,
              after: Any = None) -> list[Any]:  # fmt: skip
    """Open an SSE subscription, run ``after()`` once it is open, and return its first ``count`` data events."""
    got: list[Any] = []
    async with server.http.stream("GET", f"/v1/realtime/sse?{query}", headers=headers) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["access-control-allow-origin"] == "*"
        if after is not None:
            await after()
        async with asyncio.timeout(10):
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
                    if len(got) == count:
                        return got
    return got


async def test_json_published_reaches_sse_and_websocket_subscribers_in_inngest_envelopes(dev: LiveServer) -> None:
    tok = await token(dev, "orders", "status", "other")
    async with connect(f"{dev.ws_url}/v1/realtime/connect?token={tok}") as ws:

        async def publish() -> None:
            r = await dev.http.post("/v1/realtime/publish?channel=orders&topic=status", json={"paid": True})
            assert r.status_code == 200, r.text
            r = await dev.http.post(
                "/v1/realtime/publish?channel=orders&topic=status&topic=other",
                content=b"plain text, not JSON",
                headers={"content-type": "text/plain"},
            )
            assert r.status_code == 200 and len(r.json()["ids"]) == 2

        via_sse = await sse(dev, f"token={tok}", 3, after=publish)
        via_ws = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(3)]
    assert via_sse == via_ws
    first = via_sse[0]
    assert {k: first[k] for k in ("kind", "channel", "topic", "data")} == {
        "kind": "data", "channel": "orders", "topic": "status", "data": {"paid": True}}  # fmt: skip
    assert isinstance(first["id"], int) and first["created_at"].endswith("Z")
    assert [(m["topic"], m["data"]) for m in via_sse[1:]] == [("status", "plain text, not JSON"),
                                                              ("other", "plain text, not JSON")]  # fmt: skip


async def test_a_text_stream_is_published_as_start_chunks_and_end(dev: LiveServer) -> None:
    tok = await token(dev, "llm", "tokens")
    body = ("é" * 700 + "z" * 1000).encode()  # 2,400 bytes: chunks of 1,024 characters, UTF-8 kept whole

    async def parts() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 333):
            yield body[i : i + 333]
            await asyncio.sleep(0.01)

    async with connect(f"{dev.ws_url}/v1/realtime/connect?token={tok}") as ws:
        r = await dev.http.post("/v1/realtime/publish?channel=llm&topic=tokens", content=parts(),
                                headers={"content-type": "text/stream"})  # fmt: skip
        assert r.status_code == 200, r.text
        got = []
        async with asyncio.timeout(10):
            while not got or got[-1]["kind"] != "datastream-end":
                got.append(json.loads(await ws.recv()))
    start, *chunks, end = got
    stream_id = r.json()["stream_id"]
    assert (start["kind"], start["data"], end["data"]) == ("datastream-start", stream_id, stream_id)
    assert {c["kind"] for c in chunks} == {"chunk"}
    assert all(c["stream_id"] == stream_id and c["channel"] == "llm" and c["topic"] == "tokens" for c in chunks)
    assert "".join(c["data"] for c in chunks) == body.decode()


async def test_tee_sends_raw_bytes_to_the_stream_topic(dev: LiveServer) -> None:
    tok = await token(dev, "run-1", "$stream")
    raw = b"event: token\ndata: hello\n\n"
    async with dev.http.stream("GET", f"/v1/realtime/sse?token={tok}") as resp:
        r = await dev.http.post("/v1/realtime/publish/tee?channel=run-1", content=raw)
        assert r.status_code == 200, r.text
        seen = b""
        async with asyncio.timeout(10):
            async for chunk in resp.aiter_bytes():
                seen += chunk
                if raw in seen:
                    break
    assert seen == b":\n\n" + raw  # as they are: no envelope


async def test_tokens_are_inngest_jwts_scoped_to_channel_and_topics(dev: LiveServer, clock: FakeClock) -> None:
    tok = await token(dev, "c", "a", "b")
    claims = jwt.decode(tok, options={"verify_signature": False})
    assert claims["iss"] == "rt.inngest.com" and claims["exp"] - claims["iat"] == 60
    assert [(t["channel"], t["name"], t["kind"]) for t in claims["topics"]] == [("c", "a", "run"), ("c", "b", "run")]
    ok = await dev.http.get(f"/v1/realtime/sse?token={tok}&channel=other")
    assert ok.status_code == 403 and "does not grant channel 'other'" in ok.json()["error"]
    wrong = await dev.http.get(f"/v1/realtime/sse?token={tok}&topic=a&topic=secret")
    assert wrong.status_code == 403 and "does not grant */secret" in wrong.json()["error"]
    wider = {**claims, "topics": [{"kind": "run", "channel": "c", "name": "secret"}]}
    forged = jwt.encode(wider, "not the server's secret, 32 bytes", algorithm="HS256")
    r = await dev.http.get(f"/v1/realtime/sse?token={forged}")
    assert r.status_code == 401 and "Signature verification failed" in r.json()["error"]
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{dev.ws_url}/v1/realtime/connect?token={forged}"):
            pass
    assert refused.value.response.status_code == 401
    clock.advance(dt.timedelta(seconds=61))
    r = await dev.http.get("/v1/realtime/sse", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 401 and "expired" in r.json()["error"]
    for body in ([], {"channel": "c"}, [{"channel": "", "name": "a"}], [{"channel": "c", "name": "a", "kind": "x"}]):
        bad = await dev.http.post("/v1/realtime/token", json=body)
        assert bad.status_code == 400, (body, bad.text)


async def test_dev_is_open_but_not_to_other_sites(dev: LiveServer) -> None:
    async def publish() -> None:
        await dev.http.post("/v1/realtime/publish?channel=c&topic=t", json=1)

    [got] = await sse(dev, "channel=c&topic=t", 1, after=publish)  # no token: a script, not a page
    assert got["data"] == 1
    r = await dev.http.get("/v1/realtime/sse?channel=c&topic=t", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and "needs a realtime token" in r.json()["error"]
    assert (await dev.http.get("/v1/realtime/sse")).status_code == 400


async def test_cloud_needs_the_signing_key_to_publish_and_mint_and_a_token_to_subscribe(cloud: LiveServer) -> None:
    h = cloud.http
    assert (await h.post("/v1/realtime/publish?channel=c&topic=t", json=1)).status_code == 401
    assert (await h.post("/v1/realtime/token", json=[{"channel": "c", "name": "t"}])).status_code == 401
    assert (await h.get("/v1/realtime/sse?channel=c&topic=t")).status_code == 401
    tok = await token(cloud, "c", "t", headers=AUTH)
    r = await h.post("/v1/realtime/publish?channel=c&topic=t", json=1, headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 403 and "not for publishing" in r.json()["error"]

    async def publish() -> None:
        r = await h.post("/v1/realtime/publish?channel=c&topic=t", json={"n": 1}, headers=AUTH)
        assert r.status_code == 200

    [got] = await sse(cloud, f"token={tok}", 1, after=publish)
    assert got["data"] == {"n": 1}


async def test_publish_refuses_oversized_messages_and_ended_or_unknown_runs(client: Stepline) -> None:
    @client.function(id="quick", trigger="q/go")
    async def quick(ctx: Context) -> int:
        return 1

    async with live_server(client) as dev:
        h = dev.http
        big = await h.post("/v1/realtime/publish?channel=c&topic=t", content=b'"' + b"x" * 600_000 + b'"')
        assert big.status_code == 413 and "524288 bytes" in big.json()["error"]
        assert (await h.post("/v1/realtime/publish?topic=t", json=1)).status_code == 400
        missing_topic = await h.post("/v1/realtime/publish?channel=c", json=1)
        assert missing_topic.status_code == 400 and "topic" in missing_topic.json()["error"]
        unknown = await h.post("/v1/realtime/publish?channel=c&topic=t&run_id=nope", json=1)
        assert unknown.status_code == 404
        [run] = await client.send_and_wait({"name": "q/go"}, timeout=10)
        ended = await h.post(f"/v1/realtime/publish?channel=c&topic=t&run_id={run.id}", json=1)
        assert ended.status_code == 409 and "has ended (completed)" in ended.json()["error"]
        too_long = await h.post(f"/v1/realtime/publish?channel={'c' * 600}&topic=t", json=1)
        assert too_long.status_code == 400 and "at most 512" in too_long.json()["error"]


async def test_a_late_sse_subscriber_gets_the_replay_and_last_event_id_resumes(dev: LiveServer) -> None:
    ids = []
    for n in range(3):
        r = await dev.http.post("/v1/realtime/publish?channel=job&topic=p", json=n)
        ids += r.json()["ids"]
    tok = await token(dev, "job", "p")
    assert [m["data"] for m in await sse(dev, f"token={tok}&since=0", 3)] == [0, 1, 2]
    resumed = await sse(dev, f"token={tok}", 2, headers={"Last-Event-ID": str(ids[0])})
    assert [m["data"] for m in resumed] == [1, 2]
    assert (await dev.http.get(f"/v1/realtime/sse?token={tok}&since=x")).status_code == 400


async def test_a_slow_subscriber_is_told_why_and_disconnected(dev: LiveServer, client: Stepline) -> None:
    hub = client.engine.realtime
    hub.max_messages = 5
    tok = await token(dev, "c", "t")
    async with connect(f"{dev.ws_url}/v1/realtime/connect?token={tok}") as ws:
        await asyncio.sleep(0.1)
        from stepline.realtime.messages import new_message

        await hub.publish([new_message("c", "t", i, 0) for i in range(20)])  # faster than anyone can read
        last = None
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionClosedError):
                while True:
                    last = json.loads(await ws.recv())
        assert last is not None and last["kind"] == "closing"
        assert last["data"]["reason"].startswith("slow subscriber: 5 messages")
        assert ws.close_code == 1008
    assert hub.subscriptions == 0 and hub.slow_subscribers == 1


async def test_a_subscriber_that_vanishes_frees_everything_at_once(dev: LiveServer, client: Stepline) -> None:
    hub = client.engine.realtime
    tok = await token(dev, "c", "t")
    async with httpx.AsyncClient(base_url=dev.url) as other:
        async with other.stream("GET", f"/v1/realtime/sse?token={tok}") as resp:
            assert resp.status_code == 200
            async with connect(f"{dev.ws_url}/v1/realtime/connect?token={tok}"):
                await asyncio.sleep(0.1)
                assert hub.subscriptions == 2
    async with asyncio.timeout(2):  # not at the next keepalive (15 s): the disconnect is noticed at once
        while hub.subscriptions:
            await asyncio.sleep(0.02)
    assert hub.topics == 0


async def test_websocket_clients_subscribe_and_unsubscribe_with_messages(dev: LiveServer) -> None:
    first = await token(dev, "c", "a")
    second = await token(dev, "c", "b")
    async with connect(f"{dev.ws_url}/v1/realtime/connect?token={first}") as ws:
        await ws.send(json.dumps({"kind": "sub", "data": second}))
        await ws.send(json.dumps({"kind": "unsub", "data": [{"channel": "c", "name": "a", "kind": "run"}]}))
        await ws.send("not json")
        await asyncio.sleep(0.2)
        for topic in ("a", "b"):
            await dev.http.post(f"/v1/realtime/publish?channel=c&topic={topic}", json=topic)
        got = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert got["topic"] == "b"


async def test_shutdown_ends_subscriptions_with_a_closing_message(dev: LiveServer) -> None:
    tok = await token(dev, "c", "t")
    async with connect(f"{dev.ws_url}/v1/realtime/connect?token={tok}") as ws:
        await asyncio.sleep(0.1)
        dev.live.stop()
        last = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert last["kind"] == "closing" and "shutting down" in last["data"]["reason"]


async def test_the_browser_script_is_served(dev: LiveServer) -> None:
    r = await dev.http.get("/v1/realtime/stepline-realtime.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert "SteplineRealtime" in r.text and "/v1/realtime/sse" in r.text
