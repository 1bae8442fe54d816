"""Stepline's OTLP/protobuf encoder writes the same ``ExportTraceServiceRequest`` as the SDK's, field for field, for
spans of every shape (Stepline's own and a function's, with every attribute type, events, links, trace state,
several resources and scopes); and the OTLP/HTTP exporter sends it once installed."""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from stepline.observability.otlp_encode import encode_request

SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def ctx(trace_id: int, span_id: int, remote: bool = False, state: TraceState | None = None) -> SpanContext:
    return SpanContext(trace_id, span_id, remote, SAMPLED, state)


def spans() -> list[ReadableSpan]:
    r1 = Resource.create({"service.name": "stepline", "n": 3})
    r2 = Resource({"service.name": "app", "ratio": 0.25}, schema_url="https://opentelemetry.io/schemas/1.21.0")
    s1 = InstrumentationScope("stepline", "1.2.3")
    s2 = InstrumentationScope("user", None, "https://example.com/schema", {"lib": "x", "on": True})
    attrs: dict[str, Any] = {"s": "é ü", "empty": "", "t": True, "f": False, "zero": 0, "neg": -5, "big": 2**62,
                             "d": 1.5, "strs": ["a", ""], "ints": [1, -2], "bools": [True], "floats": [0.5],
                             "long": "x" * 300}  # fmt: skip
    error = (Event("exception", {"exception.type": "ValueError", "exception.message": "bad"}, timestamp=5_000),)
    return [
        ReadableSpan("run app-f", ctx(0xABC, 0x1), None, r1, {"stepline.run.id": "01H"}, (), (), SpanKind.CONSUMER,
                     None, Status(StatusCode.UNSET), 1_000, 9_000, s1),
        ReadableSpan("step a", ctx(0xABC, 0x2), ctx(0xABC, 0x1, remote=True), r1, attrs, error, (),
                     SpanKind.INTERNAL, None, Status(StatusCode.ERROR, "ValueError: bad"), 2_000, 5_000, s1),
        ReadableSpan("user work", ctx(2**127 + 1, 2**63 + 7, state=TraceState([("k", "v"), ("a", "b")])),
                     ctx(2**127 + 1, 0x99), r2, {"x": 1},
                     (Event("note", None, timestamp=3_000),),
                     (Link(ctx(0x5, 0x6, remote=True), {"why": "batch"}), Link(ctx(0x7, 0x8))),
                     SpanKind.CLIENT, None, Status(StatusCode.OK), 2_500, 2_600, s2),
        ReadableSpan("no scope", ctx(0xABC, 0x3), None, r1, {}, (), (), SpanKind.PRODUCER, None,
                     Status(StatusCode.UNSET), 0, 0, None),
    ]  # fmt: skip


def test_the_same_message_as_the_sdk_encoder() -> None:
    batch = spans()
    ours = ExportTraceServiceRequest.FromString(encode_request(batch))
    theirs = encode_spans(batch)
    assert ours == theirs
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    assert [len(rs.scope_spans) for rs in ours.resource_spans] == [2, 1]


def test_the_exporter_sends_our_encoding(monkeypatch: Any) -> None:
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    from stepline.observability import otlp_encode

    exporting: Any = trace_exporter  # (its encode_spans is imported, not exported)
    monkeypatch.setattr(exporting, "encode_spans", exporting.encode_spans)  # restored after the test
    assert otlp_encode.install() and otlp_encode.install()  # idempotent
    batch = spans()
    encoded = exporting.encode_spans(batch)
    assert encoded.SerializePartialToString() == encode_request(batch)
    # a value the fast encoder does not know: the SDK's encoder takes the batch (and logs and skips the value)
    odd = [ReadableSpan("odd", ctx(1, 2), None, Resource({}), {"o": object()}, (), (), SpanKind.INTERNAL, None,  # type: ignore[dict-item]
                        Status(StatusCode.UNSET), 1, 2, None)]  # fmt: skip
    assert ExportTraceServiceRequest.FromString(exporting.encode_spans(odd).SerializePartialToString()) == (
        encode_spans(odd)
    )
