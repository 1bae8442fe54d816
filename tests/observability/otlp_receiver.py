"""A real OTLP/HTTP trace receiver for the tests: ``POST /v1/traces`` (protobuf or JSON, optionally gzip), decoded
with opentelemetry-proto; the spans it received are kept in memory, flattened."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    start_ns: int
    end_ns: int
    events: tuple[str, ...]


@dataclass
class Receiver:
    port: int = 0
    spans: list[Span] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for rs in request.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = json_format.MessageToDict(s).get("attributes", [])
                    flat = {a["key"]: next(iter(a["value"].values()), None) for a in attrs}
                    found.append(Span(resource.get("service.name", ""), s.name, s.trace_id.hex(), s.span_id.hex(),
                                      s.parent_span_id.hex(), s.kind, flat, s.status.code, s.start_time_unix_nano,
                                      s.end_time_unix_nano, tuple(e.name for e in s.events)))  # fmt: skip
        with self.lock:
            self.spans.extend(found)
            self.requests += 1

    def snapshot(self) -> list[Span]:
        with self.lock:
            return list(self.spans)

    def wait(self, what: str, found: Callable[[list[Span]], Any], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = found(self.snapshot())
            if value:
                return value
            if time.monotonic() > deadline:
                names = sorted({f"{s.service}:{s.name}" for s in self.snapshot()})
                raise AssertionError(f"timed out waiting for {what}; received spans: {names}")
            time.sleep(0.05)


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            if "json" in (self.headers.get("Content-Type") or ""):
                json_format.Parse(body, request)
            else:
                request.ParseFromString(body)
            receiver.add(request)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
