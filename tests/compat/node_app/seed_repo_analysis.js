"use strict";
// Modelled on seed 003 (a "vibe coding profile" app): POST /api/analysis/start creates an analysis job and sends
// repo/analyze.requested; the analyze-repo function processes it in five durable steps, and its onFailure hook
// marks the job errored. The jobs table is an in-memory map, readable at GET /jobs/:id.
//
// Repositories whose id ends in "/flaky" fail fetch-commit-list once (a GitHub 502); ones ending in "/broken"
// fail compute-analysis on every attempt, so the run fails and onFailure runs.

const crypto = require("node:crypto");
const express = require("express");
const { Inngest } = require("inngest");
const { serve } = require("inngest/express");
const { record, listen } = require("./record");

const inngest = new Inngest({ id: process.env.COMPAT_APP_ID || "vibe-coding-profile" });

const jobs = new Map(); // analysis_jobs: id -> row

const ping = inngest.createFunction({ id: "ping", triggers: [{ event: "compat/ping" }] }, async () => "pong");

const analyzeRepo = inngest.createFunction(
  {
    id: "analyze-repo",
    name: "Analyze repository",
    retries: 2,
    triggers: [{ event: "repo/analyze.requested" }],
    onFailure: async ({ event, error }) => {
      const { jobId } = event.data.event.data;
      record({ fn: "analyze-repo-failure", what: "on_failure", token: jobId, error_message: error.message });
      const job = jobs.get(jobId);
      if (job) {
        Object.assign(job, {
          status: "error",
          error_message: error.message,
          completed_at: new Date().toISOString(),
        });
      }
    },
  },
  async ({ event, step, attempt }) => {
    const { jobId, userId, repoId } = event.data;
    const ran = (name) => record({ fn: "analyze-repo", what: "step", step: name, attempt, token: jobId });

    const context = await step.run("load-job-context", () => {
      ran("load-job-context");
      const job = jobs.get(jobId);
      if (!job) throw new Error(`job ${jobId} not found`);
      job.status = "running";
      job.started_at = new Date().toISOString();
      // The real app decrypts the user's GitHub token here.
      return { jobId, userId, repoId, githubToken: `decrypted-token-for-${userId}` };
    });

    const commitList = await step.run("fetch-commit-list", () => {
      ran("fetch-commit-list");
      if (context.repoId.endsWith("/flaky") && attempt === 0) {
        throw new Error("GitHub API responded 502 Bad Gateway");
      }
      return Array.from({ length: 6 }, (_, i) =>
        crypto.createHash("sha1").update(`${context.repoId}#${i}`).digest("hex"),
      );
    });

    const commits = await step.run("fetch-commit-details", () => {
      ran("fetch-commit-details");
      return commitList.map((sha, i) => ({
        sha,
        files: i % 2 === 0 ? ["src/index.ts", "src/app.ts"] : ["README.md"],
        hour: (i * 5) % 24,
      }));
    });

    const analysis = await step.run("compute-analysis", () => {
      ran("compute-analysis");
      if (context.repoId.endsWith("/broken")) {
        throw new Error(`analysis exploded: malformed diff in ${context.repoId}`);
      }
      const files = commits.flatMap((c) => c.files);
      const codeShare = files.filter((f) => f.startsWith("src/")).length / files.length;
      return {
        commitCount: commits.length,
        fileTouches: files.length,
        codeShare,
        vibe: codeShare > 0.5 ? "builder" : "writer",
      };
    });

    await step.run("save-results", () => {
      ran("save-results");
      const job = jobs.get(jobId);
      Object.assign(job, { status: "done", result: analysis, completed_at: new Date().toISOString() });
      return { saved: true };
    });

    return { jobId, status: "done", vibe: analysis.vibe };
  },
);

const app = express();
app.use(express.json());
app.use("/api/inngest", serve({ client: inngest, functions: [ping, analyzeRepo] }));

// Creates the job, sends the event and returns at once (202), as the seed's /api/analysis/start does.
app.post("/api/analysis/start", async (req, res) => {
  const { userId, repoId } = req.body;
  const jobId = crypto.randomUUID();
  jobs.set(jobId, {
    id: jobId,
    user_id: userId,
    repo_id: repoId,
    status: "queued",
    created_at: new Date().toISOString(),
  });
  try {
    const { ids } = await inngest.send({ name: "repo/analyze.requested", data: { jobId, userId, repoId } });
    res.status(202).json({ jobId, eventIds: ids });
  } catch (err) {
    jobs.get(jobId).status = "error";
    res.status(500).json({ error: String((err && err.message) || err) });
  }
});

app.get("/jobs/:id", (req, res) => {
  const job = jobs.get(req.params.id);
  if (!job) return res.status(404).json({ error: "not found" });
  return res.json(job);
});

app.get("/healthz", (_req, res) => res.json({ ok: true, app_id: inngest.id }));

listen(app, "seed repo-analysis app");
