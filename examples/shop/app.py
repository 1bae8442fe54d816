"""The example app `scripts/example` serves with `stepline dev`: an online shop's background work.

    stepline dev --app app:client --app-dir examples/shop     # then open http://127.0.0.1:8288/

Four functions show the main features: durable steps with a sleep and a wait for an event, retries, a keyed
concurrency limit with a throttle, and a cron schedule. ``send.py`` sends the events a web shop would.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from stepline import Backoff, Concurrency, Context, NonRetriableError, Stepline, Throttle

client = Stepline(app_id="shop")

FLAKY_ORDERS = (2, 6)  # the payment provider times out on the first charge of these orders
QUICK_RETRIES = Backoff(schedule=(dt.timedelta(seconds=2),), jitter=dt.timedelta(seconds=1))  # a demo's pace
_timed_out: set[int] = set()


def load_order(order_id: int) -> dict[str, Any]:
    return {"order_id": order_id, "total": 20 + order_id % 7 * 10, "items": order_id % 3 + 1}


def charge_card(order: dict[str, Any]) -> dict[str, Any]:
    if order["order_id"] in FLAKY_ORDERS and order["order_id"] not in _timed_out:  # the step is retried
        _timed_out.add(order["order_id"])
        raise TimeoutError("payment provider did not answer in 5 s")
    return {"charged": order["total"], "receipt": f"r-{order['order_id']}"}


@client.function(id="process-order", trigger="shop/order.paid", retries=5, backoff=QUICK_RETRIES)
async def process_order(ctx: Context) -> Any:
    order = await ctx.step.run("load-order", load_order, ctx.event.data["order_id"])
    payment = await ctx.step.run("charge-card", charge_card, order)
    await ctx.step.sleep("cool-off", "3s")
    shipped = await ctx.step.wait_for_event(
        "wait-for-shipping", event="shop/order.shipped", match="data.order_id", timeout="20s"
    )
    status = "shipped" if shipped else "awaiting shipment"
    await ctx.step.run("email-customer", lambda: f"receipt {payment['receipt']} sent ({status})")
    return {"order": order["order_id"], "status": status}


@client.function(
    id="sync-crm",
    trigger="shop/order.paid",
    concurrency=Concurrency(limit=1, key="event.data.customer"),  # one sync per customer at a time
    throttle=Throttle(limit=2, period="1s"),  # the CRM accepts two calls per second
)
async def sync_crm(ctx: Context) -> Any:
    return await ctx.step.run("push-to-crm", lambda: {"customer": ctx.event.data["customer"], "synced": True})


@client.function(id="fraud-check", trigger={"event": "shop/order.paid", "if": "event.data.order_id % 5 == 0"})
async def fraud_check(ctx: Context) -> Any:
    def score() -> float:
        raise NonRetriableError("fraud service rejected the request: card country mismatch")

    return await ctx.step.run("score", score)


@client.function(id="hourly-report", trigger={"cron": "0 * * * *"})
async def hourly_report(ctx: Context) -> Any:
    return await ctx.step.run("summarise", lambda: {"scheduled_at": ctx.event.id})
