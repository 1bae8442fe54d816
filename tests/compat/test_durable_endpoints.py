"""Durable endpoints with the official npm SDK 4.x, unmodified (``inngest.endpoint`` with ``inngest/edge``'s
adapter), against ``stepline dev`` and ``stepline start``: the SDK checkpoints each step of a run an HTTP request
started (``POST /v1/checkpoint``, ``/v1/checkpoint/{runId}/steps``); a sleep makes the endpoint answer its caller
with a redirect to ``/v1/http/runs/{runId}/output?token=``, the server resumes the run by calling the endpoint, and
the output URL answers once the run has ended. An app killed mid-run loses no checkpointed step."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from .harness import Stack, new_token, node_app, wait_for

pytestmark = pytest.mark.compat


def endpoint_run(stack: Stack, token: str) -> dict[str, Any]:
    """The run the endpoint request carrying ``token`` started (found by its ``inngest/http.request`` event)."""

    def find() -> dict[str, Any] | None:
        for ev in stack.rest("/v1/events?name=inngest/http.request&limit=50"):
            if ev["data"]["query_params"] == f"token={token}":
                runs = stack.runs_of(ev["internal_id"])
                return runs[0] if runs else None
        return None

    return wait_for(f"the run of endpoint request {token}", find, stack=stack)


def step_outputs(stack: Stack, run_id: str) -> dict[str, Any]:
    return {s["name"]: s["output"] for s in stack.steps(run_id) if s["status"] == "completed"}


class TestNodeDurableEndpoints:
    app = staticmethod(lambda: node_app("durable_app.js", "compat-durable-node"))

    def test_a_sync_endpoint_answers_in_the_request_and_its_steps_are_stored(self, stack: Stack) -> None:
        token = new_token()
        r = stack.http.get(f"{stack.app_url}/durable/sync?token={token}")
        assert r.status_code == 200, f"{r.text}\n{stack.diagnostics()}"
        assert r.json() == {"token": token, "sum": 3}
        run = stack.wait_ended(endpoint_run(stack, token)["run_id"])
        assert run["status"] == "Completed"
        assert run["function_id"].endswith("-GET-durable-sync")
        assert step_outputs(stack, run["run_id"]) == {"add-one": 1, "add-two": 3}
        assert [r["step"] for r in stack.records(token, what="step")] == ["add-one", "add-two"]

    def test_an_endpoint_that_sleeps_is_resumed_by_the_server_and_its_output_fetched(self, stack: Stack) -> None:
        token = new_token()
        r = stack.http.get(f"{stack.app_url}/durable/sleepy?token={token}")
        assert r.status_code == 302, f"{r.status_code} {r.text}\n{stack.diagnostics()}"
        location = r.headers["location"]
        assert location.startswith(f"{stack.server_url}/v1/http/runs/") and "/output?token=" in location
        out = httpx.get(location, timeout=30)  # waits for the run to end: no signing key, the token is the auth
        assert out.status_code == 200, out.text
        assert out.json() == f'{{"token":"{token}","before":"b","after":"a"}}'  # the body, as the SDK sent it
        run = stack.run(location.split("/runs/")[1].split("/")[0])
        assert run["status"] == "Completed"
        assert step_outputs(stack, run["run_id"]) == {"before": "b", "nap": None, "after": "a"}
        # The server's call replayed the checkpointed step: each body ran once.
        assert [r["step"] for r in stack.records(token, what="step")] == ["before", "after"]
        forged = httpx.get(location.split("?")[0] + "?token=" + "0" * 64, timeout=10)
        assert forged.status_code == 401

    def test_unknown_runs_and_taken_run_ids_are_refused(self, stack: Stack) -> None:
        r = stack.http.post(f"{stack.server_url}/v1/checkpoint/01NOSUCHRUN000000000000000/steps",
                            json={"fn_id": "x", "app_id": "y", "run_id": "01NOSUCHRUN000000000000000", "steps": []},
                            headers=stack.auth)  # fmt: skip
        assert r.status_code == 404, r.text
        token = new_token()
        stack.http.get(f"{stack.app_url}/durable/sync?token={token}")
        run_id = endpoint_run(stack, token)["run_id"]
        event = {"name": "inngest/http.request", "data": {"domain": stack.app_url, "path": "/durable/sync",
                                                          "method": "GET", "query_params": "", "fn": ""}}  # fmt: skip
        again = stack.http.post(f"{stack.server_url}/v1/checkpoint", headers=stack.auth,
                                json={"run_id": run_id, "event": event, "steps": [], "retries": 3})  # fmt: skip
        assert again.status_code == 409, again.text
        if stack.mode == "signed":
            unsigned = stack.http.post(f"{stack.server_url}/v1/checkpoint", json={"run_id": "x", "event": event})
            assert unsigned.status_code == 401

    def test_an_app_killed_mid_run_loses_no_checkpointed_step(self, stack: Stack) -> None:
        token = new_token()

        def kill_in_step_three() -> None:
            stack.wait_records(token, 3, what="step")
            assert stack.app is not None
            stack.app.stop()

        killer = threading.Thread(target=kill_in_step_three)
        killer.start()
        try:
            with pytest.raises(httpx.HTTPError):  # the app dies while the request waits in step three
                httpx.get(f"{stack.app_url}/durable/stuck?token={token}", timeout=30)
            killer.join()
            run = stack.run(endpoint_run(stack, token)["run_id"])
            assert run["status"] == "Running"  # the server resumes it when the app's lease expires
            assert step_outputs(stack, run["run_id"]) == {"one": 1, "two": 2}
        finally:
            killer.join()
            stack.restart_app()
