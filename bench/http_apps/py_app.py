"""The benchmark app for ``bench/run_http.py``: the official PyPI ``inngest`` SDK, unmodified, served by FastAPI at
/api/inngest under uvicorn (``uvicorn py_app:app --app-dir bench/http_apps``).

Functions (ids prefixed with the app id, ``bench-py`` by default): ``one`` (one ``step.run``), ``ten`` (ten
sequential ``step.run``) and ``lat`` (one ``step.run``; its first line appends ``time.time()`` and the send time
carried in the event data to ``$BENCH_LAT_LOG``). They mirror the in-process functions of ``bench/run_sqlite.py``.

``$BENCH_STATS_DIR``: every worker process writes ``calls-<pid>.json`` there (every 0.2 s while it changes): the
POSTs to /api/inngest it answered, per function, and the time its handler took (from the request to the last
byte of the response, inside the app), so the benchmark counts the SDK calls the server made per run.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any
from urllib.parse import parse_qs

import fastapi
import inngest
import inngest.fast_api

APP_ID = os.environ.get("BENCH_APP_ID", "bench-py")
STATS_DIR = os.environ.get("BENCH_STATS_DIR", "")
LAT_LOG = os.environ.get("BENCH_LAT_LOG", "")

_quiet = logging.getLogger("bench-py-app")
_quiet.setLevel(logging.WARNING)
client = inngest.Inngest(app_id=APP_ID, logger=_quiet)


@client.create_function(fn_id="one", trigger=inngest.TriggerEvent(event="bench/one"))
async def one(ctx: inngest.Context) -> Any:
    i = ctx.event.data["i"]
    return await ctx.step.run("s1", lambda: i)


async def _ten_steps(ctx: inngest.Context) -> Any:
    total = 0
    for k in range(10):
        total += await ctx.step.run(f"s{k}", lambda k=k: k)
    return total


@client.create_function(fn_id="ten", trigger=inngest.TriggerEvent(event="bench/ten"))
async def ten(ctx: inngest.Context) -> Any:
    return await _ten_steps(ctx)


@client.create_function(fn_id="ten-classic", trigger=inngest.TriggerEvent(event="bench/ten-classic"))
async def ten_classic(ctx: inngest.Context) -> Any:
    """The same as ``ten`` (the Python SDK does not checkpoint; the npm app's twin runs with checkpointing off)."""
    return await _ten_steps(ctx)


@client.create_function(fn_id="ten-buffered", trigger=inngest.TriggerEvent(event="bench/ten-buffered"))
async def ten_buffered(ctx: inngest.Context) -> Any:
    """The same as ``ten`` (the npm app's twin checkpoints with a buffer of 10 steps)."""
    return await _ten_steps(ctx)


_lat_lock = threading.Lock()


@client.create_function(fn_id="lat", trigger=inngest.TriggerEvent(event="bench/lat"))
async def lat(ctx: inngest.Context) -> Any:
    now = time.time()  # the first line of the function body: what event-to-start latency measures
    data = ctx.event.data
    i = data["i"]
    if LAT_LOG:
        line = json.dumps({"i": i, "t": now, "sent_at": data["sent_at"], "run_id": ctx.run_id, "pid": os.getpid()})
        with _lat_lock, open(LAT_LOG, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return await ctx.step.run("s1", lambda: i)


@client.create_function(fn_id="three", trigger=inngest.TriggerEvent(event="bench/three"))
async def three(ctx: inngest.Context) -> Any:
    """The await scenario's workflow (bench/workflow_await.py): ((i + 1) * 2) + 3 in three steps."""
    i = ctx.event.data["i"]
    a = await ctx.step.run("add", lambda: i + 1)
    b = await ctx.step.run("double", lambda: a * 2)
    return await ctx.step.run("plus", lambda: b + 3)


api = fastapi.FastAPI()
inngest.fast_api.serve(api, client, [one, ten, ten_classic, ten_buffered, lat, three])


@api.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"ok": True, "app_id": client.app_id, "pid": os.getpid()}


class CallStats:
    """ASGI wrapper counting the POSTs to /api/inngest (the server's calls) per fnId, with their time in the app."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.version = 0
        if STATS_DIR:
            threading.Thread(target=self._flush_loop, name="bench-stats", daemon=True).start()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/api/inngest":
            await self.inner(scope, receive, send)
            return
        fn = parse_qs(scope["query_string"].decode()).get("fnId", ["?"])[0]
        t = time.perf_counter()
        try:
            await self.inner(scope, receive, send)
        finally:
            self.calls[fn] = self.calls.get(fn, 0) + 1
            self.seconds[fn] = self.seconds.get(fn, 0.0) + time.perf_counter() - t
            self.version += 1

    def _flush_loop(self) -> None:
        path = os.path.join(STATS_DIR, f"calls-{os.getpid()}.json")
        written = -1
        while True:
            time.sleep(0.2)
            if self.version != written:
                written = self.version
                tmp = path + ".tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump({"calls": dict(self.calls), "seconds": dict(self.seconds)}, f)
                os.replace(tmp, path)


app = CallStats(api)
