"""AppCalls, the HTTP client of the server's calls to apps, against a real app on a socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stepline.server.app_calls import AppCallFailed, AppCalls, app_origin
from stepline.server.outbound import proxy_for

from .fake_app import FakeApp, complete


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
