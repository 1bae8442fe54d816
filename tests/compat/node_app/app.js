"use strict";
// The feature app for Stepline's compatibility tests: the official `inngest` JS SDK, unmodified, served by
// Express at /api/inngest. tests/compat/py_app/app.py has the same functions (same ids, events and outputs) with
// the Python SDK, so one test suite drives both.
//
// Env: PORT, COMPAT_APP_ID (default "compat-node"), COMPAT_LOG (JSON-lines file, see record.js), and the SDK's
// own INNGEST_* variables (INNGEST_DEV for a dev server; INNGEST_BASE_URL + INNGEST_SIGNING_KEY +
// INNGEST_EVENT_KEY for a signed one).

const express = require("express");
const { Inngest, NonRetriableError, RetryAfterError } = require("inngest");
const { serve } = require("inngest/express");
const { record, tokenOf, listen } = require("./record");

const inngest = new Inngest({ id: process.env.COMPAT_APP_ID || "compat-node" });

// Every call into a handler (the SDK replays the function on each call) is recorded as what: "call".
function called(fn, event, extra = {}) {
  record({ fn, what: "call", token: tokenOf(event), ...extra });
}

// The tests send compat/ping until a run starts: that is how they know the server has synced the app.
const ping = inngest.createFunction({ id: "ping", triggers: [{ event: "compat/ping" }] }, async () => "pong");

// --- events: send and fan-out ---------------------------------------------------------------------------------
const hello = inngest.createFunction(
  { id: "hello", triggers: [{ event: "compat/hello" }] },
  async ({ event, runId }) => {
    called("hello", event, { run_id: runId });
    return { hello: event.data.name ?? "world", token: event.data.token };
  },
);

const fanoutA = inngest.createFunction(
  { id: "fanout-a", triggers: [{ event: "compat/fanout" }] },
  async ({ event }) => {
    called("fanout-a", event);
    return { fn: "a", token: event.data.token };
  },
);

const fanoutB = inngest.createFunction(
  { id: "fanout-b", triggers: [{ event: "compat/fanout" }] },
  async ({ event }) => {
    called("fanout-b", event);
    return { fn: "b", token: event.data.token };
  },
);

// Events with an explicit id: the second send of one id must start no run.
const idempotent = inngest.createFunction(
  { id: "idempotent", triggers: [{ event: "compat/idempotent" }] },
  async ({ event }) => {
    called("idempotent", event, { event_id: event.id });
    return { token: event.data.token };
  },
);

// --- steps ------------------------------------------------------------------------------------------------------
const sequential = inngest.createFunction(
  { id: "sequential", triggers: [{ event: "compat/sequential" }] },
  async ({ event, step }) => {
    const token = event.data.token;
    called("sequential", event);
    const one = await step.run("add-one", () => {
      record({ fn: "sequential", what: "step", step: "add-one", token });
      return event.data.n + 1;
    });
    const two = await step.run("double", () => {
      record({ fn: "sequential", what: "step", step: "double", token });
      return one * 2;
    });
    const text = await step.run("describe", () => {
      record({ fn: "sequential", what: "step", step: "describe", token });
      return `(${event.data.n} + 1) * 2 = ${two}`;
    });
    return { result: two, text };
  },
);

// The same step id three times: the SDK hashes "item", "item:1", "item:2".
const loop = inngest.createFunction(
  { id: "loop", triggers: [{ event: "compat/loop" }] },
  async ({ event, step }) => {
    const token = event.data.token;
    const results = [];
    for (let i = 0; i < 3; i++) {
      results.push(
        await step.run("item", () => {
          record({ fn: "loop", what: "step", step: "item", i, token });
          return i * 10;
        }),
      );
    }
    return { results };
  },
);

const parallel = inngest.createFunction(
  { id: "parallel", triggers: [{ event: "compat/parallel" }] },
  async ({ event, step }) => {
    const token = event.data.token;
    const part = (name) => () => {
      record({ fn: "parallel", what: "step", step: `par-${name}`, token });
      return name;
    };
    const parts = await Promise.all([
      step.run("par-a", part("a")),
      step.run("par-b", part("b")),
      step.run("par-c", part("c")),
    ]);
    const joined = await step.run("combine", () => {
      record({ fn: "parallel", what: "step", step: "combine", token });
      return parts.join("");
    });
    return { joined };
  },
);

const sleeper = inngest.createFunction(
  { id: "sleeper", triggers: [{ event: "compat/sleep" }] },
  async ({ event, step }) => {
    const token = event.data.token;
    called("sleeper", event);
    const before = await step.run("before", () => {
      record({ fn: "sleeper", what: "step", step: "before", token });
      return Date.now();
    });
    await step.sleep("nap", event.data.duration || "1s");
    const after = await step.run("after", () => {
      record({ fn: "sleeper", what: "step", step: "after", token });
      return Date.now();
    });
    return { slept_ms: after - before };
  },
);

const waitApproval = inngest.createFunction(
  { id: "wait-approval", triggers: [{ event: "compat/wait" }] },
  async ({ event, step }) => {
    called("wait-approval", event);
    const approval = await step.waitForEvent("wait-approval", {
      event: "compat/approval",
      match: "data.token",
      timeout: event.data.timeout || "5s",
    });
    if (!approval) return { approved_by: null, timed_out: true };
    return { approved_by: approval.data.by, timed_out: false };
  },
);

const invokee = inngest.createFunction(
  { id: "invokee", triggers: [{ event: "compat/invokee" }] },
  async ({ event }) => {
    called("invokee", event);
    return { sum: event.data.a + event.data.b, token: event.data.token };
  },
);

const invoker = inngest.createFunction(
  { id: "invoker", triggers: [{ event: "compat/invoke" }] },
  async ({ event, step }) => {
    called("invoker", event);
    const result = await step.invoke("call-invokee", {
      function: invokee,
      data: { a: event.data.a, b: event.data.b, token: event.data.token },
    });
    return { invoked: result };
  },
);

const sender = inngest.createFunction(
  { id: "sender", triggers: [{ event: "compat/send-from-step" }] },
  async ({ event, step }) => {
    called("sender", event);
    const { ids } = await step.sendEvent("emit", {
      name: "compat/received",
      data: { token: event.data.token, n: event.data.n },
    });
    return { sent_ids: ids };
  },
);

const receiver = inngest.createFunction(
  { id: "receiver", triggers: [{ event: "compat/received" }] },
  async ({ event }) => {
    called("receiver", event);
    return { got: event.data.n, token: event.data.token };
  },
);

// --- failures ---------------------------------------------------------------------------------------------------
// Fails on attempt 0 with a plain error (retried after the server's backoff), succeeds on attempt 1.
const flakyStep = inngest.createFunction(
  { id: "flaky-step", retries: 3, triggers: [{ event: "compat/flaky" }] },
  async ({ event, step, attempt }) => {
    const token = event.data.token;
    const value = await step.run("flaky", () => {
      record({ fn: "flaky-step", what: "step", step: "flaky", attempt, token });
      if (attempt === 0) throw new Error(`flaky failure ${token}`);
      return { succeeded_on_attempt: attempt };
    });
    return value;
  },
);

// Every attempt fails: 1 retry (2 attempts), then the run fails and onFailure runs.
const alwaysFails = inngest.createFunction(
  {
    id: "always-fails",
    retries: 1,
    triggers: [{ event: "compat/always-fails" }],
    onFailure: async ({ event, error, runId }) => {
      record({
        fn: "always-fails-failure",
        what: "on_failure",
        token: tokenOf(event),
        run_id: runId,
        event_name: event.name,
        error_message: error.message,
        function_id: event.data.function_id,
        failed_run_id: event.data.run_id,
      });
      return { handled: error.message };
    },
  },
  async ({ event, step, attempt }) => {
    const token = event.data.token;
    await step.run("doomed", () => {
      record({ fn: "always-fails", what: "step", step: "doomed", attempt, token });
      throw new Error(`doomed ${token}`);
    });
    return { unreachable: true };
  },
);

const nonRetriable = inngest.createFunction(
  { id: "non-retriable", retries: 3, triggers: [{ event: "compat/non-retriable" }] },
  async ({ event, step, attempt }) => {
    const token = event.data.token;
    await step.run("reject", () => {
      record({ fn: "non-retriable", what: "step", step: "reject", attempt, token });
      throw new NonRetriableError(`not worth retrying ${token}`);
    });
    return { unreachable: true };
  },
);

const retryAfter = inngest.createFunction(
  { id: "retry-after", retries: 2, triggers: [{ event: "compat/retry-after" }] },
  async ({ event, step, attempt }) => {
    const token = event.data.token;
    return step.run("rate-limited", () => {
      record({ fn: "retry-after", what: "step", step: "rate-limited", attempt, token });
      if (attempt === 0) throw new RetryAfterError(`rate limited ${token}`, 1000);
      return { succeeded_on_attempt: attempt };
    });
  },
);

// --- lifecycle --------------------------------------------------------------------------------------------------
const cancellable = inngest.createFunction(
  {
    id: "cancellable",
    triggers: [{ event: "compat/cancellable" }],
    cancelOn: [{ event: "compat/cancel", if: "async.data.token == event.data.token" }],
  },
  async ({ event, step }) => {
    const token = event.data.token;
    called("cancellable", event);
    await step.run("started", () => {
      record({ fn: "cancellable", what: "step", step: "started", token });
      return true;
    });
    await step.sleep("long-nap", event.data.duration || "2s");
    await step.run("after-nap", () => {
      record({ fn: "cancellable", what: "step", step: "after-nap", token });
      return true;
    });
    return { finished: true };
  },
);

const functions = [
  ping,
  hello,
  fanoutA,
  fanoutB,
  idempotent,
  sequential,
  loop,
  parallel,
  sleeper,
  waitApproval,
  invokee,
  invoker,
  sender,
  receiver,
  flakyStep,
  alwaysFails,
  nonRetriable,
  retryAfter,
  cancellable,
];

const app = express();
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({ client: inngest, functions }));

// Sends events with the SDK's own client (inngest.send), as an app's web handler would.
app.post("/send", async (req, res) => {
  try {
    const result = await inngest.send(req.body.events);
    res.json({ ids: result.ids });
  } catch (err) {
    res.status(500).json({ error: String((err && err.message) || err) });
  }
});

app.get("/healthz", (_req, res) => res.json({ ok: true, app_id: inngest.id }));

listen(app, "compat node app");
