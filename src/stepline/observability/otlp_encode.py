"""A faster OTLP/protobuf encoder for finished spans (the bytes of an ``ExportTraceServiceRequest``).

The OTLP exporter's own encoder builds a protobuf message object per span, attribute and value before serializing
them: about 30 µs a span, most of the cost of tracing a run (``bench/README.md``). This one writes the protobuf wire
format directly from the SDK's ``ReadableSpan`` (about a quarter of that): the same message, field for field
(``tests/observability/test_otlp_encode.py`` decodes both and compares them), spans grouped by resource and
instrumentation scope as the SDK does. ``install`` makes the OTLP/HTTP span exporter use it; a batch it cannot encode
goes to the SDK's encoder.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("stepline.tracing")

_F64 = struct.Struct("<Q").pack
_F32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_LOW64 = (1 << 64) - 1


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (``tag`` is the field number shifted left by 3, or 2)."""
    n = len(payload)
    return (bytes((tag, n)) if n < 0x80 else bytes((tag,)) + _varint(n)) + payload


def _string(tag: int, value: str) -> bytes:
    return _len(tag, value.encode("utf-8")) if value else b""


def _value(value: Any) -> bytes:
    """An ``AnyValue``, as the SDK's encoder chooses its kind."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _len(0x0A, value.encode("utf-8"))
    if isinstance(value, int):
        return b"\x18" + _varint(value & _LOW64)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _len(0x3A, value)
    if isinstance(value, Sequence):
        return _len(0x2A, b"".join(_len(0x0A, _value(v)) for v in value))
    if isinstance(value, Mapping):
        return _len(0x32, b"".join(_len(0x0A, _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _string(0x0A, key) + _len(0x12, _value(value))


_KEYS: dict[str, bytes] = {}  # attribute key -> its encoded KeyValue.key field (keys repeat from span to span)


def _attributes(tag: int, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    out = []
    keys = _KEYS
    for k, v in attributes.items():
        key = keys.get(k)
        if key is None:
            if len(keys) > 10_000:
                keys.clear()
            key = keys[k] = _string(0x0A, k)
        if type(v) is str:  # the common case, inline: KeyValue{key, value: AnyValue{string_value}}
            raw = v.encode("utf-8")
            n = len(raw)
            value = (bytes((0x0A, n)) if n < 0x80 else b"\x0a" + _varint(n)) + raw
        else:
            value = _value(v)
        n = len(value)
        kv = key + (bytes((0x12, n)) if n < 0x80 else b"\x12" + _varint(n)) + value
        n = len(kv)
        out.append((bytes((tag, n)) if n < 0x80 else bytes((tag,)) + _varint(n)) + kv)
    return b"".join(out)


def _uint(tag: int, n: int) -> bytes:
    return bytes((tag,)) + _varint(n) if n else b""


def _span(span: Any) -> bytes:
    ctx = span.get_span_context()
    parent = span.parent
    out = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08", ctx.span_id.to_bytes(8, "big")]
    state = ctx.trace_state
    if state:
        out.append(_string(0x1A, ",".join(f"{k}={v}" for k, v in state.items())))
    if parent is not None:
        out += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    out += (_string(0x2A, span.name), _uint(0x30, span.kind.value + 1))
    if span.start_time:
        out += (b"\x39", _F64(span.start_time))
    if span.end_time:
        out += (b"\x41", _F64(span.end_time))
    out += (_attributes(0x4A, span.attributes), _uint(0x50, span.dropped_attributes))
    for e in span.events:
        event = b"\x09" + _F64(e.timestamp) if e.timestamp else b""
        event += _string(0x12, e.name) + _attributes(0x1A, e.attributes) + _uint(0x20, e.dropped_attributes)
        out.append(_len(0x5A, event))
    out.append(_uint(0x60, span.dropped_events))
    for link in span.links:
        lc = link.context
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if lc.is_remote else 0)
        out.append(_len(0x6A, b"\x0a\x10" + lc.trace_id.to_bytes(16, "big") + b"\x12\x08"
                        + lc.span_id.to_bytes(8, "big") + _attributes(0x22, link.attributes)
                        + _uint(0x28, link.dropped_attributes) + b"\x35" + _F32(flags)))  # fmt: skip
    out.append(_uint(0x70, span.dropped_links))
    status = span.status
    if status is not None:
        out.append(_len(0x7A, _string(0x12, status.description or "") + _uint(0x18, status.status_code.value)))
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    out += (b"\x85\x01", _F32(flags))
    return b"".join(out)


def encode_request(spans: Sequence[Any]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of finished SDK spans."""
    # Grouped by identity first (a Resource hashes by serializing its attributes to JSON), then by equality as the
    # SDK groups them.
    by_id: dict[tuple[int, int], list[Any]] = {}
    for span in spans:
        by_id.setdefault((id(span.resource), id(span.instrumentation_scope)), []).append(span)
    groups: dict[Any, dict[Any, list[bytes]]] = {}
    for same in by_id.values():
        first = same[0]
        scopes = groups.setdefault(first.resource, {})
        scopes.setdefault(first.instrumentation_scope or None, []).extend(_len(0x12, _span(s)) for s in same)
    out = []
    for resource, scopes in groups.items():
        body = [_len(0x0A, _attributes(0x0A, resource.attributes))]
        for scope, encoded in scopes.items():
            head = b""
            if scope is not None:
                head = _string(0x0A, scope.name) + _string(0x12, scope.version or "")
                head += _attributes(0x1A, scope.attributes)
            scope_spans = _len(0x0A, head) + b"".join(encoded)
            if scope is not None and scope.schema_url:
                scope_spans += _string(0x1A, scope.schema_url)
            body.append(_len(0x12, scope_spans))
        if resource.schema_url:
            body.append(_string(0x1A, resource.schema_url))
        out.append(_len(0x0A, b"".join(body)))
    return b"".join(out)


class _Encoded:
    """What the exporter expects from ``encode_spans``: a message it serializes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializePartialToString(self) -> bytes:
        return self.data

    SerializeToString = SerializePartialToString


def install() -> bool:
    """Make the OTLP/HTTP span exporter encode with ``encode_request`` (once; a batch that fails here falls back to
    the SDK's encoder). False if the exporter module is not the one this was written against."""
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    sdk_encode = getattr(trace_exporter, "encode_spans", None)
    if sdk_encode is None or getattr(sdk_encode, "_stepline", False):
        return sdk_encode is not None

    def encode_spans(spans: Sequence[Any]) -> Any:
        try:
            return _Encoded(encode_request(spans))
        except Exception as exc:  # a value the SDK knows how to skip, say: let it encode this batch
            log.debug("fast OTLP encoding failed (%s); the SDK's encoder takes this batch", exc)
            return sdk_encode(spans)

    encode_spans._stepline = True  # type: ignore[attr-defined]
    setattr(trace_exporter, "encode_spans", encode_spans)  # noqa: B010 (the module does not export the name)
    return True
