"""The npm SDK's extended traces end to end: the official ``inngest`` 4.24.0 app (``extendedTracesMiddleware`` from
``inngest/experimental``, unmodified) records spans inside a step and exports them to ``POST /v1/traces/userland``
(OTLP/HTTP, with the hashed signing key as bearer in signed mode); the server keeps them with the run, serves them at
``GET /v1/runs/{id}/traces`` and shows them on the run's dashboard page. Both modes (``stepline dev`` and
``stepline start``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from stepline.observability.tracing import run_trace_id

from ..compat.harness import MODES, Stack, node_app, running_stack


@pytest.fixture(scope="module", params=MODES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    spec = node_app("traces_app.js", "traces-node")
    with running_stack(spec, request.param, tmp_path_factory.mktemp(f"traces-{request.param}")) as s:
        yield s


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", [])}


def test_spans_made_inside_a_step_are_kept_with_the_run_and_shown(stack: Stack) -> None:
    token = uuid.uuid4().hex
    _, run = stack.trigger("traces/run", {"token": token})
    assert run["status"] == "Completed", run
    run_id = run["run_id"]
    spans: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the SDK flushes its batch at the end of each request
        spans = stack.rest(f"/v1/runs/{run_id}/traces")
        if {"load-rows-query", "parse-rows"} <= {s["name"] for s in spans}:
            break
        time.sleep(0.2)
    by_name = {s["name"]: s for s in spans}
    assert {"load-rows-query", "parse-rows"} <= set(by_name), f"spans: {spans}\n{stack.diagnostics()}"
    query, parse = by_name["load-rows-query"], by_name["parse-rows"]
    assert parse["parentSpanId"] == query["spanId"] and parse["traceId"] == query["traceId"]
    assert attrs(query)["sdk.run.id"] == run_id and attrs(query)["rows.requested"] == "3"
    assert attrs(parse)["rows.parsed"] == "3" and attrs(query)["inngest.step.id"] == "load-rows"
    assert query["scope"]["name"] == "inngest"
    # tied to the run's trace: the server's calls carry its traceparent even with no exporter configured, as
    # Inngest's do (the SDK records an app's spans only under one, and names it in inngest.traceparent)
    assert attrs(query)["inngest.traceparent"].split("-")[1] == f"{run_trace_id(run_id):032x}"
    if stack.mode != "dev":
        return  # the dashboard of `stepline start` needs a login (tests/dashboard); the page is the same
    # The run's page lists them with their own attributes (the SDK's bookkeeping ones left out).
    page = stack.http.get(f"{stack.server_url}/dashboard/runs/{run_id}")
    assert page.status_code == 200
    assert 'id="run-spans"' in page.text and "load-rows-query" in page.text and "rows.parsed" in page.text
    assert "sdk.run.id" not in page.text.split('id="run-spans"', 1)[1].split("</table>", 1)[0]
