"""Realtime with the official SDKs, unmodified, against ``stepline dev`` and ``stepline start``: the npm SDK 4.x
publishes (``step.realtime.publish``, ``inngest.realtime.publish``) and subscribes with its own ``subscribe`` over
the WebSocket, with tokens from ``getSubscriptionToken`` or from Stepline's helper; the Python SDK publishes and
mints tokens (``inngest.experimental.realtime``) and a subscriber reads them over server-sent events."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from stepline import Stepline

from .harness import NODE_APP_DIR, PY_APP_DIR, AppSpec, Stack, new_token, node_or_skip, wait_for

pytestmark = pytest.mark.compat


def node_realtime_app() -> AppSpec:
    node = node_or_skip()
    return AppSpec("node realtime_app.js", "compat-rt-node", NODE_APP_DIR,
                   lambda port: [node, "--experimental-websocket", "--no-warnings", "realtime_app.js"])  # fmt: skip


def python_realtime_app() -> AppSpec:
    import sys

    return AppSpec("python realtime_app.py", "compat-rt-py", PY_APP_DIR,
                   lambda port: [sys.executable, "-m", "uvicorn", "realtime_app:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning"])  # fmt: skip


class SseReader:
    """Reads an SSE subscription in a thread; ``messages`` fills as data events arrive."""

    def __init__(self, url: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        wait_for("the SSE subscription to open", lambda: self.status)
        assert self.status == 200

    def _read(self, url: str) -> None:
        with httpx.Client(timeout=30) as http, http.stream("GET", url) as resp:
            self.status = resp.status_code
            for line in resp.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("data: "):
                    self.messages.append(json.loads(line[6:]))

    def close(self) -> None:
        self._stop.set()


@pytest.fixture
def sse(stack: Stack) -> Iterator[list[SseReader]]:
    readers: list[SseReader] = []
    yield readers
    for r in readers:
        r.close()


def stepline_token(stack: Stack, channel: str, topics: list[str]) -> str:
    """A token from Stepline's own helper, on the server's database (the secret lives there)."""
    import asyncio

    async def mint() -> str:
        client = Stepline("compat-tokens", str(stack.workdir / "stepline.db"))
        try:
            return await client.realtime_token(channel, topics, expires_in=120)
        finally:
            await client.close()

    return asyncio.run(mint())


class TestNodeRealtime:
    app = staticmethod(node_realtime_app)

    def subscribe(self, stack: Stack, token: str, key: str | None = None) -> None:
        r = stack.http.post(f"{stack.app_url}/subscribe", json={"token": token, "key": key})
        assert r.status_code == 200, f"{r.text}\n{stack.diagnostics()}"
        stack.wait_records(token, what="rt-subscribed")

    def test_a_function_publishes_and_the_sdk_subscriber_receives(self, stack: Stack) -> None:
        token = new_token()
        self.subscribe(stack, token)
        [event_id] = stack.send({"name": "compat/rt", "data": {"token": token}})
        [run] = stack.wait_runs(event_id)
        ended = stack.wait_ended(run["run_id"])
        assert ended["status"] == "Completed" and ended["output"] == {"n": 42}
        got = stack.wait_records(token, 2, what="rt-message")
        assert [(m["topic"], m["data"]["stage"]) for m in got] == [("status", "started"), ("done", "done")]
        assert {m["kind"] for m in got} == {"data"} and {m["channel"] for m in got} == {f"compat-rt:{token}"}
        assert {m["run_id"] for m in got} == {run["run_id"]}
        assert got[1]["data"]["n"] == 42
        # step.realtime.publish is a memoised step: one message although the SDK replayed the function per call
        assert len(stack.records(token, what="rt-message")) == 2
        steps = stack.steps_by_name(run["run_id"])
        assert steps["announce"][0]["output"] == {"token": token, "stage": "started"}

    def test_stepline_tokens_and_sse_work_with_the_sdk(self, stack: Stack, sse: list[SseReader]) -> None:
        token = new_token()
        channel = f"compat-rt:{token}"
        key = stepline_token(stack, channel, ["status", "done"])
        self.subscribe(stack, token, key)
        sse.append(SseReader(f"{stack.server_url}/v1/realtime/sse?token={key}&since=0"))
        r = stack.http.post(f"{stack.app_url}/publish", json={"token": token})
        assert r.status_code == 200, r.text
        [got] = stack.wait_records(token, what="rt-message")
        assert (got["topic"], got["data"], got["run_id"]) == ("status", {"outside": True}, None)
        wait_for("the SSE subscriber's message", lambda: sse[0].messages)
        assert sse[0].messages[0]["data"] == {"outside": True}

    def test_a_token_for_other_topics_is_refused(self, stack: Stack) -> None:
        key = stepline_token(stack, "compat-rt:other", ["status"])
        r = stack.http.get(f"{stack.server_url}/v1/realtime/sse?token={key}&channel=compat-rt:mine")
        assert r.status_code == 403


class TestPythonRealtime:
    app = staticmethod(python_realtime_app)

    def test_the_python_sdk_publishes_and_mints_tokens(self, stack: Stack, sse: list[SseReader]) -> None:
        token = new_token()
        key = stack.http.post(f"{stack.app_url}/token", json={"token": token}).json()["key"]
        sse.append(SseReader(f"{stack.server_url}/v1/realtime/sse?token={key}"))
        [event_id] = stack.send({"name": "compat/rt", "data": {"token": token}})
        [run] = stack.wait_runs(event_id)
        assert stack.wait_ended(run["run_id"])["status"] == "Completed"
        wait_for("two messages", lambda: len(sse[0].messages) >= 2)
        got = sse[0].messages
        assert [(m["topic"], m["data"]["stage"]) for m in got] == [("status", "started"), ("done", "done")]
        assert got[1]["data"]["n"] == 42
        assert all(m["channel"] == f"compat-rt:{token}" for m in got)
        unsigned = httpx.post(f"{stack.server_url}/v1/realtime/publish?channel=c&topic=t", json=1)
        assert unsigned.status_code == (200 if stack.mode == "dev" else 401)
