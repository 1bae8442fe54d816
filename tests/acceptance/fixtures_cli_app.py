"""The app the CLI acceptance tests run with ``stepline worker app:client`` (copied to a temp dir as app.py)."""

from __future__ import annotations

from typing import Any

from stepline import Context, Stepline

client = Stepline("cli-test")


@client.function(id="hello", trigger="test/hello")
async def hello(ctx: Context) -> dict[str, Any]:
    plus_one = await ctx.step.run("add-one", lambda: ctx.event.data["n"] + 1)
    times_ten = await ctx.step.run("times-ten", lambda: plus_one * 10)
    return {"plus_one": plus_one, "times_ten": times_ten}


@client.function(id="sleeper", trigger="test/sleep")
def sleeper(ctx: Context) -> str:
    ctx.step.sleep("nap", "1h")
    return "woke up"


not_a_client = 42


@client.function(id="waiter", trigger="test/wait", cancel_on=[{"event": "test/stop", "match": "data.k"}])
async def waiter(ctx: Context) -> Any:
    go = await ctx.step.wait_for_event("go", event="test/go", match="data.k", timeout="1h")
    return {"went": go is not None}


@client.function(id="once-an-hour", trigger="test/limited", rate_limit={"limit": 1, "period": "1h"})
async def once_an_hour(ctx: Context) -> str:
    return "ran"


@client.function(id="napper", trigger="test/nap")
async def napper(ctx: Context) -> str:
    await ctx.step.sleep("short-nap", "1s")
    return "rested"
