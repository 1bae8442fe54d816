"""Round-2 checks (issue 14) every official SDK must pass against Stepline, written once: ``test_parity.py``
subclasses :class:`ParitySuite` with the apps ``py_app/parity_app.py`` and ``node_app/parity_app.js``. A check an
SDK cannot exercise (a step kind it does not have) is left to the SDK that has it: ``requires(stack, "node")``.
Each test runs in dev mode and in signed (``stepline start``) mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from .fake_model import FakeModel
from .harness import TERMINAL, AppSpec, Stack, new_token, wait_for


def requires(stack: Stack, sdk: str) -> None:
    if stack.sdk != sdk:
        pytest.skip(f"the {stack.sdk} SDK has no such step kind; the {sdk} SDK's test covers it")


class ParitySuite:
    app: ClassVar[Callable[[], AppSpec]]

    # --- retries between steps (item 1) ------------------------------------------------------------------------
    def test_each_stretch_between_steps_gets_the_full_retries(self, stack: Stack) -> None:
        """retries: 1, and the function fails once before its first step and once after it: on Inngest both
        stretches are retried (the attempt starts again at 0 after a step), so the run completes."""
        token = new_token()
        _, run = stack.trigger("parity/stretch", {"token": token})
        assert run["status"] == "Completed", run
        assert run["output"] == {"value": 1, "attempt": 1}
        assert [r["attempt"] for r in stack.records(token, what="call")] == [0, 1, 0, 1]
        assert [(r["where"], r["attempt"]) for r in stack.records(token, what="fail")] == [("before", 0), ("after", 0)]
        assert len(stack.records(token, what="step")) == 1

    def test_retry_after_error_from_the_function_body_counts_per_stretch(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("parity/stretch", {"token": token, "kind": "retry-after"})
        assert run["status"] == "Completed", run
        calls = stack.records(token, what="call")
        assert [r["attempt"] for r in calls] == [0, 1, 0, 1]
        # Each failure asked for a retry one second later (Retry-After), not the scaled-down backoff.
        assert calls[1]["t"] - calls[0]["t"] >= 0.8 and calls[3]["t"] - calls[2]["t"] >= 0.8, calls

    # --- error shapes (item 2) ---------------------------------------------------------------------------------
    def test_errors_are_stored_as_sent_and_on_failure_gets_inngests_shape(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("parity/shapes", {"token": token})
        assert run["status"] == "Failed", run
        [step] = stack.steps(run["run_id"])
        for error in (run["error"], step["error"]):
            assert f"card declined {token}" in error["message"], error
            # Kept exactly as the SDK sent it, fields Stepline does not use included.
            if stack.sdk == "node":
                assert error["__serialized"] is True, error
            else:
                assert error["code"] in ("unknown", "step_errored"), error
        assert run["error"]["code" if stack.sdk == "python" else "name"] == (
            "step_errored" if stack.sdk == "python" else "Error"
        )
        [handled] = stack.wait_records(token, fn="shapes-failure")
        error = handled["error"]
        # As Inngest's executor sends it: the SDK's last answer was an error with X-Inngest-No-Retry.
        assert error["error"] == "NonRetriableError", error
        assert set(error) == {"error", "name", "message", "stack"}, error
        assert f"card declined {token}" in error["message"] and error["stack"], error

    # --- parallel race mode (item 3) ----------------------------------------------------------------------------
    def test_race_goes_on_after_the_first_step_while_the_other_still_runs(self, stack: Stack) -> None:
        requires(stack, "node")
        token = new_token()
        _, run = stack.trigger("parity/race-steps", {"token": token})
        assert run["status"] == "Completed" and run["output"] == {"winner": "fast", "next": "after fast"}, run
        [after] = stack.records(token, step="after-race")
        [slow] = stack.records(token, step="slow")
        # The step after the race ran while the slow racer (3 s) still ran: discovery came right after "fast",
        # not after every racer ended. (The SDK still wants the loser's result before it reports the run done.)
        assert after["t"] < slow["t"] - 1, (after, slow)
        assert {s["name"] for s in stack.steps(run["run_id"])} == {"fast", "slow", "after-race"}

    def test_race_losing_wait_does_not_hold_the_run_open(self, stack: Stack) -> None:
        requires(stack, "node")
        token = new_token()
        started = time.monotonic()
        _, run = stack.trigger("parity/race-wait", {"token": token, "deadline": "1s"})
        # The losing waitForEvent has a one-hour timeout; the run ends right after the sleep that won.
        assert run["status"] == "Completed" and run["output"] == {"after": "timed out"}, run
        assert time.monotonic() - started < 6
        steps = stack.steps_by_name(run["run_id"])
        assert steps["approval"][0]["output"] is None and steps["deadline"][0]["status"] == "completed", steps
        assert len(stack.records(token, step="after")) == 1

    def test_race_won_by_the_event(self, stack: Stack) -> None:
        requires(stack, "node")
        token = new_token()
        [event_id] = stack.send({"name": "parity/race-wait", "data": {"token": token, "deadline": "1h"}})
        [listed] = stack.wait_runs(event_id)
        run_id = listed["run_id"]

        def approve() -> dict[str, Any] | None:
            stack.send({"name": "parity/approved", "data": {"token": token, "by": "alice"}})
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                run = stack.run(run_id)
                if run["status"] in TERMINAL:
                    return run
                time.sleep(0.05)
            return None

        run = wait_for("the approval to win the race", approve, stack=stack)
        # The one-hour sleep lost: the run did not wait for it.
        assert run["status"] == "Completed" and run["output"] == {"after": "approved by alice"}, run
        steps = stack.steps_by_name(run_id)
        assert steps["deadline"][0]["status"] == "completed" and steps["deadline"][0]["output"] is None, steps

    # --- step.ai.infer and step.fetch (item 5) ------------------------------------------------------------------
    def test_ai_infer_request_is_made_by_the_server(self, stack: Stack, model: FakeModel) -> None:
        token = new_token()
        _, run = stack.trigger("parity/ai", {"token": token, "base_url": f"{model.url}/v1",
                                             "question": f"capital {token}?"})  # fmt: skip
        assert run["status"] == "Completed", run
        assert run["output"] == {"content": f"echo: capital {token}?"}
        [request] = [r for r in model.requests if token in r.body.decode()]
        assert (request.method, request.path) == ("POST", "/v1/chat/completions")
        assert request.headers["authorization"] == "Bearer sk-parity"
        assert request.json()["model"] == "gpt-parity"
        [step] = stack.steps(run["run_id"])
        assert (step["kind"], step["status"], step["attempts"]) == ("ai", "completed", 1), step
        assert step["output"]["choices"][0]["message"]["content"] == f"echo: capital {token}?"

    def test_ai_infer_failures_are_retried_as_the_step(self, stack: Stack, model: FakeModel) -> None:
        token = new_token()
        _, run = stack.trigger("parity/ai", {"token": token, "base_url": f"{model.url}/fail/1/{token}/v1",
                                             "question": "again?"})  # fmt: skip
        assert run["status"] == "Completed" and run["output"] == {"content": "echo: again?"}, run
        assert len([r for r in model.requests if token in r.path]) == 2  # a 503, then the answer
        [step] = stack.steps(run["run_id"])
        assert (step["status"], step["attempts"]) == ("completed", 2), step
        assert "unsuccessful status code: 503" in step["error"]["message"]  # the last error is kept

    def test_step_fetch_request_is_made_by_the_server(self, stack: Stack, model: FakeModel) -> None:
        requires(stack, "node")
        token = new_token()
        _, run = stack.trigger("parity/fetch", {"token": token, "url": f"{model.url}/data/{token}"})
        assert run["status"] == "Completed", run
        assert run["output"] == {"status": 200, "body": f"fetched POST /data/{token}: hello", "model": "fake"}
        [request] = [r for r in model.requests if token in r.path]
        assert request.headers["x-parity"] == "1"
        [step] = stack.steps(run["run_id"])
        assert step["kind"] == "fetch" and step["output"]["status_code"] == 200, step

    # --- signals (item 6) ---------------------------------------------------------------------------------------
    def _waiting_for_signal(self, stack: Stack, token: str) -> str:
        [event_id] = stack.send({"name": "parity/signal-wait", "data": {"token": token}})
        [listed] = stack.wait_runs(event_id)
        run = wait_for("the run to wait for its signal",
                       lambda: r if (r := stack.run(listed["run_id"])).get("idle_reason") else None,
                       stack=stack)  # fmt: skip
        assert run["idle_reason"]["message"].startswith(f"waiting for signal 'approve-{token}' until "), run
        return str(run["run_id"])

    def test_sdk_send_signal_resumes_the_waiting_run(self, stack: Stack) -> None:
        requires(stack, "node")
        token = new_token()
        run_id = self._waiting_for_signal(stack, token)
        resp = stack.http.post(f"{stack.app_url}/signal", json={"signal": f"approve-{token}", "data": {"by": "sdk"}})
        assert resp.status_code == 200 and resp.json() == {"run_id": run_id}, resp.text
        run = stack.wait_status(run_id, "Completed")
        assert run["output"] == {"got": {"signal": f"approve-{token}", "data": {"by": "sdk"}}}
        [step] = stack.steps(run_id)
        assert (step["kind"], step["name"]) == ("wait_for_signal", "approval"), step
        # Nothing waits any more: the server answers 404, which the SDK reports as no run.
        resp = stack.http.post(f"{stack.app_url}/signal", json={"signal": f"approve-{token}"})
        assert resp.json() == {"run_id": None}, resp.text
        resp = stack.http.post(f"{stack.server_url}/v1/signals", json={"signal": f"approve-{token}"},
                               headers=stack.auth)  # fmt: skip
        assert resp.status_code == 404, resp.text

    def test_step_send_signal_and_the_rest_api_resume_waiting_runs(self, stack: Stack) -> None:
        requires(stack, "node")
        token = new_token()
        run_id = self._waiting_for_signal(stack, token)
        _, sender = stack.trigger("parity/signal-send", {"token": token})
        assert sender["status"] == "Completed" and sender["output"] == {"sent": {"runId": run_id}}, sender
        assert stack.wait_status(run_id, "Completed")["output"]["got"]["data"] == {"by": "a step"}
        token = new_token()
        run_id = self._waiting_for_signal(stack, token)
        resp = stack.http.post(f"{stack.server_url}/v1/signals", json={"signal": f"approve-{token}", "data": [1, 2]},
                               headers=stack.auth)  # fmt: skip
        assert resp.status_code == 200 and resp.json()["data"] == {"run_id": run_id}, resp.text
        assert stack.wait_status(run_id, "Completed")["output"]["got"]["data"] == [1, 2]

    # --- checkpointing (item 7) ---------------------------------------------------------------------------------
    def test_checkpointed_steps_survive_an_app_crash(self, stack: Stack) -> None:
        """The npm SDK checkpoints each step as it runs them in one call; the app process dies in step 3: steps
        1 and 2 are kept (not run again), and the run completes once the app is back."""
        requires(stack, "node")
        token = new_token()
        [event_id] = stack.send({"name": "parity/crash", "data": {"token": token, "crash_at": 3}})
        [listed] = stack.wait_runs(event_id)
        wait_for("the app to die in step 3", lambda: stack.app is not None and not stack.app.alive(), stack=stack)
        stored = {s["name"]: s for s in stack.steps(listed["run_id"])}
        assert {n: s["output"] for n, s in stored.items()} == {"s1": 1, "s2": 4}, stored  # checkpointed before
        stack.restart_app()
        run = stack.wait_status(listed["run_id"], "Completed", timeout=30)
        assert run["output"] == {"results": [1, 4, 9, 16, 25]}
        ran = [r["step"] for r in stack.records(token, what="step")]
        assert ran == ["s1", "s2", "s3", "s3", "s4", "s5"], ran  # s1, s2 not run again; s3 ran again

    def test_a_run_of_steps_takes_one_call(self, stack: Stack) -> None:
        """The server offers the SDK to checkpoint (ctx.fn_id, ctx.qi_id): five steps, one call."""
        requires(stack, "node")
        token = new_token()
        _, run = stack.trigger("parity/crash", {"token": token, "crash_at": 0})
        assert run["status"] == "Completed" and run["output"] == {"results": [1, 4, 9, 16, 25]}, run
        assert len(stack.records(token, what="call")) == 1
        assert [s["name"] for s in stack.steps(run["run_id"])] == ["s1", "s2", "s3", "s4", "s5"]

    # --- defer (item 8) -----------------------------------------------------------------------------------------
    def test_defers_start_their_functions_once_the_run_has_ended(self, stack: Stack) -> None:
        requires(stack, "node")
        token = new_token()
        _, run = stack.trigger("parity/defer", {"token": token})
        assert run["status"] == "Completed" and run["output"] == {"first": 1}, run
        deferred = stack.wait_records(token, 2, fn="later", what="call")
        assert sorted(r["n"] for r in deferred) == [1, 3]  # the aborted one never runs
        parents = deferred[0]["parents"]
        assert parents[0]["fnSlug"] == stack.fn_id("deferrer") and parents[0]["runId"] == run["run_id"], parents
        kinds = {s["name"]: (s["kind"], s["status"]) for s in stack.steps(run["run_id"])}
        assert kinds["notify"] == ("defer", "completed") and kinds["work"] == ("run", "completed"), kinds
        time.sleep(1.0)
        assert len(stack.records(token, fn="later", what="call")) == 2  # each once

    # --- item 9: rows of docs/inngest-compat.md that no other test covers with the real SDKs ---------------------
    def test_large_state_goes_through_the_api(self, stack: Stack) -> None:
        """Two 2.5 MB results: the call after the sleep cannot carry them (4 MiB), the SDK fetches them
        (``use_api``, ``GET /v0/runs/{id}/actions``)."""
        token = new_token()
        _, run = stack.trigger(
            "parity/big-state",
            {"token": token},
        )
        assert run["status"] == "Completed" and run["output"] == {"total": 5_000_000}, run

    def test_idempotency_expression_and_finish_timeout(self, stack: Stack) -> None:
        token = new_token()
        key = f"k-{token}"
        first, second = stack.send({"name": "parity/guarded", "data": {"token": token, "key": key}},
                                   {"name": "parity/guarded", "data": {"token": token, "key": key}})  # fmt: skip
        [run] = stack.wait_runs(first)
        assert stack.wait_status(run["run_id"], "Completed")["output"] == {"key": key}
        assert stack.runs_of(second) == []  # the same idempotency key within 24 h: no second run
        slow = new_token()
        _, ended = stack.trigger("parity/guarded", {"token": slow, "key": f"k-{slow}", "sleep_s": 4})
        assert ended["status"] == "Cancelled", ended  # timeouts.finish: 1 s
        time.sleep(3.5)
        assert stack.records(slow, step="after") == []

    def test_cancel_by_the_rest_api(self, stack: Stack) -> None:
        token = new_token()
        [event_id] = stack.send({"name": "parity/nap", "data": {"token": token}})
        [listed] = stack.wait_runs(event_id)
        run_id = listed["run_id"]
        asleep = lambda: (stack.run(run_id).get("idle_reason") or {}).get("kind") == "sleeping"  # noqa: E731
        wait_for("the run to sleep", asleep, stack=stack)
        resp = stack.http.delete(f"{stack.server_url}/v1/runs/{run_id}", headers=stack.auth)
        assert resp.status_code == 204, resp.text
        assert stack.run(run_id)["status"] == "Cancelled"
        time.sleep(5.5)
        assert stack.records(token, step="after") == [] and stack.run(run_id)["status"] == "Cancelled"

    def test_app_version_is_shown(self, stack: Stack) -> None:
        apps = {a["app_id"]: a for a in stack.rest("/v1/apps")}
        assert apps[stack.app_id]["app_version"] == "parity-1", apps

    def test_streaming_answers(self, stack: Stack) -> None:
        requires(stack, "python")  # (the npm SDK's Express handler cannot stream)
        url = f"{stack.app_url}/api/inngest-streaming"
        resp = stack.http.post(f"{stack.server_url}/v1/apps/sync", json={"url": url}, headers=stack.auth)
        assert resp.status_code == 200, resp.text
        token = new_token()
        _, run = stack.trigger("parity/streamed", {"token": token})
        assert run["status"] == "Completed" and run["output"] == {"streamed": 1, "token": token}, run

    def test_cron_triggers_register_with_their_jitter(self, stack: Stack) -> None:
        """The schedule as the SDK registers it (firing is tested with a fake clock in tests/server/test_cron_http.py:
        a real schedule would take minutes)."""
        functions = {f["id"]: f for f in stack.rest(f"/v1/functions?app_id={stack.app_id}")}
        triggers = functions[stack.fn_id("nightly")]["config"]["triggers"]
        expected = {"cron": "TZ=Europe/Paris 0 3 * * *", **({"jitter": "30s"} if stack.sdk == "node" else {})}
        assert triggers == [expected], triggers
