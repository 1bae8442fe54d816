"""Userland traces: ``POST /v1/traces/userland`` (the npm SDK's extended traces; the REST API serves them back at
``GET /v1/runs/{id}/traces``).

An SDK app that records OpenTelemetry spans inside its functions sends them here over OTLP/HTTP, JSON or protobuf
(``Content-Type``), optionally gzip-compressed, with ``Authorization: Bearer`` the hashed signing key (required in
``start``, as for every SDK call). Each span names its run (``sdk.run.id``); it is stored with that run
(``Store.save_run_spans``, at most ``RUN_SPAN_LIMIT`` per run, pruned with it) so the dashboard and the REST API
show it. Spans that name no run, or a run that does not exist or is full, are refused and counted in the answer's
``partialSuccess.rejectedSpans``, as OTLP says.

Bad input: a body over ``USERLAND_TRACE_LIMIT`` (8 MiB, as Inngest's; also after decompression) gets 413; a body
that is not an OTLP trace request, or a compression Stepline cannot read, gets 400 with the reason.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from stepline import observability
from stepline.observability import otlp
from stepline.protocol.signing import bearer_matches
from stepline.server.bodies import BodyTimeout, BodyTooLarge, read_body
from stepline.server.state import ServerState, state_of

USERLAND_TRACE_LIMIT = 8 * 1024 * 1024


def _refused(st: ServerState, request: Request) -> Response | None:
    if st.config.kind == "cloud" and not bearer_matches(request.headers.get("authorization"), st.config.signing_keys):
        return JSONResponse({"error": "send Authorization: Bearer <signing key> (raw or hashed, as the SDKs do)"},
                            status_code=401)  # fmt: skip
    return None


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge(limit)
    return out


async def userland_traces(request: Request) -> Response:
    st = state_of(request)
    refused = _refused(st, request)
    if refused is not None:
        return refused
    content_type = request.headers.get("content-type")
    as_json = otlp.is_json(content_type)
    try:
        body = await read_body(request, USERLAND_TRACE_LIMIT)
        encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
        if encoding == "gzip":
            body = _gunzip(body, USERLAND_TRACE_LIMIT)
        elif encoding not in ("identity", ""):
            return JSONResponse({"error": f"Content-Encoding {encoding!r} is not supported (gzip or none)"},
                                status_code=400)  # fmt: skip
        decoded = otlp.decode(body, content_type)
    except BodyTooLarge as exc:
        return JSONResponse({"error": f"{exc} (the limit for userland traces)"}, status_code=413)
    except BodyTimeout as exc:
        return JSONResponse({"error": str(exc)}, status_code=408)
    except zlib.error as exc:
        return JSONResponse({"error": f"the body is not valid gzip: {exc}"}, status_code=400)
    except otlp.InvalidTraces as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    stored = await st.engine.store.save_run_spans(decoded.by_run, st.engine.clock.now_ms()) if decoded.by_run else {}
    kept = sum(stored.values())
    rejected = decoded.without_run + sum(len(spans) for spans in decoded.by_run.values()) - kept
    if (metrics := observability.current_metrics()) is not None:
        metrics.userland(kept, rejected)
    reasons = []
    if decoded.without_run:
        reasons.append(f"{decoded.without_run} spans name no run (attribute sdk.run.id)")
    if rejected - decoded.without_run:
        reasons.append(f"{rejected - decoded.without_run} spans belong to unknown runs or runs at their span limit")
    payload, response_type = otlp.encode_response(rejected, "; ".join(reasons), as_json)
    return Response(payload, headers={"Content-Type": response_type})


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/traces/userland", userland_traces, methods=["POST"]),
    ]
