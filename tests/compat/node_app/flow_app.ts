// Flow control with the official npm `inngest` SDK (tests/compat/test_flow_control.py): the same function ids,
// options and outputs as the flow-* functions of py_app/app.py, written the way a JS app writes them
// (`concurrency` as one object, durations as strings, `burst` left out).
//
// TypeScript, run without a build step: `node --import tsx flow_app.ts` (see tests/compat/README.md).

import express from "express";
import { Inngest } from "inngest";
import { serve } from "inngest/express";
import { listen, record, tokenOf } from "./record";

type FlowData = { token: string; n: number; key?: string; hold?: number | string };

const inngest = new Inngest({ id: process.env.COMPAT_APP_ID || "compat-node-flow" });

const now = (): number => Date.now() / 1000;
const sleep = (seconds: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, seconds * 1000));
const dataOf = (event: { data?: unknown }): FlowData => event.data as FlowData;

function called(fn: string, event: { data?: unknown }, extra: Record<string, unknown> = {}): void {
  record({ fn, what: "call", token: tokenOf(event), ...extra });
}

const ping = inngest.createFunction({ id: "ping", triggers: [{ event: "compat/ping" }] }, async () => "pong");

// At most one run at a time per event.data.key.
const flowConcurrency = inngest.createFunction(
  {
    id: "flow-concurrency",
    triggers: [{ event: "compat/flow-concurrency" }],
    concurrency: { limit: 1, key: "event.data.key" },
  },
  async ({ event, step }) => {
    const data = dataOf(event);
    called("flow-concurrency", event, { key: data.key });
    return step.run("work", async () => {
      const start = now();
      await sleep(Number(data.hold ?? 0.5));
      return { key: data.key ?? null, n: data.n, start, end: now() };
    });
  },
);

// One run per hour per key: the others are skipped.
const flowRateLimit = inngest.createFunction(
  {
    id: "flow-rate-limit",
    triggers: [{ event: "compat/flow-rate-limit" }],
    rateLimit: { limit: 1, period: "1h", key: "event.data.key" },
  },
  async ({ event }) => {
    called("flow-rate-limit", event, { n: dataOf(event).n });
    return { n: dataOf(event).n };
  },
);

// One start per second per token; runs over it wait their turn.
const flowThrottle = inngest.createFunction(
  {
    id: "flow-throttle",
    triggers: [{ event: "compat/flow-throttle" }],
    throttle: { limit: 1, period: "1s", key: "event.data.token" },
  },
  async ({ event }) => {
    called("flow-throttle", event, { n: dataOf(event).n });
    return { n: dataOf(event).n, started: now() };
  },
);

// Runs once 1 s passes with no new event for the token, with the last event.
const flowDebounce = inngest.createFunction(
  {
    id: "flow-debounce",
    triggers: [{ event: "compat/flow-debounce" }],
    debounce: { period: "1s", key: "event.data.token" },
  },
  async ({ event }) => {
    called("flow-debounce", event, { n: dataOf(event).n });
    return { n: dataOf(event).n, event_id: event.id ?? null, started: now() };
  },
);

// Up to 3 events per run, started when full or 2 s after the first.
const flowBatch = inngest.createFunction(
  {
    id: "flow-batch",
    triggers: [{ event: "compat/flow-batch" }],
    batchEvents: { maxSize: 3, timeout: "2s", key: "event.data.token" },
  },
  async ({ event, events }) => {
    called("flow-batch", event, { count: events.length });
    return { ns: events.map((e) => dataOf(e).n), started: now() };
  },
);

// One live run per token: new ones are skipped while it lives (sleeping included).
const flowSingleton = inngest.createFunction(
  {
    id: "flow-singleton",
    triggers: [{ event: "compat/flow-singleton" }],
    singleton: { key: "event.data.token", mode: "skip" },
  },
  async ({ event, step }) => {
    const data = dataOf(event);
    called("flow-singleton", event, { n: data.n });
    await step.run("started", () => {
      record({ fn: "flow-singleton", what: "step", step: "started", token: data.token, n: data.n });
      return now();
    });
    await step.sleep("hold", String(data.hold ?? "1s"));
    return { n: data.n };
  },
);

const app = express();
app.use(express.json());
app.use(
  "/api/inngest",
  serve({
    client: inngest,
    functions: [ping, flowConcurrency, flowRateLimit, flowThrottle, flowDebounce, flowBatch, flowSingleton],
  }),
);

app.get("/healthz", (_req, res) => {
  res.json({ ok: true, app_id: inngest.id });
});

listen(app, "compat node flow-control app");
