"""Flow control with the official SDKs, unmodified, over HTTP (issue 5): functions registering ``concurrency``,
``rateLimit``, ``throttle``, ``debounce``, ``batchEvents`` and ``singleton`` (``py_app/app.py`` with PyPI
``inngest``, ``node_app/flow_app.ts`` with npm ``inngest`` in strict TypeScript: the same ids, options and outputs)
run on ``stepline dev`` as Inngest runs them.

The checks lean on what cannot be bent by a slow machine: counts, which runs were skipped, non-overlap of runs that
share a concurrency key, and lower bounds on start times (a run never starts before its throttle slot, debounce or
batch timeout: the server computed those due times from its clock after the test read its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any, ClassVar

import pytest

from .harness import AppSpec, Stack, new_token, node_app, python_app, running_stack, wait_for

pytestmark = pytest.mark.compat

EPS = 0.05  # clock granularity between the test, the server (ms) and the app


@pytest.fixture(scope="class")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One ``stepline dev`` and the class's app (dev mode only: signing is covered by the feature suites)."""
    spec = request.cls.app()
    with running_stack(spec, "dev", tmp_path_factory.mktemp(f"{spec.app_id}-flow")) as s:
        yield s


def completed(stack: Stack, event_id: str) -> dict[str, Any]:
    [listed] = stack.wait_runs(event_id)
    return stack.wait_status(listed["run_id"], "Completed")


def skipped(stack: Stack, event_id: str, kind: str) -> dict[str, Any]:
    """The event's run, stored as skipped (it never ran), with the reason."""
    [run] = wait_for(f"the run of {event_id} to be skipped", lambda: stack.runs_of(event_id), stack=stack)
    assert run["status"] == "Skipped", run
    assert run["ended_at"] is not None and run["output"] is None, run
    assert run["idle_reason"]["kind"] == kind and run["idle_reason"]["message"], run
    return dict(run)


class FlowSuite:
    app: ClassVar[Callable[[], AppSpec]]

    def test_functions_register_their_flow_control(self, stack: Stack) -> None:
        functions = {f["id"]: f for f in stack.rest("/v1/functions")}
        flow = {fid: f["config"].get("flow") for fid, f in functions.items()}
        burst = 1 if stack.sdk == "python" else 0  # the Python SDK sends burst 1 unless told otherwise
        assert flow[stack.fn_id("flow-concurrency")] == {
            "concurrency": [{"limit": 1, "key": "event.data.key", "scope": "fn"}]
        }
        assert flow[stack.fn_id("flow-rate-limit")] == {
            "rate_limit": {"limit": 1, "period_ms": 3_600_000, "key": "event.data.key"}
        }
        assert flow[stack.fn_id("flow-throttle")] == {
            "throttle": {"limit": 1, "period_ms": 1000, "burst": burst, "key": "event.data.token"}
        }
        assert flow[stack.fn_id("flow-debounce")] == {
            "debounce": {"period_ms": 1000, "key": "event.data.token", "timeout_ms": None}
        }
        assert flow[stack.fn_id("flow-batch")] == {
            "batch": {"max_size": 3, "timeout_ms": 2000, "key": "event.data.token", "if": None}
        }
        assert flow[stack.fn_id("flow-singleton")] == {"singleton": {"mode": "skip", "key": "event.data.token"}}
        assert not any(f["config"].get("unenforced") for f in functions.values())

    def test_concurrency_one_per_key(self, stack: Stack) -> None:
        """Runs that share a key never overlap; runs of another key run beside them."""
        token = new_token()
        keys = {"a": 3, "b": 2}
        events = [{"name": "compat/flow-concurrency", "data": {"token": token, "key": f"{token}-{k}", "n": n,
                                                                 "hold": 0.4}}
                  for k, count in keys.items() for n in range(count)]  # fmt: skip
        ids = stack.send(*events)
        spans: dict[str, list[tuple[float, float]]] = {}
        for event_id in ids:
            out = completed(stack, event_id)["output"]
            spans.setdefault(out["key"], []).append((out["start"], out["end"]))
        assert sorted(spans) == [f"{token}-a", f"{token}-b"]
        for key, runs in spans.items():
            runs.sort()
            assert len(runs) == keys[key[-1]]
            for (_, end), (start, _) in pairwise(runs):
                assert start >= end, f"runs of key {key} overlapped: {runs}"
        overlapping = [(a, b) for a in spans[f"{token}-a"] for b in spans[f"{token}-b"] if a[0] < b[1] and b[0] < a[1]]
        assert overlapping, f"no run of key b ran beside a run of key a: {spans}"

    def test_rate_limit_skips_runs_over_the_limit(self, stack: Stack) -> None:
        token = new_token()
        event = "compat/flow-rate-limit"
        first, *others = [
            stack.send({"name": event, "data": {"token": token, "key": token, "n": n}})[0] for n in range(3)
        ]
        assert completed(stack, first)["output"] == {"n": 0}
        for event_id in others:
            run = skipped(stack, event_id, "rate_limited")
            assert run["function_id"] == stack.fn_id("flow-rate-limit")
            assert run["idle_reason"]["key"] == token, run
        listed = stack.rest(f"/v1/runs?function_id={stack.fn_id('flow-rate-limit')}&limit=400")
        by_event = {r["event_id"]: r["status"] for r in listed}
        assert [by_event.get(e) for e in (first, *others)] == ["Completed", "Skipped", "Skipped"], listed
        [other] = stack.send({"name": "compat/flow-rate-limit", "data": {"token": token, "key": f"{token}-2", "n": 3}})
        assert completed(stack, other)["output"] == {"n": 3}  # another key has its own limit
        assert sorted(r["n"] for r in stack.records(token, fn="flow-rate-limit", what="call")) == [0, 3]

    def test_throttle_spaces_run_starts(self, stack: Stack) -> None:
        """limit 1 per 1s: after ``limit + burst`` starts at once, one start per second."""
        token = new_token()
        burst = 1 if stack.sdk == "python" else 0
        sent_at = time.time()
        ids = stack.send(*[{"name": "compat/flow-throttle", "data": {"token": token, "n": n}} for n in range(3)])
        starts = sorted(completed(stack, event_id)["output"]["started"] for event_id in ids)
        for i, started in enumerate(starts):
            slot = max(0, i - burst) * 1.0
            assert started - sent_at >= slot - EPS, f"start {i} came {started - sent_at:.3f}s after the send"
        assert len(stack.records(token, fn="flow-throttle", what="call")) == 3

    def test_debounce_runs_once_with_the_last_event(self, stack: Stack) -> None:
        token = new_token()
        ids: list[str] = []
        for n in range(3):
            last_sent_at = time.time()
            ids += stack.send({"name": "compat/flow-debounce", "data": {"token": token, "n": n}})
        run = completed(stack, ids[-1])
        assert run["event_id"] == ids[-1]
        assert run["output"]["n"] == 2 and run["output"]["event_id"] == ids[-1], run
        assert run["output"]["started"] - last_sent_at >= 1.0 - EPS
        assert [r["n"] for r in stack.records(token, fn="flow-debounce", what="call")] == [2]
        assert stack.runs_of(ids[0]) == [] and stack.runs_of(ids[1]) == []  # their events went to the one run

    def test_batch_events_one_run_per_batch(self, stack: Stack) -> None:
        token = new_token()
        sent_at = time.time()
        ids = stack.send(*[{"name": "compat/flow-batch", "data": {"token": token, "n": n}} for n in range(3)])
        full = completed(stack, ids[0])
        assert full["output"]["ns"] == [0, 1, 2], full
        assert full["output"]["started"] - sent_at < 1.9  # full: it did not wait for the 2 s timeout
        assert stack.runs_of(ids[1]) == [] and stack.runs_of(ids[2]) == []

        sent_at = time.time()
        [alone] = stack.send({"name": "compat/flow-batch", "data": {"token": token, "n": 3}})
        run = completed(stack, alone)
        assert run["output"]["ns"] == [3], run
        assert run["output"]["started"] - sent_at >= 2.0 - EPS  # one event: the run starts at the timeout
        assert [r["count"] for r in stack.records(token, fn="flow-batch", what="call")] == [3, 1]

    def test_singleton_skip_while_a_run_is_live(self, stack: Stack) -> None:
        token = new_token()
        [first] = stack.send({"name": "compat/flow-singleton", "data": {"token": token, "n": 0, "hold": "1s"}})
        stack.wait_records(token, fn="flow-singleton", step="started")
        [second] = stack.send({"name": "compat/flow-singleton", "data": {"token": token, "n": 1}})
        assert skipped(stack, second, "singleton")["idle_reason"]["run_id"] == stack.runs_of(first)[0]["run_id"]
        assert completed(stack, first)["output"] == {"n": 0}
        [third] = stack.send({"name": "compat/flow-singleton", "data": {"token": token, "n": 2, "hold": "1s"}})
        assert completed(stack, third)["output"] == {"n": 2}  # none live any more: it runs
        assert sorted({r["n"] for r in stack.records(token, fn="flow-singleton", what="call")}) == [0, 2]


class TestPythonFlowControl(FlowSuite):
    app = staticmethod(python_app)


def _node_flow_app() -> AppSpec:
    return node_app("flow_app.ts", "compat-node-flow")


class TestNodeFlowControl(FlowSuite):
    app = staticmethod(_node_flow_app)
