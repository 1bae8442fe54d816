"use strict";
// Realtime with the official `inngest` JS SDK 4.x, unmodified (tests/compat/test_realtime.py): functions publish
// with step.realtime.publish and inngest.realtime.publish; the app subscribes with the SDK's own subscribe() and
// tokens (getSubscriptionToken -> POST /v1/realtime/token) and records every message it receives in $COMPAT_LOG.
// Needs a global WebSocket: run with `node --experimental-websocket` on Node 20 (built in from Node 22).

const express = require("express");
const { Inngest } = require("inngest");
const { channel, getSubscriptionToken, subscribe } = require("inngest/realtime");
const { serve } = require("inngest/express");
const { record, tokenOf, listen } = require("./record");

const inngest = new Inngest({ id: process.env.COMPAT_APP_ID || "compat-rt-node" });

// One channel per test (its token), with two topics.
const progress = channel({ name: (token) => `compat-rt:${token}`, topics: { status: {}, done: {} } });

const ping = inngest.createFunction({ id: "ping", triggers: [{ event: "compat/ping" }] }, async () => "pong");

const publisher = inngest.createFunction(
  { id: "rt-publish", triggers: [{ event: "compat/rt" }] },
  async ({ event, step, runId }) => {
    const token = tokenOf(event);
    record({ fn: "rt-publish", what: "call", token, run_id: runId });
    const ch = progress(token);
    // A memoised step: sent once, whatever the number of calls replaying it.
    await step.realtime.publish("announce", ch.status, { token, stage: "started" });
    const n = await step.run("work", () => 21 * 2);
    // Anywhere in the function: sent by each call that runs this line (after the last step, so once here).
    await inngest.realtime.publish(ch.done, { token, stage: "done", n });
    return { n };
  },
);

const app = express();
app.use(express.json());
app.use("/api/inngest", serve({ client: inngest, functions: [ping, publisher] }));
app.get("/healthz", (_req, res) => res.json({ ok: true, app_id: inngest.id }));

// Subscribe with the SDK: a token minted by the server for the SDK (getSubscriptionToken), or a key given by the
// test (a token Stepline's own helper minted). Every message received is recorded.
app.post("/subscribe", async (req, res) => {
  const { token, key } = req.body;
  try {
    const ch = progress(token);
    const tokenObj = key
      ? { channel: ch, topics: ["status", "done"], key, apiBaseUrl: inngest.apiBaseUrl }
      : await getSubscriptionToken(inngest, { channel: ch, topics: ["status", "done"] });
    const stream = await subscribe(tokenObj, (message) => {
      record({ what: "rt-message", token, kind: message.kind, topic: message.topic, channel: message.channel,
               data: message.data, run_id: message.runId ?? null });
    });
    record({ what: "rt-subscribed", token });
    res.json({ ok: true, key: Boolean(key) });
    setTimeout(() => stream.close("done"), 20000).unref();
  } catch (err) {
    record({ what: "rt-error", token, error: String(err && err.message ? err.message : err) });
    res.status(500).json({ error: String(err) });
  }
});

// Publish from outside any function.
app.post("/publish", async (req, res) => {
  try {
    await inngest.realtime.publish(progress(req.body.token).status, { outside: true });
    res.json({ ok: true });
  } catch (err) {
    res.status(500).json({ error: String(err) });
  }
});

listen(app, "compat-rt-node");
