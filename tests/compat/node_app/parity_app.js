"use strict";
// The round-2 app of Stepline's compatibility tests (test_parity.py): Inngest's retry and error semantics and the
// newer step kinds, with the official `inngest` JS SDK, unmodified, served by Express at /api/inngest.
// tests/compat/py_app/parity_app.py has the same functions (same ids, events and outputs) where the Python SDK
// has the feature. Env: as app.js (PORT, COMPAT_APP_ID, COMPAT_LOG, the SDK's INNGEST_* variables).

const express = require("express");
const { Inngest, RetryAfterError } = require("inngest");
const { serve } = require("inngest/express");
const { record, tokenOf, listen } = require("./record");

const inngest = new Inngest({ id: process.env.COMPAT_APP_ID || "parity-node", appVersion: "parity-1" });

// What already failed once, per token and place: the code before a step runs again on every call (replay), so
// "fail once here" needs memory outside the run.
const failed = new Set();
function failOnce(token, where) {
  const key = `${token}:${where}`;
  if (failed.has(key)) return false;
  failed.add(key);
  return true;
}

const ping = inngest.createFunction({ id: "ping", triggers: [{ event: "compat/ping" }] }, async () => "pong");

// --- retries between steps: each stretch of code between two steps gets the full retries ------------------------
const stretch = inngest.createFunction(
  { id: "stretch", retries: 1, triggers: [{ event: "parity/stretch" }] },
  async ({ event, step, attempt }) => {
    const token = event.data.token;
    const kind = event.data.kind || "error";
    record({ fn: "stretch", what: "call", attempt, token });
    const fail = (where) => {
      if (failOnce(token, where)) {
        record({ fn: "stretch", what: "fail", where, attempt, token });
        if (kind === "retry-after") throw new RetryAfterError(`${where} the step`, 1000);
        throw new Error(`${where} the step`);
      }
    };
    fail("before");
    const value = await step.run("first", () => {
      record({ fn: "stretch", what: "step", step: "first", attempt, token });
      return 1;
    });
    fail("after");
    return { value, attempt };
  },
);

// --- error shapes --------------------------------------------------------------------------------------------------
const shapes = inngest.createFunction(
  {
    id: "shapes",
    retries: 0,
    triggers: [{ event: "parity/shapes" }],
    onFailure: async ({ event }) => {
      record({ fn: "shapes-failure", what: "on_failure", error: event.data.error, token: tokenOf(event) });
    },
  },
  async ({ event, step }) => {
    await step.run("charge", () => {
      throw new Error(`card declined ${event.data.token}`);
    });
  },
);

// --- parallel race mode (item 3; the npm SDK only) ------------------------------------------------------------
const raceSteps = inngest.createFunction(
  { id: "race-steps", triggers: [{ event: "parity/race-steps" }] },
  async ({ event, step, group }) => {
    const token = event.data.token;
    const winner = await group.parallel({ mode: "race" }, () =>
      Promise.race([
        step.run("fast", () => {
          record({ fn: "race-steps", what: "step", step: "fast", token });
          return "fast";
        }),
        step.run("slow", async () => {
          await new Promise((resolve) => setTimeout(resolve, 3000));
          record({ fn: "race-steps", what: "step", step: "slow", token });
          return "slow";
        }),
      ]),
    );
    // Runs while "slow" still runs: the server asks for discovery as soon as "fast" ends.
    const next = await step.run("after-race", () => {
      record({ fn: "race-steps", what: "step", step: "after-race", token });
      return `after ${winner}`;
    });
    return { winner, next };
  },
);

const raceWait = inngest.createFunction(
  { id: "race-wait", triggers: [{ event: "parity/race-wait" }] },
  async ({ event, step, group }) => {
    const token = event.data.token;
    const approval = await group.parallel({ mode: "race" }, () =>
      Promise.race([
        step.waitForEvent("approval", { event: "parity/approved", timeout: "1h", match: "data.token" }),
        step.sleep("deadline", event.data.deadline || "1s").then(() => "deadline"),
      ]),
    );
    const after = await step.run("after", () => {
      record({ fn: "race-wait", what: "step", step: "after", token });
      return approval === "deadline" ? "timed out" : `approved by ${approval.data.by}`;
    });
    return { after };
  },
);

// --- step.ai.infer and step.fetch: the server makes the requests (item 5) ------------------------------------------
const aiInfer = inngest.createFunction(
  { id: "ai-infer", retries: 2, triggers: [{ event: "parity/ai" }] },
  async ({ event, step }) => {
    record({ fn: "ai-infer", what: "call", token: event.data.token });
    const answer = await step.ai.infer("ask", {
      model: step.ai.models.openai({ model: "gpt-parity", baseUrl: event.data.base_url, apiKey: "sk-parity" }),
      body: { messages: [{ role: "user", content: event.data.question }] },
    });
    return { content: answer.choices[0].message.content };
  },
);

const fetcher = inngest.createFunction(
  { id: "fetcher", triggers: [{ event: "parity/fetch" }] },
  async ({ event, step }) => {
    record({ fn: "fetcher", what: "call", token: event.data.token });
    const res = await step.fetch(event.data.url, { method: "POST", headers: { "x-parity": "1" }, body: "hello" });
    return { status: res.status, body: await res.text(), model: res.headers.get("x-model") };
  },
);

// --- signals (item 6; the npm SDK only) ---------------------------------------------------------------------------
const signalWaiter = inngest.createFunction(
  { id: "signal-waiter", triggers: [{ event: "parity/signal-wait" }] },
  async ({ event, step }) => {
    record({ fn: "signal-waiter", what: "call", token: event.data.token });
    const got = await step.waitForSignal("approval", {
      signal: `approve-${event.data.token}`,
      timeout: event.data.timeout || "1h",
      onConflict: "replace",
    });
    return { got };
  },
);

const signalSender = inngest.createFunction(
  { id: "signal-sender", triggers: [{ event: "parity/signal-send" }] },
  async ({ event, step }) => {
    const sent = await step.sendSignal("notify", { signal: `approve-${event.data.token}`, data: { by: "a step" } });
    return { sent };
  },
);

// --- checkpointing (item 7): the process dies in the middle of a run -------------------------------------------
const fs = require("node:fs");
const path = require("node:path");

const crashy = inngest.createFunction(
  { id: "crashy", retries: 10, triggers: [{ event: "parity/crash" }] },
  async ({ event, step }) => {
    const token = event.data.token;
    record({ fn: "crashy", what: "call", token });
    const results = [];
    for (let k = 1; k <= 5; k++) {
      results.push(
        await step.run(`s${k}`, () => {
          record({ fn: "crashy", what: "step", step: `s${k}`, token, pid: process.pid });
          const marker = path.join(path.dirname(process.env.COMPAT_LOG || "."), `crashed-${token}`);
          if (k === event.data.crash_at && !fs.existsSync(marker)) {
            fs.writeFileSync(marker, "");
            process.exit(1); // the app dies in the middle of the run, its earlier steps checkpointed
          }
          return k * k;
        }),
      );
    }
    return { results };
  },
);

// --- defer (item 8): functions that run once the run has ended -------------------------------------------------
const { createDefer } = require("inngest/experimental");

const later = createDefer(inngest, { id: "later" }, async ({ event, parents }) => {
  record({ fn: "later", what: "call", token: event.data.token, n: event.data.n, parents });
  return { n: event.data.n };
});

const deferrer = inngest.createFunction(
  { id: "deferrer", triggers: [{ event: "parity/defer" }] },
  async ({ event, step, defer }) => {
    const token = event.data.token;
    defer("notify", { function: later, data: { token, n: 1 } });
    const dropped = defer("dropped", { function: later, data: { token, n: 2 } });
    const first = await step.run("work", () => {
      record({ fn: "deferrer", what: "step", step: "work", token });
      return 1;
    });
    dropped.abort();
    defer("after-work", { function: later, data: { token, n: 3 } });
    return { first };
  },
);

// --- item 9: rows of docs/inngest-compat.md not covered elsewhere with this SDK -----------------------------------
const BIG = 2_500_000; // two such results are more than the 4 MiB a call carries: the SDK fetches them (use_api)

const bigState = inngest.createFunction(
  { id: "big-state", triggers: [{ event: "parity/big-state" }] },
  async ({ step }) => {
    const a = await step.run("a", () => "a".repeat(BIG));
    const b = await step.run("b", () => "b".repeat(BIG));
    await step.sleep("pause", "1s"); // a new call, carrying (or not) the 5 MB of state
    return { total: await step.run("total", () => a.length + b.length) };
  },
);

const guarded = inngest.createFunction(
  { id: "guarded", idempotency: "event.data.key", timeouts: { finish: "1s" }, triggers: [{ event: "parity/guarded" }] },
  async ({ event, step }) => {
    record({ fn: "guarded", what: "call", token: event.data.token });
    await step.sleep("long", `${event.data.sleep_s || 0}s`);
    record({ fn: "guarded", what: "step", step: "after", token: event.data.token });
    return { key: event.data.key };
  },
);

const napper = inngest.createFunction(
  { id: "napper", triggers: [{ event: "parity/nap" }] },
  async ({ event, step }) => {
    record({ fn: "napper", what: "call", token: event.data.token });
    await step.sleep("nap", "5s");
    record({ fn: "napper", what: "step", step: "after", token: event.data.token });
  },
);

const nightly = inngest.createFunction(
  { id: "nightly", triggers: [{ cron: "TZ=Europe/Paris 0 3 * * *", jitter: "30s" }] },
  async () => "ran",
);

const functions = [
  ping,
  nightly,
  bigState,
  guarded,
  napper,
  stretch,
  shapes,
  raceSteps,
  raceWait,
  aiInfer,
  fetcher,
  signalWaiter,
  signalSender,
  crashy,
  later,
  deferrer,
];

const app = express();
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({ client: inngest, functions }));
// Sends a signal with the SDK's own client (inngest.sendSignal), as an app's web handler would.
app.post("/signal", async (req, res) => {
  try {
    const result = await inngest.sendSignal({ signal: req.body.signal, data: req.body.data });
    res.json({ run_id: result.runId ?? null });
  } catch (err) {
    res.status(500).json({ error: String((err && err.message) || err) });
  }
});

app.get("/healthz", (_req, res) => res.json({ ok: true, app_id: inngest.id }));

listen(app, "parity node app");
