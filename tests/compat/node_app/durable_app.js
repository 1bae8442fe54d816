"use strict";
// Durable endpoints with the official `inngest` JS SDK 4.x, unmodified (tests/compat/test_durable_endpoints.py):
// `inngest.endpoint(...)` with the edge adapter (Web Request/Response), bridged from Express. The SDK checkpoints
// each step to the server (POST /v1/checkpoint, /v1/checkpoint/{runId}/steps); a sleep makes the endpoint go async
// (302 to the server's output URL) and the server resumes the run by calling the endpoint. Every step body run is
// recorded in $COMPAT_LOG with the request's token.

const express = require("express");
const { Inngest, step } = require("inngest");
const { serve } = require("inngest/express");
const { endpointAdapter } = require("inngest/edge");
const { record, listen } = require("./record");

const inngest = new Inngest({ id: process.env.COMPAT_APP_ID || "compat-durable-node", endpointAdapter });

const ping = inngest.createFunction({ id: "ping", triggers: [{ event: "compat/ping" }] }, async () => "pong");

const tokenOf = (req) => new URL(req.url).searchParams.get("token");

// Two steps, answered in the request itself.
const sync = inngest.endpoint(async (req) => {
  const token = tokenOf(req);
  const a = await step.run("add-one", () => { record({ token, what: "step", step: "add-one" }); return 1; });
  const b = await step.run("add-two", () => { record({ token, what: "step", step: "add-two" }); return a + 2; });
  return Response.json({ token, sum: b });
});

// A sleep: the endpoint goes async; the server calls it after the sleep and the caller reads the output URL.
const sleepy = inngest.endpoint(async (req) => {
  const token = tokenOf(req);
  const before = await step.run("before", () => { record({ token, what: "step", step: "before" }); return "b"; });
  await step.sleep("nap", "1s");
  const after = await step.run("after", () => { record({ token, what: "step", step: "after" }); return "a"; });
  return new Response(JSON.stringify({ token, before, after }), {
    status: 201,
    headers: { "Content-Type": "application/json", "X-Durable": "yes" },
  });
});

// Blocks forever in its third step: the test kills the app there.
const stuck = inngest.endpoint(async (req) => {
  const token = tokenOf(req);
  await step.run("one", () => { record({ token, what: "step", step: "one" }); return 1; });
  await step.run("two", () => { record({ token, what: "step", step: "two" }); return 2; });
  await step.run("three", async () => {
    record({ token, what: "step", step: "three" });
    await new Promise(() => {});
  });
  return Response.json({ token });
});

/** Express request -> Web Request -> the endpoint -> Express response. */
const bridge = (handler) => async (req, res) => {
  const url = `http://${req.headers.host}${req.originalUrl}`;
  const headers = new Headers();
  for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string") headers.set(k, v);
  const hasBody = !["GET", "HEAD"].includes(req.method) && Buffer.isBuffer(req.body) && req.body.length > 0;
  const answer = await handler(new Request(url, { method: req.method, headers, body: hasBody ? req.body : undefined }));
  res.status(answer.status);
  answer.headers.forEach((v, k) => res.setHeader(k, v));
  res.send(Buffer.from(await answer.arrayBuffer()));
};

const app = express();
app.all("/durable/sync", express.raw({ type: "*/*" }), bridge(sync));
app.all("/durable/sleepy", express.raw({ type: "*/*" }), bridge(sleepy));
app.all("/durable/stuck", express.raw({ type: "*/*" }), bridge(stuck));
app.use(express.json());
app.use("/api/inngest", serve({ client: inngest, functions: [ping] }));
app.get("/healthz", (_req, res) => res.json({ ok: true, app_id: inngest.id }));

listen(app, "compat durable_app.js");
