"""OTLP trace requests (``ExportTraceServiceRequest``) in and out: JSON or protobuf, with opentelemetry-proto.

``decode`` turns a request body into spans as OTLP JSON dictionaries (ids in hex, as the OTLP/JSON encoding has
them), each with its resource's attributes and its scope, grouped by the run they belong to (the span attribute
``sdk.run.id`` that the npm SDK sets, or ``stepline.run.id``). ``encode_response`` answers in the request's encoding.

OTLP/JSON is protobuf's JSON mapping except that trace and span ids are hex strings instead of base64: they are
turned into base64 before protobuf's parser reads them, and back into hex after.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

RUN_ID_ATTRIBUTES = ("sdk.run.id", "stepline.run.id")
_ID_KEYS = ("traceId", "spanId", "parentSpanId")


class InvalidTraces(ValueError):
    """The body is not an OTLP trace request; the message says why."""


@dataclass
class Decoded:
    by_run: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    without_run: int = 0  # spans that name no run: rejected


def is_json(content_type: str | None) -> bool:
    return "json" in (content_type or "").lower()


def _hex_to_b64(value: Any, where: str) -> Any:
    if not isinstance(value, str) or value == "":
        return value
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError:
        raise InvalidTraces(f"{where} is not hex: {value[:40]!r}") from None


def _b64_to_hex(value: Any) -> Any:
    if not isinstance(value, str) or value == "":
        return value
    try:
        return base64.b64decode(value).hex()
    except (binascii.Error, ValueError):
        return value


def _ids(span: dict[str, Any], convert: Any, where: str) -> None:
    for key in _ID_KEYS:
        if key in span:
            span[key] = convert(span[key], f"{where}.{key}") if convert is _hex_to_b64 else convert(span[key])
    for i, link in enumerate(span.get("links") or []):
        if isinstance(link, dict):
            for key in ("traceId", "spanId"):
                if key in link:
                    link[key] = (convert(link[key], f"{where}.links[{i}].{key}") if convert is _hex_to_b64
                                 else convert(link[key]))  # fmt: skip


def _parse(body: bytes, content_type: str | None) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if is_json(content_type):
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidTraces(f"the body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidTraces("the body is not an OTLP ExportTraceServiceRequest (a JSON object)")
        for r, rs in enumerate(doc.get("resourceSpans") or []):
            for s, ss in enumerate((rs or {}).get("scopeSpans") or [] if isinstance(rs, dict) else []):
                for n, span in enumerate((ss or {}).get("spans") or [] if isinstance(ss, dict) else []):
                    if isinstance(span, dict):
                        _ids(span, _hex_to_b64, f"resourceSpans[{r}].scopeSpans[{s}].spans[{n}]")
        try:
            json_format.ParseDict(doc, request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise InvalidTraces(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
        return request
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise InvalidTraces(f"the body is not an OTLP ExportTraceServiceRequest (protobuf): {exc}") from None
    return request


def _attribute(attributes: Any, names: tuple[str, ...]) -> str | None:
    for kv in attributes:
        if kv.key in names and kv.value.HasField("string_value") and kv.value.string_value:
            return str(kv.value.string_value)
    return None


def decode(body: bytes, content_type: str | None) -> Decoded:
    """The spans of a request, by run id. Raises ``InvalidTraces``."""
    request = _parse(body, content_type)
    out = Decoded()
    for rs in request.resource_spans:
        resource = json_format.MessageToDict(rs.resource).get("attributes", [])
        for ss in rs.scope_spans:
            scope = json_format.MessageToDict(ss.scope)
            for span in ss.spans:
                run_id = _attribute(span.attributes, RUN_ID_ATTRIBUTES)
                if run_id is None:
                    out.without_run += 1
                    continue
                doc = json_format.MessageToDict(span)
                _ids(doc, _b64_to_hex, "")
                doc["resource"] = {"attributes": resource}
                doc["scope"] = scope
                out.by_run.setdefault(run_id, []).append(doc)
    return out


def encode_response(rejected: int, message: str, as_json: bool) -> tuple[bytes, str]:
    """An ``ExportTraceServiceResponse`` (with ``partialSuccess`` when spans were rejected), and its content type."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.CopyFrom(ExportTracePartialSuccess(rejected_spans=rejected, error_message=message))
    if as_json:
        return json.dumps(json_format.MessageToDict(response)).encode(), "application/json"
    return response.SerializeToString(), "application/x-protobuf"
