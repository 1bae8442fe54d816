"""See inside Stepline from outside: Prometheus metrics, OpenTelemetry traces, terminal logs, cluster-wide gauges.

- ``hooks``: the instrumentation points and the switch (``hooks.current``; None: nothing is recorded).
- ``metrics``: the Prometheus metrics and their exposition (``enable_metrics`` turns them on in this process).
- ``tracing``: OpenTelemetry spans for runs and step attempts, W3C trace context (``stepline[otel]``).
- ``cluster``: the leader (one process of the cluster, chosen through the store) that exports cluster-wide gauges.
- ``endpoint``: ``/metrics`` on the server and the ``--metrics-port`` listener; ``stepline_store_up``.
- ``runlog``: what the terminal says about failed attempts and run ends; ``--log-format json``.

``docs/metrics.md`` and ``docs/tracing.md`` describe what is exported.
"""

from __future__ import annotations

import gc
import threading
from typing import TYPE_CHECKING

from stepline.observability import hooks

if TYPE_CHECKING:  # prometheus-client is imported only by a process that turns metrics on
    from stepline.observability.metrics import Metrics
    from stepline.observability.tracing import Tracing

_lock = threading.Lock()


def enable_metrics() -> Metrics:
    """Record Prometheus metrics in this process from now on (idempotent); returns them."""
    with _lock:
        rec = hooks.current
        if rec is not None and rec.metrics is not None:
            return rec.metrics
        from stepline.observability.metrics import Metrics

        metrics = Metrics()
        hooks.current = hooks.Recorder(metrics, rec.tracing if rec is not None else None)
        return metrics


def current_metrics() -> Metrics | None:
    """This process's metrics, if enabled."""
    rec = hooks.current
    return rec.metrics if rec is not None else None


def disable() -> None:
    """Record nothing any more (tests; a process that stops exporting)."""
    with _lock:
        hooks.current = None


def install_tracing(tracing: Tracing) -> None:
    """Record traces with ``tracing`` from now on (``tracing.configure_from_env`` calls this)."""
    with _lock:
        rec = hooks.current
        hooks.current = hooks.Recorder(rec.metrics if rec is not None else None, tracing)


def current_tracing() -> Tracing | None:
    """This process's tracing, if configured."""
    rec = hooks.current
    return rec.tracing if rec is not None else None


def settle_heap() -> None:
    """Once a process has started (modules imported, metrics and tracing configured): collect garbage, then move
    every object alive now out of the cyclic garbage collector's reach (``gc.freeze``). Full collections otherwise
    walk every module's objects again and again: OpenTelemetry's SDK and protobuf add ~17,000 of them, and that, not
    writing spans, was most of what tracing cost at a low sampling ratio (``bench/README.md``). Frozen objects are
    still freed when nothing refers to them; only a reference cycle among them is never collected."""
    gc.collect()
    gc.freeze()


def stepline_version() -> str:
    """The installed Stepline's version (``stepline_build_info``, the spans' instrumentation scope)."""
    try:
        from importlib.metadata import version

        return version("stepline")
    except Exception:
        return "unknown"
