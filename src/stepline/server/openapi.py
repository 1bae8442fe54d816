"""The REST API's shapes as pydantic models, and the OpenAPI 3.1 document built from them.

``rest_api`` builds every response from these models, and the document's schemas are generated from the same
models, so the two cannot drift. ``rest_api.ENDPOINTS`` describes each operation (path, parameters, bodies,
responses); ``openapi_document`` turns that table into the document served at ``GET /openapi.json``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

T = TypeVar("T")
RunStatus = Literal["Queued", "Running", "Completed", "Failed", "Cancelled", "Skipped"]
REF = "#/components/schemas/{model}"


class Out(BaseModel):
    """A response shape: every field is always present (null when empty), nothing else is."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class Metadata(Out):
    fetched_at: str = Field(description="When the server read the data (RFC 3339)")
    cached_until: None = Field(None, description="Always null: responses are not cached")


class Envelope(Out, Generic[T]):
    data: T
    metadata: Metadata


class Page(Out, Generic[T]):
    data: list[T]
    metadata: Metadata
    cursor: str | None = Field(description="Pass as ?cursor= to get the next page; null on the last page")


class ErrorOut(Out):
    error: str = Field(description="What went wrong, in words")
    status: int = Field(description="The HTTP status code, repeated")


class EventOut(Out):
    internal_id: str = Field(description="The id Stepline gave the event (ULID)")
    id: str = Field(description="The sender's id (idempotency key); the internal id when none was given")
    name: str
    data: dict[str, Any]
    user: dict[str, Any]
    ts: int = Field(description="The event's timestamp (unix ms)")
    v: str | None = Field(None, description="The event's schema version")
    received_at: str = Field(description="When the server stored the event (RFC 3339)")
    received_at_ms: int


class RunOut(Out):
    run_id: str
    function_id: str = Field(description='The composite id "<app_id>-<slug>"')
    app_id: str | None = Field(description="The app that defines the function (null if no longer known)")
    event_id: str = Field(description="Internal id of the triggering event")
    batch: list[str] | None = Field(description="Internal ids of every event of a batched run")
    status: RunStatus
    output: Any = Field(description="The function's return value (completed runs)")
    error: dict[str, Any] | None = Field(description="Why the run failed or was cancelled, or the last error")
    attempt: int = Field(description="Function-level attempt, from 0")
    idle_reason: dict[str, Any] | None = Field(
        description="Why a live run is waiting (sleeping, waiting for an event, retrying, invoking, queued "
        "as a rerun); null while it executes and once it ended"
    )
    parent_run_id: str | None = Field(description="The run that invoked this one (step.invoke)")
    created_at: str
    created_at_ms: int
    started_at: str | None
    started_at_ms: int | None
    ended_at: str | None
    ended_at_ms: int | None


class RunDetailOut(RunOut):
    event: EventOut | None = Field(description="The triggering event (null if it was pruned)")


class StepOut(Out):
    id: str = Field(description="The hashed step id (sha1 of name), as rerun's from_step takes it")
    name: str = Field(description='The step id the code gave, "x" or "x:N" for repeats')
    kind: str = Field(description="run | sleep | wait_for_event | wait_for_signal | invoke | send_event | fetch | ai")
    status: str = Field(description="completed | failed | retrying | sleeping | waiting | invoking")
    attempts: int
    output: Any
    error: dict[str, Any] | None
    started_at: str
    ended_at: str | None
    duration_ms: int | None
    wake_at: str | None = Field(description="Pending steps: when the retry, sleep end or wait timeout is due")


class LogLineOut(Out):
    seq: int = Field(description="Position in the run's log, from 1")
    ts: str = Field(description="When it was logged (RFC 3339)")
    ts_ms: int
    level: str = Field(description="DEBUG | INFO | WARNING | ERROR | CRITICAL")
    logger: str = Field(description="The logger's name (ctx.logger: stepline.fn.<slug>)")
    message: str = Field(description="The formatted message, with any traceback")
    step_id: str | None = Field(description="The hashed id of the step whose code logged it; null: the function body")
    step: str | None = Field(description="That step's name, as in the steps list")


class RunLogsOut(Out):
    captured: bool = Field(
        description="False for runs of HTTP functions (apps on the SDKs): their logs stay in the app's process"
    )
    lines: list[LogLineOut] = Field(
        description="In order; at most 1,000 per run, then one line counting the records dropped"
    )


class ExpressionErrorOut(Out):
    place: str = Field(description="Where the expression sits: 'trigger ... if', 'idempotency', 'concurrency key', ...")
    expression: str
    message: str = Field(description="The last failure")
    count: int = Field(description="How many evaluations failed")
    first_at: str
    last_at: str


class FunctionOut(Out):
    id: str
    app_id: str
    slug: str
    name: str
    config: dict[str, Any] = Field(description="Triggers, retries, cancellation, timeouts, ... as registered")
    problems: list[str] = Field(default_factory=list, description="Stored expressions that no longer compile or "
                                "pass the limits: never evaluated (docs/security.md)")  # fmt: skip
    expression_errors: list[ExpressionErrorOut] = Field(
        default_factory=list, description="Expressions that failed while events were routed: a trigger's if (no run "
        "started), a key (the run failed), a batch if (the run went alone)")  # fmt: skip


class AppOut(Out):
    app_id: str | None = Field(description="The app's id from its last register (null until one succeeded)")
    url: str | None = Field(description="The serve URL the server syncs; null for apps whose workers register "
                            "their functions directly (in-process)")  # fmt: skip
    sdk: str | None
    framework: str | None
    app_version: str | None
    checksum: str | None
    synced_at: str | None
    error: str | None = Field(description="The last sync error; null after a successful sync")
    function_count: int
    problems: list[str] = Field(default_factory=list, description="Problems of its functions' stored expressions "
                                "(see the functions)")  # fmt: skip
    created_at: str | None
    updated_at: str | None


class CancellationOut(Out):
    id: str
    app_id: str
    function_id: str = Field(description='The composite id "<app_id>-<slug>"')
    started_after: str | None
    started_before: str
    if_: str | None = Field(alias="if")
    cancelled: int = Field(description="How many live runs this cancelled")
    created_at: str

    model_config = ConfigDict(populate_by_name=True)


class RerunOut(Out):
    run_id: str = Field(description="The new run's id")


class SignalOut(Out):
    run_id: str = Field(description="The run the signal resumed")


class OpenApiDocument(BaseModel):
    """This document (OpenAPI 3.1)."""

    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=True)

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


MIN_TIME_MS = -62_167_219_200_000  # 0000-01-01T00:00:00Z
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
TimeIn = (
    Annotated[str, WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"},
                                             {"type": "string", "pattern": "^[0-9]{1,15}$"}]})]
    | Annotated[int, Field(ge=MIN_TIME_MS, le=MAX_TIME_MS, strict=True)]
)  # fmt: skip


class CancellationIn(BaseModel):
    """Cancel the live runs of one function created between started_after and started_before (inclusive).
    ``if`` must be a CEL expression within Stepline's limits, and started_after not later than started_before:
    a body that breaks either is a 400 (JSON Schema cannot say them)."""

    app_id: str = Field(min_length=1)
    function_id: str = Field(min_length=1, description='The function\'s slug or its composite id "<app>-<slug>"')
    started_after: TimeIn | None = Field(None, description="RFC 3339 with an offset, or unix ms")
    started_before: TimeIn = Field(description="RFC 3339 with an offset, or unix ms")
    if_: str | None = Field(None, alias="if", description="CEL over `event` (the run's trigger event)")

    model_config = ConfigDict(populate_by_name=True)


class RerunIn(BaseModel):
    from_step: str | None = Field(None, min_length=1,
                                  description="Hashed id of a step of the original run to resume from")  # fmt: skip


class SignalIn(BaseModel):
    """Resume the run waiting for a signal (``step.waitForSignal``, ``ctx.step.wait_for_signal``)."""

    signal: str = Field(min_length=1, description="The signal's name, as the waiting step gave it")
    data: Any = Field(None, description="Any JSON: the step returns {signal, data}")


# Response envelopes, one named schema each.
class EventResponse(Envelope[EventOut]): ...


class EventPage(Page[EventOut]): ...


class RunResponse(Envelope[RunDetailOut]): ...


class RunPage(Page[RunOut]): ...


class RunList(Envelope[list[RunOut]]): ...


class StepList(Envelope[list[StepOut]]): ...


class RunLogsResponse(Envelope[RunLogsOut]): ...


class FunctionList(Envelope[list[FunctionOut]]): ...


class AppList(Envelope[list[AppOut]]): ...


class CancellationResponse(Envelope[CancellationOut]): ...


class CancellationList(Envelope[list[CancellationOut]]): ...


class RerunResponse(Envelope[RerunOut]): ...


class SignalResponse(Envelope[SignalOut]): ...


# --- the operation table ------------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query"]
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    method: Literal["GET", "POST", "DELETE"]
    path: str
    handler: Handler
    summary: str
    ok: type[BaseModel] | None  # the success body; None for 204 No Content
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    ok_status: int = 200
    tag: str = "runs"


def openapi_document(endpoints: Sequence[Endpoint], *, title: str = "Stepline REST API") -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``endpoints`` (every endpoint also answers 401 in cloud mode)."""
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [(ErrorOut, "serialization")]
    for ep in endpoints:
        if ep.ok is not None:
            models.append((ep.ok, "serialization"))
        if ep.body is not None:
            models.append((ep.body, "validation"))
    keys, defs = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        responses: dict[str, Any] = {}
        if ep.ok is None:
            responses[str(ep.ok_status)] = {"description": "Done"}
        else:
            responses[str(ep.ok_status)] = _json("OK", keys[(ep.ok, "serialization")])
        # Every request can be refused as bad (a NUL in its path or query, say) and, with a body, as too large (413)
        # or too slow to arrive (408).
        for status in sorted({*ep.errors, 400, 401, *((408, 413) if ep.body is not None else ())}):
            responses[str(status)] = _json(_STATUS_TEXT[status], keys[(ErrorOut, "serialization")])
        op: dict[str, Any] = {
            "operationId": f"{ep.method.lower()}{ep.path.replace('/', '_').replace('{', '').replace('}', '')}",
            "summary": ep.summary,
            "tags": [ep.tag],
            "parameters": [_parameter(p) for p in ep.params],
            "responses": responses,
        }
        if ep.body is not None:
            op["requestBody"] = {
                "required": ep.body_required,
                "content": {"application/json": {"schema": keys[(ep.body, "validation")]}},
            }
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1",
            "description": "Events, runs, steps, cancellations, reruns, functions and apps of a Stepline server, "
            "in the shape of Inngest's REST API: responses are {data, metadata}, errors {error, status}. "
            "In cloud mode (stepline start) every request needs `Authorization: Bearer <signing key or its "
            "sha256 form>`.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"signingKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"signingKey": []}, {}],
    }


_STATUS_TEXT = {
    400: "Bad request",
    408: "The request body did not arrive in time",
    413: "The request body is larger than the limit",
    401: "Missing or wrong signing key (cloud mode)",
    404: "Not found",
    409: "Conflict with the run's state",
    429: "Too many waiting requests on this node: retry after the Retry-After header's seconds",
}


# The server refuses a NUL anywhere in a path or query string (400): the document says so for every free-form
# string parameter, so a client (or a conformance run) generating "any string" stays inside what is accepted.
_NO_NUL = "^[^\\u0000]*$"


def _parameter(p: Param) -> dict[str, Any]:
    required = p.required or p.where == "path"
    schema = p.schema
    if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema and "format" not in schema:
        schema = {**schema, "pattern": _NO_NUL}
    return {"name": p.name, "in": p.where, "required": required, "description": p.description, "schema": schema}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
