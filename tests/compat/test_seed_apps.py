"""The seeds' own use cases, as TypeScript apps on the official npm ``inngest`` SDK (v4 typed events:
``eventType``/``staticSchema``) run on Stepline (``node_app/seed_*.ts``, started with ``node --import tsx``, no
build step), in dev mode and signed (``stepline start``) mode:

- seed 003: a five-step repository analysis job whose ``onFailure`` hook marks the job errored;
- seeds 000/001: a batch that fans out one event per repository with ``step.sendEvent``, each repository
  processed by its own run that rides out a GitHub rate limit (``RetryAfterError``) and skips private repos.

What is checked is what those teams watch: the job row the app keeps, the runs and steps the server shows. And
that the apps are valid TypeScript: ``tsc --noEmit`` passes on them under ``node_app/tsconfig.json`` (strict).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import NODE_APP_DIR, AppSpec, Stack, new_token, node_app, node_or_skip, wait_for

pytestmark = pytest.mark.compat

ANALYSIS_STEPS = ["load-job-context", "fetch-commit-list", "fetch-commit-details", "compute-analysis", "save-results"]
SEED_APPS = ("seed_repo_analysis.ts", "seed_batch_repos.ts")  # what tsconfig.json must cover


def _repo_analysis_app() -> AppSpec:
    return node_app("seed_repo_analysis.ts", "vibe-coding-profile")


def _batch_repos_app() -> AppSpec:
    return node_app("seed_batch_repos.ts", "projects-dashboard")


def _post(stack: Stack, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = stack.http.post(f"{stack.app_url}{path}", json=body)
    assert resp.status_code == 202, f"POST {path} answered {resp.status_code}: {resp.text}"
    return dict(resp.json())


def _get(stack: Stack, path: str) -> dict[str, Any]:
    resp = stack.http.get(f"{stack.app_url}{path}")
    assert resp.status_code == 200, f"GET {path} answered {resp.status_code}: {resp.text}"
    return dict(resp.json())


def _tsc(node: str, *args: str) -> subprocess.CompletedProcess[str]:
    tsc = NODE_APP_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    return subprocess.run(
        [node, str(tsc), "-p", str(NODE_APP_DIR), *args],
        cwd=NODE_APP_DIR,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_seed_apps_type_check() -> None:
    """The seed apps are TypeScript, not JavaScript in ``.ts`` files: ``tsc --noEmit`` passes on them, strict."""
    node = node_or_skip("typescript", "tsx", "@types/node", "@types/express")
    shown = _tsc(node, "--showConfig")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    config = json.loads(shown.stdout)
    assert config["compilerOptions"]["strict"] is True, config
    checked = {Path(f).name for f in config["files"]}
    assert set(SEED_APPS) <= checked, f"tsconfig.json does not cover the seed apps: {sorted(checked)}"
    result = _tsc(node, "--noEmit")
    assert result.returncode == 0, f"tsc --noEmit failed:\n{result.stdout}{result.stderr}"


class TestSeedRepoAnalysis:
    """Seed 003: POST /api/analysis/start answers 202 at once; analyze-repo runs load-job-context,
    fetch-commit-list, fetch-commit-details, compute-analysis and save-results; onFailure marks the job."""

    app = staticmethod(_repo_analysis_app)

    def _start(self, stack: Stack, repo_id: str) -> tuple[str, dict[str, Any]]:
        started = _post(stack, "/api/analysis/start", {"userId": "user-1", "repoId": repo_id})
        job_id = started["jobId"]
        [event_id] = started["eventIds"]
        [listed] = stack.wait_runs(event_id)
        assert listed["function_id"] == stack.fn_id("analyze-repo")
        return job_id, stack.wait_ended(listed["run_id"])

    def _job(self, stack: Stack, job_id: str, status: str) -> dict[str, Any]:
        return wait_for(
            f"job {job_id} to be {status}",
            lambda: job if (job := _get(stack, f"/jobs/{job_id}"))["status"] == status else None,
            stack=stack,
        )

    def test_job_runs_five_durable_steps(self, stack: Stack) -> None:
        job_id, run = self._start(stack, f"octo/{new_token()}")
        assert run["status"] == "Completed", run
        job = self._job(stack, job_id, "done")
        assert job["result"]["commitCount"] == 6 and job["completed_at"], job
        assert run["output"] == {"jobId": job_id, "status": "done", "vibe": job["result"]["vibe"]}
        steps = stack.steps_by_name(run["run_id"])
        assert set(steps) == set(ANALYSIS_STEPS), steps
        assert all(str(s["status"]).lower() == "completed" and s["attempts"] == 1 for [s] in steps.values()), steps
        assert steps["compute-analysis"][0]["output"] == job["result"]
        assert [r["step"] for r in stack.records(job_id, what="step")] == ANALYSIS_STEPS

    def test_failed_github_call_is_retried_from_its_step(self, stack: Stack) -> None:
        job_id, run = self._start(stack, f"octo/{new_token()}/flaky")
        assert run["status"] == "Completed", run
        self._job(stack, job_id, "done")
        [fetch] = stack.steps_by_name(run["run_id"])["fetch-commit-list"]
        assert fetch["attempts"] == 2, fetch
        ran = [r["step"] for r in stack.records(job_id, what="step")]
        # The retry resumed at the failed step: the job context was loaded once.
        assert ran == ["load-job-context", "fetch-commit-list", *ANALYSIS_STEPS[1:]]

    def test_on_failure_marks_the_job_errored(self, stack: Stack) -> None:
        job_id, run = self._start(stack, f"octo/{new_token()}/broken")
        assert run["status"] == "Failed", run
        job = self._job(stack, job_id, "error")
        assert "analysis exploded" in job["error_message"] and job["completed_at"], job
        assert "result" not in job
        steps = stack.steps_by_name(run["run_id"])
        [compute] = steps["compute-analysis"]
        assert str(compute["status"]).lower() == "failed" and compute["attempts"] == 3, compute  # retries: 2
        assert "analysis exploded" in compute["error"]["message"]
        assert "save-results" not in steps
        ran = [r["step"] for r in stack.records(job_id, what="step")]
        assert ran == [*ANALYSIS_STEPS[:3], "compute-analysis", "compute-analysis", "compute-analysis"]
        [hook] = stack.records(job_id, what="on_failure")
        assert "analysis exploded" in hook["error_message"]


class TestSeedBatchRepositories:
    """Seeds 000/001: the batch endpoint answers 202; process-batch-repositories fans out one event per
    unprocessed repository; each process-single-repository run is rate limited once, retried after the
    Retry-After delay, and saves its analysis; private repositories are skipped without failing."""

    app = staticmethod(_batch_repos_app)

    def test_batch_fans_out_one_run_per_repository(self, stack: Stack) -> None:
        owner = f"org-{new_token()}"
        repos: list[dict[str, Any]] = [{"owner": owner, "name": n} for n in ("web", "api", "cli")]
        repos.append({"owner": owner, "name": "vault", "private": True})
        resp = stack.http.post(f"{stack.app_url}/db/repos", json={"repos": repos})
        assert resp.status_code == 200, resp.text
        batch_id = f"batch-{new_token()}"
        queued = _post(stack, "/api/batch/generate-remaining", {"owner": owner, "batchId": batch_id})
        [event_id] = queued["eventIds"]
        [listed] = stack.wait_runs(event_id)
        assert listed["function_id"] == stack.fn_id("process-batch-repositories")
        batch = stack.wait_status(listed["run_id"], "Completed")
        assert batch["output"]["queued"] == 4 and len(batch["output"]["ids"]) == 4, batch
        assert "queue-repositories" in stack.steps_by_name(batch["run_id"])

        outputs = {}
        for sent_id in batch["output"]["ids"]:
            [run] = stack.wait_runs(sent_id)
            assert run["function_id"] == stack.fn_id("process-single-repository")
            ended = stack.wait_status(run["run_id"], "Completed")
            outputs[ended["output"]["repository"]] = (ended, run["run_id"])
        assert set(outputs) == {f"{owner}/{n}" for n in ("web", "api", "cli", "vault")}
        assert outputs[f"{owner}/vault"][0]["output"] == {"repository": f"{owner}/vault", "skipped": "private"}

        for name in ("web", "api", "cli"):
            key = f"{owner}/{name}"
            row = _get(stack, f"/db/repos/{owner}/{name}")
            assert row["batch_id"] == batch_id and row["tech_stack"] == ["node", "typescript", "nextjs"], row
            fetches = [r for r in stack.records(owner, step="fetch-bundle") if r["repository"] == key]
            assert [r["attempt"] for r in fetches] == [0, 1], fetches
            assert fetches[1]["t"] - fetches[0]["t"] >= 0.8, "the retry came before the rate limit's Retry-After"
            [fetch_step] = stack.steps_by_name(outputs[key][1])["fetch-bundle"]
            assert fetch_step["attempts"] == 2, fetch_step
        assert "processed_at" not in _get(stack, f"/db/repos/{owner}/vault")

    def test_empty_batch_queues_nothing(self, stack: Stack) -> None:
        queued = _post(stack, "/api/batch/generate-remaining", {"owner": f"org-{new_token()}", "batchId": "b0"})
        [listed] = stack.wait_runs(queued["eventIds"][0])
        run = stack.wait_status(listed["run_id"], "Completed")
        assert run["output"] == {"batchId": "b0", "queued": 0, "ids": []}

    def test_refresh_repository_intelligence(self, stack: Stack) -> None:
        owner = f"org-{new_token()}"
        resp = stack.http.post(f"{stack.app_url}/db/repos", json={"repos": [{"owner": owner, "name": "site"}]})
        assert resp.status_code == 200, resp.text
        started = time.monotonic()
        queued = _post(stack, f"/api/repos/{owner}/site/intelligence", {})
        [listed] = stack.wait_runs(queued["eventIds"][0])
        run = stack.wait_status(listed["run_id"], "Completed")
        assert run["output"] == {"repository": f"{owner}/site", "refreshed": True}
        assert time.monotonic() - started >= 0.9  # one rate-limited GitHub call, retried a second later
        row = _get(stack, f"/db/repos/{owner}/site")
        assert row["intelligence"]["quality"] == "good" and row["refreshed_at"], row
