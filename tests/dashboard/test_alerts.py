"""Failure alerts: real HTTP posts to a local receiver through the outbound-request policy, once per cluster (the
store's ``alerts`` lease), rate limited into summaries or by a failure-rate threshold, with a fake clock."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from stepline import FakeClock, Stepline
from stepline.server.alert_rules import AlertRule, parse_rule
from stepline.server.dashboard.alerts import LISTED, POST_ATTEMPTS, FailureAlerts
from stepline.server.outbound import OutboundClient, OutboundPolicy
from stepline.storage.base import Store

from ..backends import Backend
from ..integration.helpers import drain
from .dash_app import _seen, define


class Receiver:
    """A webhook endpoint on a loopback port that keeps every JSON body posted to it (answering ``status``)."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received
        self.status = 204

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
async def outbound() -> AsyncIterator[OutboundClient]:
    client = OutboundClient(OutboundPolicy())
    yield client
    await client.close()


@pytest.fixture
async def app(client: Stepline) -> Stepline:
    _seen.clear()
    define(client)
    await client.ready()
    return client


def alerts_for(client: Stepline, clock: FakeClock, outbound: OutboundClient, *rules: AlertRule, owner: str = "node-a",
               store: Store | None = None) -> FailureAlerts:  # fmt: skip
    return FailureAlerts(store or client.store, clock, outbound, list(rules), owner=owner, cooldown=60,
                         base_url="http://dash:8288/")  # fmt: skip


async def fail(client: Stepline, n: int, prefix: str) -> None:
    await client.send([{"name": "dash/checkout", "data": {"key": f"{prefix}{i}"}} for i in range(n)])
    await drain(client)


async def test_first_failure_posts_at_once_then_a_burst_is_one_summary(
    app: Stepline, clock: FakeClock, receiver: Receiver, outbound: OutboundClient
) -> None:
    await fail(app, 1, "before")  # failures before any server alerted are not alerted
    alerts = alerts_for(app, clock, outbound, AlertRule("*", receiver.url))
    await alerts.check()
    assert receiver.received == []

    await fail(app, 1, "first")
    await alerts.check()
    [first] = receiver.received
    [item] = first["stepline"]["failures"]
    assert first["stepline"]["kind"] == "run.failed" and item["function_id"] == "test-app-checkout"
    assert item["error"]["message"] == "card declined for first0" and "Traceback" in item["error"]["stack"]
    assert item["url"] == f"http://dash:8288/dashboard/runs/{item['run_id']}"
    assert item["url"] in first["text"] and "card declined for first0" in first["text"]

    await fail(app, 14, "burst")  # inside the cooldown: held
    await alerts.check()
    clock.advance(dt.timedelta(seconds=30))
    await alerts.check()
    assert len(receiver.received) == 1

    clock.advance(dt.timedelta(seconds=31))
    await alerts.check()  # the cooldown ended: one summary of the 14
    assert len(receiver.received) == 2
    summary = receiver.received[1]["stepline"]
    assert summary["kind"] == "runs.failed" and summary["count"] == 14
    assert summary["functions"] == {"test-app-checkout": 14} and len(summary["failures"]) == LISTED
    assert "14 more runs failed" in receiver.received[1]["text"]

    await alerts.check()
    clock.advance(dt.timedelta(minutes=5))
    await alerts.check()
    assert len(receiver.received) == 2  # nothing new: nothing sent

    await fail(app, 2, "later")  # quiet for long enough: the first posts at once again
    await alerts.check()
    assert len(receiver.received) == 3 and receiver.received[2]["stepline"]["kind"] == "run.failed"


@pytest.fixture
async def other_store(app: Stepline, backend: Backend) -> AsyncIterator[Store]:
    """Another store on the database of ``app``'s: another server of the cluster."""
    store = backend.same_database(app.store)
    await store.open()
    yield store
    await store.close()


async def test_servers_sharing_a_store_post_each_failure_once(
    app: Stepline, clock: FakeClock, receiver: Receiver, outbound: OutboundClient, other_store: Store
) -> None:
    rule = AlertRule("*", receiver.url)
    a = alerts_for(app, clock, outbound, rule, owner="node-a")
    b = alerts_for(app, clock, outbound, rule, owner="node-b", store=other_store)
    await a.check()
    await b.check()
    assert (a.holding, b.holding) == (True, False)
    await fail(app, 1, "one")
    for _ in range(3):
        await a.check()
        await b.check()
    assert len(receiver.received) == 1  # one post, from the holder
    # The holder dies (stops checking): once its lease expires the other takes over and goes on from what was
    # delivered, so a failure stored meanwhile is posted once, by it.
    await fail(app, 1, "two")
    clock.advance(dt.timedelta(seconds=61))
    await b.check()
    assert b.holding
    [_, second] = receiver.received
    assert second["stepline"]["failures"][0]["error"]["message"] == "card declined for two0"
    await b.check()
    assert len(receiver.received) == 2


async def test_a_holder_that_dies_mid_send_leaves_the_failure_to_the_next_one(
    app: Stepline, clock: FakeClock, receiver: Receiver, outbound: OutboundClient, other_store: Store
) -> None:
    rule = AlertRule("*", receiver.url)
    a = alerts_for(app, clock, outbound, rule, owner="node-a")
    await a.check()
    await fail(app, 1, "lost")
    receiver.status = 503  # the post does not get through; then node-a dies before trying again
    await a.check()
    assert len(receiver.received) == 1
    receiver.status = 204
    clock.advance(dt.timedelta(seconds=16))  # its lease expired
    b = alerts_for(app, clock, outbound, rule, owner="node-b", store=other_store)
    await b.check()
    assert len(receiver.received) == 2  # at least once: posted again by the next holder
    assert receiver.received[1]["stepline"]["failures"][0]["error"]["message"] == "card declined for lost0"


async def test_a_webhook_that_fails_is_tried_three_times_then_dropped(
    app: Stepline, clock: FakeClock, receiver: Receiver, outbound: OutboundClient, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = alerts_for(app, clock, outbound, AlertRule("*", receiver.url))
    await alerts.check()
    receiver.status = 500
    await fail(app, 1, "x")
    for _ in range(POST_ATTEMPTS + 2):
        await alerts.check()
    assert len(receiver.received) == POST_ATTEMPTS
    assert "dropped after 3 attempts" in caplog.text


async def test_an_unreachable_webhook_is_logged_not_raised(
    app: Stepline, clock: FakeClock, outbound: OutboundClient, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = alerts_for(app, clock, outbound, AlertRule("*", "http://127.0.0.1:9/hook"))
    await alerts.check()
    await fail(app, 1, "x")
    await alerts.check()
    assert alerts.posts == 1 and "not delivered" in caplog.text


async def test_webhooks_follow_the_outbound_policy(
    app: Stepline, clock: FakeClock, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    denied = OutboundClient(OutboundPolicy(deny_private=True))
    try:
        metadata = AlertRule("*", "http://169.254.169.254/latest/hook")  # link-local: always refused
        loopback = AlertRule("*", receiver.url)  # private/loopback: refused with deny_private
        alerts = alerts_for(app, clock, denied, metadata, loopback)
        await alerts.check()
        await fail(app, 1, "x")
        for _ in range(3):
            await alerts.check()
    finally:
        await denied.close()
    assert receiver.received == []
    assert "refused by the outbound-request policy" in caplog.text and "link-local" in caplog.text
    assert "private or loopback" in caplog.text
    assert alerts.posts == 2  # one attempt each: a refusal is not retried


async def test_rules_route_by_function_glob_in_slack_form(
    app: Stepline, clock: FakeClock, receiver: Receiver, outbound: OutboundClient
) -> None:
    with Receiver() as other:
        checkout = parse_rule(f"*-checkout {receiver.url} slack")
        greet = parse_rule(f"test-app-greet {other.url}")
        alerts = alerts_for(app, clock, outbound, checkout, greet)
        await alerts.check()
        await fail(app, 1, "s")
        await alerts.check()
        assert other.received == []  # greet did not fail
        [body] = receiver.received
        assert set(body) == {"text", "blocks"}  # Slack's incoming-webhook shape
        assert body["blocks"][0]["text"]["type"] == "mrkdwn"
        assert "`test-app-checkout`" in body["text"] and "<http://dash:8288/dashboard/runs/" in body["text"]


async def test_a_rate_rule_alerts_once_per_window_while_above_the_threshold(
    app: Stepline, clock: FakeClock, receiver: Receiver, outbound: OutboundClient
) -> None:
    rule = parse_rule(f"test-app-* {receiver.url} rate>20%/10m")
    alerts = alerts_for(app, clock, outbound, rule)
    await app.send([{"name": "dash/greet", "data": {}}] * 8)
    await drain(app)
    await fail(app, 1, "a")
    await alerts.check()
    assert receiver.received == []  # 1 of 9 runs failed: 11 %
    await fail(app, 2, "b")
    await alerts.check()
    [alert] = receiver.received  # 3 of 11: 27 %
    assert alert["stepline"]["kind"] == "rate" and alert["stepline"]["failed"] == 3
    assert alert["stepline"]["ended"] == 11 and alert["stepline"]["functions"] == {"test-app-checkout": 3}
    assert "27% of the runs of test-app-* failed in the last 10m" in alert["text"]
    await fail(app, 3, "c")
    clock.advance(dt.timedelta(minutes=5))
    await alerts.check()
    assert len(receiver.received) == 1  # at most once per window
    clock.advance(dt.timedelta(minutes=6))
    await fail(app, 3, "d")  # the earlier runs left the window; these 3 of 3 failed
    await alerts.check()
    assert len(receiver.received) == 2 and receiver.received[1]["stepline"]["failed"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*", "an alert rule is 'GLOB URL"),
        ("* ftp://x", "needs an http(s) webhook URL"),
        ("* http://x rate>120%/10m", "between 0 and 100"),
        ("* http://x rate>5%/soon", "the rate window"),
        ("* http://x loud", "unknown alert rule option 'loud'"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rule(text)
    rule = parse_rule("billing-* https://hooks.example/x rate>20%/10m slack")
    assert (rule.pattern, rule.rate and rule.rate.percent, rule.rate and rule.rate.window_ms, rule.slack) == (
        "billing-*", 20.0, 600_000, True)  # fmt: skip
