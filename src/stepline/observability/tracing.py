"""OpenTelemetry traces of runs and step attempts, exported over OTLP/HTTP (``pip install 'stepline[otel]'``).

Configured by the standard ``OTEL_*`` variables (``docs/tracing.md``): tracing is on when an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or ``OTEL_TRACES_EXPORTER`` names otlp or
console, and ``OTEL_SDK_DISABLED`` is not true; the sampler (``OTEL_TRACES_SAMPLER``), the service name, the
exporter's headers, timeout and compression, and the batch queue (``OTEL_BSP_*``) come from the same variables.

A run outlives the process that started it (it sleeps, waits, is resumed by another worker), so its spans are
written when each part ends, with ids that every process derives alike:

- the run's trace: the trace of the ``send`` that stored its event (``StoredEvent.traceparent``), else one of its
  own whose id is a hash of the run id;
- the run span ``run <function>``: from the run's creation to its end, written by the process that ends it, with a
  span id derived from the run id, under the send's span when there was one;
- one span per step attempt under the run span: ``step <id>`` (the code of an in-process step, with the step's span
  as the current span inside it, so the code's own spans nest under it; over HTTP, the call that ran it, whose
  ``traceparent`` header puts the app's spans under it), and ``sleep``/``wait_for_event``/``invoke`` spans from the
  step's start to its end, written when the run resumes;
- a run that is not sampled (decided once per trace, as the sampler decides for the run span) costs no more than
  that decision.

Spans go through a batch processor: a collector that is slow or unreachable never slows runs. The queue is bounded
(``OTEL_BSP_MAX_QUEUE_SIZE``, 2048); spans beyond it are dropped and counted (``stepline_trace_spans_total``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepline.observability import hooks, stepline_version

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext

log = logging.getLogger("stepline.tracing")
MS = 1_000_000  # ns per ms
DECISIONS_KEPT = 10_000  # sampling decisions remembered (runs in flight in this process)


def format_traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_traceparent(value: str | None) -> tuple[int, int, bool] | None:
    """``(trace id, span id, sampled)`` of a W3C ``traceparent`` header, or None if it is not a valid one."""
    if not value or len(value) < 55:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0 or (parts[0] == "00" and len(parts) != 4):
        return None
    return trace_id, span_id, bool(flags & 1)


def valid_traceparent(value: str | None) -> str | None:
    """The header as stored with an event, or None when it is absent or not a valid ``traceparent``."""
    return value.strip().lower() if parse_traceparent(value) is not None and value is not None else None


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current OpenTelemetry span (a traced web request, a step's code), if any.

    Costs one dictionary lookup while OpenTelemetry is not imported in this process (nothing can be traced then)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format_traceparent(ctx.trace_id, ctx.span_id, bool(ctx.trace_flags & 1))


def send_traceparent(given: str | None, events: Sequence[Any]) -> str | None:
    """The trace context to store with events being sent: ``given`` (the event API's header) if valid, else the
    current span's; with Stepline's tracing on, a ``send`` span under it, so the runs hang under the send."""
    parent = valid_traceparent(given) if given is not None else current_traceparent()
    if parent is None:
        return None
    rec = hooks.current
    if rec is None or rec.tracing is None or given is not None:
        return parent
    return rec.tracing.send_span(parent, events)


def run_trace_id(run_id: str) -> int:
    """A run's own trace id, derived from its id. A hash, not the ULID itself: ULIDs made in the same millisecond
    are consecutive numbers, and a ratio sampler that looks at the trace id would keep or drop whole batches."""
    return int.from_bytes(hashlib.blake2b(run_id.encode(), digest_size=16).digest(), "big") or 1


def untraced_traceparent(run_id: str, trigger_traceparent: str | None, *, sampled: bool) -> str:
    """The ``traceparent`` of a call to an app for a run this process does not trace: the run's trace (the sender's,
    else its own) and a fresh span id."""
    parsed = parse_traceparent(trigger_traceparent) if trigger_traceparent is not None else None
    trace_id = parsed[0] if parsed is not None else run_trace_id(run_id)
    return format_traceparent(trace_id, new_span_id(), sampled)


def run_span_id(run_id: str) -> int:
    return int.from_bytes(hashlib.sha256(b"run:" + run_id.encode()).digest()[:8], "big") or 1


def new_span_id() -> int:
    return random.getrandbits(64) or 1


_LOW64 = (1 << 64) - 1


def _fast_sampler(sampler: Any) -> tuple[int, bool] | None:
    """For the samplers the OTEL_* variables configure (always_on, always_off, traceidratio and their parentbased_
    forms, with the default rules for parents), ``(bound, follows the parent)``: a run is sampled when the low 64 bits
    of its trace id are below the bound, or as its (remote) parent was. The decision the SDK's sampler would make,
    without building its result for every run; None for any other sampler (it is asked)."""
    from opentelemetry.sdk.trace import sampling

    def bound(s: Any) -> int | None:
        if s is sampling.ALWAYS_ON:
            return 1 << 64
        if s is sampling.ALWAYS_OFF:
            return 0
        if (
            isinstance(s, sampling.TraceIdRatioBased)
            and type(s).should_sample is sampling.TraceIdRatioBased.should_sample
        ):
            return int(s.bound)
        return None

    # (parentbased_traceidratio is a ParentBased subclass that only chooses the root sampler)
    if isinstance(sampler, sampling.ParentBased) and type(sampler).should_sample is sampling.ParentBased.should_sample:
        root = bound(getattr(sampler, "_root", None))
        defaults = (getattr(sampler, "_remote_parent_sampled", None) is sampling.ALWAYS_ON
                    and getattr(sampler, "_remote_parent_not_sampled", None) is sampling.ALWAYS_OFF)  # fmt: skip
        return (root, True) if root is not None and defaults else None
    own = bound(sampler)
    return None if own is None else (own, False)


def _error_attributes(error: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    error = error or {}
    name, message = str(error.get("name") or "Error"), str(error.get("message") or "")
    attrs = {"exception.type": name, "exception.message": message}
    if isinstance(error.get("stack"), str):
        attrs["exception.stacktrace"] = error["stack"]
    return f"{name}: {message}" if message else name, attrs


@dataclass
class RunTrace:
    """One execution's view of a sampled run's trace: where its spans go."""

    tracing: Tracing
    trace_id: int
    run_span: int
    function_id: str
    run_id: str
    _parent: SpanContext | None = None

    def parent(self) -> SpanContext:
        """The run span's context: the parent of the run's step spans."""
        if self._parent is None:
            self._parent = self.tracing.span_context(self.trace_id, self.run_span, remote=True)
        return self._parent

    def context(self, span_id: int | None = None) -> Context:
        """An OpenTelemetry context whose current span is the run span (or the given span of this trace)."""
        return self.tracing.in_context(self.tracing.span_context(self.trace_id, span_id or self.run_span))

    def traceparent(self, span_id: int) -> str:
        return format_traceparent(self.trace_id, span_id)

    def step(self, name: str, span_id: int, start_ns: int, end_ns: int, attributes: dict[str, Any],
             error: dict[str, Any] | None = None, *, client: bool = False) -> None:  # fmt: skip
        attributes["stepline.run.id"] = self.run_id
        self.tracing.emit(name, self.trace_id, span_id, self.parent(), start_ns, end_ns, attributes, error,
                          kind="client" if client else "internal")  # fmt: skip


class Tracing:
    """The tracer of this process, with the helpers the executors and the engine call (through ``hooks``)."""

    def __init__(self, provider: TracerProvider, processor: Any) -> None:
        self.provider = provider
        self.processor = processor  # where the spans written here go (the provider's batch processor)
        self.sampler = provider.sampler
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self._empty = Context()  # a root's context: never the caller's current span
        self._span_context: Any = SpanContext
        self._readable: Any = ReadableSpan
        self._event: Any = Event
        self._scope = InstrumentationScope("stepline", stepline_version())
        self._unset = Status(StatusCode.UNSET)
        self._flags = (TraceFlags(TraceFlags.DEFAULT), TraceFlags(TraceFlags.SAMPLED))
        self._fast = _fast_sampler(self.sampler)
        self._kinds = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT, "consumer": SpanKind.CONSUMER,
                       "producer": SpanKind.PRODUCER}  # fmt: skip
        self._status: Any = Status
        self._status_error: Any = StatusCode.ERROR
        self._span_in_context: Any = trace.set_span_in_context
        self._non_recording: Any = NonRecordingSpan
        # Each run's decision, read at its claim, its end and for its end's events: made once (bounded).
        self._decided: dict[tuple[str, str | None], tuple[int, SpanContext | None, bool]] = {}

    # --- decisions ---
    def _root(self, run_id: str, traceparent: str | None) -> tuple[int, SpanContext | None, bool]:
        """(trace id, the send's span context or None, sampled) of a run: the sampler decides as it does for the
        run span, so every process decides alike (a parent-based sampler follows the send's decision; a ratio
        sampler looks at the trace id)."""
        key = (run_id, traceparent)
        known = self._decided.get(key)
        if known is not None:
            return known
        parsed = parse_traceparent(traceparent) if traceparent is not None else None
        parent = None
        parent_sampled: bool | None = None
        if parsed is not None:
            trace_id, span_id, parent_sampled = parsed
            parent = self._span_context(trace_id, span_id, True, self._flags[parent_sampled])
        else:
            trace_id = run_trace_id(run_id)
        if self._fast is not None:  # the sampler's own rule, without building its result (see _fast_sampler)
            bound, follows_parent = self._fast
            sampled = parent_sampled if follows_parent and parent_sampled is not None else trace_id & _LOW64 < bound
        else:
            result = self.sampler.should_sample(self._context(parent), trace_id, "run")
            sampled = bool(result.decision.is_sampled())  # type: ignore[no-untyped-call]
        decided = trace_id, parent, sampled
        if len(self._decided) >= DECISIONS_KEPT:
            self._decided.clear()
        self._decided[key] = decided
        return decided

    def run_trace(self, claimed: Any) -> RunTrace | None:
        """The trace of a claimed run (``ClaimedRun``) for this execution, or None when it is not sampled."""
        run = claimed.run
        trace_id, _, sampled = self._root(run.id, claimed.event.traceparent)
        return RunTrace(self, trace_id, run_span_id(run.id), run.function_id, run.id) if sampled else None

    def in_context(self, span: SpanContext) -> Context:
        """A context whose current span is ``span`` (a parent given by its ids)."""
        ctx: Context = self._span_in_context(self._non_recording(span))
        return ctx

    def _context(self, parent: SpanContext | None) -> Context:
        return self._empty if parent is None else self.in_context(parent)

    # --- writing spans ---
    def span_context(self, trace_id: int, span_id: int, *, remote: bool = False) -> SpanContext:
        ctx: SpanContext = self._span_context(trace_id, span_id, remote, self._flags[True])
        return ctx

    def emit(self, name: str, trace_id: int, span_id: int, parent: SpanContext | None, start_ns: int, end_ns: int,
             attributes: dict[str, Any], error: dict[str, Any] | None = None,
             kind: str = "internal") -> None:  # fmt: skip
        """Write a finished span with these ids under ``parent`` (None: a root) to the batch processor.

        The spans of runs are written after the fact, with ids every process derives alike and a sampling decision
        already made for the run: the SDK's ``ReadableSpan`` is built directly (going through ``Tracer.start_span``
        would ask the sampler again and make new ids, and costs twice as much per span)."""
        events: tuple[Any, ...] = ()
        status = self._unset
        if error is not None:
            description, attrs = _error_attributes(error)
            events = (self._event("exception", attrs, timestamp=end_ns),)
            status = self._status(self._status_error, description)
        span = self._readable(name, self.span_context(trace_id, span_id), parent, self.provider.resource, attributes,
                              events, (), self._kinds[kind], None, status, start_ns, max(start_ns, end_ns),
                              self._scope)  # fmt: skip
        self.processor.on_end(span)

    def send_span(self, parent: str, events: Sequence[Any]) -> str:
        """A ``send`` span (producer) under ``parent``; returns its ``traceparent`` (the parent's when it is not
        sampled: the runs then follow the parent's decision)."""
        parsed = parse_traceparent(parent)
        if parsed is None or not parsed[2]:
            return parent
        from opentelemetry.trace import SpanContext, TraceFlags

        trace_id, parent_span, _ = parsed
        ctx = SpanContext(trace_id, parent_span, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        names = sorted({str(e.name) for e in events})
        span_id = new_span_id()
        now = time.time_ns()
        self.emit(f"send {names[0]}" if len(names) == 1 else "send events", trace_id, span_id, ctx, now, now,
                  {"stepline.event.names": names, "stepline.event.count": len(events)}, kind="producer")  # fmt: skip
        return format_traceparent(trace_id, span_id)

    def runs_claimed(self, claimed: Iterable[Any], now: int) -> None:
        """Sleeps, waits and invokes that ended since a run last executed: their spans, under the run span."""
        from stepline.observability.metrics import resumed_steps

        for c in claimed:
            if not c.steps:
                continue
            run = c.run
            ended = list(resumed_steps(c.steps.values(), run.due_at if run.due_at is not None else run.created_at,
                                       now))  # fmt: skip
            trace = self.run_trace(c) if ended else None
            if trace is None:
                continue
            for s, outcome, end in ended:
                trace.step(f"{s.kind} {s.display_id}", new_span_id(), s.started_at * MS, end * MS,
                           {"stepline.step.id": s.display_id, "stepline.step.kind": s.kind,
                            "stepline.step.outcome": outcome}, s.error if outcome == "failed" else None)  # fmt: skip

    def run_ended(self, run: Any, trigger: Any, status: str, error: dict[str, Any] | None, now: int) -> None:
        """The run span, from the run's creation to its end, under the send's span when there was one. Run times are
        the engine's milliseconds: the span ends at the end of the millisecond the run ended in, so that it covers
        the step spans (timed in nanoseconds) it holds."""
        trace_id, parent, sampled = self._root(run.id, getattr(trigger, "traceparent", None))
        if not sampled:
            return
        attrs: dict[str, Any] = {"stepline.function.id": run.function_id, "stepline.run.id": run.id,
                                 "stepline.run.status": status}  # fmt: skip
        if run.attempt:
            attrs["stepline.run.attempt"] = run.attempt
        if trigger is not None:
            attrs["stepline.event.name"] = trigger.name
        self.emit(f"run {run.function_id}", trace_id, run_span_id(run.id), parent, run.created_at * MS,
                  (now + 1) * MS - 1,
                  attrs, error if status == "failed" else None, kind="consumer")  # fmt: skip

    def run_traceparent(self, run_id: str, trigger_traceparent: str | None) -> str | None:
        """The ``traceparent`` of a run's span (for the events its end emits), or None when it is not sampled."""
        trace_id, _, sampled = self._root(run_id, trigger_traceparent)
        return format_traceparent(trace_id, run_span_id(run_id)) if sampled else None

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush what is queued, waiting at most ``timeout`` seconds (an unreachable collector never holds up the
        process's exit)."""
        done = threading.Thread(target=self.provider.shutdown, name="stepline-otel-shutdown", daemon=True)
        done.start()
        done.join(timeout)


def _requested() -> bool:
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    if exporter in ("otlp", "otlp_proto_http", "console"):
        return True
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure_from_env(*, set_global: bool = True) -> Tracing | None:
    """Turn tracing on in this process if the ``OTEL_*`` variables ask for it (see the module's doc). Returns the
    tracing, or None (nothing requested; or requested without ``stepline[otel]`` installed: a warning says so).
    ``set_global``: also make it OpenTelemetry's global tracer provider when none was set, so the functions' own
    spans (``trace.get_tracer(...)``) are exported with Stepline's."""
    if not _requested():
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        log.warning("OTEL_* variables ask for traces, but OpenTelemetry is not installed: "
                    "pip install 'stepline[otel]'")  # fmt: skip
        return None
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter_name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter: Any = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "stepline"}
    provider = TracerProvider(resource=Resource.create(attributes))
    processor = counting_processor(CountingExporter(exporter))
    provider.add_span_processor(processor)
    tracing = Tracing(provider, processor)
    if set_global:
        current = trace.get_tracer_provider()
        if type(current).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
            trace.set_tracer_provider(provider)
    from stepline.observability import install_tracing

    install_tracing(tracing)
    log.info("tracing: spans exported to %s", _endpoint(exporter_name))
    return tracing


def _endpoint(exporter: str) -> str:
    if exporter == "console":
        return "the console"
    env = os.environ
    return (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or
            (env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/") + "/v1/traces"))  # fmt: skip


def _span_metrics(outcome: str, count: int) -> None:
    from stepline.observability import current_metrics

    m = current_metrics()
    if m is not None and count:
        m.span_outcome(outcome, count)


class CountingExporter:
    """Wraps the OTLP exporter to count exported and failed spans, and to say when exports fail: one warning a
    minute at most, with the count since the last one (the exporter's own retry messages are turned down to
    errors only, or an unreachable collector would fill the terminal)."""

    WARN_EVERY = 60.0

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._failed_since_warning = 0
        self._warned_at = -self.WARN_EVERY
        for name in ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.exporter.otlp.proto.http"):
            logging.getLogger(name).setLevel(logging.ERROR)

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        started = time.monotonic()
        problem = "the collector refused them or could not be reached"
        try:
            result = self.inner.export(spans)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
            result = SpanExportResult.FAILURE
        if result == SpanExportResult.SUCCESS:
            _span_metrics("exported", len(spans))
            return result
        _span_metrics("failed", len(spans))
        self._failed_since_warning += len(spans)
        now = time.monotonic()
        if now - self._warned_at >= self.WARN_EVERY:
            log.warning("tracing: %d spans not exported (%s; the last try took %.1f s); runs go on, spans are "
                        "counted in stepline_trace_spans_total", self._failed_since_warning, problem,
                        now - started)  # fmt: skip
            self._warned_at, self._failed_since_warning = now, 0
        return result

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        self.inner.shutdown(*args, **kwargs)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


def counting_processor(exporter: Any) -> Any:
    """A ``BatchSpanProcessor`` (bounded queue, export in its own thread) that counts the spans it drops because its
    queue is full (the SDK only logs them)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    class CountingBatchProcessor(BatchSpanProcessor):
        def on_end(self, span: Any) -> None:
            if span.context is not None and span.context.trace_flags.sampled:
                batch = getattr(self, "_batch_processor", None)
                queue = getattr(batch, "_queue", None)
                if queue is not None and len(queue) >= getattr(batch, "_max_queue_size", sys.maxsize):
                    _span_metrics("dropped", 1)
            super().on_end(span)

    return CountingBatchProcessor(exporter)
