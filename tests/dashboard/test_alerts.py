"""Failure alerts: real HTTP posts to a local receiver, rate limited into summaries, with a fake clock."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from stepline import FakeClock, Stepline
from stepline.server.dashboard.alerts import LISTED, FailureAlerts

from ..integration.helpers import drain
from .dash_app import _seen, define


class Receiver:
    """A webhook endpoint on a loopback port that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
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


async def fail(client: Stepline, n: int, prefix: str) -> None:
    await client.send([{"name": "dash/checkout", "data": {"key": f"{prefix}{i}"}} for i in range(n)])
    await drain(client)


async def test_first_failure_posts_at_once_then_a_burst_is_one_summary(client: Stepline, clock: FakeClock,
                                                                       receiver: Receiver) -> None:  # fmt: skip
    _seen.clear()
    define(client)
    await client.ready()
    await fail(client, 1, "before")  # failures before the server started are not alerted
    async with httpx.AsyncClient() as http:
        alerts = FailureAlerts(client.store, clock, http, receiver.url, cooldown=60, base_url="http://dash:8288/")
        await alerts.start()
        await alerts.check()
        assert receiver.received == []

        await fail(client, 1, "first")
        await alerts.check()
        [first] = receiver.received
        [item] = first["stepline"]["failures"]
        assert first["stepline"]["kind"] == "run.failed" and item["function_id"] == "test-app-checkout"
        assert item["error"]["message"] == "card declined for first0" and "Traceback" in item["error"]["stack"]
        assert item["url"] == f"http://dash:8288/dashboard/runs/{item['run_id']}"
        assert item["url"] in first["text"] and "card declined for first0" in first["text"]

        await fail(client, 14, "burst")  # inside the cooldown: held
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

        await fail(client, 2, "later")  # quiet for long enough: the first posts at once again
        await alerts.check()
        assert len(receiver.received) == 3 and receiver.received[2]["stepline"]["kind"] == "run.failed"


async def test_an_unreachable_webhook_is_logged_not_raised(client: Stepline, clock: FakeClock,
                                                           caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    _seen.clear()
    define(client)
    await client.ready()
    async with httpx.AsyncClient() as http:
        alerts = FailureAlerts(client.store, clock, http, "http://127.0.0.1:9/hook", cooldown=60)
        await alerts.start()
        await fail(client, 1, "x")
        await alerts.check()
    assert alerts.posts == 1 and "not delivered" in caplog.text
