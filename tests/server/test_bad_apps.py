"""Apps that are down, slow, or answer garbage: what a user sees of their runs (issue 4), on a real store
(SQLite and PostgreSQL), over real sockets.

The app is ``FakeApp`` (raw ASGI, uvicorn in a thread); the server is ``create_app`` with its real lifespan on
a real socket, and its ``HttpWorker`` is driven with the fake clock: ``drain`` runs what is due now, ``advance``
moves time to the next retry. Every drain also checks that the worker logged no crash. Retries use ``BACKOFF``
(10 s, 20 s, 40 s, no jitter), so due times are exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.utils
import json
import threading
import time
from typing import Any

from stepline import FakeClock
from stepline.core.ids import hash_step_id
from stepline.protocol import signing
from stepline.server.http_worker import HttpWorker

from ..eventually import eventually
from .fake_app import (
    APP_ID,
    FALLBACK_KEY,
    SIGNING_KEY,
    Call,
    FakeApp,
    MakeStack,
    Reply,
    Stack,
    complete,
    fn_config,
    fn_error,
    ops,
    raw,
    register_body,
    registers_on_put,
    sdk,
    sdk_raw,
    step_op,
)


def fid(slug: str) -> str:
    return f"{APP_ID}-{slug}"


async def register(s: Stack, app: FakeApp, *functions: dict[str, Any], **headers: str) -> None:
    res = await s.register(register_body(app.url, list(functions)), **headers)
    assert res.status_code == 200, res.text


async def register_second_app(s: Stack, other: FakeApp, slug: str, event: str) -> None:
    """Another app, ``b``, with one function ``b-<slug>`` on ``event``."""
    res = await s.register(register_body(other.url, [fn_config(other.url, slug, app_id="b", event=event)],
                                         appName="b"))  # fmt: skip
    assert res.status_code == 200, res.text


async def wait_for_calls(app: FakeApp, n: int, timeout: float = 10.0) -> None:
    await eventually(f"{n} calls to the app", lambda: len(app.calls) >= n, timeout, interval=0.005,
                     diagnostics=lambda: f"the app got {len(app.calls)}")  # fmt: skip


def retrying(run: Any, attempt: int, due: int) -> None:
    """The run is live, waiting for its retry at ``due`` (what `stepline runs show` and the API report)."""
    assert (run.status, run.attempt, run.due_at, run.lease_owner) == ("running", attempt, due, None), run
    reason = dict(run.idle_reason)
    assert isinstance(reason.pop("error"), str)  # after which error (the dashboard's retry note)
    assert reason == {"kind": "retrying", "until": due}


# --- the app is down --------------------------------------------------------------------------------------------------
async def test_an_app_that_is_down_is_retried_with_backoff_and_the_run_completes_once_it_is_up(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    await register(s, app, fn_config(app.url, "charge", retries=3))  # registering does not call the app
    event_id = await s.send(data={"order": 7})
    t0 = s.now()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("charge")]
    retrying(run, 1, t0 + 10_000)
    assert run.error is not None and run.error["name"] == "AppUnreachable"
    failed = f"calling {app.url}?fnId=shop-charge&stepId=step failed: ClientConnectorError: Cannot connect to host"
    assert run.error["message"].startswith(failed), run.error

    await s.advance(9.999)  # not due yet
    assert (await s.run(run.id)).attempt == 1
    await s.advance(0.001)  # the second attempt: down again, next retry 20 s later
    retrying(await s.run(run.id), 2, t0 + 30_000)

    app.script(fid("charge"), complete({"charged": 7}))
    await asyncio.to_thread(app.start)
    await s.advance(20)
    run = await s.run(run.id)
    assert (run.status, run.output, run.error, run.idle_reason) == ("completed", {"charged": 7}, None, None)
    [call] = app.calls
    body = call.json()
    assert body["event"]["data"] == {"order": 7}
    assert (body["ctx"]["run_id"], body["ctx"]["attempt"], body["ctx"]["max_attempts"]) == (run.id, 2, 4)
    [finished] = await s.events("stepline/function.finished")
    assert (finished.data["run_id"], finished.data["status"]) == (run.id, "completed")
    assert await s.events("stepline/function.failed") == []


# --- the app is slow --------------------------------------------------------------------------------------------------
async def test_a_call_slower_than_call_timeout_is_a_call_timeout_retried_with_the_memo_kept(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(call_timeout=0.3)
    app.start()
    app.script(fid("ship"), ops(step_op("reserve", {"sku": 7})), Reply(hang=10),
               lambda call: complete({"memo": call.json()["steps"], "stack": call.json()["ctx"]["stack"]}))  # fmt: skip
    await register(s, app, fn_config(app.url, "ship", retries=2))
    event_id = await s.send()
    t0 = s.now()
    started = time.monotonic()
    await s.drain()
    assert time.monotonic() - started < 5  # the hanging call was given up after 0.3 s, not 10 s
    run = (await s.runs_of(event_id))[fid("ship")]
    retrying(run, 1, t0 + 10_000)
    assert run.error == {"name": "CallTimeout", "message": "the app did not answer within 0.3 s"}
    [step] = await s.store.list_steps(run.id)  # the step the app finished before hanging is kept
    assert (step.display_id, step.status, step.output) == ("reserve", "completed", {"sku": 7})

    await s.advance(10)
    run = await s.run(run.id)
    reserve = hash_step_id("reserve")
    assert run.status == "completed", run
    assert run.output == {"memo": {reserve: {"data": {"sku": 7}}}, "stack": {"stack": [reserve], "current": 1}}
    assert [c.json()["ctx"]["attempt"] for c in app.calls] == [0, 0, 1]


async def test_call_timeout_bounds_the_whole_call_not_each_read(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack(call_timeout=0.3)
    app.start()
    app.script(fid("trickle"), dataclasses.replace(sdk_raw(200, b" "), chunks=20, interval=0.1))  # 2 s in all
    await register(s, app, fn_config(app.url, "trickle"))
    event_id = await s.send()
    started = time.monotonic()
    await s.drain()
    elapsed = time.monotonic() - started
    run = (await s.runs_of(event_id))[fid("trickle")]
    assert run.error is not None and run.error["name"] == "CallTimeout", run
    assert elapsed < 1.5


# --- the app answers garbage ------------------------------------------------------------------------------------------
GARBAGE: dict[str, tuple[Reply, dict[str, str]]] = {
    "not-json": (sdk_raw(200, b"<<not json>>"),
                 {"name": "Error",
                  "message": "the app answered HTTP 200 with a body that is not JSON (Expecting value: line 1 column 1 "
                             "(char 0)): b'<<not json>>'"}),
    "html": (raw(200, "<html><body>Welcome to nginx!</body></html>", "text/html"),
             {"name": "Error", "message": "the app answered HTTP 200 without an X-Inngest-SDK header: not an Inngest "
                                          "SDK response (is the URL right?)"}),
    "ops-not-a-list": (sdk(206, "StepRun"), {"name": "Error", "message": "the app answered 206 without a list of ops"}),
    "op-without-op": (sdk(206, [{"id": "x"}]),
                      {"name": "Error", "message": "the app answered 206 with an op that has no 'op' field: "
                                                   "b'[{\"id\": \"x\"}]'"}),
    "no-ops": (sdk(206, []), {"name": "Error", "message": "the app returned no op to act on (206 [])"}),
    "bad-gateway": (raw(502, "Bad gateway"), {"name": "Error", "message": "the app answered HTTP 502: Bad gateway"}),
    "not-found": (raw(404, "Cannot POST /api/inngest"),
                  {"name": "Error", "message": "the app answered HTTP 404: Cannot POST /api/inngest"}),
    "streamed-garbage": (sdk_raw(201, b"   \n {oops"),
                         {"name": "Error", "message": "the app's streamed response is not JSON"}),
    "user-error": (fn_error("TypeError", "cannot read 'x'"),
                   {"name": "TypeError", "message": "cannot read 'x'",
                    "stack": "TypeError: cannot read 'x'\n    at handler"}),
    "too-large": (complete("x" * 20_000),
                  {"name": "ResponseTooLarge",
                   "message": "the app's response is larger than the limit of 10000 bytes"}),
}  # fmt: skip


async def test_garbage_answers_are_stored_precisely_retried_then_fail_the_run(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(max_body_bytes=10_000)
    app.start()
    for slug, (reply, _) in GARBAGE.items():
        app.script(fid(slug), reply)
    await register(s, app, *(fn_config(app.url, slug, retries=1) for slug in GARBAGE))
    event_id = await s.send()
    t0 = s.now()
    await s.drain()
    runs = await s.runs_of(event_id)
    assert sorted(runs) == sorted(fid(slug) for slug in GARBAGE)
    for slug, (_, error) in GARBAGE.items():
        run = runs[fid(slug)]
        assert run.error == error, slug
        retrying(run, 1, t0 + 10_000)

    await s.advance(10)  # the last attempt: same garbage, the run fails with it
    failed = {e.data["function_id"]: e for e in await s.events("stepline/function.failed")}
    assert sorted(failed) == sorted(runs)
    for slug, (_, error) in GARBAGE.items():
        run = await s.run(runs[fid(slug)].id)
        assert (run.status, run.attempt, run.error, run.idle_reason, run.due_at) == ("failed", 1, error, None, None)
        assert len(app.calls_of(fid(slug))) == 2, slug
        # The event carries the error as Inngest's executor does: {error, name, message, stack?}, where `error` says
        # why an HTTP error answer failed the attempt.
        status = {"bad-gateway": 502, "not-found": 404, "user-error": 500}.get(slug)
        expected = {"error": f"invalid status code: {status}" if status else error["message"], **error}
        assert (failed[run.function_id].data["run_id"], failed[run.function_id].data["error"]) == (run.id, expected)
    await s.advance(3600)
    assert len(app.calls) == 2 * len(GARBAGE)  # nothing more is called


async def test_an_oversized_streamed_answer_is_cut_off_at_the_limit(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack(max_body_bytes=10_000)
    app.start()
    app.script(fid("flood"), dataclasses.replace(sdk_raw(200, b" " * 65_536), chunks=300))  # 19.7 MB
    await register(s, app, fn_config(app.url, "flood"))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("flood")]
    assert run.error is not None and run.error["name"] == "ResponseTooLarge", run
    for _ in range(500):  # the app's thread notices the hang-up on its own time (slow under load)
        if app.streamed:
            break
        await asyncio.sleep(0.01)
    assert app.streamed[0] < 200  # the server hung up long before the end (socket buffers hold a few MB)


async def test_garbage_ops_fail_precisely_without_crashing_the_executor(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    bad_ops = {
        "no-id": {"op": "StepRun", "data": 1},
        "wait-timeout": {"op": "WaitForEvent", "id": hash_step_id("w"), "name": "shop/paid",
                         "opts": {"timeout": "banana"}},
        "wait-cel": {"op": "WaitForEvent", "id": hash_step_id("w"), "name": "shop/paid",
                     "opts": {"timeout": "1h", "if": "event.data.id == "}},
        "invoke-timeout": {"op": "InvokeFunction", "id": hash_step_id("i"), "name": "i",
                           "opts": {"function_id": fid("no-id"), "timeout": "soon"}},
    }  # fmt: skip
    for slug, op in bad_ops.items():
        app.script(fid(slug), ops(op))
    await register(s, app, *(fn_config(app.url, slug, retries=1) for slug in bad_ops))
    event_id = await s.send()
    await s.drain()  # fails here (the worker logged the executor's crash) while the bug is there
    for run in (await s.runs_of(event_id)).values():
        assert run.lease_owner is None, run  # resting (retrying) or ended, not stuck in a crashed claim
        assert run.status == "failed" or (run.idle_reason or {}).get("kind") == "retrying", run


UNSTORABLE = {  # JSON the SDKs can send (Python's json.dumps writes NaN) that is not JSON, or that jsonb rejects
    "nan": b'{"v": NaN}',
    "infinity": b'{"v": -Infinity}',
    "nul": b'{"v": "nul \\u0000 char"}',
    "surrogate": b'{"v": "lone \\ud800"}',
}


async def test_values_that_are_not_json_or_not_storable_are_precise_errors_not_crashes(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    app.start()
    for name, value in UNSTORABLE.items():
        step = b'[{"op": "StepRun", "id": "%s", "data": %s}]' % (hash_step_id("s").encode(), value)
        app.script(fid(f"output-{name}"), sdk_raw(200, value))
        app.script(fid(f"step-{name}"), sdk_raw(206, step), complete("done"))
    await register(
        s, app, *(fn_config(app.url, f"{kind}-{name}") for kind in ("output", "step") for name in UNSTORABLE)
    )
    event_id = await s.send()
    await s.drain()  # fails here (the worker logged the executor's crash) while the bug is there
    for function_id, run in (await s.runs_of(event_id)).items():
        assert run.lease_owner is None, run  # resting or ended, not stuck in a crashed claim
        _, kind, name = function_id.split("-")
        if name in ("nan", "infinity"):  # not JSON: an error that quotes the body, as for other garbage
            assert run.error is not None and ("NaN" in run.error["message"] or "Infinity" in run.error["message"]), run
        else:  # valid JSON: kept exactly as sent, or a precise error
            as_sent = json.loads(UNSTORABLE[name]) if kind == "output" else "done"
            assert run.error is not None or (run.status, run.output) == ("completed", as_sent), run


# --- X-Inngest-No-Retry and Retry-After -------------------------------------------------------------------------------
async def test_no_retry_fails_at_once_and_retry_after_sets_the_retry_time(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    t0 = s.now()
    http_date = email.utils.format_datetime(dt.datetime.fromtimestamp((t0 + 300_000) / 1000, dt.UTC), usegmt=True)
    retry_after = {
        "seconds": ("120", t0 + 120_000),
        "http-date": (http_date, t0 + 300_000),
        "iso-date": ("2026-01-01T00:03:20Z", t0 + 200_000),
        "capped": ("999999", t0 + 86_400_000),  # at most 24 hours
    }
    app.script(fid("py-strict"), fn_error("NonRetriableError", "card declined", 500, **{"x-inngest-no-retry": "true"}))
    app.script(fid("js-strict"), fn_error("NonRetriableError", "bad input", 400, **{"x-inngest-no-retry": "true"}))
    app.script(fid("retriable"), fn_error("Error", "flaky", 500, **{"x-inngest-no-retry": "false"}), complete(1))
    for slug, (header, _) in retry_after.items():
        app.script(fid(slug), fn_error("RetryAfterError", "rate limited", **{"retry-after": header}), complete(slug))
    slugs = ["py-strict", "js-strict", "retriable", *retry_after]
    await register(s, app, *(fn_config(app.url, slug, retries=3) for slug in slugs))
    event_id = await s.send()
    await s.drain()
    runs = await s.runs_of(event_id)

    for slug, message in [("py-strict", "card declined"), ("js-strict", "bad input")]:
        run = runs[fid(slug)]
        assert (run.status, run.attempt, run.due_at) == ("failed", 0, None), run
        assert run.error == {"name": "NonRetriableError", "message": message,
                             "stack": f"NonRetriableError: {message}\n    at handler"}  # fmt: skip
    failed = await s.events("stepline/function.failed")
    assert sorted(e.data["function_id"] for e in failed) == [fid("js-strict"), fid("py-strict")]
    retrying(runs[fid("retriable")], 1, t0 + 10_000)  # only "true" stops retries
    for slug, (_, due) in retry_after.items():
        retrying(runs[fid(slug)], 1, due)
        assert runs[fid(slug)].error == {"name": "RetryAfterError", "message": "rate limited",
                                         "stack": "RetryAfterError: rate limited\n    at handler"}  # fmt: skip

    await s.advance(10)  # the backoff's time: only the run without Retry-After is called again
    assert (await s.run(runs[fid("retriable")].id)).status == "completed"
    assert all(len(app.calls_of(fid(slug))) == 1 for slug in retry_after)
    await s.advance(109.999)
    assert len(app.calls_of(fid("seconds"))) == 1
    await s.advance(0.001)
    run = await s.run(runs[fid("seconds")].id)
    assert (run.status, run.output, len(app.calls_of(fid("seconds")))) == ("completed", "seconds", 2)
    await s.advance(24 * 3600)
    for slug in retry_after:
        assert (await s.run(runs[fid(slug)].id)).status == "completed", slug
    assert [len(app.calls_of(fid(slug))) for slug in ("py-strict", "js-strict")] == [1, 1]


# --- cancelled while a call is in flight ------------------------------------------------------------------------------
async def test_a_run_cancelled_during_a_call_gets_no_further_calls(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    gate = threading.Event()
    answers = {"step": ops(step_op("charge", 1)), "done": complete("done"), "error": fn_error("Error", "boom")}
    for slug, reply in answers.items():
        app.script(fid(slug), dataclasses.replace(reply, release=gate), complete("again"))
    await register(s, app, *(fn_config(app.url, slug, retries=3) for slug in answers))
    event_id = await s.send()
    draining = asyncio.create_task(s.drain())
    try:
        await wait_for_calls(app, len(answers))
        runs = await s.runs_of(event_id)
        for run in runs.values():
            assert await s.client.engine.cancel_run(run.id)
    finally:
        gate.set()
        await draining
    await s.advance(3600)
    for slug in answers:
        run = await s.run(runs[fid(slug)].id)
        assert (run.status, run.error) == ("cancelled", {"name": "Cancelled", "message": "cancelled by API"}), slug
        assert await s.store.list_steps(run.id) == [], slug  # the answer that came back late recorded nothing
        assert len(app.calls_of(fid(slug))) == 1, slug
    cancelled = await s.events("stepline/function.cancelled")
    assert sorted(e.data["run_id"] for e in cancelled) == sorted(r.id for r in runs.values())
    assert len(await s.events("stepline/function.finished")) == len(answers)
    assert await s.events("stepline/function.failed") == []


# --- a signed server --------------------------------------------------------------------------------------------------
OTHER_KEY = "signkey-test-" + "ef" * 32


async def test_a_signed_server_signs_every_call_over_the_exact_bytes_and_checks_the_answers(
    app: FakeApp, make_stack: MakeStack, clock: FakeClock
) -> None:
    s = await make_stack(kind="cloud", signing_keys=(SIGNING_KEY, FALLBACK_KEY), event_keys=frozenset({"ek"}))
    app.sign_answers(SIGNING_KEY, lambda: clock.now_ms() // 1000)
    slugs = ["pay", "skewed", "unsigned", "foreign", "fallback"]
    body = register_body(app.url, [fn_config(app.url, slug, retries=2) for slug in slugs])
    app.on_put = registers_on_put(s.url, body, bearer=signing.hashed_signing_key(SIGNING_KEY))
    app_clock_offset = [600]  # the app's clock is 10 minutes ahead: it refuses signatures as too old (JS SDK)

    def skew_checked(call: Call) -> Reply:
        now_s = clock.now_ms() // 1000 + app_clock_offset[0]
        if signing.verify_signature(call.body, call.headers.get("x-inngest-signature"), [SIGNING_KEY], now_s) is None:
            return raw(401, json.dumps({"message": "Invalid signature: the timestamp is too old"}), "application/json")
        return complete("in time")

    def signed_with(key: str, value: Any) -> Reply:
        reply = complete(value)
        reply.headers["x-inngest-signature"] = signing.sign(reply.body, key, clock.now_ms() // 1000)
        return reply

    app.script(fid("pay"), ops(step_op("charge", 1)), fn_error("Error", "try again"), complete("paid"))
    app.script(fid("skewed"), skew_checked)
    app.script(fid("unsigned"), dataclasses.replace(complete("forged"), signed=False), complete("signed"))
    app.script(fid("foreign"), lambda call: signed_with(OTHER_KEY, "forged"), complete("signed"))
    app.script(fid("fallback"), lambda call: signed_with(FALLBACK_KEY, "rotated"))  # a key being rotated: trusted
    app.start()
    bearer = {"authorization": f"Bearer {signing.hashed_signing_key(SIGNING_KEY)}"}
    res = await s.api.post("/v1/apps/sync", json={"url": app.url}, headers=bearer)
    assert res.status_code == 200, res.text
    stored = await s.store.get_app(app.url)
    assert stored is not None and (stored.app_id, stored.error) == (APP_ID, None)

    res = await s.api.post("/e/ek", json={"name": "shop/order"})
    [event_id] = res.json()["ids"]
    t0 = s.now()
    await s.drain()
    runs = await s.runs_of(event_id)
    for slug in ["pay", "skewed", "unsigned", "foreign"]:
        retrying(runs[fid(slug)], 1, t0 + 10_000)
    # kept exactly as the SDK answered it (no name added)
    assert runs[fid("skewed")].error == {"message": "Invalid signature: the timestamp is too old"}
    for slug, message in [
        ("unsigned", "the app's response is not signed: is the app running in cloud mode with the server's signing "
         "key?"),
        ("foreign", "the app's response is signed with another key: check that the app's INNGEST_SIGNING_KEY is the "
         "server's"),
    ]:  # fmt: skip
        assert runs[fid(slug)].error == {"name": "InvalidResponseSignature", "message": message}
    assert (runs[fid("fallback")].status, runs[fid("fallback")].output) == ("completed", "rotated")
    app_clock_offset[0] = 0
    await s.advance(10)
    outputs = {slug: (await s.run(runs[fid(slug)].id)).output for slug in slugs}
    assert outputs == {"pay": "paid", "skewed": "in time", "unsigned": "signed", "foreign": "signed",
                       "fallback": "rotated"}  # fmt: skip
    assert [(await s.run(r.id)).status for r in runs.values()] == ["completed"] * len(slugs)

    [put] = [c for c in app.calls if c.method == "PUT"]
    calls = [c for c in app.calls if c.method == "POST"]
    assert put.body == b'{"url":"' + app.url.encode() + b'"}'
    assert [c.json()["ctx"]["attempt"] for c in app.calls_of(fid("pay"))] == [0, 0, 1]
    assert len(calls) == 3 + 2 + 2 + 2 + 1
    for call in [put, *calls]:
        header = call.headers.get("x-inngest-signature")
        parsed = signing.parse_signature_header(header)
        assert parsed is not None, call
        t = parsed[0]
        assert t in (t0 // 1000, t0 // 1000 + 10)  # the server's (fake) clock when it made the call
        assert signing.verify_signature(call.body, header, [SIGNING_KEY], t) == SIGNING_KEY  # the primary key
        assert signing.verify_signature(call.body, header, [FALLBACK_KEY], t) is None
        assert signing.canonicalize_json_bytes(call.body) == call.body  # sent exactly as signed: JCS bytes
        assert signing.verify_signature(call.body + b" ", header, [SIGNING_KEY], t) is None


async def test_an_answer_with_an_expired_signature_timestamp_says_so(
    app: FakeApp, make_stack: MakeStack, clock: FakeClock
) -> None:
    s = await make_stack(kind="cloud", signing_keys=(SIGNING_KEY,), event_keys=frozenset({"dev"}))
    app.sign_answers(SIGNING_KEY, lambda: clock.now_ms() // 1000 - 600)  # the app's clock is 10 minutes behind
    app.script(fid("late"), complete("late"))
    app.start()
    bearer = f"Bearer {signing.hashed_signing_key(SIGNING_KEY)}"
    await register(s, app, fn_config(app.url, "late"), authorization=bearer)
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("late")]
    assert run.error is not None and run.error["name"] == "InvalidResponseSignature", run  # retried, as today
    assert "another key" not in run.error["message"], run.error
    assert "timestamp" in run.error["message"] or "clock" in run.error["message"], run.error


# --- unknown functions and deleted apps -------------------------------------------------------------------------------
async def test_runs_of_a_deleted_app_wait_without_crashing_the_worker_and_unknown_invokes_are_404(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    app.start()
    app.script(fid("charge"), complete("charged"))
    body = register_body(app.url, [fn_config(app.url, "charge")])
    assert (await s.register(body)).status_code == 200
    event_id = await s.send()
    [queued] = (await s.runs_of(event_id)).values()

    await s.store.delete_app(app.url)  # the app is gone, with its functions
    await s.client.engine.refresh_registry(force=True)
    await s.drain()
    await s.advance(3600)
    run = await s.run(queued.id)
    assert (run.status, run.attempt, run.error) == ("queued", 0, None)  # kept, not called, not failed
    assert app.calls == []
    assert await s.runs_of(await s.send()) == {}  # a new event starts nothing: no function listens
    for function_id in [fid("charge"), "nope-nothing"]:
        res = await s.api.post(f"/invoke/{function_id}", json={"data": {}})
        assert res.status_code == 404
        assert res.json() == {"status": 404, "error": f"function {function_id!r} not found (use the full "
                                                      "'<app>-<function>' id)"}  # fmt: skip

    assert (await s.register(body)).json()["modified"] is True  # synced again: the run that waited goes on
    await s.drain()
    run = await s.run(queued.id)
    assert (run.status, run.output) == ("completed", "charged")
    assert len(app.calls) == 1


# --- several server nodes -----------------------------------------------------------------------------------------
async def test_a_node_claims_only_what_its_call_slots_can_serve_so_another_node_shares_the_work(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(max_calls_per_app=2)
    app.start()
    app.script(fid("slow"), dataclasses.replace(complete("ok"), hang=0.05))
    await register(s, app, fn_config(app.url, "slow"))
    event_ids = [await s.send() for _ in range(40)]
    other = HttpWorker(s.st)  # a second `stepline start` node on the same database
    try:
        await asyncio.gather(s.worker.run_until_idle(), other.run_until_idle())
    finally:
        other.close()
    runs = [(await s.runs_of(e))[fid("slow")] for e in event_ids]
    assert [r.status for r in runs] == ["completed"] * 40
    assert s.worker.runs_started + other.runs_started == 40
    assert min(s.worker.runs_started, other.runs_started) >= 10  # neither node took (nearly) everything
    assert s.worker.concurrency == other.concurrency == 6  # 3 runs per call slot, 2 slots, one app


async def test_a_slow_apps_backlog_does_not_hold_up_another_apps_runs(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack(max_calls_per_app=1)  # 3 runs claimed at most per app
    fast = FakeApp().start()
    try:
        app.start()
        app.script(fid("slow"), dataclasses.replace(complete("ok"), hang=0.3))
        fast.script("b-fast", complete("ok"))
        await register(s, app, fn_config(app.url, "slow", event="a/go"))
        await register_second_app(s, fast, "fast", "b/go")
        for _ in range(12):
            await s.send("a/go")
        await s.send("b/go")
        async with s.worker.running():
            await eventually("a call to the other app", lambda: fast.calls, interval=0.005)
            slow_calls_before = len(app.calls)
        assert slow_calls_before <= 2  # with one limit for both apps it came after 8 of the slow app's calls
        assert s.worker.concurrency == 6  # 3 per app, two apps
    finally:
        await fast.astop()


async def test_a_full_apps_backlog_is_claimed_as_its_runs_end_while_another_app_is_idle(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(max_calls_per_app=1)  # 3 runs claimed at most per app
    idle = FakeApp().start()
    try:
        app.start()
        app.script(fid("slow"), dataclasses.replace(complete("ok"), hang=0.3))
        await register(s, app, fn_config(app.url, "slow", event="a/go"))
        await register_second_app(s, idle, "idle", "b/go")
        for _ in range(6):
            await s.send("a/go")
        started = time.monotonic()
        async with s.worker.running():
            while len(app.calls) < 6:
                assert time.monotonic() - started < 20, f"{len(app.calls)} of 6 calls"
                await asyncio.sleep(0.005)
            elapsed = time.monotonic() - started
        # 6 calls of 0.3 s one after the other: ~1.5 s. The runs claimed after the first three waited for the
        # worker's safety poll (5 s) on PostgreSQL when a claim left the full app out and found nothing for the other.
        assert elapsed < 4, elapsed
    finally:
        await idle.astop()
