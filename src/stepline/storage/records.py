"""Plain records passed between the engine and a Store. No behaviour, no I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from stepline.storage.states import IdleReason, RunStatus

# "skipped": a run flow control dropped when its event arrived (rate limit, singleton skip); it never ran.
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "skipped"})
StepStatus = Literal["completed", "failed", "retrying", "sleeping", "waiting", "invoking"]
MEMO_STATUSES: frozenset[str] = frozenset({"completed", "failed"})

RUN_LOG_LIMIT = 1000  # log lines stored per run; one more line counts the records dropped beyond it
RUN_LOG_MESSAGE_LIMIT = 8192  # characters kept of one log message (with its traceback)

# (expression or None, the waiting run's trigger event, the candidate event) -> does it match?
WaitMatcher = Callable[[str | None, dict[str, Any], dict[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An accepted event as the engine stores and passes it around."""

    internal_id: str
    id: str
    name: str
    data: dict[str, Any]
    user: dict[str, Any]
    ts: int
    v: str | None
    received_at: int
    # The W3C ``traceparent`` of the traced code that sent it (not part of the event users see): the runs it starts
    # continue that trace (observability/tracing.py).
    traceparent: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The event as user code and CEL expressions see it."""
        out: dict[str, Any] = {
            "name": self.name,
            "data": self.data,
            "id": self.id,
            "ts": self.ts,
            "user": self.user,
        }
        if self.v is not None:
            out["v"] = self.v
        return out


@dataclass(frozen=True, slots=True)
class FunctionRecord:
    id: str  # "<app_id>-<slug>"
    app_id: str
    slug: str
    name: str
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WaitSpec:
    """Match a later event named ``event_name`` (optionally filtered by a CEL expression)."""

    event_name: str
    expression: str | None
    expires_at: int


@dataclass(frozen=True, slots=True)
class ConcurrencySlot:
    """One concurrency key of a run: it takes a slot of ``key`` while a worker leases it."""

    key: str  # the slot key ("fn:<function>:<value>", "env:<expression>:<value>", ...)
    limit: int
    shown: str  # the key's value as users see it (the function id when the key has no expression)


@dataclass(frozen=True, slots=True)
class ThrottleKey:
    key: str  # the GCRA bucket ("throttle:<function>:<value>")
    limit: int
    period_ms: int
    burst: int


@dataclass(frozen=True, slots=True)
class RateLimitKey:
    key: str  # the GCRA bucket ("rate:<function>:<value>")
    limit: int
    period_ms: int


@dataclass(frozen=True, slots=True)
class DebounceKey:
    key: str  # the open run's key ("debounce:<function>:<value>")
    period_ms: int
    timeout_ms: int | None


@dataclass(frozen=True, slots=True)
class BatchKey:
    key: str  # the open batch's key ("batch:<function>:<value>")
    max_size: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class SingletonKey:
    key: str  # "singleton:<function>:<value>"
    mode: str  # "skip" | "cancel"


@dataclass(frozen=True, slots=True)
class RunFlow:
    """A run's flow-control keys, evaluated from its trigger event when it is planned (``core/flow.py``)."""

    concurrency: tuple[ConcurrencySlot, ...] = ()
    priority_ms: int = 0  # moves the run ahead (+) or behind (-) of others due at the same time
    throttle: ThrottleKey | None = None
    rate_limit: RateLimitKey | None = None
    debounce: DebounceKey | None = None
    batch: BatchKey | None = None
    singleton: SingletonKey | None = None
    gates_claims: bool = False  # concurrency or priority: claimed through the flow-controlled path


@dataclass(frozen=True, slots=True)
class NewRun:
    id: str
    function_id: str
    event_id: str  # internal id of the triggering event
    idempotency_key: str | None
    created_at: int
    due_at: int
    start_deadline: int | None = None
    cancel_waits: tuple[WaitSpec, ...] = ()
    parent_run_id: str | None = None
    parent_step_id: str | None = None
    batch: tuple[str, ...] = ()
    flow: RunFlow | None = None
    # A run that failed before it started (a key expression could not be evaluated): stored as ``failed`` with
    # this error, its end events (``follow_up``) ingested in the same transaction; no flow-control gate applies.
    failure: dict[str, Any] | None = None
    follow_up: IngestBatch | None = None


@dataclass(frozen=True, slots=True)
class ExpressionFailure:
    """A function's expression that could not be evaluated while events were planned (a trigger's ``if``, a
    batch ``if``, a key): stored with the ingest (``expression_errors``), shown on the function."""

    function_id: str
    place: str  # "trigger", "idempotency", "concurrency key", "throttle key", "batch if", ...
    expression: str
    message: str
    count: int = 1  # failures this record stands for (the engine reports each place at most every few seconds)


@dataclass(slots=True)
class IngestBatch:
    """Events to store and the runs they start, applied in one transaction."""

    events: list[StoredEvent]
    runs: list[NewRun]
    expression_failures: list[ExpressionFailure] = field(default_factory=list)
    # The function registry version the runs were planned with: the ingest transaction checks it is still the
    # current one and raises StaleRegistryError (storing nothing) if not. None: not checked.
    registry_version: int | None = None


class StaleRegistryError(RuntimeError):
    """An ingest was planned with a function registry that changed since (``IngestBatch.registry_version``)."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    event_ids: list[str]
    created_run_ids: list[str]
    skipped_run_ids: list[str]  # runs not created because their idempotency key was held
    woken_run_ids: list[str]  # runs whose wait matched one of the events
    cancelled_run_ids: list[str]
    flow_skipped_run_ids: list[str] = field(default_factory=list)  # stored as "skipped" (rate limit, singleton)
    merged_run_ids: list[str] = field(default_factory=list)  # planned runs whose event joined another run instead
    failed_run_ids: list[str] = field(default_factory=list)  # stored as "failed": a key expression failed


@dataclass(slots=True)
class RunRecord:
    id: str
    function_id: str
    event_id: str
    status: RunStatus
    attempt: int
    idle_reason: IdleReason | None
    output: Any
    error: dict[str, Any] | None
    created_at: int
    started_at: int | None
    ended_at: int | None
    start_deadline: int | None
    due_at: int | None
    lease_owner: str | None
    lease_expires_at: int | None
    parent_run_id: str | None
    parent_step_id: str | None
    batch: list[str] | None

    @property
    def ended(self) -> bool:
        """Completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES


@dataclass(slots=True)
class StepRecord:
    run_id: str
    step_id: str
    display_id: str
    kind: str
    status: str
    attempts: int
    output: Any
    error: dict[str, Any] | None
    wake_at: int | None
    started_at: int
    ended_at: int | None
    race: str | None = None  # the race it was started in (parallelMode "race"), a key its steps share

    @property
    def is_memo(self) -> bool:
        return self.status in MEMO_STATUSES


@dataclass(frozen=True, slots=True)
class RealtimeRow:
    """One published realtime message as stored (``realtime_messages``): ``payload`` is its wire JSON without its
    id; ``origin`` is the hub (process) that published it."""

    id: int
    origin: str
    channel: str
    topic: str
    kind: str
    payload: str
    created_at: int


@dataclass(frozen=True, slots=True)
class NewRealtimeMessage:
    """A message to store: as ``RealtimeRow`` before it has an id."""

    channel: str
    topic: str
    kind: str
    payload: str
    created_at: int


@dataclass(slots=True)
class ClaimedRun:
    run: RunRecord
    event: StoredEvent
    events: list[StoredEvent]
    steps: dict[str, StepRecord]  # by hashed step id


@dataclass(frozen=True, slots=True)
class RunLogLine:
    """One logging record emitted by a run's in-process function code (captured by ``core/run_logs.py``)."""

    ts: int  # unix ms, the engine's clock
    level: str  # "INFO", "WARNING", ...
    logger: str  # the logger's name
    message: str  # formatted, with any traceback; at most RUN_LOG_MESSAGE_LIMIT characters (and a note)
    step_id: str | None = None  # the hashed id of the run step whose code logged it; None: the function body
    seq: int = 0  # position in the run's log from 1, set by the store when read


@dataclass(frozen=True, slots=True)
class RunLogs:
    """Log lines captured since the run's previous write, stored in the transaction of the next one."""

    lines: tuple[RunLogLine, ...] = ()
    dropped: int = 0  # records not kept in memory (over the limit): counted in the run's "dropped" line


@dataclass(frozen=True, slots=True)
class StepUpdate:
    """A step's new state. Memo states (completed, failed) are written once: the first write wins."""

    step_id: str
    display_id: str
    kind: str
    status: StepStatus
    attempts: int = 0
    output: Any = None
    error: dict[str, Any] | None = None
    wake_at: int | None = None
    wait: WaitSpec | None = None  # for status "waiting": the event to wait for
    since: int | str = 0  # event_cursor() read when the wait step started: only later events match
    invoke: IngestBatch | None = None  # for status "invoking": the child run and its event
    emit: IngestBatch | None = None  # for step.send_event: events stored with the memo, atomically
    logs: RunLogs | None = None  # the run's log lines captured before this write, stored with it
    race: str | None = None  # the race the step was started in (kept once set)
    # When the attempt this update reports started (unix ms; None: when it is written). A new step's started_at,
    # and the start of the attempt's row in ``step_attempts`` (steps attempted more than once).
    started_at: int | None = None


class SignalConflict(Exception):
    """Another live run waits for this signal (and the new wait does not replace it): only one run at a time waits
    for a signal, as on Inngest."""

    def __init__(self, signal: str, run_id: str) -> None:
        super().__init__(f"signal {signal!r} is already awaited by run {run_id}")
        self.signal = signal
        self.run_id = run_id


class StepResultConflict(Exception):
    """A run's end carried a step result, but that step already has another one: the run must replay it."""


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a write on a leased run found: ok, or why the caller must stop executing the run."""

    status: Literal["ok", "cancelled", "lost"]
    step: StepRecord | None = None  # the stored step, which may be another writer's result
    cancelled_run_ids: tuple[str, ...] = ()  # runs that events stored by this write cancelled (cancel_on)


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs ``list_runs`` returns, newest id first. Unset fields do not filter."""

    status: str | None = None
    function_id: str | None = None
    event_id: str | None = None
    limit: int = 50
    before_id: str | None = None  # paging: runs with an id (ULID) below this one
    app_id: str | None = None  # runs of the app's functions (ids "<app_id>-<slug>"; registered ones by their app)
    created_after: int | None = None  # unix ms, inclusive: created_at >= created_after
    created_before: int | None = None  # unix ms, exclusive: created_at < created_before


@dataclass(slots=True)
class RunFinish:
    status: Literal["completed", "failed", "cancelled"]
    output: Any = None
    error: dict[str, Any] | None = None  # stored as given (what the SDK or the function's code produced)
    # The error as the run-end events carry it (``core.errors.run_end_error``), and a parent's failed invoke step.
    # None: derived from ``error`` by ``Engine.follow_up``.
    event_error: dict[str, Any] | None = None
    # Events the run's end sends beside its system events (a run's defers: ``inngest/deferred.schedule``), each with
    # an ``id`` that makes a retried end start nothing twice; ``Engine.follow_up`` plans them.
    emit: list[Any] = field(default_factory=list)
    follow_up: IngestBatch = field(default_factory=lambda: IngestBatch([], []))  # system events + runs
    may_have_waits: bool = True  # False lets the store skip deleting waits of a run that never had any
    logs: RunLogs | None = None  # the run's last captured log lines, stored with its end
    # Results of the run's last steps not written yet (see StepDriver._hold_back), stored with its end: if one was
    # already recorded with another result (by a worker that lost the lease), the end raises StepResultConflict.
    steps: list[StepUpdate] = field(default_factory=list)


@dataclass(slots=True)
class PruneResult:
    """What a retention pass deleted."""

    runs: int = 0
    steps: int = 0
    events: int = 0
    idempotency_keys: int = 0


@dataclass(frozen=True, slots=True)
class AppRecord:
    """An app the server syncs over HTTP, keyed by its serve URL."""

    url: str  # the app's serve URL (key)
    app_id: str | None  # appName from its last successful register
    sdk: str | None  # "py:v0.5.19", "js:v4.24.0"
    framework: str | None
    app_version: str | None
    checksum: str | None  # sha256 of the last accepted register body
    synced_at: int | None
    error: str | None  # last sync error; None after a successful sync
    created_at: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class CancellationRecord:
    """A bulk cancellation requested through the REST API, and how many live runs it cancelled."""

    id: str  # ULID
    app_id: str
    function_id: str  # the composite "<app_id>-<slug>"
    started_after: int | None  # unix ms, inclusive (run created_at)
    started_before: int  # unix ms, inclusive (run created_at)
    expression: str | None  # CEL over `event` (the run's trigger)
    cancelled: int
    created_at: int


@dataclass(frozen=True, slots=True)
class RunCount:
    """How many runs of a function have a status (dashboard): live runs now, or runs that ended in a window."""

    function_id: str
    status: str
    count: int  # live: all of them; ended: since the window's start
    recent: int  # live: the same; ended: since the shorter, recent window's start


@dataclass(frozen=True, slots=True)
class ExpressionErrorRecord:
    """The last failure of one of a function's expressions at one place, and how often it failed."""

    function_id: str
    place: str
    expression: str
    message: str
    count: int
    first_at: int
    last_at: int


@dataclass(frozen=True, slots=True)
class ClusterLease:
    """A named lease one process of the cluster holds at a time (``Store.take_cluster_lease``)."""

    name: str
    owner: str
    expires_at: int  # unix ms
    state: dict[str, Any] | None  # what its holders keep across holders (alert cursors), None at first


@dataclass(frozen=True, slots=True)
class ClusterGauges:
    """Live runs of the whole cluster, counted by ``Store.cluster_gauges`` (docs/metrics.md defines each)."""

    backlog: list[tuple[str, int, int]]  # (function id, runs due now that nobody executes, oldest due time ms)
    idle: list[tuple[str, str, int]]  # (function id, idle reason kind, runs not due before a later time)
    running: list[tuple[str, int]]  # (function id, runs a live lease holds)


RUN_SPAN_LIMIT = 1000  # userland spans stored per run; more are refused (the SDK is told in partialSuccess)


@dataclass(frozen=True, slots=True)
class RunSpan:
    """One OpenTelemetry span an app's SDK sent for a run (``POST /v1/traces/userland``), as OTLP JSON."""

    run_id: str
    seq: int  # order received, from 1
    received_at: int  # unix ms
    span: dict[str, Any]  # traceId, spanId, parentSpanId (hex), name, kind, times (ns), attributes, ...


INTERNAL_EVENT_PREFIXES = ("stepline/", "inngest/")  # events the engine sends itself (finished runs, timers, audit)


def is_internal_event(name: str) -> bool:
    """Whether an event name (or a name pattern) is one of the engine's own: listed only when asked for."""
    return name.startswith(INTERNAL_EVENT_PREFIXES)


@dataclass(frozen=True, slots=True)
class EventRun:
    """A run an event started, as the events list shows it."""

    run_id: str
    function_id: str
    status: str


STEP_ATTEMPT_LIMIT = 2000  # attempts listed per run (the run page's timeline)


@dataclass(frozen=True, slots=True)
class RunWait:
    """What a run waited for before it started, when that was a gate (``run_waits``): ``kind`` is its idle
    reason's kind at its first claim (``throttled``, ``concurrency``, ``paused``...), from ``since`` (its creation) to
    ``until`` (that claim)."""

    kind: str
    since: int  # unix ms
    until: int

    @property
    def duration_ms(self) -> int:
        return self.until - self.since


@dataclass(frozen=True, slots=True)
class StepAttempt:
    """One attempt of a step attempted more than once (``step_attempts``; a step that ran once is its own row)."""

    step_id: str
    attempt: int  # from 1
    status: str  # "failed" or "completed"
    started_at: int  # unix ms
    ended_at: int
    error: dict[str, Any] | None
    retry_at: int | None  # failed with attempts left: when the next attempt was due


@dataclass(frozen=True, slots=True)
class ChildRun:
    """A run that a run's invoke step started (``step.invoke``)."""

    run_id: str
    parent_step_id: str | None


@dataclass(frozen=True, slots=True)
class RunStatsRow:
    """One period of ``Store.run_stats`` (summed over functions, or of one): counts and histograms (see
    ``storage/sql_stats.py`` for the buckets)."""

    at: int  # the period's start, unix ms
    started: int
    completed: int
    failed: int
    cancelled: int
    durations: tuple[int, ...]  # runs ended in the period, by duration bucket (first claim to end)
    lags: tuple[int, ...]  # runs started in the period, by due-to-start lag bucket
