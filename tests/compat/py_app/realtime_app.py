"""Realtime with the official PyPI ``inngest`` SDK, unmodified (tests/compat/test_realtime.py): a function publishes
with ``inngest.experimental.realtime.publish`` (from a step and from the function body) and the app mints
subscription tokens with ``get_subscription_token``. Served like app.py (``uvicorn realtime_app:app``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import fastapi
import inngest
import inngest.fast_api
from inngest.experimental import realtime

client = inngest.Inngest(
    app_id=os.environ.get("COMPAT_APP_ID", "compat-rt-py"), logger=logging.getLogger("compat-rt-py")
)


@client.create_function(fn_id="ping", trigger=inngest.TriggerEvent(event="compat/ping"))
async def ping(ctx: inngest.Context) -> str:
    return "pong"


@client.create_function(fn_id="rt-publish", trigger=inngest.TriggerEvent(event="compat/rt"))
async def rt_publish(ctx: inngest.Context) -> dict[str, Any]:
    token = ctx.event.data["token"]
    channel = f"compat-rt:{token}"

    async def announce() -> str:
        await realtime.publish(client, channel, "status", {"token": token, "stage": "started"})
        return "sent"

    await ctx.step.run("announce", announce)
    n = await ctx.step.run("work", lambda: 21 * 2)
    await realtime.publish(client, channel, "done", {"token": token, "stage": "done", "n": n})
    return {"n": n}


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [ping, rt_publish])


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"ok": True, "app_id": client.app_id}


@app.post("/token")
async def token(body: dict[str, Any]) -> dict[str, Any]:
    """A subscription token for the test's channel, from the SDK's own helper."""
    return dict(await realtime.get_subscription_token(client, f"compat-rt:{body['token']}", ["status", "done"]))
