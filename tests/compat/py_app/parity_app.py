"""The round-2 app of Stepline's compatibility tests (``test_parity.py``): Inngest's retry and error semantics and
the newer step kinds, with the official PyPI ``inngest`` SDK, unmodified, served by FastAPI at /api/inngest.

``node_app/parity_app.js`` has the same functions (same ids, events and outputs) with the JS SDK, where that SDK
has the feature. Env: as ``app.py`` (COMPAT_APP_ID, COMPAT_LOG, the SDK's INNGEST_* variables).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any

import fastapi
import inngest
import inngest.fast_api
from inngest.experimental import ai
from record import record, token_of

client = inngest.Inngest(
    app_id=os.environ.get("COMPAT_APP_ID", "parity-py"),
    logger=logging.getLogger("parity-py-app"),
    app_version="parity-1",
)
# A second app in the same process, served with streaming answers (INNGEST_STREAMING): synced by the test.
streaming_client = inngest.Inngest(app_id=f"{client.app_id}-streaming", logger=logging.getLogger("parity-py-app"))
# What already failed once, per token and place: the code before a step runs again on every call (replay), so
# "fail once here" needs memory outside the run.
_failed: set[tuple[str, str]] = set()


def fail_once(token: str, where: str) -> bool:
    if (token, where) in _failed:
        return False
    _failed.add((token, where))
    return True


@client.create_function(fn_id="ping", trigger=inngest.TriggerEvent(event="compat/ping"))
async def ping(ctx: inngest.Context) -> str:
    return "pong"


# --- retries between steps: each stretch of code between two steps gets the full retries ------------------------
@client.create_function(fn_id="stretch", retries=1, trigger=inngest.TriggerEvent(event="parity/stretch"))
async def stretch(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]
    kind = ctx.event.data.get("kind", "error")
    record(fn="stretch", what="call", attempt=ctx.attempt, token=token)

    def fail(where: str) -> None:
        if fail_once(token, where):
            record(fn="stretch", what="fail", where=where, attempt=ctx.attempt, token=token)
            if kind == "retry-after":
                raise inngest.RetryAfterError(f"{where} the step", dt.timedelta(seconds=1))
            raise RuntimeError(f"{where} the step")

    fail("before")

    async def first() -> int:
        record(fn="stretch", what="step", step="first", attempt=ctx.attempt, token=token)
        return 1

    value = await ctx.step.run("first", first)
    fail("after")
    return {"value": value, "attempt": ctx.attempt}


# --- error shapes --------------------------------------------------------------------------------------------------
async def shapes_failure(ctx: inngest.Context) -> None:
    record(fn="shapes-failure", what="on_failure", error=ctx.event.data.get("error"), token=token_of(ctx.event))


@client.create_function(fn_id="shapes", retries=0, trigger=inngest.TriggerEvent(event="parity/shapes"),
                        on_failure=shapes_failure)  # fmt: skip
async def shapes(ctx: inngest.Context) -> None:
    token = ctx.event.data["token"]

    async def charge() -> None:
        raise ValueError(f"card declined {token}")

    await ctx.step.run("charge", charge)


# --- step.ai.infer: the server makes the model request (item 5) --------------------------------------------------
@client.create_function(fn_id="ai-infer", retries=2, trigger=inngest.TriggerEvent(event="parity/ai"))
async def ai_infer(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data
    record(fn="ai-infer", what="call", token=data["token"])
    adapter = ai.openai.Adapter(auth_key="sk-parity", base_url=data["base_url"], model="gpt-parity")
    answer = await ctx.step.ai.infer("ask", adapter=adapter,
                                     body={"messages": [{"role": "user", "content": data["question"]}]})  # fmt: skip
    return {"content": answer["choices"][0]["message"]["content"]}  # type: ignore[index]


# --- item 9: rows of docs/inngest-compat.md not covered elsewhere with this SDK -----------------------------------
BIG = 2_500_000  # two such results are more than the 4 MiB a call carries: the SDK fetches them (use_api)


@client.create_function(fn_id="big-state", trigger=inngest.TriggerEvent(event="parity/big-state"))
async def big_state(ctx: inngest.Context) -> dict[str, Any]:
    a = await ctx.step.run("a", lambda: "a" * BIG)
    b = await ctx.step.run("b", lambda: "b" * BIG)
    await ctx.step.sleep("pause", dt.timedelta(seconds=1))  # a new call, carrying (or not) the 5 MB of state

    async def total() -> int:
        return len(a) + len(b)

    return {"total": await ctx.step.run("total", total)}


@client.create_function(fn_id="guarded", idempotency="event.data.key", trigger=inngest.TriggerEvent(
    event="parity/guarded"), timeouts=inngest.Timeouts(finish=dt.timedelta(seconds=1)))  # fmt: skip
async def guarded(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]
    record(fn="guarded", what="call", token=token)
    await ctx.step.sleep("long", dt.timedelta(seconds=float(ctx.event.data.get("sleep_s", 0))))
    record(fn="guarded", what="step", step="after", token=token)
    return {"key": ctx.event.data["key"]}


@client.create_function(fn_id="napper", trigger=inngest.TriggerEvent(event="parity/nap"))
async def napper(ctx: inngest.Context) -> None:
    token = ctx.event.data["token"]
    record(fn="napper", what="call", token=token)
    await ctx.step.sleep("nap", dt.timedelta(seconds=5))
    record(fn="napper", what="step", step="after", token=token)


@streaming_client.create_function(fn_id="streamed", trigger=inngest.TriggerEvent(event="parity/streamed"))
async def streamed(ctx: inngest.Context) -> dict[str, Any]:
    value = await ctx.step.run("one", lambda: 1)
    return {"streamed": value, "token": ctx.event.data["token"]}


@client.create_function(fn_id="nightly", trigger=inngest.TriggerCron(cron="TZ=Europe/Paris 0 3 * * *"))
async def nightly(ctx: inngest.Context) -> str:
    return "ran"


FUNCTIONS = [ping, stretch, shapes, ai_infer, big_state, guarded, napper, nightly]

app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, FUNCTIONS)
inngest.fast_api.serve(app, streaming_client, [streamed], serve_path="/api/inngest-streaming",
                       streaming=inngest.Streaming.FORCE)  # fmt: skip


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"ok": True, "app_id": client.app_id}
