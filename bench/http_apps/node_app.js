"use strict";
// The benchmark app for bench/run_http.py with the official `inngest` JS SDK, unmodified, served by Express at
// /api/inngest. Same functions as py_app.py (`one`, `ten`, `lat`, `three`, app id `bench-node` by default).
//
// It uses the packages installed for the compatibility tests:
//   NODE_PATH=tests/compat/node_app/node_modules PORT=3000 INNGEST_DEV=http://127.0.0.1:8288 node bench/http_apps/node_app.js
// Env: BENCH_STATS_DIR (calls-<pid>.json: the POSTs to /api/inngest per fnId and their time in the app, and the
// SDK's checkpoint requests to the server per fn_id, written every 0.2 s while they change), BENCH_LAT_LOG (the `lat`
// function's first line appends {i, t, sent_at, run_id}).
//
// `ten` runs with the SDK's default, checkpointing (Stepline sends ctx.fn_id and ctx.qi_id: the SDK runs the steps
// in one call and POSTs each result to /v1/checkpoint/{run}/async); `ten-classic` is the same function with
// `checkpointing: false` (one call per step), so one run of the benchmark compares the two flows; `ten-buffered`
// checkpoints with `bufferedSteps: 10` (the results travel in the call's answer).

const fs = require("node:fs");
const path = require("node:path");
const express = require("express");
const { Inngest } = require("inngest");
const { serve } = require("inngest/express");

const checkpoints = {};
const checkpointSeconds = {};
let version = 0;

// The SDK's requests to the server go through this fetch: checkpoint requests are counted per function, with the
// time the app waits for their answers (the server's share of a checkpointed step).
const countingFetch = (input, init) => {
  const url = String(input instanceof Request ? input.url : input);
  if (url.includes("/v1/checkpoint/") && init && typeof init.body === "string") {
    let fn = "?";
    try {
      fn = JSON.parse(init.body).fn_id || "?";
    } catch {
      // not JSON: counted under "?"
    }
    checkpoints[fn] = (checkpoints[fn] || 0) + 1;
    version++;
    const t = process.hrtime.bigint();
    return fetch(input, init).finally(() => {
      checkpointSeconds[fn] = (checkpointSeconds[fn] || 0) + Number(process.hrtime.bigint() - t) / 1e9;
    });
  }
  return fetch(input, init);
};

const inngest = new Inngest({ id: process.env.BENCH_APP_ID || "bench-node", fetch: countingFetch });

// The SDK's major version (NODE_PATH names the node_modules in use): 3.x takes the trigger as its own argument and
// has no checkpointing (bench/http_apps/npm3 installs it).
let SDK_MAJOR = 4;
try {
  const pkg = path.join(process.env.NODE_PATH || "", "inngest", "package.json");
  SDK_MAJOR = Number(JSON.parse(fs.readFileSync(pkg, "utf8")).version.split(".")[0]);
} catch {
  // not found: assume 4.x
}
const createFunction = (config, handler) => {
  if (SDK_MAJOR >= 4) return inngest.createFunction(config, handler);
  const { triggers, checkpointing: _unused, ...rest } = config;
  return inngest.createFunction(rest, triggers[0], handler);
};
const LAT_LOG = process.env.BENCH_LAT_LOG || "";
const STATS_DIR = process.env.BENCH_STATS_DIR || "";

const one = createFunction({ id: "one", triggers: [{ event: "bench/one" }] }, async ({ event, step }) => {
  const i = event.data.i;
  return await step.run("s1", () => i);
});

const tenSteps = async ({ step }) => {
  let total = 0;
  for (let k = 0; k < 10; k++) {
    total += await step.run(`s${k}`, () => k);
  }
  return total;
};
const ten = createFunction({ id: "ten", triggers: [{ event: "bench/ten" }] }, tenSteps);
const tenClassic = createFunction(
  { id: "ten-classic", checkpointing: false, triggers: [{ event: "bench/ten-classic" }] },
  tenSteps,
);
// Checkpointing with a buffer of 10 steps (an app's own choice: a crash loses up to 10 steps' results).
const tenBuffered = createFunction(
  { id: "ten-buffered", checkpointing: { bufferedSteps: 10 }, triggers: [{ event: "bench/ten-buffered" }] },
  tenSteps,
);

const lat = createFunction({ id: "lat", triggers: [{ event: "bench/lat" }] }, async ({ event, step, runId }) => {
  const now = Date.now() / 1000; // the first line of the function body: what event-to-start latency measures
  const i = event.data.i;
  if (LAT_LOG) {
    const line = { i, t: now, sent_at: event.data.sent_at, run_id: runId, pid: process.pid };
    fs.appendFileSync(LAT_LOG, `${JSON.stringify(line)}\n`);
  }
  return await step.run("s1", () => i);
});

// The await scenario's workflow (bench/workflow_await.py): ((i + 1) * 2) + 3 in three steps.
const three = createFunction({ id: "three", triggers: [{ event: "bench/three" }] }, async ({ event, step }) => {
  const a = await step.run("add", () => event.data.i + 1);
  const b = await step.run("double", () => a * 2);
  return await step.run("plus", () => b + 3);
});

const calls = {};
const seconds = {};

const app = express();
app.use((req, res, next) => {
  if (req.method === "POST" && req.path === "/api/inngest") {
    const fn = String(req.query.fnId || "?");
    const t = process.hrtime.bigint();
    res.on("finish", () => {
      calls[fn] = (calls[fn] || 0) + 1;
      seconds[fn] = (seconds[fn] || 0) + Number(process.hrtime.bigint() - t) / 1e9;
      version++;
    });
  }
  next();
});
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({ client: inngest, functions: [one, ten, tenClassic, tenBuffered, lat, three] }));
app.get("/healthz", (_req, res) => res.json({ ok: true, app_id: inngest.id, pid: process.pid }));

if (STATS_DIR) {
  const file = path.join(STATS_DIR, `calls-${process.pid}.json`);
  let written = -1;
  setInterval(() => {
    if (version === written) return;
    written = version;
    fs.writeFileSync(`${file}.tmp`, JSON.stringify({ calls, seconds, checkpoints, checkpoint_seconds: checkpointSeconds }));
    fs.renameSync(`${file}.tmp`, file);
  }, 200).unref();
}

const port = Number(process.env.PORT || 3000);
const server = app.listen(port, "127.0.0.1", () => {
  process.stdout.write(`bench node app listening on http://127.0.0.1:${port}/api/inngest\n`);
});
const stop = () => {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
