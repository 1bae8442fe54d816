"""POST /v1/traces/userland (OTLP, JSON and protobuf) keeps an app's spans with their run; GET /v1/runs/{id}/traces
reads them back. Bad input: too large (413, also once decompressed), not OTLP (400), unauthenticated in start (401).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from starlette.applications import Starlette

from stepline import Context, Stepline
from stepline.protocol.signing import hashed_signing_key
from stepline.server import rest_api, traces_api
from stepline.server.config import ServerConfig
from stepline.server.state import ServerState

from ..integration.helpers import drain

SIGNING_KEY = "signkey-test-" + "cd" * 32
TRACE = "5b8efff798038103d269b633813fc60c"
Api = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def make_api(client: Stepline) -> AsyncIterator[Api]:
    opened: list[httpx.AsyncClient] = []

    async def make(config: ServerConfig | None = None) -> httpx.AsyncClient:
        app = Starlette(routes=traces_api.routes() + rest_api.routes())
        http = httpx.AsyncClient()
        app.state.stepline = ServerState(engine=client.engine, config=config or ServerConfig(), http=http)
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stepline")
        opened.extend([http, api])
        return api

    yield make
    for c in opened:
        await c.aclose()


@pytest.fixture
async def run_id(client: Stepline) -> str:
    @client.function(id="traced", trigger="t/traced")
    async def traced(ctx: Context) -> int:
        return 1

    [event_id] = await client.send({"name": "t/traced"})
    await drain(client)
    [run] = await client.runs_for_event(event_id)
    return run.id


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def protobuf_request(spans: list[tuple[str, str, str | None]]) -> bytes:
    """(name, span id hex, run id or None) each, in one resource and scope, as an SDK's exporter sends them."""
    out = []
    for name, span_id, run in spans:
        attrs = [_kv("http.route", "/x")] + ([_kv("sdk.run.id", run)] if run else [])
        ids = {"trace_id": bytes.fromhex(TRACE), "span_id": bytes.fromhex(span_id)}
        out.append(Span(**ids, name=name, kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=1_000,
                        end_time_unix_nano=2_000, attributes=attrs))  # fmt: skip
    scope = ScopeSpans(scope=InstrumentationScope(name="inngest", version="4.24.0"), spans=out)
    resource = Resource(attributes=[_kv("service.name", "node-app")])
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope])])
    return request.SerializeToString()


def json_request(run: str, *, span_id: str = "eee19b7ec3c1b174") -> dict[str, Any]:
    """What the npm SDK's OTLP/HTTP JSON exporter posts: hex ids, times as strings."""
    return {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
            "scopeSpans": [{"scope": {"name": "inngest", "version": "4.24.0"}, "spans": [{
                "traceId": TRACE, "spanId": span_id, "parentSpanId": "eee19b7ec3c1b173", "name": "db.query",
                "kind": 3, "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
                "attributes": [{"key": "sdk.run.id", "value": {"stringValue": run}},
                               {"key": "rows", "value": {"intValue": "3"}}],
                "status": {"code": 1}, "unknownFieldFromANewerSdk": True}]}]}]}  # fmt: skip


async def test_protobuf_spans_are_kept_with_their_run_and_the_rest_refused(make_api: Api, run_id: str) -> None:
    api = await make_api()
    spans = [("fetch", "00f067aa0ba902b7", run_id), ("parse", "00f067aa0ba902b8", run_id),
             ("orphan", "00f067aa0ba902b9", None), ("elsewhere", "00f067aa0ba902ba", "no-such-run")]  # fmt: skip
    body = protobuf_request(spans)
    resp = await api.post("/v1/traces/userland", content=body, headers={"Content-Type": "application/x-protobuf"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(resp.content)
    assert answer.partial_success.rejected_spans == 2
    assert "name no run" in answer.partial_success.error_message
    stored = (await api.get(f"/v1/runs/{run_id}/traces")).json()["data"]
    assert [(s["seq"], s["name"], s["spanId"], s["traceId"]) for s in stored] == [
        (1, "fetch", "00f067aa0ba902b7", TRACE), (2, "parse", "00f067aa0ba902b8", TRACE)]  # fmt: skip
    assert stored[0]["kind"] == "SPAN_KIND_CLIENT" and stored[0]["scope"] == {"name": "inngest", "version": "4.24.0"}
    assert {"key": "service.name", "value": {"stringValue": "node-app"}} in stored[0]["resource"]["attributes"]
    assert (await api.get("/v1/runs/nope/traces")).status_code == 404


async def test_json_spans_as_the_npm_sdk_sends_them_gzip_or_not(make_api: Api, run_id: str) -> None:
    api = await make_api()
    resp = await api.post("/v1/traces/userland", json=json_request(run_id))
    assert resp.status_code == 200 and resp.json() == {}  # no partialSuccess: everything was taken
    zipped = gzip.compress(json.dumps(json_request(run_id, span_id="eee19b7ec3c1b175")).encode())
    resp = await api.post("/v1/traces/userland", content=zipped,
                          headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})  # fmt: skip
    assert resp.status_code == 200
    stored = (await api.get(f"/v1/runs/{run_id}/traces")).json()["data"]
    assert [s["spanId"] for s in stored] == ["eee19b7ec3c1b174", "eee19b7ec3c1b175"]
    assert stored[0]["parentSpanId"] == "eee19b7ec3c1b173" and stored[0]["traceId"] == TRACE
    assert {"key": "rows", "value": {"intValue": "3"}} in stored[0]["attributes"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "not JSON"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, "JSON object"),
        (json.dumps({"resourceSpans": "no"}).encode(), {"Content-Type": "application/json"}, 400, "not an OTLP"),
        (
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "name": "x"}]}]}]}).encode(),
            {"Content-Type": "application/json"},
            400,
            "is not hex",
        ),
        (b"\xff\xfe\x00garbage\x12", {"Content-Type": "application/x-protobuf"}, 400, "protobuf"),
        (b"x", {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"}, 400, "not supported"),
        (b"not gzip", {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, 400, "not valid gzip"),
    ],
)
async def test_malformed_bodies_get_400_with_the_reason(make_api: Api, body: bytes, headers: dict[str, str],
                                                        status: int, message: str) -> None:  # fmt: skip
    api = await make_api()
    resp = await api.post("/v1/traces/userland", content=body, headers=headers)
    assert resp.status_code == status and message in resp.json()["error"], resp.text


async def test_oversized_bodies_get_413_declared_streamed_or_once_decompressed(make_api: Api) -> None:
    api = await make_api()
    limit = traces_api.USERLAND_TRACE_LIMIT
    big = b"\x00" * (limit + 1)
    resp = await api.post("/v1/traces/userland", content=big, headers={"Content-Type": "application/x-protobuf"})
    assert resp.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is found while reading
        for _ in range(9):
            yield b"\x00" * (1024 * 1024)

    resp = await api.post("/v1/traces/userland", content=chunks(), headers={"Content-Type": "application/x-protobuf"})
    assert resp.status_code == 413
    bomb = gzip.compress(b"\x00" * (limit + 1))  # small on the wire, over the limit inflated
    assert len(bomb) < 64 * 1024
    resp = await api.post("/v1/traces/userland", content=bomb,
                          headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})  # fmt: skip
    assert resp.status_code == 413 and "limit" in resp.json()["error"]


async def test_start_mode_needs_the_signing_key_as_the_sdks_send_it(make_api: Api, run_id: str) -> None:
    api = await make_api(ServerConfig(kind="cloud", signing_keys=(SIGNING_KEY,)))
    body = json_request(run_id)
    assert (await api.post("/v1/traces/userland", json=body)).status_code == 401
    assert (await api.get(f"/v1/runs/{run_id}/traces")).status_code == 401
    bearer = {"Authorization": f"Bearer {hashed_signing_key(SIGNING_KEY, keep_prefix=True)}"}
    assert (await api.post("/v1/traces/userland", json=body, headers=bearer)).status_code == 200
    assert len((await api.get(f"/v1/runs/{run_id}/traces", headers=bearer)).json()["data"]) == 1
