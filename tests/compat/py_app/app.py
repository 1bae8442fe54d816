"""The feature app for Stepline's compatibility tests: the official PyPI ``inngest`` SDK, unmodified, served by
FastAPI at /api/inngest (``uvicorn app:app --app-dir tests/compat/py_app``).

tests/compat/node_app/app.js has the same functions (same ids, events and outputs) with the JS SDK, so one test
suite drives both. Env: COMPAT_APP_ID (default ``compat-py``), COMPAT_LOG (a JSON-lines file: every call into a
handler and every execution of a step body is appended with the test's ``token``), and the SDK's own variables:
``INNGEST_DEV`` for a dev server; ``INNGEST_BASE_URL``, ``INNGEST_SIGNING_KEY`` and ``INNGEST_EVENT_KEY`` (and no
``INNGEST_DEV``) for a signed one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
import time
from typing import Any

import fastapi
import inngest
import inngest.fast_api
from fastapi.responses import JSONResponse
from record import record, token_of

client = inngest.Inngest(
    app_id=os.environ.get("COMPAT_APP_ID", "compat-py"),
    logger=logging.getLogger("compat-py-app"),
)


def called(fn: str, ctx: inngest.Context, **extra: Any) -> None:
    record(fn=fn, what="call", token=token_of(ctx.event), **extra)


def duration(value: Any, default: str) -> dt.timedelta:
    """The tests send JS-style durations ("1s", "500ms"); the Python SDK takes timedeltas."""
    text = str(value or default)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if m is None:
        raise ValueError(f"unsupported duration {text!r}")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "ms":
        return dt.timedelta(milliseconds=number)
    return dt.timedelta(seconds=number * (60 if unit == "m" else 1))


# The tests send compat/ping until a run starts: that is how they know the server has synced the app.
@client.create_function(fn_id="ping", trigger=inngest.TriggerEvent(event="compat/ping"))
async def ping(ctx: inngest.Context) -> str:
    return "pong"


# --- events: send and fan-out -----------------------------------------------------------------------------------
@client.create_function(fn_id="hello", trigger=inngest.TriggerEvent(event="compat/hello"))
async def hello(ctx: inngest.Context) -> dict[str, Any]:
    called("hello", ctx, run_id=ctx.run_id)
    return {"hello": ctx.event.data.get("name", "world"), "token": ctx.event.data.get("token")}


@client.create_function(fn_id="fanout-a", trigger=inngest.TriggerEvent(event="compat/fanout"))
async def fanout_a(ctx: inngest.Context) -> dict[str, Any]:
    called("fanout-a", ctx)
    return {"fn": "a", "token": ctx.event.data.get("token")}


@client.create_function(fn_id="fanout-b", trigger=inngest.TriggerEvent(event="compat/fanout"))
async def fanout_b(ctx: inngest.Context) -> dict[str, Any]:
    called("fanout-b", ctx)
    return {"fn": "b", "token": ctx.event.data.get("token")}


@client.create_function(fn_id="idempotent", trigger=inngest.TriggerEvent(event="compat/idempotent"))
async def idempotent(ctx: inngest.Context) -> dict[str, Any]:
    called("idempotent", ctx, event_id=ctx.event.id)
    return {"token": ctx.event.data.get("token")}


# --- steps ------------------------------------------------------------------------------------------------------
@client.create_function(fn_id="sequential", trigger=inngest.TriggerEvent(event="compat/sequential"))
async def sequential(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]
    n = ctx.event.data["n"]
    called("sequential", ctx)

    async def add_one() -> int:
        record(fn="sequential", what="step", step="add-one", token=token)
        return int(n) + 1

    one = await ctx.step.run("add-one", add_one)

    def double() -> int:  # a sync step body: the SDK runs it too
        record(fn="sequential", what="step", step="double", token=token)
        return one * 2

    two = await ctx.step.run("double", double)

    async def describe() -> str:
        record(fn="sequential", what="step", step="describe", token=token)
        return f"({n} + 1) * 2 = {two}"

    text = await ctx.step.run("describe", describe)
    return {"result": two, "text": text}


@client.create_function(fn_id="loop", trigger=inngest.TriggerEvent(event="compat/loop"))
async def loop(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]

    async def item(i: int) -> int:
        record(fn="loop", what="step", step="item", i=i, token=token)
        return i * 10

    results = [await ctx.step.run("item", item, i) for i in range(3)]
    return {"results": results}


@client.create_function(fn_id="parallel", trigger=inngest.TriggerEvent(event="compat/parallel"))
async def parallel(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]

    async def part(name: str) -> str:
        record(fn="parallel", what="step", step=f"par-{name}", token=token)
        return name

    parts = await ctx.group.parallel(
        (
            lambda: ctx.step.run("par-a", part, "a"),
            lambda: ctx.step.run("par-b", part, "b"),
            lambda: ctx.step.run("par-c", part, "c"),
        )
    )

    async def combine() -> str:
        record(fn="parallel", what="step", step="combine", token=token)
        return "".join(parts)

    return {"joined": await ctx.step.run("combine", combine)}


@client.create_function(fn_id="sleeper", trigger=inngest.TriggerEvent(event="compat/sleep"))
async def sleeper(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]
    called("sleeper", ctx)

    async def before() -> int:
        record(fn="sleeper", what="step", step="before", token=token)
        return int(time.time() * 1000)

    async def after() -> int:
        record(fn="sleeper", what="step", step="after", token=token)
        return int(time.time() * 1000)

    t0 = await ctx.step.run("before", before)
    await ctx.step.sleep("nap", duration(ctx.event.data.get("duration"), "1s"))
    t1 = await ctx.step.run("after", after)
    return {"slept_ms": t1 - t0}


@client.create_function(fn_id="wait-approval", trigger=inngest.TriggerEvent(event="compat/wait"))
async def wait_approval(ctx: inngest.Context) -> dict[str, Any]:
    called("wait-approval", ctx)
    approval = await ctx.step.wait_for_event(
        "wait-approval",
        event="compat/approval",
        if_exp="event.data.token == async.data.token",
        timeout=duration(ctx.event.data.get("timeout"), "5s"),
    )
    if approval is None:
        return {"approved_by": None, "timed_out": True}
    return {"approved_by": approval.data.get("by"), "timed_out": False}


@client.create_function(fn_id="invokee", trigger=inngest.TriggerEvent(event="compat/invokee"))
async def invokee(ctx: inngest.Context) -> dict[str, Any]:
    called("invokee", ctx)
    return {"sum": ctx.event.data["a"] + ctx.event.data["b"], "token": ctx.event.data.get("token")}


@client.create_function(fn_id="invoker", trigger=inngest.TriggerEvent(event="compat/invoke"))
async def invoker(ctx: inngest.Context) -> dict[str, Any]:
    called("invoker", ctx)
    data = ctx.event.data
    result = await ctx.step.invoke(
        "call-invokee", function=invokee, data={"a": data["a"], "b": data["b"], "token": data.get("token")}
    )
    return {"invoked": result}


@client.create_function(fn_id="sender", trigger=inngest.TriggerEvent(event="compat/send-from-step"))
async def sender(ctx: inngest.Context) -> dict[str, Any]:
    called("sender", ctx)
    ids = await ctx.step.send_event(
        "emit", inngest.Event(name="compat/received", data={"token": ctx.event.data["token"], "n": ctx.event.data["n"]})
    )
    return {"sent_ids": ids}


@client.create_function(fn_id="receiver", trigger=inngest.TriggerEvent(event="compat/received"))
async def receiver(ctx: inngest.Context) -> dict[str, Any]:
    called("receiver", ctx)
    return {"got": ctx.event.data["n"], "token": ctx.event.data.get("token")}


# --- failures ---------------------------------------------------------------------------------------------------
@client.create_function(fn_id="flaky-step", retries=3, trigger=inngest.TriggerEvent(event="compat/flaky"))
async def flaky_step(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]

    async def flaky() -> dict[str, Any]:
        record(fn="flaky-step", what="step", step="flaky", attempt=ctx.attempt, token=token)
        if ctx.attempt == 0:
            raise RuntimeError(f"flaky failure {token}")
        return {"succeeded_on_attempt": ctx.attempt}

    return await ctx.step.run("flaky", flaky)


async def always_fails_failure(ctx: inngest.Context) -> dict[str, Any]:
    error = ctx.event.data.get("error") or {}
    record(
        fn="always-fails-failure",
        what="on_failure",
        token=token_of(ctx.event),
        run_id=ctx.run_id,
        event_name=ctx.event.name,
        error_message=error.get("message"),
        function_id=ctx.event.data.get("function_id"),
        failed_run_id=ctx.event.data.get("run_id"),
    )
    return {"handled": error.get("message")}


@client.create_function(
    fn_id="always-fails",
    retries=1,
    trigger=inngest.TriggerEvent(event="compat/always-fails"),
    on_failure=always_fails_failure,
)
async def always_fails(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]

    async def doomed() -> None:
        record(fn="always-fails", what="step", step="doomed", attempt=ctx.attempt, token=token)
        raise RuntimeError(f"doomed {token}")

    await ctx.step.run("doomed", doomed)
    return {"unreachable": True}


@client.create_function(fn_id="non-retriable", retries=3, trigger=inngest.TriggerEvent(event="compat/non-retriable"))
async def non_retriable(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]

    async def reject() -> None:
        record(fn="non-retriable", what="step", step="reject", attempt=ctx.attempt, token=token)
        raise inngest.NonRetriableError(f"not worth retrying {token}")

    await ctx.step.run("reject", reject)
    return {"unreachable": True}


@client.create_function(fn_id="retry-after", retries=2, trigger=inngest.TriggerEvent(event="compat/retry-after"))
async def retry_after(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]

    async def rate_limited() -> dict[str, Any]:
        record(fn="retry-after", what="step", step="rate-limited", attempt=ctx.attempt, token=token)
        if ctx.attempt == 0:
            raise inngest.RetryAfterError(f"rate limited {token}", dt.timedelta(seconds=1))
        return {"succeeded_on_attempt": ctx.attempt}

    return await ctx.step.run("rate-limited", rate_limited)


# --- lifecycle --------------------------------------------------------------------------------------------------
@client.create_function(
    fn_id="cancellable",
    trigger=inngest.TriggerEvent(event="compat/cancellable"),
    cancel=[inngest.Cancel(event="compat/cancel", if_exp="async.data.token == event.data.token")],
)
async def cancellable(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]
    called("cancellable", ctx)

    async def started() -> bool:
        record(fn="cancellable", what="step", step="started", token=token)
        return True

    async def after_nap() -> bool:
        record(fn="cancellable", what="step", step="after-nap", token=token)
        return True

    await ctx.step.run("started", started)
    await ctx.step.sleep("long-nap", duration(ctx.event.data.get("duration"), "2s"))
    await ctx.step.run("after-nap", after_nap)
    return {"finished": True}


# --- flow control (tests/compat/test_flow_control.py; node_app/flow_app.ts has the same functions) ---------------
@client.create_function(
    fn_id="flow-concurrency",
    trigger=inngest.TriggerEvent(event="compat/flow-concurrency"),
    concurrency=[inngest.Concurrency(limit=1, key="event.data.key")],
)
async def flow_concurrency(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data
    called("flow-concurrency", ctx, key=data["key"])

    async def work() -> dict[str, Any]:
        start = time.time()
        await asyncio.sleep(float(str(data.get("hold", 0.5))))
        return {"key": data["key"], "n": data["n"], "start": start, "end": time.time()}

    return await ctx.step.run("work", work)


@client.create_function(
    fn_id="flow-rate-limit",
    trigger=inngest.TriggerEvent(event="compat/flow-rate-limit"),
    rate_limit=inngest.RateLimit(limit=1, period=dt.timedelta(hours=1), key="event.data.key"),
)
async def flow_rate_limit(ctx: inngest.Context) -> dict[str, Any]:
    called("flow-rate-limit", ctx, n=ctx.event.data["n"])
    return {"n": ctx.event.data["n"]}


@client.create_function(
    fn_id="flow-throttle",
    trigger=inngest.TriggerEvent(event="compat/flow-throttle"),
    throttle=inngest.Throttle(limit=1, period=dt.timedelta(seconds=1), key="event.data.token"),  # burst: 1 (default)
)
async def flow_throttle(ctx: inngest.Context) -> dict[str, Any]:
    called("flow-throttle", ctx, n=ctx.event.data["n"])
    return {"n": ctx.event.data["n"], "started": time.time()}


@client.create_function(
    fn_id="flow-debounce",
    trigger=inngest.TriggerEvent(event="compat/flow-debounce"),
    debounce=inngest.Debounce(period=dt.timedelta(seconds=1), key="event.data.token"),
)
async def flow_debounce(ctx: inngest.Context) -> dict[str, Any]:
    called("flow-debounce", ctx, n=ctx.event.data["n"])
    return {"n": ctx.event.data["n"], "event_id": ctx.event.id, "started": time.time()}


@client.create_function(
    fn_id="flow-batch",
    trigger=inngest.TriggerEvent(event="compat/flow-batch"),
    batch_events=inngest.Batch(max_size=3, timeout=dt.timedelta(seconds=2), key="event.data.token"),
)
async def flow_batch(ctx: inngest.Context) -> dict[str, Any]:
    called("flow-batch", ctx, count=len(ctx.events))
    return {"ns": [e.data["n"] for e in ctx.events], "started": time.time()}


@client.create_function(
    fn_id="flow-singleton",
    trigger=inngest.TriggerEvent(event="compat/flow-singleton"),
    singleton=inngest.Singleton(mode="skip", key="event.data.token"),
)
async def flow_singleton(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]
    called("flow-singleton", ctx, n=ctx.event.data["n"])

    async def started() -> float:
        record(fn="flow-singleton", what="step", step="started", token=token, n=ctx.event.data["n"])
        return time.time()

    await ctx.step.run("started", started)
    await ctx.step.sleep("hold", duration(ctx.event.data.get("hold"), "1s"))
    return {"n": ctx.event.data["n"]}


FUNCTIONS = [
    ping,
    hello,
    fanout_a,
    fanout_b,
    idempotent,
    sequential,
    loop,
    parallel,
    sleeper,
    wait_approval,
    invokee,
    invoker,
    sender,
    receiver,
    flaky_step,
    always_fails,
    non_retriable,
    retry_after,
    cancellable,
    flow_concurrency,
    flow_rate_limit,
    flow_throttle,
    flow_debounce,
    flow_batch,
    flow_singleton,
]

app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, FUNCTIONS)


@app.post("/send")
async def send(request: fastapi.Request) -> fastapi.Response:
    """Sends events with the SDK's own client (``client.send``), as an app's web handler would."""
    body = await request.json()
    try:
        ids = await client.send([inngest.Event(**e) for e in body["events"]])
    except Exception as exc:
        return JSONResponse({"error": str(exc)}, status_code=500)
    return JSONResponse({"ids": ids})


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"ok": True, "app_id": client.app_id}
