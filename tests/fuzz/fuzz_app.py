"""The functions a fuzzed server runs in-process (``stepline dev --app tests.fuzz.fuzz_app:client``), so the REST
API has functions, live and ended runs, steps and logs for schemathesis to reach."""

from __future__ import annotations

import logging
from typing import Any

from stepline import Context, Stepline

client = Stepline(app_id="fuzz")  # `stepline dev --app` gives it the server's store


@client.function(id="work", trigger="fuzz/*")
async def work(ctx: Context) -> Any:
    logging.getLogger("fuzz").info("working on %s", ctx.event.name)
    value = await ctx.step.run("double", lambda: 2 * int(ctx.event.data.get("n", 1)))
    if ctx.event.data.get("nap"):
        await ctx.step.sleep("nap", "1h")
    return {"value": value}
