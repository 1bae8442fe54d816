"use strict";
// Modelled on seeds 000/001 (a projects dashboard): POST /api/batch/generate-remaining queues the batch and
// returns 202; process-batch-repositories lists the unprocessed repositories and fans out one
// repo/process.single event per repository with step.sendEvent; process-single-repository fetches the bundle,
// generates the analysis and extracts the tech stack, retrying on failure. Every repository's first GitHub call
// hits the (simulated) rate limit and throws RetryAfterError; private repositories (a 403) are skipped
// gracefully. refresh-repository-intelligence re-analyses one repository. The repositories table is in memory.

const express = require("express");
const { Inngest, RetryAfterError } = require("inngest");
const { serve } = require("inngest/express");
const { record, listen } = require("./record");

const inngest = new Inngest({ id: process.env.COMPAT_APP_ID || "projects-dashboard" });

const repositories = new Map(); // "owner/name" -> row
const keyOf = (owner, name) => `${owner}/${name}`;

const ping = inngest.createFunction({ id: "ping", triggers: [{ event: "compat/ping" }] }, async () => "pong");

// A GitHub call: the first attempt of each run hits the rate limit (403 with X-RateLimit-Reset one second ahead).
function fetchBundle(owner, name, attempt, fn) {
  const key = keyOf(owner, name);
  record({ fn, what: "step", step: "fetch-bundle", attempt, token: owner, repository: key });
  const row = repositories.get(key);
  if (!row) throw new Error(`unknown repository ${key}`);
  if (row.private) return { private: true };
  if (attempt === 0) throw new RetryAfterError(`GitHub rate limit exceeded fetching ${key}`, 1000);
  return { readme: `# ${name}`, files: ["package.json", "src/index.ts", "next.config.js"] };
}

function analyse(bundle) {
  return { summary: `${bundle.files.length} files`, quality: bundle.files.length > 2 ? "good" : "thin" };
}

function techStackOf(bundle) {
  const stack = [];
  if (bundle.files.includes("package.json")) stack.push("node");
  if (bundle.files.some((f) => f.endsWith(".ts"))) stack.push("typescript");
  if (bundle.files.includes("next.config.js")) stack.push("nextjs");
  return stack;
}

const processSingleRepository = inngest.createFunction(
  { id: "process-single-repository", retries: 3, triggers: [{ event: "repo/process.single" }] },
  async ({ event, step, attempt }) => {
    const { owner, repo, batchId } = event.data;
    const key = keyOf(owner, repo);
    const bundle = await step.run("fetch-bundle", () => fetchBundle(owner, repo, attempt, "process-single-repository"));
    if (bundle.private) {
      return { repository: key, skipped: "private" };
    }
    const analysis = await step.run("generate-ai-analysis", () => {
      record({ fn: "process-single-repository", what: "step", step: "generate-ai-analysis", token: owner, repository: key });
      return analyse(bundle);
    });
    const techStack = await step.run("extract-tech-stack", () => techStackOf(bundle));
    await step.run("save-results", () => {
      Object.assign(repositories.get(key), {
        analysis,
        tech_stack: techStack,
        batch_id: batchId,
        processed_at: new Date().toISOString(),
      });
      return { saved: key };
    });
    return { repository: key, techStack };
  },
);

const processBatchRepositories = inngest.createFunction(
  { id: "process-batch-repositories", triggers: [{ event: "repo/batch.generate" }] },
  async ({ event, step }) => {
    const { owner, batchId } = event.data;
    const remaining = await step.run("list-remaining-repositories", () =>
      [...repositories.values()]
        .filter((r) => r.owner === owner && !r.processed_at)
        .map((r) => ({ owner: r.owner, repo: r.name })),
    );
    if (remaining.length === 0) {
      return { batchId, queued: 0, ids: [] };
    }
    const { ids } = await step.sendEvent(
      "queue-repositories",
      remaining.map((r) => ({ name: "repo/process.single", data: { owner: r.owner, repo: r.repo, batchId } })),
    );
    return { batchId, queued: remaining.length, ids };
  },
);

const refreshRepositoryIntelligence = inngest.createFunction(
  { id: "refresh-repository-intelligence", retries: 3, triggers: [{ event: "repo/intelligence.refresh" }] },
  async ({ event, step, attempt }) => {
    const { owner, repo } = event.data;
    const key = keyOf(owner, repo);
    const bundle = await step.run("fetch-bundle", () =>
      fetchBundle(owner, repo, attempt, "refresh-repository-intelligence"),
    );
    const analysis = await step.run("generate-ai-analysis", () => analyse(bundle));
    await step.run("save-intelligence", () => {
      Object.assign(repositories.get(key), { intelligence: analysis, refreshed_at: new Date().toISOString() });
      return { saved: key };
    });
    return { repository: key, refreshed: true };
  },
);

const app = express();
app.use(express.json());
app.use(
  "/api/inngest",
  serve({
    client: inngest,
    functions: [ping, processSingleRepository, processBatchRepositories, refreshRepositoryIntelligence],
  }),
);

// Test setup: the repositories the dashboard already knows about.
app.post("/db/repos", (req, res) => {
  for (const r of req.body.repos) {
    repositories.set(keyOf(r.owner, r.name), { owner: r.owner, name: r.name, private: Boolean(r.private) });
  }
  res.json({ ok: true });
});

app.get("/db/repos/:owner/:name", (req, res) => {
  const row = repositories.get(keyOf(req.params.owner, req.params.name));
  if (!row) return res.status(404).json({ error: "not found" });
  return res.json(row);
});

app.post("/api/batch/generate-remaining", async (req, res) => {
  const { owner, batchId } = req.body;
  try {
    const { ids } = await inngest.send({ name: "repo/batch.generate", data: { owner, batchId } });
    res.status(202).json({ queued: true, batchId, eventIds: ids });
  } catch (err) {
    res.status(500).json({ error: String((err && err.message) || err) });
  }
});

app.post("/api/repos/:owner/:name/intelligence", async (req, res) => {
  try {
    const { ids } = await inngest.send({
      name: "repo/intelligence.refresh",
      data: { owner: req.params.owner, repo: req.params.name },
    });
    res.status(202).json({ queued: true, eventIds: ids });
  } catch (err) {
    res.status(500).json({ error: String((err && err.message) || err) });
  }
});

app.get("/healthz", (_req, res) => res.json({ ok: true, app_id: inngest.id }));

listen(app, "seed batch-repositories app");
