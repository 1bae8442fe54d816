"""The functions the dashboard tests run: in-process in the HTTP tests (``define``), and by a real server in the
browser tests (``stepline dev --app dash_app:client``)."""

from __future__ import annotations

from typing import Any

from stepline import Context, Stepline

_seen: set[str] = set()  # keys whose "charge" step already failed once (in this process)


async def greet(ctx: Context) -> dict[str, Any]:
    name = await ctx.step.run("load-name", lambda: ctx.event.data.get("name", "world"))
    text = await ctx.step.run("compose", lambda: f"hello {name}")
    return {"text": text}


def _charge(key: str) -> str:
    if key not in _seen:
        _seen.add(key)
        raise RuntimeError(f"card declined for {key}")
    return f"charged {key}"


async def checkout(ctx: Context) -> dict[str, Any]:
    key = str(ctx.event.data.get("key", "k"))
    cart = await ctx.step.run("load-cart", lambda: {"key": key, "items": 2})
    receipt = await ctx.step.run("charge", lambda: _charge(key))
    return {"cart": cart, "receipt": receipt}


async def nap(ctx: Context) -> str:
    await ctx.step.run("before", lambda: "awake")
    await ctx.step.sleep("long-nap", "1h")
    return "rested"


def define(client: Stepline) -> None:
    """Greet (two steps, completes), Checkout (its "charge" step fails the first time per key), Nap (sleeps 1 h)."""
    client.function(id="greet", trigger="dash/greet", retries=0, name="Greet")(greet)
    client.function(id="checkout", trigger="dash/checkout", retries=0, name="Checkout")(checkout)
    client.function(id="nap", trigger="dash/nap", retries=0, name="Nap")(nap)


client = Stepline("dash")
define(client)
