// Modelled on seeds 000/001 (a projects dashboard): POST /api/batch/generate-remaining queues the batch and
// returns 202; process-batch-repositories lists the unprocessed repositories and fans out one
// repo/process.single event per repository with step.sendEvent; process-single-repository fetches the bundle,
// generates the analysis and extracts the tech stack, retrying on failure. Every repository's first GitHub call
// hits the (simulated) rate limit and throws RetryAfterError; private repositories (a 403) are skipped
// gracefully. refresh-repository-intelligence re-analyses one repository. The repositories table is in memory.
//
// TypeScript, run without a build step: `node --import tsx seed_batch_repos.ts` (see tests/compat/README.md).

import express from "express";
import { Inngest, RetryAfterError, eventType, staticSchema } from "inngest";
import { serve } from "inngest/express";
import { listen, record } from "./record";

// --- events (the seed's src/lib/inngest.ts event types) ---------------------------------------------------------
type BatchGenerate = { owner: string; batchId: string };
type ProcessSingle = { owner: string; repo: string; batchId: string };
type IntelligenceRefresh = { owner: string; repo: string };

const repoBatchGenerate = eventType("repo/batch.generate", { schema: staticSchema<BatchGenerate>() });
const repoProcessSingle = eventType("repo/process.single", { schema: staticSchema<ProcessSingle>() });
const repoIntelligenceRefresh = eventType("repo/intelligence.refresh", {
  schema: staticSchema<IntelligenceRefresh>(),
});
const compatPing = eventType("compat/ping");

// --- the repositories table -------------------------------------------------------------------------------------
type RepoAnalysis = { summary: string; quality: "good" | "thin" };

type Repository = {
  owner: string;
  name: string;
  private: boolean;
  analysis?: RepoAnalysis;
  tech_stack?: string[];
  batch_id?: string;
  processed_at?: string;
  intelligence?: RepoAnalysis;
  refreshed_at?: string;
};

// What a GitHub fetch gives: the repository's files, or only that it is private (GitHub answered 403).
type PrivateRepo = { private: true };
type RepoBundle = { private?: false; readme: string; files: string[] };

type FunctionId = "process-single-repository" | "refresh-repository-intelligence";

const repositories = new Map<string, Repository>(); // "owner/name" -> row
const keyOf = (owner: string, name: string): string => `${owner}/${name}`;

function rowOf(key: string): Repository {
  const row = repositories.get(key);
  if (!row) throw new Error(`unknown repository ${key}`);
  return row;
}

const errorMessage = (err: unknown): string => (err instanceof Error ? err.message : String(err));

// A GitHub call: the first attempt of each run hits the rate limit (403 with X-RateLimit-Reset one second ahead).
function fetchBundle(owner: string, name: string, attempt: number, fn: FunctionId): PrivateRepo | RepoBundle {
  const key = keyOf(owner, name);
  record({ fn, what: "step", step: "fetch-bundle", attempt, token: owner, repository: key });
  const row = rowOf(key);
  if (row.private) return { private: true };
  if (attempt === 0) throw new RetryAfterError(`GitHub rate limit exceeded fetching ${key}`, 1000);
  return { readme: `# ${name}`, files: ["package.json", "src/index.ts", "next.config.js"] };
}

function analyse(bundle: RepoBundle): RepoAnalysis {
  return { summary: `${bundle.files.length} files`, quality: bundle.files.length > 2 ? "good" : "thin" };
}

function techStackOf(bundle: RepoBundle): string[] {
  const stack: string[] = [];
  if (bundle.files.includes("package.json")) stack.push("node");
  if (bundle.files.some((f) => f.endsWith(".ts"))) stack.push("typescript");
  if (bundle.files.includes("next.config.js")) stack.push("nextjs");
  return stack;
}

// --- functions --------------------------------------------------------------------------------------------------
const inngest = new Inngest({ id: process.env.COMPAT_APP_ID || "projects-dashboard" });

const ping = inngest.createFunction({ id: "ping", triggers: [compatPing] }, async () => "pong");

const processSingleRepository = inngest.createFunction(
  { id: "process-single-repository", retries: 3, triggers: [repoProcessSingle] },
  async ({ event, step, attempt }) => {
    const { owner, repo, batchId } = event.data;
    const key = keyOf(owner, repo);
    const bundle = await step.run("fetch-bundle", () => fetchBundle(owner, repo, attempt, "process-single-repository"));
    if (bundle.private) {
      return { repository: key, skipped: "private" as const };
    }
    const analysis = await step.run("generate-ai-analysis", () => {
      record({
        fn: "process-single-repository",
        what: "step",
        step: "generate-ai-analysis",
        token: owner,
        repository: key,
      });
      return analyse(bundle);
    });
    const techStack = await step.run("extract-tech-stack", () => techStackOf(bundle));
    await step.run("save-results", () => {
      Object.assign(rowOf(key), {
        analysis,
        tech_stack: techStack,
        batch_id: batchId,
        processed_at: new Date().toISOString(),
      } satisfies Partial<Repository>);
      return { saved: key };
    });
    return { repository: key, techStack };
  },
);

const processBatchRepositories = inngest.createFunction(
  { id: "process-batch-repositories", triggers: [repoBatchGenerate] },
  async ({ event, step }) => {
    const { owner, batchId } = event.data;
    const remaining = await step.run("list-remaining-repositories", () =>
      [...repositories.values()]
        .filter((r) => r.owner === owner && !r.processed_at)
        .map((r) => ({ owner: r.owner, repo: r.name })),
    );
    if (remaining.length === 0) {
      return { batchId, queued: 0, ids: [] as string[] };
    }
    const { ids } = await step.sendEvent(
      "queue-repositories",
      remaining.map((r) => repoProcessSingle.create({ owner: r.owner, repo: r.repo, batchId })),
    );
    return { batchId, queued: remaining.length, ids };
  },
);

const refreshRepositoryIntelligence = inngest.createFunction(
  { id: "refresh-repository-intelligence", retries: 3, triggers: [repoIntelligenceRefresh] },
  async ({ event, step, attempt }) => {
    const { owner, repo } = event.data;
    const key = keyOf(owner, repo);
    const bundle = await step.run("fetch-bundle", () =>
      fetchBundle(owner, repo, attempt, "refresh-repository-intelligence"),
    );
    if (bundle.private) {
      return { repository: key, skipped: "private" as const };
    }
    const analysis = await step.run("generate-ai-analysis", () => analyse(bundle));
    await step.run("save-intelligence", () => {
      Object.assign(rowOf(key), {
        intelligence: analysis,
        refreshed_at: new Date().toISOString(),
      } satisfies Partial<Repository>);
      return { saved: key };
    });
    return { repository: key, refreshed: true };
  },
);

// --- HTTP -------------------------------------------------------------------------------------------------------
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
  const { repos } = req.body as { repos: { owner: string; name: string; private?: boolean }[] };
  for (const r of repos) {
    repositories.set(keyOf(r.owner, r.name), { owner: r.owner, name: r.name, private: Boolean(r.private) });
  }
  res.json({ ok: true });
});

app.get("/db/repos/:owner/:name", (req, res) => {
  const row = repositories.get(keyOf(req.params.owner, req.params.name));
  if (row) {
    res.json(row);
  } else {
    res.status(404).json({ error: "not found" });
  }
});

// Queues the batch and returns at once (202), as the seed's /api/batch/generate-remaining does.
app.post("/api/batch/generate-remaining", async (req, res) => {
  const { owner, batchId } = req.body as BatchGenerate;
  try {
    const { ids } = await inngest.send(repoBatchGenerate.create({ owner, batchId }));
    res.status(202).json({ queued: true, batchId, eventIds: ids });
  } catch (err) {
    res.status(500).json({ error: errorMessage(err) });
  }
});

app.post("/api/repos/:owner/:name/intelligence", async (req, res) => {
  try {
    const { owner, name } = req.params;
    const { ids } = await inngest.send(repoIntelligenceRefresh.create({ owner, repo: name }));
    res.status(202).json({ queued: true, eventIds: ids });
  } catch (err) {
    res.status(500).json({ error: errorMessage(err) });
  }
});

app.get("/healthz", (_req, res) => {
  res.json({ ok: true, app_id: inngest.id });
});

listen(app, "seed batch-repositories app");
