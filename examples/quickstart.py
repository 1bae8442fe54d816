import asyncio

from stepline import Context, Stepline

client = Stepline(app_id="quickstart", store=".stepline/quickstart.db")  # SQLite; default: $STEPLINE_DB


def load_order(order_id: int) -> dict:
    return {"id": order_id, "email": "ada@example.com", "total": 42.5}


def send_email(order: dict) -> str:
    print(f"emailing {order['email']} the receipt of order {order['id']}")
    return "sent"


@client.function(id="send-receipt", trigger="shop/order.paid", retries=4)
async def send_receipt(ctx: Context) -> dict:
    order = await ctx.step.run("load-order", load_order, ctx.event.data["order_id"])
    await ctx.step.sleep("cool-off", "1s")  # durable: a restarted worker sleeps only what is left
    confirmation = await ctx.step.wait_for_event(
        "confirmed", event="shop/order.confirmed", match="data.order_id", timeout="1m"
    )
    if confirmation is None:
        return {"status": "unconfirmed"}
    return {"status": await ctx.step.run("email", send_email, order)}


async def main() -> None:
    worker = asyncio.create_task(client.run_worker())  # or from a shell: stepline worker quickstart:client
    # in a web handler (sync code: client.send_sync):
    [event_id] = await client.send({"name": "shop/order.paid", "data": {"order_id": 42}})
    [run] = await client.runs_for_event(event_id)
    while run.idle_reason is None or run.idle_reason["kind"] != "waiting":  # until it waits for the confirmation
        await asyncio.sleep(0.1)
        run = await client.get_run(run.id)
    await client.send({"name": "shop/order.confirmed", "data": {"order_id": 42}})
    while run.status not in ("completed", "failed"):
        await asyncio.sleep(0.1)
        run = await client.get_run(run.id)
    print(f"run {run.status}: {run.output}; its steps: stepline runs show {run.id} --db .stepline/quickstart.db")
    worker.cancel()


if __name__ == "__main__":
    asyncio.run(main())
