"""``step.ai.infer`` (AIGateway op) and ``step.fetch`` (Gateway op), issue 14 item 5: the server makes the request
the op describes and memoises ``{data}`` or ``{error}`` as Inngest does. A scripted app and a fake model server on
real sockets, the real server and store, and the fake clock (retries 10 s, 20 s, 40 s after failed attempts 0, 1,
2). Names resolve through a stub: ``model.test`` is this machine, ``metadata.test`` a cloud metadata address."""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stepline.core.ids import hash_step_id

from .fake_app import Call, FakeApp, MakeStack, Reply, complete, fn_config, ops, raw
from .test_retry_semantics import fid, register

NAMES = {"model.test": ["127.0.0.1"], "metadata.test": ["169.254.169.254"]}
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}  # fmt: skip
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "Capital of France?"}]}


async def stub_lookup(host: str) -> list[str]:
    if host not in NAMES:
        raise OSError(f"unknown test name {host}")
    return NAMES[host]


@pytest.fixture
async def model() -> AsyncIterator[FakeApp]:
    fake = FakeApp(path="/v1/chat/completions").start()
    yield fake
    await fake.astop()


def model_url(model: FakeApp, host: str = "model.test") -> str:
    return model.url.replace("127.0.0.1", host)


def ai_op(user_id: str, url: str, **opts: Any) -> dict[str, Any]:
    """As the SDKs report step.ai.infer (the Python SDK sends no ``type``; the JS SDK sends "step.ai.infer")."""
    return {"op": "AIGateway", "id": hash_step_id(user_id), "name": user_id, "displayName": user_id,
            "opts": {"type": "step.ai.infer", "url": url, "auth_key": "sk-test", "format": "openai-chat",
                     "headers": {"X-Agent": "parity"}, "body": BODY, **opts}}  # fmt: skip


def fetch_op(user_id: str, url: str, **opts: Any) -> dict[str, Any]:
    return {"op": "Gateway", "id": hash_step_id(user_id), "displayName": user_id,
            "opts": {"url": url, "method": "GET", "headers": {}, **opts}}  # fmt: skip


def echo_memo(step_id: str) -> Any:
    """The app's last discovery: return the memo it got for the step (what user code sees)."""

    def answer(call: Call) -> Reply:
        return complete(call.json()["steps"].get(hash_step_id(step_id)))

    return answer


def json_reply(status: int, payload: Any, **headers: str) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"content-type": "application/json", **headers})


async def test_ai_infer_is_made_by_the_server_and_memoised_as_data(
    app: FakeApp, model: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(outbound_lookup=stub_lookup)
    app.start()
    model.script(None, json_reply(200, ANSWER))
    app.script(fid("ask"), ops(ai_op("ask-model", model_url(model))), echo_memo("ask-model"))
    await register(s, app, fn_config(app.url, "ask"))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("ask")]
    assert (run.status, run.output) == ("completed", {"data": ANSWER}), run  # the SDK got {data: <model answer>}
    [request] = model.calls
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert json.loads(request.body) == BODY
    assert request.headers["authorization"] == "Bearer sk-test"
    assert (request.headers["content-type"], request.headers["x-agent"]) == ("application/json", "parity")
    [step] = await s.store.list_steps(run.id)
    assert (step.kind, step.status, step.output, step.attempts) == ("ai", "completed", ANSWER, 1)
    assert len(app.calls_of(fid("ask"))) == 2  # the app did not make the request: one call reported it


@pytest.mark.parametrize(("fmt", "where"), [("anthropic", "x-api-key"), ("bedrock", "authorization"),
                                            ("gemini", "?key=")])  # fmt: skip
async def test_ai_infer_puts_the_key_where_the_provider_wants_it(
    app: FakeApp, model: FakeApp, make_stack: MakeStack, fmt: str, where: str
) -> None:
    s = await make_stack(outbound_lookup=stub_lookup)
    app.start()
    model.script(None, json_reply(200, {"ok": True}))
    app.script(fid("keyed"), ops(ai_op("ask", model_url(model), format=fmt)), complete("done"))
    await register(s, app, fn_config(app.url, "keyed"))
    await s.send()
    await s.drain()
    [request] = model.calls
    if where.startswith("?"):
        assert request.query["key"] == "sk-test" and "authorization" not in request.headers
    else:
        assert request.headers[where] == "sk-test"


async def test_a_failing_model_is_retried_as_the_step_then_memoised_as_inngests_error(
    app: FakeApp, model: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(outbound_lookup=stub_lookup)
    app.start()
    overloaded = {"error": {"message": "overloaded", "type": "server_error"}}
    answers = {"/flaky": deque([json_reply(503, overloaded), json_reply(500, overloaded), json_reply(200, ANSWER)]),
               "/down": deque([json_reply(503, overloaded)])}  # fmt: skip
    model.script(None, lambda call: answers[call.path].popleft() if len(answers[call.path]) > 1 else answers[
        call.path][0])  # fmt: skip
    flaky, down = (ai_op("ask", model_url(model).replace("/v1/chat/completions", p)) for p in ("/flaky", "/down"))
    # The SDK reports the op again in each retry's discovery, then reads the memo.
    app.script(fid("flaky"), ops(flaky), ops(flaky), ops(flaky), echo_memo("ask"))
    app.script(fid("down"), ops(down), echo_memo("ask"))
    await register(s, app, fn_config(app.url, "flaky", retries=2), fn_config(app.url, "down", retries=0))
    event_id = await s.send()
    await s.drain()
    runs = await s.runs_of(event_id)
    # retries: 0 - the first failure is the step's error, in the shape Inngest stores.
    assert runs[fid("down")].output == {"error": {
        "name": "AIGatewayError", "message": "Error making AI request: unsuccessful status code: 503",
        "data": overloaded, "stack": json.dumps(overloaded)}}  # fmt: skip
    run = runs[fid("flaky")]
    assert run.idle_reason == {"kind": "retrying", "step": "ask", "until": s.now() + 10_000,
                               "error": run.idle_reason["error"]}, run  # fmt: skip
    assert run.idle_reason["error"].startswith("AIGatewayError: ")
    [step] = await s.store.list_steps(run.id)
    assert (step.kind, step.status, step.attempts, step.error["message"]) == (
        "ai",
        "retrying",
        1,
        "Error making AI request: unsuccessful status code: 503",
    )
    await s.advance(10)
    await s.advance(20)
    run = await s.run(run.id)
    assert (run.status, run.output) == ("completed", {"data": ANSWER}), run
    [step] = await s.store.list_steps(run.id)
    assert (step.status, step.attempts) == ("completed", 3)
    assert [c.path for c in model.calls].count("/flaky") == 3


async def test_step_fetch_memoises_any_answer_and_its_errors(
    app: FakeApp, model: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(outbound_lookup=stub_lookup)
    app.start()
    model.script(None, raw(404, "no such page", "text/plain", **{"x-trace": "t1"}))
    fetch = fetch_op("step.fetch: model.test", model_url(model), method="PATCH", headers={"X-A": "1"}, body="a=1&b=2")
    app.script(fid("fetcher"), ops(fetch), echo_memo("step.fetch: model.test"))
    refused = fetch_op("meta", "http://metadata.test/latest/meta-data")
    app.script(fid("sneaky"), ops(refused), echo_memo("meta"))
    await register(s, app, fn_config(app.url, "fetcher"), fn_config(app.url, "sneaky", retries=0))
    event_id = await s.send()
    await s.drain()
    runs = await s.runs_of(event_id)
    data = runs[fid("fetcher")].output["data"]
    # A 404 is an answer: the step's data, as Inngest memoises it (canonical header names, body as text).
    assert (data["status_code"], data["body"], data["url"]) == (404, "no such page", model_url(model))
    assert data["headers"]["X-Trace"] == "t1" and data["headers"]["Content-Type"].startswith("text/plain")
    [request] = model.calls
    assert (request.method, request.body, request.headers["x-a"]) == ("PATCH", b"a=1&b=2", "1")
    error = runs[fid("sneaky")].output["error"]
    assert error["name"] == "GatewayError", error
    assert error["message"].startswith("Error making gateway request: refused by the outbound policy: metadata.test")


async def test_a_redirect_to_a_refused_target_and_an_oversized_stream_are_step_errors(
    app: FakeApp, model: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(outbound_lookup=stub_lookup, gateway_max_bytes=10_000)
    app.start()
    redirect = raw(302, "", **{"location": "http://metadata.test/latest/meta-data"})
    stream = dataclasses.replace(raw(200, "data: " + "x" * 1000 + "\n\n", "text/event-stream"), chunks=100)

    def model_answer(call: Call) -> Reply:
        return redirect if call.path.endswith("/redirect") else stream

    model.script(None, model_answer)
    app.script(fid("redirected"), ops(ai_op("ask", model_url(model).replace("/v1/chat/completions", "/redirect"))),
               echo_memo("ask"))  # fmt: skip
    app.script(fid("streamed"), ops(ai_op("ask", model_url(model), body={**BODY, "stream": True})), echo_memo("ask"))
    await register(s, app, fn_config(app.url, "redirected", retries=0), fn_config(app.url, "streamed", retries=0))
    event_id = await s.send()
    await s.drain()
    runs = await s.runs_of(event_id)
    redirected = runs[fid("redirected")].output["error"]["message"]
    assert "refused by the outbound policy" in redirected and "metadata.test" in redirected, redirected
    streamed = runs[fid("streamed")].output["error"]["message"]
    assert streamed == "Error making AI request: the answer is larger than 10000 bytes (cut off there)", streamed


async def test_a_model_that_is_down_slow_or_answers_garbage_is_the_steps_error(
    app: FakeApp, model: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(outbound_lookup=stub_lookup, gateway_timeout=0.5)
    app.start()
    down = FakeApp()  # nobody listens on its port
    answers = {"/slow": Reply(200, b"{}", {"content-type": "application/json"}, hang=5.0),
               "/garbage": raw(200, "<html>502 from the proxy</html>", "text/html")}  # fmt: skip
    model.script(None, lambda call: answers[call.path])
    targets = {"down": down.url.replace("127.0.0.1", "model.test"),
               "slow": model_url(model).replace("/v1/chat/completions", "/slow"),
               "garbage": model_url(model).replace("/v1/chat/completions", "/garbage")}  # fmt: skip
    for slug, url in targets.items():
        app.script(fid(slug), ops(ai_op("ask", url)), echo_memo("ask"))
    await register(s, app, *(fn_config(app.url, slug, retries=0) for slug in targets))
    event_id = await s.send()
    await s.drain()
    runs = await s.runs_of(event_id)
    messages = {slug: runs[fid(slug)].output["error"]["message"] for slug in targets}
    assert messages["down"].startswith("Error making AI request: ClientConnectorError"), messages
    assert messages["slow"] == "Error making AI request: no answer within 0.5 s", messages
    assert messages["garbage"] == "Error making AI request: the answer is not JSON", messages
    assert runs[fid("garbage")].output["error"]["stack"] == "<html>502 from the proxy</html>"
