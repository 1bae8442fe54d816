"""One trace from a web request to a span inside an official-SDK app's step, through Stepline.

A real OTLP/HTTP receiver in this process (decoding with opentelemetry-proto) receives the spans of ``stepline dev``
(configured by OTEL_* variables only) and of an app on the PyPI ``inngest`` SDK instrumented with OpenTelemetry as
users do (tests/observability/traced_app.py). ``POST /signup`` on the app sends an event with the SDK's client; the
run it starts calls the app, whose step records a span. Every link is checked by ids, not by names alone:

    POST /signup (app, server)  ->  POST (app's httpx, client: the send)  ->  run traced-py-signup-flow (stepline)
      ->  step charge (stepline, client: the call that ran the step)  ->  POST /api/inngest (app, server)
      ->  charge card (app, the step's own span)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ..compat.harness import TERMINAL
from .harness import STEPLINE, free_port, process, python_app, wait_for
from .otlp_receiver import Span, running_receiver

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP span kinds


def _by_id(spans: list[Span]) -> dict[str, Span]:
    return {s.span_id: s for s in spans}


def _ancestors(span: Span, index: dict[str, Span]) -> list[Span]:
    out = []
    while span.parent_id and span.parent_id in index:
        span = index[span.parent_id]
        out.append(span)
    return out


def test_a_web_request_send_run_step_and_the_apps_span_share_one_trace(tmp_path: Path) -> None:
    server_port, app_port = free_port(), free_port()
    server_url, app_url = f"http://127.0.0.1:{server_port}", f"http://127.0.0.1:{app_port}"
    with running_receiver() as rx:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with (
            process("traced app", python_app("traced_app", app_port), tmp_path, f"{app_url}/healthz",
                    INNGEST_DEV=server_url, **otel),
            process("stepline dev", [*STEPLINE, "dev", "--host", "127.0.0.1", "--port", str(server_port), "--db",
                                     str(tmp_path / "s.db"), "--no-discovery", "-u", f"{app_url}/api/inngest"],
                    tmp_path, f"{server_url}/health", **otel) as server,
            httpx.Client(timeout=10.0) as http,
        ):  # fmt: skip

            def runs_of(event_id: str) -> list[dict]:
                return http.get(f"{server_url}/v1/events/{event_id}/runs").json()["data"] or []

            def synced() -> bool:
                [event_id] = http.post(f"{server_url}/e/test", json={"name": "compat/ping"}).json()["ids"]
                return _settle(lambda: bool(runs_of(event_id)))

            wait_for("the app to sync", synced, timeout=30.0)
            signup = http.post(f"{app_url}/signup", json={"user": "ada"}).json()
            trace_id = signup["trace_id"]
            [event_id] = signup["ids"]
            [run] = wait_for("the signup run", lambda: runs_of(event_id) or None)
            ended = wait_for("the run to end", lambda: r if (r := http.get(
                f"{server_url}/v1/runs/{run['run_id']}").json()["data"])["status"] in TERMINAL else None)  # fmt: skip
            assert ended["status"] == "Completed", ended
            http.post(f"{app_url}/flush")

            def tree(received: list[Span]) -> dict[str, Span] | None:
                spans = [s for s in received if s.trace_id == trace_id]
                names = {(s.service, s.name) for s in spans}
                wanted = {("stepline", "run traced-py-signup-flow"), ("stepline", "step charge"),
                          ("traced-app", "charge card")}  # fmt: skip
                return _by_id(spans) if wanted <= names else None

            index = rx.wait("the trace's spans from stepline and the app", tree)
            assert server.alive()

    def one(service: str, name: str, kind: int | None = None) -> Span:
        found = [s for s in index.values() if s.service == service and s.name == name
                 and (kind is None or s.kind == kind)]  # fmt: skip
        assert len(found) == 1, f"{service}:{name}: {found}"
        return found[0]

    web = one("traced-app", "POST /signup", SERVER)
    send = one("traced-app", "POST", CLIENT)  # httpx, instrumented: the SDK's send
    run_span = one("stepline", "run traced-py-signup-flow", CONSUMER)
    step = one("stepline", "step charge", CLIENT)
    charge = one("traced-app", "charge card")
    above_send = [s.span_id for s in _ancestors(send, index)]
    assert web.span_id in above_send  # (FastAPI's own endpoint span sits between them)
    assert run_span.parent_id == send.span_id
    assert step.parent_id == run_span.span_id
    # The app's request span for the call is under the step's span (the call carried traceparent), and the span the
    # step's code recorded is under that request.
    chain = _ancestors(charge, index)
    call = next(s for s in chain if s.service == "traced-app" and s.kind == SERVER)
    assert call.parent_id == step.span_id and call.name.startswith("POST /api/inngest")
    assert [s.span_id for s in chain[chain.index(call) + 1 :]] == [step.span_id, run_span.span_id, send.span_id,
                                                                    *above_send]  # fmt: skip
    # What the spans say.
    assert run_span.attributes["stepline.function.id"] == "traced-py-signup-flow"
    assert run_span.attributes["stepline.run.id"] == run["run_id"]
    assert run_span.attributes["stepline.run.status"] == "completed"
    assert run_span.attributes["stepline.event.name"] == "obs/signup"
    assert step.attributes["stepline.step.id"] == "charge"
    assert step.attributes["stepline.run.id"] == run["run_id"]
    assert step.start_ns >= run_span.start_ns and step.end_ns <= run_span.end_ns
    assert charge.attributes["user"] == "ada"


def _settle(probe: Callable[[], bool]) -> bool:
    """Whether ``probe`` turns true within a second."""
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        if probe():
            return True
        time.sleep(0.05)
    return False
