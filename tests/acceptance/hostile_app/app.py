"""An app on the official PyPI ``inngest`` SDK whose function's trigger is the expression that crashed Stepline
servers before the expression limits (a 15,000-term sum), and one ordinary function beside it
(``uvicorn app:app --app-dir tests/acceptance/hostile_app``; ``INNGEST_DEV`` or ``INNGEST_BASE_URL`` and keys)."""

from __future__ import annotations

import os

import fastapi
import inngest
import inngest.fast_api

CRASHING_SUM = " + ".join(["1"] * 15_000) + " > 0"

client = inngest.Inngest(app_id=os.environ.get("HOSTILE_APP_ID", "hostile"))


@client.create_function(fn_id="crash", trigger=inngest.TriggerEvent(event="shop/order", expression=CRASHING_SUM))
async def crash(ctx: inngest.Context) -> str:
    return "never"


app = fastapi.FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


inngest.fast_api.serve(app, client, [crash])
