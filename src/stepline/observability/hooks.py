"""The engine's instrumentation points, and the one switch that turns them on.

``current`` is None until metrics or tracing are enabled in this process (``observability.enable_metrics``,
``observability.tracing.configure``). Every instrumented place reads it once and does nothing more when it is None,
so a process that exports nothing pays one module attribute read per point::

    if (rec := hooks.current) is not None:
        rec.run_ended(...)

This module imports nothing from Stepline: the storage layer, the core and the server all report through it. What a
``Recorder`` does with a report is up to its sinks: Prometheus metrics (``metrics.Metrics``) and OpenTelemetry traces
(``tracing.Tracing``), each None when off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepline.observability.metrics import Metrics
    from stepline.observability.tracing import Tracing


class Recorder:
    """Fans each report out to the enabled sinks. Methods are called from the event loop, worker threads and the
    store's writer thread: the sinks are thread-safe."""

    def __init__(self, metrics: Metrics | None = None, tracing: Tracing | None = None) -> None:
        self.metrics = metrics
        self.tracing = tracing

    # --- runs ---
    def runs_claimed(self, claimed: list[Any], now: int) -> None:
        """A worker claimed these runs (``ClaimedRun``) at ``now``: first starts and resumptions."""
        if self.metrics is not None:
            self.metrics.runs_claimed(claimed, now)
        if self.tracing is not None:
            self.tracing.runs_claimed(claimed, now)

    def run_ended(self, run: Any, trigger: Any, status: str, error: dict[str, Any] | None, now: int) -> None:
        """A run (``RunRecord``, its trigger ``StoredEvent`` or None) ended with ``status`` at ``now``."""
        if self.metrics is not None:
            self.metrics.run_ended(run.function_id, status, run.started_at, now)
        if self.tracing is not None:
            self.tracing.run_ended(run, trigger, status, error, now)

    def runs_skipped(self, function_ids: list[str]) -> None:
        """Flow control stored these runs as skipped when their events arrived (they never start)."""
        if self.metrics is not None:
            for fid in function_ids:
                self.metrics.run_ended(fid, "skipped", None, 0)

    def run_retried(self, function_id: str) -> None:
        """A function-level error with attempts left: the run runs again later."""
        if self.metrics is not None:
            self.metrics.retry(function_id, "run")

    # --- steps ---
    def step_attempt(self, function_id: str, kind: str, outcome: str, seconds: float | None) -> None:
        """A step attempt ended: ``outcome`` completed, failed (for good), retrying (an error with attempts left),
        or timed_out (a wait or invoke); ``seconds`` its duration (the code of a run step; the wait of the others)."""
        if self.metrics is not None:
            self.metrics.step_attempt(function_id, kind, outcome, seconds)

    # --- flow control (storage/sql_flow.py) ---
    def flow(self, function_id: str, gate: str, action: str) -> None:
        """A flow-control decision: ``gate`` (throttle, rate_limit, debounce, batch, singleton, concurrency) and
        ``action`` (delayed, skipped, merged, cancelled, blocked)."""
        if self.metrics is not None:
            self.metrics.flow(function_id, gate, action)

    # --- events and calls ---
    def events_received(self, outcome: str, count: int) -> None:
        """``count`` events reached the engine: ``accepted`` (stored) or ``invalid`` (refused by validation)."""
        if self.metrics is not None:
            self.metrics.events_received(outcome, count)

    def app_call(self, app_id: str, outcome: str, seconds: float) -> None:
        """A call to an app over HTTP ended: ``outcome`` ok (an answer the protocol understands), function_error,
        unreachable, timeout, too_large, bad_signature."""
        if self.metrics is not None:
            self.metrics.app_call(app_id, outcome, seconds)

    # --- the store's writer ---
    def store_commit(self, ops: int, seconds: float) -> None:
        """The writer committed one transaction of ``ops`` write operations in ``seconds`` (apply + commit)."""
        if self.metrics is not None:
            self.metrics.store_commit(ops, seconds)

    def store_retry(self) -> None:
        """A transient write error (a lost connection, a deadlock, a locked database): the batch runs again."""
        if self.metrics is not None:
            self.metrics.store_retry()

    # --- the dashboard ---
    def stream_clients(self, delta: int) -> None:
        """Dashboard pages listening for live updates (server-sent events) opened (+1) or closed (-1)."""
        if self.metrics is not None:
            self.metrics.stream_clients(delta)


current: Recorder | None = None
