"use strict";
// Extended traces with the official npm `inngest` SDK (tests/observability/test_npm_userland_traces.py): the SDK's
// own OpenTelemetry middleware records the spans a function makes inside a step and exports them over OTLP/HTTP to
// the server's POST /v1/traces/userland, which keeps them with the run.
//
// Env: PORT, COMPAT_APP_ID (default "traces-node"), COMPAT_LOG, and the SDK's INNGEST_* variables.

const { extendedTracesMiddleware } = require("inngest/experimental");
const express = require("express");
const { Inngest } = require("inngest");
const { serve } = require("inngest/express");
const { record, tokenOf, listen } = require("./record");

const inngest = new Inngest({
  id: process.env.COMPAT_APP_ID || "traces-node",
  middleware: [extendedTracesMiddleware({ behaviour: "createProvider" })],
});

const ping = inngest.createFunction({ id: "ping", triggers: [{ event: "compat/ping" }] }, async () => "pong");

// One step whose code records two nested spans with the tracer the middleware gives the function.
const traced = inngest.createFunction(
  { id: "traced", triggers: [{ event: "traces/run" }] },
  async ({ event, step, tracer, runId }) => {
    const rows = await step.run("load-rows", async () =>
      tracer.startActiveSpan("load-rows-query", async (span) => {
        span.setAttribute("rows.requested", 3);
        const child = tracer.startSpan("parse-rows");
        child.setAttribute("rows.parsed", 3);
        child.end();
        span.end();
        return [1, 2, 3];
      }),
    );
    record({ fn: "traced", what: "done", token: tokenOf(event), run_id: runId });
    return { rows, token: event.data.token };
  },
);

const app = express();
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({ client: inngest, functions: [ping, traced] }));
app.get("/healthz", (_req, res) => res.json({ ok: true, app_id: inngest.id }));

listen(app, "traces node app");
