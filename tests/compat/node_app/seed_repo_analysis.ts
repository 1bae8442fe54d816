// Modelled on seed 003 (a "vibe coding profile" app): POST /api/analysis/start creates an analysis job and sends
// repo/analyze.requested; the analyze-repo function processes it in five durable steps, and its onFailure hook
// marks the job errored. The jobs table is an in-memory map, readable at GET /jobs/:id.
//
// Repositories whose id ends in "/flaky" fail fetch-commit-list once (a GitHub 502); ones ending in "/broken"
// fail compute-analysis on every attempt, so the run fails and onFailure runs.
//
// TypeScript, run without a build step: `node --import tsx seed_repo_analysis.ts` (see tests/compat/README.md).

import crypto from "node:crypto";
import express from "express";
import { Inngest, eventType, staticSchema } from "inngest";
import { serve } from "inngest/express";
import { listen, record } from "./record";

// --- events (the seed's `Events` type, as v4 event types) ----------------------------------------------------------
type AnalyzeRequested = { jobId: string; userId: string; repoId: string };

const repoAnalyzeRequested = eventType("repo/analyze.requested", { schema: staticSchema<AnalyzeRequested>() });
const compatPing = eventType("compat/ping");

// --- the analysis_jobs table ----------------------------------------------------------------------------------------
type JobStatus = "queued" | "running" | "done" | "error";

type Analysis = { commitCount: number; fileTouches: number; codeShare: number; vibe: "builder" | "writer" };

type AnalysisJob = {
  id: string;
  user_id: string;
  repo_id: string;
  status: JobStatus;
  created_at: string;
  started_at?: string;
  completed_at?: string;
  result?: Analysis;
  error_message?: string;
};

type CommitDetails = { sha: string; files: string[]; hour: number };

const jobs = new Map<string, AnalysisJob>();

function jobOf(jobId: string): AnalysisJob {
  const job = jobs.get(jobId);
  if (!job) throw new Error(`job ${jobId} not found`);
  return job;
}

const errorMessage = (err: unknown): string => (err instanceof Error ? err.message : String(err));

// --- functions --------------------------------------------------------------------------------------------------
const inngest = new Inngest({ id: process.env.COMPAT_APP_ID || "vibe-coding-profile" });

const ping = inngest.createFunction({ id: "ping", triggers: [compatPing] }, async () => "pong");

const analyzeRepo = inngest.createFunction(
  {
    id: "analyze-repo",
    name: "Analyze repository",
    retries: 2,
    triggers: [repoAnalyzeRequested],
    onFailure: async ({ event, error }) => {
      // event is inngest/function.failed; event.data.event is the repo/analyze.requested that started the run
      // (the SDK types it as a generic event payload, so its data is typed here).
      const requested: AnalyzeRequested = event.data.event.data;
      const { jobId } = requested;
      record({ fn: "analyze-repo-failure", what: "on_failure", token: jobId, error_message: error.message });
      const job = jobs.get(jobId);
      if (job) {
        Object.assign(job, {
          status: "error",
          error_message: error.message,
          completed_at: new Date().toISOString(),
        } satisfies Partial<AnalysisJob>);
      }
    },
  },
  async ({ event, step, attempt }) => {
    const { jobId, userId, repoId } = event.data;
    const ran = (name: string): void => record({ fn: "analyze-repo", what: "step", step: name, attempt, token: jobId });

    const context = await step.run("load-job-context", () => {
      ran("load-job-context");
      const job = jobOf(jobId);
      job.status = "running";
      job.started_at = new Date().toISOString();
      // The real app decrypts the user's GitHub token here.
      return { jobId, userId, repoId, githubToken: `decrypted-token-for-${userId}` };
    });

    const commitList = await step.run("fetch-commit-list", (): string[] => {
      ran("fetch-commit-list");
      if (context.repoId.endsWith("/flaky") && attempt === 0) {
        throw new Error("GitHub API responded 502 Bad Gateway");
      }
      return Array.from({ length: 6 }, (_, i) =>
        crypto.createHash("sha1").update(`${context.repoId}#${i}`).digest("hex"),
      );
    });

    const commits = await step.run("fetch-commit-details", (): CommitDetails[] => {
      ran("fetch-commit-details");
      return commitList.map((sha, i) => ({
        sha,
        files: i % 2 === 0 ? ["src/index.ts", "src/app.ts"] : ["README.md"],
        hour: (i * 5) % 24,
      }));
    });

    const analysis = await step.run("compute-analysis", (): Analysis => {
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
      Object.assign(jobOf(jobId), {
        status: "done",
        result: analysis,
        completed_at: new Date().toISOString(),
      } satisfies Partial<AnalysisJob>);
      return { saved: true };
    });

    return { jobId, status: "done" as const, vibe: analysis.vibe };
  },
);

// --- HTTP -----------------------------------------------------------------------------------------------------------
const app = express();
app.use(express.json());
app.use("/api/inngest", serve({ client: inngest, functions: [ping, analyzeRepo] }));

// Creates the job, sends the event and returns at once (202), as the seed's /api/analysis/start does.
app.post("/api/analysis/start", async (req, res) => {
  const { userId, repoId } = req.body as { userId: string; repoId: string };
  const jobId = crypto.randomUUID();
  const job: AnalysisJob = {
    id: jobId,
    user_id: userId,
    repo_id: repoId,
    status: "queued",
    created_at: new Date().toISOString(),
  };
  jobs.set(jobId, job);
  try {
    const { ids } = await inngest.send(repoAnalyzeRequested.create({ jobId, userId, repoId }));
    res.status(202).json({ jobId, eventIds: ids });
  } catch (err) {
    job.status = "error";
    res.status(500).json({ error: errorMessage(err) });
  }
});

app.get("/jobs/:id", (req, res) => {
  const job = jobs.get(req.params.id);
  if (job) {
    res.json(job);
  } else {
    res.status(404).json({ error: "not found" });
  }
});

app.get("/healthz", (_req, res) => {
  res.json({ ok: true, app_id: inngest.id });
});

listen(app, "seed repo-analysis app");
