"""The feature checks every official SDK must pass against Stepline, written once: ``test_python_sdk.py`` and
``test_node_sdk.py`` subclass :class:`SdkSuite` with their app (``py_app/app.py``, ``node_app/app.js``: the same
function ids, events and outputs). Each test runs in dev mode and in signed (``stepline start``) mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import httpx

from .harness import AppSpec, Stack, hold_for, new_token, step_hash, wait_for


def _status(step: dict[str, Any]) -> str:
    return str(step["status"]).lower()


class SdkSuite:
    app: ClassVar[Callable[[], AppSpec]]

    # --- events -------------------------------------------------------------------------------------------------
    def test_event_starts_a_run_with_its_output(self, stack: Stack) -> None:
        token = new_token()
        # A single JSON object (as curl and the UI send it) is accepted as well as an array.
        resp = stack.post_events({"name": "compat/hello", "data": {"token": token, "name": "Ada"}})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"] == 200 and len(body["ids"]) == 1, body
        event_id = body["ids"][0]
        [listed] = stack.wait_runs(event_id)
        run = stack.wait_status(listed["run_id"], "Completed")
        assert run["function_id"] == stack.fn_id("hello")
        assert run["event_id"] == event_id
        assert run["output"] == {"hello": "Ada", "token": token}
        assert run["ended_at"]
        assert len(stack.records(token, fn="hello", what="call")) == 1

    def test_sdk_client_send(self, stack: Stack) -> None:
        """The app sends with its own SDK client (``inngest.send``): the ids it gets back are the server's."""
        token = new_token()
        [event_id] = stack.sdk_send({"name": "compat/hello", "data": {"token": token, "name": "Grace"}})
        [listed] = stack.wait_runs(event_id)
        run = stack.wait_status(listed["run_id"], "Completed")
        assert run["output"] == {"hello": "Grace", "token": token}

    def test_one_event_fans_out_to_two_functions(self, stack: Stack) -> None:
        token = new_token()
        [event_id] = stack.send({"name": "compat/fanout", "data": {"token": token}})
        runs = stack.wait_runs(event_id, count=2)
        ended = {r["function_id"]: stack.wait_status(r["run_id"], "Completed") for r in runs}
        assert set(ended) == {stack.fn_id("fanout-a"), stack.fn_id("fanout-b")}
        assert ended[stack.fn_id("fanout-a")]["output"] == {"fn": "a", "token": token}
        assert ended[stack.fn_id("fanout-b")]["output"] == {"fn": "b", "token": token}
        assert len(stack.runs_of(event_id)) == 2

    def test_same_event_id_twice_starts_one_run(self, stack: Stack) -> None:
        token = new_token()
        event = {"name": "compat/idempotent", "id": f"order-{token}", "data": {"token": token}}
        [first] = stack.sdk_send(event)
        [second] = stack.sdk_send(event)
        # A later event with another id: once its run has ended, a run for the duplicate would have started too.
        sentinel = new_token()
        [later] = stack.sdk_send({"name": "compat/idempotent", "id": f"order-{sentinel}", "data": {"token": sentinel}})
        [run] = stack.wait_runs(first)
        stack.wait_status(run["run_id"], "Completed")
        [sentinel_run] = stack.wait_runs(later)
        stack.wait_status(sentinel_run["run_id"], "Completed")
        run_ids = {r["run_id"] for r in stack.runs_of(first) + stack.runs_of(second)}
        assert run_ids == {run["run_id"]}, f"two sends of one event id started runs {run_ids}"
        assert len(stack.records(token, fn="idempotent", what="call")) == 1

    # --- steps --------------------------------------------------------------------------------------------------
    def test_sequential_steps(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("compat/sequential", {"token": token, "n": 4})
        assert run["status"] == "Completed", run
        assert run["output"] == {"result": 10, "text": "(4 + 1) * 2 = 10"}
        steps = stack.steps_by_name(run["run_id"])
        assert set(steps) == {"add-one", "double", "describe"}, steps
        expected = {"add-one": 5, "double": 10, "describe": "(4 + 1) * 2 = 10"}
        for name, [step] in steps.items():
            assert step["id"] == step_hash(name)
            assert _status(step) == "completed", step
            assert step["attempts"] == 1, step
            assert step["output"] == expected[name], step
        # Each step's body ran once: later calls replayed its stored result.
        for name in expected:
            assert len(stack.records(token, what="step", step=name)) == 1, name

    def test_step_repeated_in_a_loop(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("compat/loop", {"token": token})
        assert run["status"] == "Completed", run
        assert run["output"] == {"results": [0, 10, 20]}
        [items] = stack.steps_by_name(run["run_id"]).values()
        by_id = {s["id"]: s for s in items}
        assert set(by_id) == {step_hash("item"), step_hash("item", 1), step_hash("item", 2)}
        assert [by_id[step_hash("item", i)]["output"] for i in range(3)] == [0, 10, 20]
        assert sorted(r["i"] for r in stack.records(token, step="item")) == [0, 1, 2]

    def test_parallel_steps(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("compat/parallel", {"token": token})
        assert run["status"] == "Completed", run
        assert run["output"] == {"joined": "abc"}
        steps = stack.steps_by_name(run["run_id"])
        assert set(steps) == {"par-a", "par-b", "par-c", "combine"}, steps
        assert all(_status(s) == "completed" for [s] in steps.values()), steps
        for name in ("par-a", "par-b", "par-c", "combine"):
            assert len(stack.records(token, what="step", step=name)) == 1, name

    def test_sleep(self, stack: Stack) -> None:
        token = new_token()
        started = time.monotonic()
        _, run = stack.trigger("compat/sleep", {"token": token, "duration": "1s"})
        assert run["status"] == "Completed", run
        assert time.monotonic() - started >= 0.9
        assert run["output"]["slept_ms"] >= 900, run
        [before] = stack.records(token, step="before")
        [after] = stack.records(token, step="after")
        assert after["t"] - before["t"] >= 0.9
        steps = stack.steps_by_name(run["run_id"])
        assert {"before", "nap", "after"} <= set(steps), steps
        assert steps["nap"][0]["id"] == step_hash("nap")

    def test_wait_for_event_matched(self, stack: Stack) -> None:
        token = new_token()
        [event_id] = stack.send({"name": "compat/wait", "data": {"token": token, "timeout": "10s"}})
        [listed] = stack.wait_runs(event_id)
        run_id = listed["run_id"]

        def approve() -> dict[str, Any] | None:
            # Only events after the wait began match it: keep approving until the run takes one. The decoy's token
            # belongs to no run and must never match.
            stack.send(
                {"name": "compat/approval", "data": {"token": f"decoy-{token}", "by": "mallory"}},
                {"name": "compat/approval", "data": {"token": token, "by": "alice"}},
            )
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                run = stack.run(run_id)
                if run["status"] in {"Completed", "Failed", "Cancelled"}:
                    return run
                time.sleep(0.05)
            return None

        run = wait_for("the approval to resume the run", approve, stack=stack)
        assert run["status"] == "Completed", run
        assert run["output"] == {"approved_by": "alice", "timed_out": False}
        [step] = stack.steps_by_name(run_id)["wait-approval"]
        assert step["id"] == step_hash("wait-approval") and _status(step) == "completed", step
        assert step["output"]["name"] == "compat/approval", step  # the matching event itself
        assert step["output"]["data"] == {"token": token, "by": "alice"}, step

    def test_wait_for_event_timeout(self, stack: Stack) -> None:
        token = new_token()
        started = time.monotonic()
        [event_id] = stack.send({"name": "compat/wait", "data": {"token": token, "timeout": "1s"}})
        [listed] = stack.wait_runs(event_id)
        stack.send({"name": "compat/approval", "data": {"token": f"decoy-{token}", "by": "mallory"}})
        run = stack.wait_status(listed["run_id"], "Completed")
        assert run["output"] == {"approved_by": None, "timed_out": True}
        [step] = stack.steps_by_name(listed["run_id"])["wait-approval"]
        assert _status(step) == "completed" and step["output"] is None, step
        assert time.monotonic() - started >= 0.9

    def test_invoke_another_function(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("compat/invoke", {"token": token, "a": 2, "b": 3})
        assert run["status"] == "Completed", run
        assert run["output"] == {"invoked": {"sum": 5, "token": token}}
        assert len(stack.records(token, fn="invokee", what="call")) == 1
        [step] = stack.steps_by_name(run["run_id"])["call-invokee"]
        assert _status(step) == "completed", step
        assert step["output"] == {"sum": 5, "token": token}, step  # the invoked function's output, as for step.run

    def test_send_event_from_a_step(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("compat/send-from-step", {"token": token, "n": 7})
        assert run["status"] == "Completed", run
        [sent_id] = run["output"]["sent_ids"]
        [received] = stack.wait_runs(sent_id)
        assert received["function_id"] == stack.fn_id("receiver")
        assert stack.wait_status(received["run_id"], "Completed")["output"] == {"got": 7, "token": token}
        assert "emit" in stack.steps_by_name(run["run_id"])
        assert len(stack.records(token, fn="receiver", what="call")) == 1

    # --- failures -----------------------------------------------------------------------------------------------
    def test_step_retried_then_succeeds(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("compat/flaky", {"token": token})
        assert run["status"] == "Completed", run
        assert run["output"] == {"succeeded_on_attempt": 1}
        assert [r["attempt"] for r in stack.records(token, step="flaky")] == [0, 1]
        [step] = stack.steps_by_name(run["run_id"])["flaky"]
        assert _status(step) == "completed" and step["attempts"] == 2, step
        assert step["output"] == {"succeeded_on_attempt": 1}

    def test_retries_exhausted_then_on_failure(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("compat/always-fails", {"token": token})
        assert run["status"] == "Failed", run
        assert f"doomed {token}" in run["error"]["message"], run
        # retries: 1 means two attempts of the step, then the run fails.
        assert [r["attempt"] for r in stack.records(token, step="doomed")] == [0, 1]
        [step] = stack.steps_by_name(run["run_id"])["doomed"]
        assert _status(step) == "failed" and step["attempts"] == 2, step
        assert f"doomed {token}" in step["error"]["message"], step
        [handled] = stack.wait_records(token, fn="always-fails-failure", what="on_failure")
        assert handled["event_name"] == "inngest/function.failed"
        assert f"doomed {token}" in handled["error_message"]
        assert handled["function_id"] == stack.fn_id("always-fails")
        assert handled["failed_run_id"] == run["run_id"]
        assert len(stack.records(token, step="doomed")) == 2  # the failure handler did not rerun the step

    def test_non_retriable_error_fails_at_once(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("compat/non-retriable", {"token": token})
        assert run["status"] == "Failed", run
        assert f"not worth retrying {token}" in run["error"]["message"], run
        [only] = stack.records(token, step="reject")  # retries: 3, yet a single attempt
        assert only["attempt"] == 0

    def test_retry_after_error_is_honoured(self, stack: Stack) -> None:
        token = new_token()
        _, run = stack.trigger("compat/retry-after", {"token": token})
        assert run["status"] == "Completed", run
        assert run["output"] == {"succeeded_on_attempt": 1}
        first, second = stack.records(token, step="rate-limited")
        assert (first["attempt"], second["attempt"]) == (0, 1)
        # The app asked for a retry one second later (Retry-After), not the (scaled-down) default backoff.
        assert second["t"] - first["t"] >= 0.8, (first, second)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def test_cancel_on_event(self, stack: Stack) -> None:
        token = new_token()
        [event_id] = stack.send({"name": "compat/cancellable", "data": {"token": token, "duration": "2s"}})
        [listed] = stack.wait_runs(event_id)
        run_id = listed["run_id"]
        [started] = stack.wait_records(token, step="started")
        nap_ends = time.monotonic() + 2.0 - (time.time() - started["t"])

        def cancel() -> dict[str, Any] | None:
            stack.send(
                {"name": "compat/cancel", "data": {"token": f"decoy-{token}"}},
                {"name": "compat/cancel", "data": {"token": token}},
            )
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                run = stack.run(run_id)
                if run["status"] in {"Completed", "Failed", "Cancelled"}:
                    return run
                time.sleep(0.05)
            return None

        run = wait_for("the cancel event to end the run", cancel, stack=stack)
        assert run["status"] == "Cancelled", run

        def no_resume() -> bool:
            # The calls that ran "started" and reached the 2 s sleep came right after it; a call 1.5 s or more later
            # could only be the cancelled run being resumed.
            late = [r for r in stack.records(token, what="call") if r["t"] > started["t"] + 1.5]
            return not late and not stack.records(token, step="after-nap")

        # Past the end of the sleep the run would have resumed: it gets no more calls and stays cancelled.
        hold_for("no call after cancellation", no_resume, until=nap_ends + 1.5, stack=stack)
        assert stack.run(run_id)["status"] == "Cancelled"

    # --- modes --------------------------------------------------------------------------------------------------
    def test_event_keys_and_rest_auth(self, stack: Stack) -> None:
        token = new_token()
        event = {"name": "compat/hello", "data": {"token": token, "name": "key"}}
        if stack.mode == "dev":
            # The dev server takes any event key and needs no REST credentials.
            resp = stack.post_events([event], key="any-key-at-all")
            assert resp.status_code == 200, resp.text
            [listed] = stack.wait_runs(resp.json()["ids"][0])
            stack.wait_status(listed["run_id"], "Completed")
            return
        resp = stack.post_events([event], key="not-the-event-key")
        assert resp.status_code == 401, resp.text
        assert httpx.get(f"{stack.server_url}/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 401
        wrong = {"Authorization": "Bearer signkey-test-" + "0" * 64}
        assert httpx.get(f"{stack.server_url}/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV", headers=wrong).status_code == 401
        [event_id] = stack.send(event)
        [listed] = stack.wait_runs(event_id)
        stack.wait_status(listed["run_id"], "Completed")
        assert len(stack.records(token, fn="hello", what="call")) == 1  # the rejected send started nothing
