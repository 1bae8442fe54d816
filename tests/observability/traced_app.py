"""An app on the official PyPI ``inngest`` SDK, instrumented with OpenTelemetry as a user would instrument one
(``uvicorn traced_app:app --app-dir tests/observability``), for Stepline's tracing tests.

- The OpenTelemetry SDK exports its spans over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the test's receiver).
- ``OpenTelemetryMiddleware`` (opentelemetry-instrumentation-asgi) makes a server span for every request, under the
  ``traceparent`` the request carries: Stepline's calls to /api/inngest carry one.
- ``HTTPXClientInstrumentor`` puts ``traceparent`` on every request of httpx, the SDK's HTTP client: the event that
  ``POST /signup`` sends through ``client.send`` carries the web request's trace.
- The step ``charge`` of ``signup-flow`` records a span of its own (``charge card``); ``always-fails`` fails its
  only step (``ZeroDivisionError``, no retries).

Env: the SDK's (``INNGEST_DEV``, or ``INNGEST_BASE_URL`` with keys), ``OBS_APP_ID`` (default ``traced-py``), and the
OpenTelemetry SDK's (without ``OTEL_EXPORTER_OTLP_ENDPOINT`` the app records spans but exports none).
"""

from __future__ import annotations

import os
from typing import Any

import fastapi
import inngest
import inngest.fast_api
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "traced-app"}))
if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
HTTPXClientInstrumentor().instrument()
tracer = trace.get_tracer("traced-app")

client = inngest.Inngest(app_id=os.environ.get("OBS_APP_ID", "traced-py"))


@client.create_function(fn_id="ping", trigger=inngest.TriggerEvent(event="compat/ping"))
async def ping(ctx: inngest.Context) -> str:
    return "pong"


@client.create_function(fn_id="always-fails", retries=0, trigger=inngest.TriggerEvent(event="obs/fail"))
async def always_fails(ctx: inngest.Context) -> float:
    return await ctx.step.run("divide", lambda: 1 / 0)


@client.create_function(fn_id="signup-flow", trigger=inngest.TriggerEvent(event="obs/signup"))
async def signup_flow(ctx: inngest.Context) -> dict[str, Any]:
    def charge() -> str:
        with tracer.start_as_current_span("charge card") as span:
            span.set_attribute("user", str(ctx.event.data.get("user")))
            return "charged"

    charged = await ctx.step.run("charge", charge)
    return {"charged": charged}


fastapi_app = fastapi.FastAPI()


@fastapi_app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@fastapi_app.post("/signup")
async def signup(body: dict[str, Any]) -> dict[str, Any]:
    """A web request that sends an event with the SDK (its trace travels with it)."""
    ids = await client.send(inngest.Event(name="obs/signup", data={"user": body.get("user")}))
    return {"ids": ids, "trace_id": format(trace.get_current_span().get_span_context().trace_id, "032x")}


@fastapi_app.post("/flush")
async def flush() -> dict[str, bool]:
    return {"flushed": provider.force_flush(5000)}


inngest.fast_api.serve(fastapi_app, client, [ping, signup_flow, always_fails])
app = OpenTelemetryMiddleware(fastapi_app)
