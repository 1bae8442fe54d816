"""The functions the dashboard tests run: in-process in the HTTP tests (``define``), and by a real server in the
browser tests (``stepline dev --app dash_app:client``)."""

from __future__ import annotations

import asyncio
from typing import Any

from stepline import Context, RetryAfterError, Stepline

_seen: set[str] = set()  # keys whose "charge" step already failed once (in this process)
_tries: dict[str, int] = {}  # attempts of the "fetch-rates" step per key (in this process)
RETRY_AFTER_S = 0.3


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


def _fetch_rates(key: str) -> dict[str, float]:
    n = _tries[key] = _tries.get(key, 0) + 1
    if n < 3:
        raise RetryAfterError(f"rate service busy (try {n}) for {key}", RETRY_AFTER_S)
    return {"eur": 1.1}


async def rates(ctx: Context) -> dict[str, Any]:
    key = str(ctx.event.data.get("key", "k"))
    fees, tax = await asyncio.gather(ctx.step.run("fetch-fees", lambda: 2), ctx.step.run("fetch-tax", lambda: 3))
    rate = await ctx.step.run("fetch-rates", lambda: _fetch_rates(key))
    await ctx.step.sleep("cool-down", f"{int(RETRY_AFTER_S * 1000)}ms")
    return {"rate": rate, "fees": fees, "tax": tax}


def define(client: Stepline) -> None:
    """Greet (two steps, completes), Checkout (its "charge" step fails the first time per key), Nap (sleeps 1 h),
    Rates (two parallel steps, "fetch-rates" fails twice before it succeeds, then a short sleep)."""
    client.function(id="greet", trigger="dash/greet", retries=0, name="Greet")(greet)
    client.function(id="checkout", trigger="dash/checkout", retries=0, name="Checkout")(checkout)
    client.function(id="nap", trigger="dash/nap", retries=0, name="Nap")(nap)
    client.function(id="rates", trigger="dash/rates", retries=3, name="Rates")(rates)


client = Stepline("dash")
define(client)
