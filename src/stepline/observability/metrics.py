"""Prometheus metrics (prometheus-client): what every instrumented place reports, and the exposition of it.

One ``Metrics`` per process, in its own ``CollectorRegistry`` (an embedding app's default registry is left alone).
The names, labels and meaning of every metric are in ``docs/metrics.md``; ``METRIC_NAMES`` lists them for the test
that checks every metric the Grafana dashboard (``deploy/``) queries is exported.

The labelled children of each metric are cached per label values (a dict lookup instead of ``labels()``, which
takes a lock and builds a tuple every time): the hot paths (a run claimed, a step attempt, a run's end) pay a few
microseconds per run. Label values are bounded: function ids and app ids come from the registry, statuses, kinds,
outcomes and gates from fixed sets; never run ids or event names.

Several processes (``PROMETHEUS_MULTIPROC_DIR`` set before this module is imported, as prometheus-client requires):
every process writes its values to files in that directory, and a scrape of any process sums them
(``MultiProcessCollector``). Gauges say how: the cluster-wide ones (set by the one leader process, zeroed by a
process that stops leading) take the most recent value, the others a sum or a maximum over live processes. A
process manager calls ``process_exited(pid)`` when a process ends, so its live gauges stop counting.
"""

from __future__ import annotations

import bisect
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from stepline.observability import stepline_version
from stepline.storage.records import ClusterGauges

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Buckets in seconds. Runs may sleep for days; steps and calls are usually milliseconds.
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# The buckets of each histogram the hot paths record into (by attribute name of ``Metrics``).
_BOUNDS: dict[str, tuple[float, ...]] = {
    "start_lag": LAG_BUCKETS, "resume_lag": LAG_BUCKETS, "run_duration": RUN_BUCKETS, "step_duration": STEP_BUCKETS,
    "app_call_duration": CALL_BUCKETS, "store_commit_seconds": COMMIT_BUCKETS,
}  # fmt: skip
IDLE_REASONS = frozenset({"sleeping", "waiting", "invoking", "retrying", "multiple", "throttled", "debounced", "batch",
                          "concurrency", "queued", "rerun"})  # fmt: skip


class Metrics:
    """Every Stepline metric of this process. Thread-safe (prometheus-client's values are)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR_ENV))
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # Runs
        self.runs_started = Counter("stepline_runs_started", "Runs claimed by a worker for the first time.",
                                    ["function"], registry=r)  # fmt: skip
        self.runs_ended = Counter("stepline_runs_ended", "Runs that ended, by status (completed, failed, cancelled, "
                                  "skipped).", ["function", "status"], registry=r)  # fmt: skip
        self.run_duration = Histogram("stepline_run_duration_seconds", "From a run's first start to its end "
                                      "(sleeps and waits included).", ["function", "status"], registry=r,
                                      buckets=RUN_BUCKETS)  # fmt: skip
        self.start_lag = Histogram("stepline_run_start_lag_seconds", "Due-to-start lag: from the time a run became "
                                   "due to its first claim (docs/metrics.md).", ["function"], registry=r,
                                   buckets=LAG_BUCKETS)  # fmt: skip
        self.resume_lag = Histogram("stepline_run_resume_lag_seconds", "From the time an idle run became due again "
                                    "(a sleep ended, an event matched, a retry's time came) to its claim.",
                                    ["function"], registry=r, buckets=LAG_BUCKETS)  # fmt: skip
        self.retries = Counter("stepline_retries", "Retries scheduled: level step (a step's error with attempts "
                               "left) or run (an error outside any step).", ["function", "level"],
                               registry=r)  # fmt: skip
        # Steps
        self.step_attempts = Counter("stepline_step_attempts", "Step attempts by kind and outcome (completed, "
                                     "failed, retrying, timed_out).", ["function", "kind", "outcome"],
                                     registry=r)  # fmt: skip
        self.step_duration = Histogram("stepline_step_duration_seconds", "A run step's code (in-process) or the "
                                       "call that ran it (HTTP); sleeps, waits and invokes from start to end.",
                                       ["function", "kind"], registry=r, buckets=STEP_BUCKETS)  # fmt: skip
        # Flow control, events, calls
        self.flow_total = Counter("stepline_flow_control", "Flow-control decisions by gate and action (delayed, "
                                  "skipped, merged, cancelled, blocked).", ["function", "gate", "action"],
                                  registry=r)  # fmt: skip
        self.events = Counter("stepline_events_received", "Events that reached the engine, by outcome (accepted, "
                              "invalid).", ["outcome"], registry=r)  # fmt: skip
        self.event_requests = Counter("stepline_event_requests", "Requests to the event API (POST /e/{key}) by HTTP "
                                      "status code.", ["code"], registry=r)  # fmt: skip
        self.app_calls = Counter("stepline_app_calls", "Calls to apps over HTTP by outcome (ok, function_error, "
                                 "unreachable, timeout, too_large, bad_signature).", ["app", "outcome"],
                                 registry=r)  # fmt: skip
        self.app_call_duration = Histogram("stepline_app_call_duration_seconds", "Latency of calls to apps.",
                                           ["app"], registry=r, buckets=CALL_BUCKETS)  # fmt: skip
        # Store
        self.store_commits = Counter("stepline_store_commits", "Write transactions committed by this process.",
                                     registry=r)  # fmt: skip
        self.store_ops = Counter("stepline_store_write_ops", "Write operations committed (many per transaction: "
                                 "group commit).", registry=r)  # fmt: skip
        self.store_commit_seconds = Histogram("stepline_store_commit_seconds", "Applying and committing one write "
                                              "transaction.", registry=r, buckets=COMMIT_BUCKETS)  # fmt: skip
        self.store_retries = Counter("stepline_store_write_retries", "Write transactions run again after a "
                                     "transient error.", registry=r)  # fmt: skip
        # Dashboard, tracing, build
        self.streams = Gauge("stepline_dashboard_streams", "Dashboard pages listening for live updates (SSE).",
                             registry=r, multiprocess_mode="livesum")  # fmt: skip
        self.spans = Counter("stepline_trace_spans", "OpenTelemetry spans of this process by outcome (exported, "
                             "failed: the collector refused or could not be reached, dropped: the export queue was "
                             "full).", ["outcome"], registry=r)  # fmt: skip
        self.userland_spans = Counter("stepline_userland_spans", "Spans apps sent to POST /v1/traces/userland, by "
                                      "outcome (stored, rejected).", ["outcome"], registry=r)  # fmt: skip
        self.build_info = Gauge("stepline_build_info", "Always 1: the Stepline and Python versions.",
                                ["version", "python"], registry=r, multiprocess_mode="livemax")  # fmt: skip
        self.build_info.labels(stepline_version(), platform.python_version()).set(1)
        # Cluster-wide: set by the one leader process (observability/cluster.py)
        self.leader = Gauge("stepline_cluster_leader", "1 while this process exports the cluster-wide gauges.",
                            registry=r, multiprocess_mode="livemax")  # fmt: skip
        self.backlog = Gauge("stepline_backlog_runs", "Cluster-wide: runs due now that no worker executes yet "
                             "(docs/metrics.md).", ["function"], registry=r,
                             multiprocess_mode="livemostrecent")  # fmt: skip
        self.backlog_age = Gauge("stepline_backlog_oldest_seconds", "Cluster-wide: how long the oldest run of the "
                                 "backlog has been due.", ["function"], registry=r,
                                 multiprocess_mode="livemostrecent")  # fmt: skip
        self.idle = Gauge("stepline_idle_runs", "Cluster-wide: live runs with nothing due before a later time, by "
                          "reason (sleeping, waiting, invoking, retrying, throttled, debounced, batch, concurrency, "
                          "...).", ["function", "reason"], registry=r, multiprocess_mode="livemostrecent")  # fmt: skip
        self.running = Gauge("stepline_running_runs", "Cluster-wide: runs a worker executes now (a live lease).",
                             ["function"], registry=r, multiprocess_mode="livemostrecent")  # fmt: skip
        self.cluster_refresh = Gauge("stepline_cluster_gauges_refresh_seconds", "How long the leader's last read "
                                     "of the cluster-wide gauges took.", registry=r,
                                     multiprocess_mode="livemostrecent")  # fmt: skip
        self._children: dict[tuple[Any, ...], Any] = {}
        self._cluster_set: set[tuple[Any, ...]] = set()
        # The hot paths add to these under one lock; ``flush`` moves them into the metrics above (at each scrape,
        # and every second from a thread when several processes share the metrics).
        self._lock = threading.Lock()
        self._counts: dict[tuple[Any, ...], float] = {}  # (counter, *label values) -> increment
        self._observed: dict[tuple[Any, ...], list[float]] = {}  # (histogram, *labels) -> [n per bucket..., sum]
        if self.multiprocess:
            threading.Thread(target=self._flush_every_second, name="stepline-metrics-flush", daemon=True).start()

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels) if labels else metric
        return child

    # --- recording (hot paths: a dict update under a lock, no prometheus-client call) ---
    def _count(self, key: tuple[Any, ...], amount: float = 1.0) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0.0) + amount

    def _observe(self, key: tuple[Any, ...], value: float) -> None:
        bounds = _BOUNDS[key[0]]
        with self._lock:
            slots = self._observed.get(key)
            if slots is None:
                slots = self._observed[key] = [0.0] * (len(bounds) + 2)
            slots[bisect.bisect_left(bounds, value)] += 1
            slots[-1] += value

    def flush(self) -> None:
        """Move what the hot paths recorded into the prometheus-client metrics."""
        with self._lock:
            counts, self._counts = self._counts, {}
            observed, self._observed = self._observed, {}
        for (metric, *labels), amount in counts.items():
            self._child(getattr(self, metric), *labels).inc(amount)
        for (metric, *labels), slots in observed.items():
            child = self._child(getattr(self, metric), *labels)
            # prometheus-client keeps a histogram as one value per bucket (not cumulative) and the sum: add the
            # counts there, as ``observe`` does one at a time.
            for i, n in enumerate(slots[:-1]):
                if n:
                    child._buckets[i].inc(n)
            child._sum.inc(slots[-1])

    def _flush_every_second(self) -> None:
        while True:
            time.sleep(1.0)
            try:
                self.flush()
            except Exception:  # never let a metrics problem stop the process
                logging.getLogger("stepline.metrics").exception("flushing metrics failed")

    # --- runs ---
    def runs_claimed(self, claimed: Sequence[Any], now: int) -> None:
        for c in claimed:
            run = c.run
            fid = run.function_id
            due = run.due_at if run.due_at is not None else run.created_at
            lag = max(0, now - due) / 1000
            if run.started_at == now and run.attempt == 0:  # the claim that started it (set started_at)
                self._count(("runs_started", fid))
                self._observe(("start_lag", fid), lag)
            else:
                self._observe(("resume_lag", fid), lag)
            if c.steps:
                for s, outcome, end in resumed_steps(c.steps.values(), due, now):
                    self.step_attempt(fid, s.kind, outcome, max(0, end - s.started_at) / 1000)

    def run_ended(self, function_id: str, status: str, started_at: int | None, now: int) -> None:
        self._count(("runs_ended", function_id, status))
        if started_at is not None:
            self._observe(("run_duration", function_id, status), max(0, now - started_at) / 1000)

    def retry(self, function_id: str, level: str) -> None:
        self._count(("retries", function_id, level))

    def step_attempt(self, function_id: str, kind: str, outcome: str, seconds: float | None) -> None:
        self._count(("step_attempts", function_id, kind, outcome))
        if seconds is not None:
            self._observe(("step_duration", function_id, kind), seconds)
        if outcome == "retrying":
            self._count(("retries", function_id, "step"))

    def flow(self, function_id: str, gate: str, action: str) -> None:
        self._count(("flow_total", function_id, gate, action))

    def events_received(self, outcome: str, count: int) -> None:
        self._count(("events", outcome), count)

    def event_request(self, code: int) -> None:
        self._count(("event_requests", str(code)))

    def app_call(self, app_id: str, outcome: str, seconds: float) -> None:
        self._count(("app_calls", app_id, outcome))
        self._observe(("app_call_duration", app_id), seconds)

    def store_commit(self, ops: int, seconds: float) -> None:
        self._count(("store_commits",))
        self._count(("store_ops",), ops)
        self._observe(("store_commit_seconds",), seconds)

    def store_retry(self) -> None:
        self._count(("store_retries",))

    def stream_clients(self, delta: int) -> None:
        self.streams.inc(delta)

    def span_outcome(self, outcome: str, count: int = 1) -> None:
        self._count(("spans", outcome), count)

    def userland(self, stored: int, rejected: int) -> None:
        if stored:
            self._count(("userland_spans", "stored"), stored)
        if rejected:
            self._count(("userland_spans", "rejected"), rejected)

    # --- cluster-wide gauges (the leader's) ---
    def set_cluster(self, gauges: ClusterGauges, now: int, seconds: float) -> None:
        """Export the leader's latest counts; series exported before and absent now go to 0."""
        current: dict[tuple[Any, ...], float] = {}
        for fid, count, oldest in gauges.backlog:
            current[(self.backlog, fid)] = count
            current[(self.backlog_age, fid)] = max(0, now - oldest) / 1000
        for fid, reason, count in gauges.idle:
            key = (self.idle, fid, reason if reason in IDLE_REASONS else "other")
            current[key] = current.get(key, 0) + count
        for fid, count in gauges.running:
            current[(self.running, fid)] = count
        for key in self._cluster_set - current.keys():
            key[0].labels(*key[1:]).set(0)
        for key, value in current.items():
            key[0].labels(*key[1:]).set(value)
        self._cluster_set |= current.keys()
        self.cluster_refresh.set(seconds)
        self.leader.set(1)

    def clear_cluster(self) -> None:
        """This process no longer leads: its cluster-wide series go (to 0 first, for the other processes of a
        multi-process server, where the most recent value of a series is what a scrape shows)."""
        for key in self._cluster_set:
            key[0].labels(*key[1:]).set(0)
        if not self.multiprocess:
            for metric in (self.backlog, self.backlog_age, self.idle, self.running):
                metric.clear()
        self._cluster_set.clear()
        self.leader.set(0)

    # --- exposition ---
    def exposition(self, extra: Iterable[Collector] = ()) -> CollectorRegistry:
        """The registry a scrape renders: this process's metrics (or, with several processes, the sum of every
        process's files) and ``extra`` collectors (``stepline_store_up``)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = CollectorRegistry()
            registry.register(_Forward(self.registry))
        for collector in extra:
            registry.register(collector)
        return registry

    def render(self, accept: str | None, extra: Iterable[Collector] = ()) -> tuple[bytes, str]:
        """The scrape's body and content type (OpenMetrics when the scraper asks for it)."""
        self.flush()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.exposition(extra)), content_type


def resumed_steps(steps: Iterable[Any], due: int, now: int) -> Iterable[tuple[Any, str, int]]:
    """The sleeps, waits and invokes that ended since a resumed run last executed (its steps, as claimed): a sleep, or
    a wait or invoke timing out, whose time came (the execution that follows settles them), and a wait or invoke that
    an event or the child's end completed (stored with an end time at or after the run became due). As
    ``(step record, outcome, end time ms)``: the metrics and the spans of both executors come from here."""
    for s in steps:
        if s.status in ("sleeping", "waiting", "invoking") and s.wake_at is not None and s.wake_at <= now:
            yield s, "completed" if s.status == "sleeping" else "timed_out", s.wake_at
        elif s.kind in ("wait_for_event", "invoke") and s.ended_at is not None and s.ended_at >= due:
            yield s, s.status, s.ended_at


class _Forward(Collector):
    """Collects another registry (so one exposition can add collectors without touching this process's registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


class GaugeCollector(Collector):
    """One unlabelled gauge whose value is read at scrape time (``stepline_store_up``)."""

    def __init__(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        self.name, self.documentation, self.value = name, documentation, value

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, value=self.value())


def process_exited(pid: int) -> None:
    """For a process manager running several server processes: ``pid`` ended, its live gauges stop counting."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


METRIC_NAMES = frozenset({
    "stepline_runs_started_total", "stepline_runs_ended_total", "stepline_run_duration_seconds",
    "stepline_run_start_lag_seconds", "stepline_run_resume_lag_seconds", "stepline_retries_total",
    "stepline_step_attempts_total", "stepline_step_duration_seconds", "stepline_flow_control_total",
    "stepline_events_received_total", "stepline_event_requests_total", "stepline_app_calls_total",
    "stepline_app_call_duration_seconds", "stepline_store_commits_total", "stepline_store_write_ops_total",
    "stepline_store_commit_seconds", "stepline_store_write_retries_total", "stepline_dashboard_streams",
    "stepline_trace_spans_total", "stepline_userland_spans_total", "stepline_build_info", "stepline_cluster_leader",
    "stepline_backlog_runs", "stepline_backlog_oldest_seconds", "stepline_idle_runs", "stepline_running_runs",
    "stepline_cluster_gauges_refresh_seconds", "stepline_store_up",
})  # fmt: skip
