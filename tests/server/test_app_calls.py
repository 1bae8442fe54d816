"""AppCalls, the HTTP client of the server's calls to apps, against a real app on a socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stepline.server.app_calls import AppCallFailed, AppCalls, ResponseTooLarge, app_origin
from stepline.server.outbound import proxy_for

from .fake_app import APP_ID, FakeApp, MakeStack, complete, fn_config, register_body


@pytest.fixture
async def app() -> AsyncIterator[FakeApp]:
    fake = FakeApp().start()
    fake.script(None, complete({"ok": True}))
    yield fake
    await fake.astop()


@pytest.fixture
async def calls() -> AsyncIterator[AppCalls]:
    c = AppCalls()
    yield c
    await c.close()


async def test_a_call_returns_status_lower_case_headers_and_the_exact_body(app: FakeApp, calls: AppCalls) -> None:
    answer = await calls.post(app.url + "?fnId=f&stepId=step", b'{"a": 1}', {"Content-Type": "application/json",
                              "X-Inngest-Step-ID": "step"}, 10_000)  # fmt: skip
    assert (answer.status, answer.body) == (200, b'{"ok": true}')
    assert answer.headers["content-type"] == "application/json"
    [call] = app.calls
    assert (call.body, call.headers["x-inngest-step-id"], call.query["fnId"]) == (b'{"a": 1}', "step", "f")


async def test_credentials_in_netrc_are_not_sent_to_apps(
    app: FakeApp, calls: AppCalls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("default login alice password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    await calls.post(app.url, b"{}", {"Content-Type": "application/json"}, 10_000)
    [call] = app.calls
    assert "authorization" not in call.headers


def test_proxies_come_from_the_environment_once_per_app_unless_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    cache: dict[str, str | None] = {}
    assert proxy_for("http://app.internal:3000/api/inngest?fnId=a", cache) == "http://proxy.internal:3128"
    assert proxy_for("http://127.0.0.1:3000/api/inngest", cache) is None
    assert proxy_for("https://app.internal/api/inngest", cache) is None  # no HTTPS_PROXY
    monkeypatch.setenv("HTTP_PROXY", "http://other:1")
    assert proxy_for("http://app.internal:3000/x", cache) == "http://proxy.internal:3128"  # looked up once


async def test_a_header_the_client_refuses_to_send_is_a_failed_call_not_a_crash(app: FakeApp, calls: AppCalls) -> None:
    with pytest.raises(AppCallFailed, match="ValueError"):
        await calls.post(app.url, b"{}", {"X-Inngest-Step-ID": "a\r\nInjected: 1"}, 10_000)
    assert app.calls == []


async def test_a_refused_connection_names_the_error(calls: AppCalls) -> None:
    closed = FakeApp()  # a free port nobody listens on
    with pytest.raises(AppCallFailed, match="^ClientConnectorError: Cannot connect to host 127.0.0.1"):
        await calls.post(closed.url, b"{}", {}, 10_000)


def test_an_app_origin_is_scheme_host_and_port_and_an_unparsable_url_is_its_own() -> None:
    assert app_origin("http://127.0.0.1:3000/api/inngest?fnId=a&stepId=step") == "http://127.0.0.1:3000"
    assert app_origin("https://App.example.com/x") == "https://App.example.com"
    assert app_origin("http://[::1:3000/api/inngest") == "http://[::1:3000/api/inngest"


# --- HTTP/1.0 answers with Transfer-Encoding: chunked (some proxies) --------------------------------------------------
@contextlib.asynccontextmanager
async def http10_app(body: bytes, piece: int = 0) -> AsyncIterator[str]:
    """An app behind a proxy that answers every call with HTTP/1.0, ``Transfer-Encoding: chunked`` and a plain (not
    chunked) body, then closes the connection; ``piece``: write the answer that many bytes at a time."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        answer = (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                  b"X-Inngest-SDK: js:v4.24.0\r\n\r\n" + body)  # fmt: skip
        for i in range(0, len(answer), piece or len(answer)):
            writer.write(answer[i : i + (piece or len(answer))])
            await writer.drain()
            if piece:
                await asyncio.sleep(0)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api/inngest"
    finally:
        server.close()
        await server.wait_closed()


async def test_an_http10_answer_with_chunked_encoding_is_read_to_the_end_of_the_connection(calls: AppCalls) -> None:
    body = json.dumps({"items": ["x" * 100] * 2000}).encode()  # ~200 KB, many reads
    for piece in (0, 3):  # whole, or a few bytes at a time (the status line split across reads)
        async with http10_app(body, piece) as url:
            answer = await calls.post(url, b"{}", {"Content-Type": "application/json"}, 10_000_000)
        assert (answer.status, answer.body) == (200, body), piece
        assert answer.headers["transfer-encoding"] == "chunked"


async def test_an_http10_answer_larger_than_the_limit_is_cut_off(calls: AppCalls) -> None:
    async with http10_app(b"[" + b"1," * 100_000 + b"1]") as url:
        with pytest.raises(ResponseTooLarge):
            await calls.post(url, b"{}", {}, 10_000)


async def test_a_run_behind_an_http10_proxy_completes(make_stack: MakeStack) -> None:
    s = await make_stack()
    async with http10_app(json.dumps({"through": "the proxy"}).encode()) as url:
        res = await s.register(register_body(url, [fn_config(url, "proxied")]))
        assert res.status_code == 200, res.text
        event_id = await s.send()
        await s.drain()
    run = (await s.runs_of(event_id))[f"{APP_ID}-proxied"]
    assert (run.status, run.output, run.error) == ("completed", {"through": "the proxy"}, None), run
