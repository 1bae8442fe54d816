"""The outbound-request policy: what the server may call when a URL came from an app or an API caller.

Names resolve through a stubbed resolver: no test looks a name up or opens a connection outside loopback. A
name the stub maps to 127.0.0.1 reaches the local fake app for real; names mapped to link-local, private or
metadata addresses are refused before any connection is attempted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from stepline.server.app_calls import AppCallFailed, AppCalls
from stepline.server.outbound import (
    OutboundClient,
    OutboundFailed,
    OutboundPolicy,
    OutboundRefused,
    OutboundTooLarge,
    PolicyResolver,
    excerpt,
)

from .fake_app import FakeApp, MakeStack, fn_config, raw, register_body, registers_on_put, sdk, stack_factory

NAMES = {
    "app.test": ["127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mapped.test": ["::ffff:169.254.169.254"],
    "private.test": ["10.1.2.3"],
    "mixed.test": ["169.254.0.1", "127.0.0.1"],
}


async def stub_lookup(host: str) -> list[str]:
    if host not in NAMES:
        raise OSError(f"unknown test name {host}")
    return NAMES[host]


@pytest.fixture
async def app() -> AsyncIterator[FakeApp]:
    fake = FakeApp()
    yield fake
    await fake.astop()


def on(app: FakeApp, name: str) -> str:
    return app.url.replace("127.0.0.1", name)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("app.test/api/inngest", "has no scheme"),
        ("ftp://app.test/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://169.254.169.254/latest/meta-data", "always refused"),
        ("http://[fe80::1]/x", "always refused"),
        ("http://[::ffff:169.254.169.254]/x", "always refused"),
        ("http://0.0.0.0:8288/x", "always refused"),
        ("http://[fd00:ec2::254]/x", "always refused"),
        ("http://app.test:99999/x", "not a valid URL"),
        ("http:///nohost", "has no host"),
    ],
)
def test_refused_forms_and_literal_addresses(url: str, reason: str) -> None:
    with pytest.raises(OutboundRefused, match=reason):
        OutboundPolicy().check_url(url)


def test_private_targets_only_under_deny_private_and_with_exceptions() -> None:
    open_policy = OutboundPolicy()
    for url in ("http://10.0.0.5/x", "http://127.0.0.1:3000/api", "http://[::1]:3000/", "http://192.168.1.9/"):
        open_policy.check_url(url)
    strict = OutboundPolicy(deny_private=True, allow=("10.8.0.0/16", "apps.internal"))
    with pytest.raises(OutboundRefused, match="private or loopback"):
        strict.check_url("http://127.0.0.1:3000/api")
    with pytest.raises(OutboundRefused, match="private or loopback"):
        strict.check_url("http://100.64.0.1/")  # carrier-grade NAT is not global either
    strict.check_url("http://10.8.3.4/x")  # allowed network
    strict.check_url("http://8.8.8.8/x")  # global
    assert strict.address_refusal("apps.internal", "10.0.0.9") is None  # allowed host name
    assert strict.address_refusal("other.internal", "10.0.0.9") is not None
    assert OutboundPolicy(trusted_hosts=frozenset({"169.254.169.254"})).check_url("http://169.254.169.254/")


async def test_names_are_checked_after_resolution(app: FakeApp) -> None:
    app.start()
    app.script(None, raw(200, "hello"))
    client = OutboundClient(OutboundPolicy(), lookup=stub_lookup)
    try:
        ok = await client.request("GET", on(app, "app.test"))
        assert (ok.status, ok.body) == (200, b"hello")
        for name in ("metadata.test", "mapped.test"):
            with pytest.raises(OutboundRefused, match="always refused"):
                await client.request("GET", f"http://{name}:{app.port}/x")
        # a name with one refused and one allowed address connects to the allowed one only
        assert (await client.request("GET", on(app, "mixed.test"))).status == 200
        strict = OutboundClient(OutboundPolicy(deny_private=True), lookup=stub_lookup)
        with pytest.raises(OutboundRefused, match="private or loopback"):
            await strict.request("GET", f"http://private.test:{app.port}/x")
        with pytest.raises(OutboundRefused, match="private or loopback"):
            await strict.request("GET", on(app, "app.test"))
        await strict.close()
    finally:
        await client.close()
    assert len(app.calls) == 2  # the refused targets were never connected to


async def test_every_redirect_is_checked(app: FakeApp) -> None:
    app.start()
    app.script(None, raw(302, "", location="http://metadata.test/latest/meta-data"))
    client = OutboundClient(OutboundPolicy(), lookup=stub_lookup)
    try:
        with pytest.raises(OutboundRefused, match="169.254.169.254"):
            await client.request("GET", on(app, "app.test"))
        app.script(None, raw(307, "", location="http://169.254.169.254/"))
        with pytest.raises(OutboundRefused, match="always refused"):
            await client.request("POST", on(app, "app.test"), body=b"{}")
        app.script(None, raw(302, "", location=on(app, "app.test")))
        with pytest.raises(OutboundFailed, match="more than 5 redirects"):
            await client.request("GET", on(app, "app.test"))
        assert len(app.calls) == 1 + 1 + 6
        app.calls.clear()
        app.script(None, raw(302, "", location=app.url + "?hop=1"), raw(200, "landed"))
        got = await client.request("GET", on(app, "app.test"), headers={"Authorization": "Bearer secret"})
        assert got.body == b"landed"
        assert app.calls[0].headers.get("authorization") == "Bearer secret"
        assert "authorization" not in app.calls[1].headers  # another host: credentials are not forwarded
    finally:
        await client.close()


async def test_answers_are_size_limited_and_deadlined(app: FakeApp) -> None:
    from .fake_app import Reply

    app.start()
    client = OutboundClient(OutboundPolicy(), lookup=stub_lookup)
    try:
        app.script(None, raw(200, "x" * 50_000))
        with pytest.raises(OutboundTooLarge):
            await client.request("GET", on(app, "app.test"), max_bytes=10_000)
        app.script(None, Reply(200, b"late", hang=5))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.request("GET", on(app, "app.test"), timeout=0.3)
        assert time.monotonic() - started < 2
    finally:
        await client.close()


async def test_function_calls_go_through_the_policy(app: FakeApp) -> None:
    app.start()
    app.script(None, sdk(200, "done"))
    policy = OutboundPolicy()
    calls = AppCalls(policy=policy, resolver=PolicyResolver(policy, stub_lookup))
    try:
        assert (await calls.post(on(app, "app.test"), b"{}", {}, 10_000)).status == 200
        with pytest.raises(AppCallFailed, match="refused by the outbound policy: .*always refused"):
            await calls.post(f"http://metadata.test:{app.port}/api/inngest", b"{}", {}, 10_000)
        with pytest.raises(AppCallFailed, match="refused by the outbound policy: .*always refused"):
            await calls.post("http://169.254.169.254/api/inngest", b"{}", {}, 10_000)
    finally:
        await calls.close()


def test_excerpts_are_short_and_printable() -> None:
    body = b"<html>\x1b[31m" + b"A" * 5000 + b"\r\n\x00</html>"
    text = excerpt(body)
    assert len(text) <= 240 and text.isprintable() and text.endswith("…")
    assert excerpt("short  \n answer") == "short answer"


# --- the server's own uses ---------------------------------------------------------------------------------------
@pytest.fixture
async def make_stack(client, clock, caplog) -> AsyncIterator[MakeStack]:  # type: ignore[no-untyped-def]
    async with stack_factory(client, clock, caplog) as make:
        yield make


async def test_api_and_registrations_refuse_what_the_policy_refuses(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack(outbound_lookup=stub_lookup)
    res = await s.api.post("/v1/apps/sync", json={"url": "app.test/api/inngest"})
    assert res.status_code == 400 and "has no scheme" in res.json()["error"]
    res = await s.api.post("/v1/apps/sync", json={"url": "http://169.254.169.254/api/inngest"})
    assert res.status_code == 400 and "always refused" in res.json()["error"]
    res = await s.api.post("/v1/apps/sync", json={"url": f"http://metadata.test:{app.port}/api/inngest"})
    assert res.status_code == 502 and "refused by the outbound policy" in res.json()["error"]
    body = {"url": "http://169.254.169.254/api", "appName": "evil", "functions": []}
    res = await s.api.post("/fn/register", json=body)
    assert res.status_code == 400 and "refused by the outbound policy" in res.json()["error"]


async def test_a_failing_app_is_retried_with_backoff_and_its_answer_quoted_short(
    app: FakeApp, make_stack: MakeStack
) -> None:
    app.start()
    app.on_put = raw(500, "<html>" + "stack trace line\n" * 400 + "</html>")
    s = await make_stack(sdk_urls=(app.url,), poll_interval=0.05)
    await asyncio.sleep(1.6)
    puts = [c for c in app.calls if c.method == "PUT"]
    # every 50 ms would be ~32 PUTs; with backoff 0.05, 0.1, 0.2, 0.4, 0.8 s after each failure: at most 6
    assert 3 <= len(puts) <= 6, len(puts)
    stored = await s.store.get_app(app.url)
    assert stored is not None and stored.error is not None
    assert stored.error.startswith("the app answered the sync with HTTP 500: <html>stack trace line")
    assert len(stored.error) < 320
    app.on_put = registers_on_put(s.url, register_body(app.url, [fn_config(app.url, "charge")]))
    await asyncio.sleep(2.0)
    assert (await s.store.get_app(app.url)).error is None  # type: ignore[union-attr]
