"""The bulk CSV example as a web page: upload a CSV, get 202 and a job id at once, watch a live progress bar, then
the result with the rows that failed.

    stepline dev                                  # the Stepline server (realtime API, dashboard)
    python examples/csv_bulk/web.py               # this page on http://127.0.0.1:8000, running the jobs

This process (Starlette) serves the page, takes uploads (``POST /jobs``: sends ``csv/uploaded``, answers 202 with
the job id and a realtime token from ``client.realtime_token``) and runs a Stepline worker for ``process-csv``.
The page subscribes with Stepline's browser script to the job's channel on the Stepline server, replaying from the
start (``since: 0``) so a page that subscribes after the 202 still sees the first message. Both processes use the
same database (``STEPLINE_DB``, default ``.stepline/stepline.db``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so `import app` works from any directory

import app as csv_app
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from stepline.server.bodies import BodyTimeout, BodyTooLarge, read_body

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
TOKEN_SECONDS = 600  # long enough to reconnect during a job; a token is needed to connect, not to stay connected

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CSV import</title><link rel="icon" href="data:,">
<style>
 body { font: 15px system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; color: #222; }
 progress { width: 100%; height: 1.4rem; } table { border-collapse: collapse; margin-top: .5rem; }
 td, th { border: 1px solid #ccc; padding: .2rem .5rem; text-align: left; } .muted { color: #777; }
</style>
<script src="__STEPLINE__/v1/realtime/stepline-realtime.js"></script></head>
<body>
<h1>CSV import</h1>
<form id="upload-form"><input type="file" id="file" accept=".csv,text/csv" required>
<button id="upload" type="submit">Upload</button></form>
<p id="status" class="muted">Choose a CSV file (columns customer_id, name, email, amount).</p>
<progress id="bar" max="100" value="0" hidden></progress>
<p id="counts"></p>
<div id="result" hidden><h2 id="outcome"></h2><p id="summary"></p>
<table id="failed" hidden><thead><tr><th>Row</th><th>Line</th><th>Why it failed</th></tr></thead><tbody></tbody></table>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
window.progressLog = [];
let subscription = null;

function showProgress(p) {
  window.progressLog.push(p.processed_rows);
  const percent = p.total_rows ? Math.floor(p.processed_rows * 100 / p.total_rows) : 100;
  $("bar").hidden = false;
  $("bar").value = percent;
  $("counts").textContent = `${p.processed_rows} of ${p.total_rows} rows (${percent}%), ` +
    `batch ${p.batches_done} of ${p.total_batches}: ${p.ok_rows} ok, ${p.error_rows} failed`;
}

function showResult(r) {
  $("result").hidden = false;
  if (r.status !== "completed") {
    $("outcome").textContent = "The import failed";
    $("summary").textContent = r.reason;
    return;
  }
  $("bar").value = 100;
  $("outcome").textContent = "Done";
  $("summary").textContent = `${r.rows} rows: ${r.ok} imported, ${r.errors.length} failed.`;
  const body = $("failed").querySelector("tbody");
  body.replaceChildren(...r.errors.map((e) => {
    const tr = document.createElement("tr");
    tr.dataset.row = e.row;
    for (const v of [e.row, e.line, e.reason]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    return tr;
  }));
  $("failed").hidden = r.errors.length === 0;
}

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (subscription) subscription.close();
  $("result").hidden = true; $("bar").value = 0; window.progressLog = [];
  const resp = await fetch("jobs", { method: "POST", body: file, headers: { "content-type": "text/csv" } });
  const job = await resp.json();
  if (resp.status !== 202) { $("status").textContent = `Upload refused (${resp.status}): ${job.error}`; return; }
  $("status").textContent = `Accepted (${resp.status}): job ${job.job_id}`;
  $("status").dataset.jobId = job.job_id;
  subscription = SteplineRealtime.subscribe({
    server: "__STEPLINE__",
    token: job.token,
    since: 0,  // replay: what was published before this page subscribed
    onMessage(msg) {
      if (msg.topic === "progress") showProgress(msg.data);
      if (msg.topic === "result") { showResult(msg.data); subscription.close(); }
    },
    onStatus(state, why) { if (state === "reconnecting" && why) $("counts").textContent = `reconnecting: ${why}`; },
  });
});
</script>
</body></html>
"""


def build_app(stepline_url: str, *, db_path: str | None = None, progress_db: str | None = None,
              crm_latency: float = 0.05, batch_size: int = csv_app.DEFAULT_BATCH_SIZE) -> Starlette:  # fmt: skip
    """The page's ASGI app; its lifespan runs a Stepline worker for the example's functions."""
    client = csv_app.make_client(db_path, progress_db, crm_latency=crm_latency)
    page = PAGE.replace("__STEPLINE__", html.escape(stepline_url.rstrip("/"), quote=True))

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def upload(request: Request) -> Response:
        try:
            raw = await read_body(request, MAX_UPLOAD_BYTES)
        except BodyTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except BodyTimeout as exc:
            return JSONResponse({"error": str(exc)}, status_code=408)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return JSONResponse({"error": "the file is not UTF-8 text"}, status_code=400)
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        [event_id] = await client.send({"name": csv_app.EVENT, "data": {"job_id": job_id, "csv_text": text,
                                                                         "batch_size": batch_size}})  # fmt: skip
        token = await client.realtime_token(csv_app.channel_of(job_id), ["progress", "result"], TOKEN_SECONDS)
        return JSONResponse({"job_id": job_id, "event_id": event_id, "channel": csv_app.channel_of(job_id),
                             "token": token}, status_code=202)  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await client.ready()
        worker = client.worker()
        task = asyncio.create_task(worker.run(), name="csv-worker")
        try:
            yield
        finally:
            worker.stop()
            await task
            await client.close()

    return Starlette(routes=[Route("/", index), Route("/jobs", upload, methods=["POST"])], lifespan=lifespan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The bulk CSV example as a web page with live progress.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stepline-url", default=os.environ.get("STEPLINE_URL", "http://127.0.0.1:8288"),
                        help="the Stepline server the page subscribes to (stepline dev)")  # fmt: skip
    parser.add_argument("--crm-latency", type=float, default=0.05, help="seconds per fake CRM lookup")
    args = parser.parse_args(argv)
    app = build_app(args.stepline_url, crm_latency=args.crm_latency)
    print(f"CSV import page on http://127.0.0.1:{args.port}/ (realtime from {args.stepline_url})", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
