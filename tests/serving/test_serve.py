"""``stepline.serve``: Stepline functions behind a URL, run by a real ``stepline dev``/``stepline start`` server.

The server is a subprocess; the served apps (plain ``serve()``, FastAPI, Flask) run in threads of this process, so
functions record what they saw in module-level dicts. Everything else is observed through the server's event and
REST APIs, as a user would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from flask import Flask

import stepline
from stepline import Context, FakeClock, NonRetriableError, RetryAfterError, Stepline, SyncContext
from stepline.protocol import signing

from .harness import AsgiThread, Server, WsgiThread, free_port, wait_for

# --- the functions ----------------------------------------------------------------------------------------------

CLIENT = Stepline("serve-t")
FLAKY: dict[str, int] = {}  # run id -> attempts of the flaky step
FAILURES: dict[str, dict[str, Any]] = {}  # failed run id -> the failure event's data, as on_failure saw it
SEEN: dict[str, Any] = {}  # token -> what a function saw
_lock = threading.Lock()


def flaky_once(run_id: str, value: Any) -> Any:
    with _lock:
        FLAKY[run_id] = FLAKY.get(run_id, 0) + 1
        first = FLAKY[run_id] == 1
    if first:
        raise RuntimeError("first attempt fails")
    return value


@CLIENT.function(id="seq", trigger="serve/seq")
async def seq(ctx: Context) -> Any:
    a = await ctx.step.run("a", lambda: ctx.event.data["n"] + 1)
    b = await ctx.step.run("b", lambda: a * 2)
    return {"a": a, "b": b, "event": ctx.event.name}


@CLIENT.function(id="loop", trigger="serve/loop")
async def loop(ctx: Context) -> Any:
    return [await ctx.step.run("item", lambda i=i: i * 10) for i in range(3)]


@CLIENT.function(id="sleeper", trigger="serve/sleep")
async def sleeper(ctx: Context) -> Any:
    before = await ctx.step.run("before", time.time)
    await ctx.step.sleep("nap", "1s")
    after = await ctx.step.run("after", time.time)
    return after - before


@CLIENT.function(id="waiter", trigger="serve/wait")
async def waiter(ctx: Context) -> Any:
    got = await ctx.step.wait_for_event("approval", event="serve/approve", timeout="30s",
                                        if_exp="async.data.token == event.data.token")  # fmt: skip
    return got["data"]["verdict"] if got else None


@CLIENT.function(id="signal-waiter", trigger="serve/signal")
async def signal_waiter(ctx: Context) -> Any:
    got = await ctx.step.wait_for_signal("approval", signal=f"serve-{ctx.event.data['token']}", timeout="30s")
    return got


@CLIENT.function(id="child", trigger="serve/child")
def child(ctx: SyncContext) -> Any:
    return ctx.step.run("double", lambda: ctx.event.data["x"] * 2)


@CLIENT.function(id="parent", trigger="serve/parent")
async def parent(ctx: Context) -> Any:
    result = await ctx.step.invoke("call-child", function=child, data={"x": ctx.event.data["x"]}, timeout="30s")
    return {"child": result}


@CLIENT.function(id="flaky", trigger="serve/flaky")
async def flaky(ctx: Context) -> Any:
    return await ctx.step.run("flaky-step", flaky_once, ctx.run_id, "ok")


def on_doomed_failure(ctx: SyncContext) -> None:
    FAILURES[ctx.event.data["run_id"]] = {"name": ctx.event.name, **ctx.event.data}


@CLIENT.function(id="doomed", trigger="serve/doomed", on_failure=on_doomed_failure)
async def doomed(ctx: Context) -> Any:
    def give_up() -> None:
        raise NonRetriableError("no point retrying")

    await ctx.step.run("give-up", give_up)
    return "unreachable"


@CLIENT.function(id="sender", trigger="serve/send")
async def sender(ctx: Context) -> Any:
    return await ctx.step.send_event("emit", {"name": "serve/emitted", "data": {"token": ctx.event.data["token"]}})


@CLIENT.function(id="receiver", trigger="serve/emitted")
async def receiver(ctx: Context) -> Any:
    SEEN[ctx.event.data["token"]] = ctx.event.name
    return ctx.event.data["token"]


@CLIENT.function(id="sync-fn", trigger="serve/sync")
def sync_fn(ctx: SyncContext) -> Any:
    a = ctx.step.run("a", lambda: 1)
    x, y = ctx.group.parallel((lambda: ctx.step.run("x", lambda: a + 1), lambda: ctx.step.run("y", lambda: a + 2)))
    ctx.step.sleep("pause", "0s")
    return {"a": a, "x": x, "y": y, "thread": threading.current_thread() is not threading.main_thread()}


@CLIENT.function(id="gather", trigger="serve/gather")
async def gather(ctx: Context) -> Any:
    x, y = await asyncio.gather(ctx.step.run("x", lambda: "X"), ctx.step.run("y", lambda: "Y"))
    z = await ctx.step.run("z", lambda: x + y)
    return z


@CLIENT.function(id="same", trigger="serve/same")
async def same(ctx: Context) -> Any:
    """Run in-process and over HTTP by the same FunctionDef."""
    a = await ctx.step.run("a", lambda: {"n": ctx.event.data["n"]})
    items = [await ctx.step.run("item", lambda i=i: i + a["n"]) for i in range(2)]
    await ctx.step.sleep("nap", "1s")
    ok = await ctx.step.run("flaky", flaky_once, ctx.run_id, "recovered")
    return {"items": items, "ok": ok}


@CLIENT.function(id="patient", trigger="serve/patient", retries=2)
async def patient(ctx: Context) -> Any:
    """Only called directly by test_call_protocol."""
    where = ctx.event.data.get("where")
    if where == "step":

        def later() -> None:
            raise RetryAfterError("not yet", 30)

        await ctx.step.run("later", later)
    if where == "until":
        await ctx.step.sleep_until("until", dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    if where == "return":
        return object()
    raise RetryAfterError("the function is not ready", 60)


FASTAPI_CLIENT = Stepline("serve-fastapi")
FLASK_CLIENT = Stepline("serve-flask")


@FASTAPI_CLIENT.function(id="hello", trigger="serve/fastapi")
async def fastapi_hello(ctx: Context) -> Any:
    name = await ctx.step.run("name", lambda: ctx.event.data["name"].upper())
    return f"hello {name}"


@FLASK_CLIENT.function(id="hello", trigger="serve/flask")
def flask_hello(ctx: SyncContext) -> Any:
    name = ctx.step.run("name", lambda: ctx.event.data["name"].upper())
    ctx.step.sleep("pause", "10ms")
    return f"hello {name}"


SIGNED_CLIENT = Stepline("serve-signed")


@SIGNED_CLIENT.function(id="signed-sender", trigger="serve/signed")
async def signed_sender(ctx: Context) -> Any:
    n = await ctx.step.run("n", lambda: ctx.event.data["n"] + 1)
    ids = await ctx.step.send_event("emit", {"name": "serve/signed-emitted", "data": {"n": n}})
    return {"n": n, "ids": ids}


@SIGNED_CLIENT.function(id="signed-receiver", trigger="serve/signed-emitted")
async def signed_receiver(ctx: Context) -> Any:
    return ctx.event.data["n"]


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _clean_env() -> Iterator[None]:
    """Apps read their mode and keys from INNGEST_*/STEPLINE_* variables: none from the developer's shell."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("INNGEST_", "STEPLINE_")):
                mp.delenv(name)
        yield


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``stepline dev`` syncing three apps: plain ``serve()``, FastAPI and Flask."""
    workdir = tmp_path_factory.mktemp("serve-dev")
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}/api/inngest" for p in ports]
    server = Server(workdir, urls)
    fastapi_app = FastAPI()
    stepline.serve_fastapi(fastapi_app, FASTAPI_CLIENT, path="/api/inngest", base_url=server.url)
    flask_app = Flask(__name__)
    stepline.serve_flask(flask_app, FLASK_CLIENT, path="/api/inngest", base_url=server.url)
    apps: list[AsgiThread | WsgiThread] = [
        AsgiThread(stepline.serve(CLIENT, base_url=server.url), ports[0]),
        AsgiThread(fastapi_app, ports[1]),
        WsgiThread(flask_app, ports[2]),
    ]
    for a in apps:
        a.start()
    try:
        yield server.start()
    finally:
        server.stop()
        for a in apps:
            a.stop()


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``stepline start`` (signed calls, event keys) and an app served with the same signing key."""
    workdir = tmp_path_factory.mktemp("serve-signed")
    port = free_port()
    key = f"signkey-test-{secrets.token_hex(32)}"
    server = Server(workdir, [f"http://127.0.0.1:{port}/api/inngest"], signing_key=key, event_key="k")
    app = AsgiThread(stepline.serve(SIGNED_CLIENT, signing_key=key, base_url=server.url, event_key="k"), port)
    app.start()
    try:
        yield server.start()
    finally:
        server.stop()
        app.stop()


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def by_name(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in steps}


# --- dev mode ---------------------------------------------------------------------------------------------------


def test_introspection_and_registration(dev: Server) -> None:
    resp = httpx.get(dev.app_urls[0])
    assert resp.status_code == 200
    assert resp.headers["x-inngest-sdk"] == f"stepline-py:v{stepline.__version__}"
    body = resp.json()
    assert body["mode"] == "dev" and body["schema_version"] == "2024-05-24"
    assert body["function_count"] == len(CLIENT.functions) and body["has_signing_key"] is False
    functions = {f["id"]: f for f in dev.rest("/v1/functions?app_id=serve-t")}
    assert set(functions) == set(CLIENT.functions)
    failure = functions["serve-t-doomed-failure"]["config"]
    assert failure["triggers"] == [{"event": "stepline/function.failed",
                                    "expression": "event.data.function_id == 'serve-t-doomed'"}]  # fmt: skip
    assert failure["retries"] == 0
    assert functions["serve-t-seq"]["config"]["url"] == f"{dev.app_urls[0]}?fnId=serve-t-seq&stepId=step"
    # PUT answers with the registration's outcome.
    put = httpx.put(dev.app_urls[0], json={"url": dev.app_urls[0]})
    assert put.status_code == 200 and put.json() == {"message": "Successfully registered", "modified": False}


def test_sequential_steps_with_outputs(dev: Server) -> None:
    run = dev.trigger("serve/seq", {"n": 4})
    assert run["status"] == "Completed", run
    assert run["output"] == {"a": 5, "b": 10, "event": "serve/seq"}
    steps = dev.steps(run["run_id"])
    assert [(s["name"], s["id"], s["kind"], s["status"], s["output"]) for s in steps] == [
        ("a", sha1("a"), "run", "completed", 5), ("b", sha1("b"), "run", "completed", 10)]  # fmt: skip


def test_loop_repeats_one_step_id(dev: Server) -> None:
    run = dev.trigger("serve/loop")
    assert run["status"] == "Completed" and run["output"] == [0, 10, 20]
    steps = dev.steps(run["run_id"])
    assert [s["name"] for s in steps] == ["item", "item:1", "item:2"]
    assert [s["id"] for s in steps] == [sha1("item"), sha1("item:1"), sha1("item:2")]


def test_sleep_of_one_second(dev: Server) -> None:
    run = dev.trigger("serve/sleep")
    assert run["status"] == "Completed", run
    assert run["output"] >= 1.0
    nap = by_name(dev.steps(run["run_id"]))["nap"]
    assert (nap["kind"], nap["status"]) == ("sleep", "completed")
    assert run["ended_at_ms"] - run["started_at_ms"] >= 1000


def test_wait_for_event_matched(dev: Server) -> None:
    token = secrets.token_hex(4)
    run = dev.run_of(dev.send("serve/wait", {"token": token}))

    def waiting() -> bool:
        return any(s["name"] == "approval" and s["status"] == "waiting" for s in dev.steps(run["run_id"]))

    wait_for("the wait step", waiting, diagnostics=dev.output())
    dev.send("serve/approve", {"token": "someone else", "verdict": "no"})
    dev.send("serve/approve", {"token": token, "verdict": "yes"})
    ended = dev.ended(run["run_id"])
    assert ended["status"] == "Completed" and ended["output"] == "yes"
    step = by_name(dev.steps(run["run_id"]))["approval"]
    assert step["kind"] == "wait_for_event" and step["output"]["data"]["token"] == token


def test_wait_for_signal_resumed_by_the_rest_api(dev: Server) -> None:
    token = secrets.token_hex(4)
    run = dev.run_of(dev.send("serve/signal", {"token": token}))

    def waiting() -> bool:
        return any(s["name"] == "approval" and s["status"] == "waiting" for s in dev.steps(run["run_id"]))

    wait_for("the signal wait", waiting, diagnostics=dev.output())
    resp = dev.http.post(f"{dev.url}/v1/signals", json={"signal": f"serve-{token}", "data": {"ok": True}},
                         headers=dev.auth)  # fmt: skip
    assert resp.status_code == 200 and resp.json()["data"] == {"run_id": run["run_id"]}, resp.text
    ended = dev.ended(run["run_id"])
    assert ended["output"] == {"signal": f"serve-{token}", "data": {"ok": True}}
    assert by_name(dev.steps(run["run_id"]))["approval"]["kind"] == "wait_for_signal"


def test_invoke_another_served_function(dev: Server) -> None:
    run = dev.trigger("serve/parent", {"x": 21})
    assert run["status"] == "Completed", run
    assert run["output"] == {"child": 42}
    step = by_name(dev.steps(run["run_id"]))["call-child"]
    assert (step["kind"], step["status"]) == ("invoke", "completed")
    children = dev.rest("/v1/runs?function_id=serve-t-child")
    assert any(c["parent_run_id"] == run["run_id"] and c["output"] == 42 for c in children)


def test_step_fails_once_then_succeeds(dev: Server) -> None:
    run = dev.trigger("serve/flaky")
    assert run["status"] == "Completed" and run["output"] == "ok"
    step = by_name(dev.steps(run["run_id"]))["flaky-step"]
    assert (step["status"], step["attempts"], step["output"]) == ("completed", 2, "ok")
    assert FLAKY[run["run_id"]] == 2


def test_non_retriable_error_fails_the_run_and_on_failure_runs(dev: Server) -> None:
    run = dev.trigger("serve/doomed")
    assert run["status"] == "Failed", run
    assert run["attempt"] == 0  # no function-level retries
    assert run["error"]["name"] == "NonRetriableError" and run["error"]["message"] == "no point retrying"
    step = by_name(dev.steps(run["run_id"]))["give-up"]
    assert (step["status"], step["attempts"]) == ("failed", 1)
    seen = wait_for("the on_failure handler", lambda: FAILURES.get(run["run_id"]), diagnostics=dev.output())
    assert seen["name"] == "stepline/function.failed" and seen["function_id"] == "serve-t-doomed"
    assert seen["error"]["name"] == "NonRetriableError"


def test_send_event_starts_another_functions_run(dev: Server) -> None:
    token = secrets.token_hex(4)
    run = dev.trigger("serve/send", {"token": token})
    assert run["status"] == "Completed", run
    [event_id] = run["output"]
    emitted = dev.ended(dev.run_of(event_id)["run_id"])
    assert emitted["function_id"] == "serve-t-receiver" and emitted["output"] == token
    assert SEEN[token] == "serve/emitted"
    step = by_name(dev.steps(run["run_id"]))["emit"]
    assert (step["kind"], step["status"], step["output"]) == ("run", "completed", [event_id])


def test_sync_handler_with_parallel_group(dev: Server) -> None:
    run = dev.trigger("serve/sync")
    assert run["status"] == "Completed", run
    assert run["output"] == {"a": 1, "x": 2, "y": 3, "thread": True}
    steps = by_name(dev.steps(run["run_id"]))
    assert {n: (s["kind"], s["status"], s["output"]) for n, s in steps.items()} == {
        "a": ("run", "completed", 1), "x": ("run", "completed", 2), "y": ("run", "completed", 3),
        "pause": ("sleep", "completed", None)}  # fmt: skip


def test_async_parallel_steps(dev: Server) -> None:
    run = dev.trigger("serve/gather")
    assert run["status"] == "Completed" and run["output"] == "XY"
    steps = dev.steps(run["run_id"])
    assert sorted(s["name"] for s in steps[:2]) == ["x", "y"] and steps[2]["name"] == "z"


def test_fastapi_and_flask_adapters(dev: Server) -> None:
    fastapi_run = dev.trigger("serve/fastapi", {"name": "ada"})
    flask_run = dev.trigger("serve/flask", {"name": "bob"})
    assert (fastapi_run["status"], fastapi_run["output"]) == ("Completed", "hello ADA")
    assert (flask_run["status"], flask_run["output"]) == ("Completed", "hello BOB")
    apps = {a["url"]: a for a in dev.rest("/v1/apps") if a.get("url")}
    assert apps[dev.app_urls[1]]["framework"] == "fastapi" and apps[dev.app_urls[2]]["framework"] == "flask"
    assert [s["name"] for s in dev.steps(flask_run["run_id"])] == ["name", "pause"]


async def test_same_function_in_process_and_over_http(dev: Server, tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    local = Stepline("serve-t", tmp_path / "in-process.db", clock=clock)
    local.functions[same.id] = same  # the very FunctionDef the app serves
    try:
        [event_id] = await local.send({"name": "serve/same", "data": {"n": 5}})
        await local.ready()
        worker = local.worker()
        try:
            for _ in range(10):
                await worker.run_until_idle()
                [in_process] = await local.runs_for_event(event_id)
                if in_process.status in ("completed", "failed"):
                    break
                clock.advance(dt.timedelta(minutes=2))  # past the sleep and the retry's backoff
        finally:
            worker.close()
        local_steps = await local.steps(in_process.id)
    finally:
        await local.close()
    over_http = await asyncio.to_thread(dev.trigger, "serve/same", {"n": 5})
    http_steps = await asyncio.to_thread(dev.steps, over_http["run_id"])
    assert in_process.status == "completed" and over_http["status"] == "Completed"
    assert in_process.output == over_http["output"] == {"items": [5, 6], "ok": "recovered"}
    assert [(s.step_id, s.display_id, s.kind, s.status, s.attempts, s.output) for s in local_steps] == [
        (s["id"], s["name"], s["kind"], s["status"], s["attempts"], s["output"]) for s in http_steps]  # fmt: skip
    assert [s.display_id for s in local_steps] == ["a", "item", "item:1", "nap", "flaky"]
    assert local_steps[-1].attempts == 2


def test_call_protocol(dev: Server) -> None:
    """Calls as the server makes them, straight to the app: planning, targeting, retries, headers, use_api."""
    url = dev.app_urls[0]

    def call(fn: str, step: str = "step", steps: dict[str, Any] | None = None, attempt: int = 0,
             data: dict[str, Any] | None = None, immediate: bool = True, run_id: str = "r1",
             use_api: bool = False) -> httpx.Response:  # fmt: skip
        ctx = {"run_id": run_id, "attempt": attempt, "max_attempts": 3, "disable_immediate_execution": not immediate}
        body = {"event": {"name": "serve/x", "data": data or {}, "id": "e1", "ts": 1}, "events": [],
                "steps": steps or {}, "ctx": ctx, "use_api": use_api}  # fmt: skip
        resp = httpx.post(url, params={"fnId": f"serve-t-{fn}", "stepId": step}, json=body)
        assert resp.headers["x-inngest-sdk"] == f"stepline-py:v{stepline.__version__}"
        return resp

    def ops(resp: httpx.Response) -> list[tuple[str, str]]:
        assert resp.status_code == 206, resp.text
        return [(o["op"], o["displayName"]) for o in resp.json()]

    memo_xy = {sha1("x"): {"data": "X"}, sha1("y"): {"data": "Y"}}
    # Parallel steps found together are planned together; a targeted call runs one; then discovery continues.
    assert ops(call("gather")) == [("StepPlanned", "x"), ("StepPlanned", "y")]
    targeted = call("gather", step=sha1("y"))
    assert ops(targeted) == [("StepRun", "y")] and targeted.json()[0]["data"] == "Y"
    assert ops(call("gather", steps=memo_xy)) == [("StepRun", "z")]
    assert ops(call("gather", steps=memo_xy, immediate=False)) == [("StepPlanned", "z")]
    assert ops(call("sync-fn", steps={sha1("a"): {"data": 1}})) == [("StepPlanned", "x"), ("StepPlanned", "y")]
    assert call("gather", steps={**memo_xy, sha1("z"): {"data": "XY"}}).json() == "XY"
    # A targeted step that the code no longer reaches: a retriable 500.
    missing = call("seq", step=sha1("nope"), data={"n": 1})
    assert missing.status_code == 500 and missing.json()["name"] == "StepNotFound"
    assert "x-inngest-no-retry" not in missing.headers
    # Step errors: StepError while attempts remain (Retry-After from RetryAfterError), then StepFailed.
    retry = call("patient", data={"where": "step"})
    assert ops(retry) == [("StepError", "later")] and retry.json()[0]["error"]["name"] == "RetryAfterError"
    assert dt.datetime.fromisoformat(retry.headers["retry-after"]) > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=25)
    assert ops(call("patient", step=sha1("later"), attempt=2, data={"where": "step"})) == [("StepFailed", "later")]
    # A memoised failure raises StepError in the function: it fails without function-level retries.
    failed = call("patient", steps={sha1("later"): {"error": {"name": "E", "message": "m"}}}, data={"where": "step"})
    assert failed.status_code == 500 and failed.headers["x-inngest-no-retry"] == "true"
    assert failed.json()["name"] == "E" and failed.json()["message"] == "m"
    # Function-level errors.
    later = call("patient")
    assert later.status_code == 500 and "x-inngest-no-retry" not in later.headers and later.headers["retry-after"]
    not_json = call("patient", data={"where": "return"})
    assert not_json.status_code == 500 and not_json.headers["x-inngest-no-retry"] == "true"
    assert not_json.json()["name"] == "SerializationError"
    # Sleeps: a duration or an ISO date in name; waits and invokes carry their options.
    assert call("sleeper", steps={sha1("before"): {"data": 1}}).json()[0]["name"] == "1s"
    assert call("patient", data={"where": "until"}).json()[0]["name"] == "2030-01-02T03:04:05.000Z"
    [wait] = call("waiter").json()
    assert (wait["op"], wait["name"], wait["opts"]) == ("WaitForEvent", "serve/approve", {
        "event": "serve/approve", "timeout": "30s", "if": "async.data.token == event.data.token"})  # fmt: skip
    [invoke] = call("parent", data={"x": 2}).json()
    assert invoke["opts"] == {"function_id": "serve-t-child", "payload": {"data": {"x": 2}}, "timeout": "30s"}
    # Bad requests.
    assert call("no-such-function").status_code == 404
    assert httpx.post(url, params={"fnId": "serve-t-seq"}, content=b"[]").status_code == 400
    # use_api: the memo comes from the server's /v0/runs/{id}/actions instead of the body.
    run = dev.trigger("serve/seq", {"n": 1})
    resumed = call("seq", run_id=run["run_id"], use_api=True, data={"n": 1})
    assert resumed.status_code == 200 and resumed.json() == {**run["output"], "event": "serve/x"}


# --- signed mode --------------------------------------------------------------------------------------------------


def test_signed_mode(signed: Server) -> None:
    assert signed.signing_key is not None
    app_url = signed.app_urls[0]
    call = f"{app_url}?fnId=serve-signed-signed-sender&stepId=step"
    body = {"event": {"name": "serve/signed", "data": {"n": 1}, "id": "e1", "ts": 1},
            "steps": {}, "ctx": {"run_id": "r1", "attempt": 0}, "use_api": False}  # fmt: skip
    unsigned = httpx.post(call, json=body)
    assert unsigned.status_code == 401 and unsigned.headers["x-inngest-sdk"].startswith("stepline-py:")
    wrong = signing.sign_json(body, f"signkey-test-{secrets.token_hex(32)}", int(time.time()))
    assert httpx.post(call, content=wrong.body, headers=wrong.headers).status_code == 401
    assert httpx.get(app_url).status_code == 401
    good = signing.sign(b"", signed.signing_key, int(time.time()))
    inspection = httpx.get(app_url, headers={signing.SIGNATURE_HEADER: good})
    assert inspection.status_code == 200 and inspection.json()["authentication_succeeded"] is True
    assert inspection.json()["mode"] == "cloud"
    ok = signing.sign_json(body, signed.signing_key, int(time.time()))
    direct = httpx.post(call, content=ok.body, headers=ok.headers)
    assert direct.status_code == 206 and json.loads(direct.content)[0]["op"] == "StepRun"
    assert signing.verify_response_signature(direct.content, direct.headers[signing.SIGNATURE_HEADER],
                                             [signed.signing_key], int(time.time()))  # fmt: skip
    # A whole run through the signed server: signed calls, authenticated sync, send_event with the event key.
    run = signed.trigger("serve/signed", {"n": 1})
    assert run["status"] == "Completed", run
    [event_id] = run["output"]["ids"]
    emitted = signed.ended(signed.run_of(event_id)["run_id"])
    assert emitted["status"] == "Completed" and emitted["output"] == 2
