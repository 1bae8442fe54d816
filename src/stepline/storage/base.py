"""The one storage interface every backend implements (SQLite now, PostgreSQL next).

Every method is a single transaction. Times are unix milliseconds passed in by the caller (``now``), so
tests drive time with a fake clock. Writes on a leased run name the ``owner``; a write from a worker that no
longer holds the lease returns ``WriteOutcome("lost")`` and changes nothing except first-write-wins memos.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from stepline.storage.records import (
    RUN_LOG_LIMIT,
    RUN_SPAN_LIMIT,
    STEP_ATTEMPT_LIMIT,
    AppRecord,
    CancellationRecord,
    ChildRun,
    ClaimedRun,
    ClusterGauges,
    ClusterLease,
    EventRun,
    ExpressionErrorRecord,
    FunctionRecord,
    IngestBatch,
    IngestResult,
    NewRealtimeMessage,
    NewRun,
    PruneResult,
    RealtimeRow,
    RunCount,
    RunFilter,
    RunFinish,
    RunLogLine,
    RunLogs,
    RunRecord,
    RunSpan,
    RunStatsRow,
    RunWait,
    StepAttempt,
    StepRecord,
    StepUpdate,
    StoredEvent,
    WaitMatcher,
    WriteOutcome,
)
from stepline.storage.states import IdleReason


class Store(abc.ABC):
    """Durable state of events, functions, runs, steps and waits."""

    registry_check_seconds: float = 0.0  # how long an engine may use its cached function registry unchecked
    # True: the engine plans sends with its cached registry without reading the version first, and lets the ingest
    # transaction check it (``IngestBatch.registry_version``): one read fewer per send where that check is cheap.
    registry_checked_in_ingest: bool = False
    marker_poll_seconds: float = 0.01  # how often waiters read ``change_marker`` (core/waiting.py)

    # --- lifecycle ---
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending writes and release connections."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The highest migration applied."""

    # --- functions ---
    @abc.abstractmethod
    async def register_functions(self, app_id: str, functions: list[FunctionRecord], now: int) -> int:
        """Replace the app's functions with these; returns the new registry version."""

    @abc.abstractmethod
    async def registry_version(self) -> int:
        """A number that changes whenever any function registration changes."""

    @abc.abstractmethod
    async def list_functions(self) -> list[FunctionRecord]:
        """Every registered function of every app."""

    # --- events and runs ---
    @abc.abstractmethod
    async def ingest(self, batch: IngestBatch, matcher: WaitMatcher, now: int) -> IngestResult:
        """Store events, create their runs (skipping held idempotency keys), resolve matching waits. Raises
        StaleRegistryError, storing nothing, if ``batch.registry_version`` is set and is not the registry's
        current version."""

    @abc.abstractmethod
    async def event_cursor(self) -> int | str:
        """An opaque position in the event stream: a wait started now matches only events stored after it
        (SQLite: the newest event sequence number; PostgreSQL: a transaction snapshot)."""

    @abc.abstractmethod
    async def claim_runs(
        self,
        owner: str,
        function_ids: list[str],
        now: int,
        limit: int,
        lease_ms: int,
        gated_ids: frozenset[str] | set[str] = frozenset(),
    ) -> list[ClaimedRun]:
        """Lease up to ``limit`` due, unleased runs of these functions; queued runs become running.

        Runs of ``gated_ids`` (functions with concurrency limits or priority) are taken in priority order and only
        while each of their concurrency keys has a free slot (a slot is held by a leased run); a run whose key is
        full stays unclaimed, says why in its idle reason, and becomes due again when a holder of that key drops
        its lease (or, failing that, when the earliest holder's lease expires)."""

    @abc.abstractmethod
    async def next_due_at(self, function_ids: list[str]) -> int | None:
        """The earliest time a run of these functions has work due (or a lease on due work expires)."""

    def data_version(self) -> int | None:
        """A value that changes when another connection commits, if the backend offers one cheaply."""
        return None

    def subscribe(self, callback: Callable[[int | None], None]) -> bool:
        """Call ``callback`` (from any thread) whenever a transaction (of any process) makes work due, now or
        later: new runs, woken runs, sleeps, retries, wait timeouts, released leases. It is passed the earliest
        due time (unix ms) that transaction created, or None when that is unknown (anything may be due or
        scheduled, e.g. after the backend reconnected: read ``next_due_at``). Lease expiries of dead workers
        are not notified. Returns False if the backend cannot push such notifications (the worker then polls
        ``data_version``)."""
        return False

    def unsubscribe(self, callback: Callable[[int | None], None]) -> None:  # noqa: B027 - optional hook
        """Stop calling ``callback``."""

    def watch_commits(self, callback: Callable[[int | None], None]) -> bool:
        """For backends that cannot ``subscribe``: call ``callback`` (from any thread) soon after a transaction of
        any process made work due, with the earliest due time it created (None: unknown, look), as a hint to read
        ``next_due_at`` and claim, instead of polling ``data_version``. Returns False if the backend cannot (SQLite
        can: its local wake channel, ``stepline.storage.wake``); a worker then polls ``data_version`` quickly,
        else only slowly, as a safety net."""
        return False

    def unwatch_commits(self, callback: Callable[[int | None], None]) -> None:  # noqa: B027 - optional hook
        """Stop calling ``callback``."""

    @abc.abstractmethod
    async def renew_leases(self, owner: str, run_ids: list[str], now: int, lease_ms: int) -> list[str]:
        """Extend the owner's leases; returns the ids whose lease was no longer held."""

    @abc.abstractmethod
    async def release_run(self, run_id: str, owner: str, due_at: int) -> None:
        """Give a leased run back (worker shutting down) so another worker takes it at ``due_at``."""

    @abc.abstractmethod
    async def record_step(
        self, run_id: str, owner: str, update: StepUpdate, matcher: WaitMatcher, now: int
    ) -> WriteOutcome:
        """Write a step's state on a leased, running run. Memo states are first-write-wins; events in
        ``update.emit`` are stored in the same transaction as the memo."""

    @abc.abstractmethod
    async def suspend_run(
        self,
        run_id: str,
        owner: str,
        pending: list[StepUpdate],
        idle_reason: IdleReason,
        matcher: WaitMatcher,
        now: int,
        max_due_at: int | None = None,
        attempt: int | None = None,
    ) -> WriteOutcome:
        """The run has no more work now: store its pending steps, waits and invoked children, set its next
        due time to the earliest wake time (capped at ``max_due_at``; now if a wait is already satisfied),
        and drop the lease. ``attempt``: the function-level attempt the run resumes at (None: unchanged; 0 when
        the execution reached a new step, which starts a new stretch of code with all its retries)."""

    @abc.abstractmethod
    async def wait_for_signal(
        self, run_id: str, owner: str, update: StepUpdate, signal: str, replace: bool, now: int
    ) -> WriteOutcome:
        """Register a leased run's step as waiting for ``signal`` (``update``: its ``waiting`` state, ``wake_at`` the
        timeout), in one transaction, at once (not at the suspension): a signal sent from then on resumes it, one sent
        before found nothing. Raises SignalConflict when another live wait listens for the same signal, unless
        ``replace``: that wait then stops listening (its step stays waiting until its timeout). A step that already
        has a result registers nothing (the outcome's step is that result)."""

    @abc.abstractmethod
    async def send_signal(self, signal: str, data: Any, now: int) -> str | None:
        """Resume the run waiting for ``signal``: its step completes with ``{"signal": signal, "data": data}`` and the
        run is due now, in one transaction. Returns that run's id, or None when no live run waits for it."""

    @abc.abstractmethod
    async def retry_run(
        self,
        run_id: str,
        owner: str,
        due_at: int,
        error: dict[str, object],
        now: int,
        logs: RunLogs | None = None,
        attempt: int | None = None,
    ) -> WriteOutcome:
        """A function-level error with attempts left: set the attempt (``attempt``, or one more than the stored
        one when None), run again at ``due_at``. ``logs``: the run's last captured log lines, stored in the same
        transaction (as ``StepUpdate.logs`` and ``RunFinish.logs`` are by the other writes)."""

    @abc.abstractmethod
    async def finish_run(
        self, run_id: str, owner: str | None, finish: RunFinish, matcher: WaitMatcher, now: int
    ) -> WriteOutcome:
        """End a run (completed, failed or cancelled). ``owner=None`` ends it whoever holds it (cancel by
        API). Also stores follow-up system events with their runs, and resolves a parent's invoke step."""

    # --- retention ---
    @abc.abstractmethod
    async def prune(
        self,
        now: int,
        default_cutoff: int,
        cutoffs: dict[str, int],
        batch_size: int = 1000,
        progress: Callable[[PruneResult], None] | None = None,
    ) -> PruneResult:
        """Delete ended runs that ended before their function's cutoff (``cutoffs`` by function id, else
        ``default_cutoff``) with their steps, then events older than ``default_cutoff`` that no run references,
        then expired idempotency keys. Works in transactions of at most ``batch_size`` rows each, calling
        ``progress`` with the totals so far after each one."""

    # --- reads ---
    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None: ...

    @abc.abstractmethod
    async def list_runs(self, flt: RunFilter) -> list[RunRecord]: ...

    @abc.abstractmethod
    async def list_steps(self, run_id: str) -> list[StepRecord]:
        """Steps of a run in the order they were first recorded."""

    @abc.abstractmethod
    async def list_run_logs(self, run_id: str, limit: int = RUN_LOG_LIMIT + 1) -> list[RunLogLine]:
        """The first ``limit`` log lines of a run in the order they were emitted (with ``seq``). Lines are written
        by the run's own writes, at most ``RUN_LOG_LIMIT`` of them, then one line counting the dropped records."""

    @abc.abstractmethod
    async def list_step_attempts(self, run_id: str, limit: int = STEP_ATTEMPT_LIMIT) -> list[StepAttempt]:
        """The attempts of the run's steps that were attempted more than once, by step id then attempt."""

    @abc.abstractmethod
    async def get_run_wait(self, run_id: str) -> RunWait | None:
        """What the run waited for before it started when that was a gate (throttle, concurrency, a paused
        function...); ``None`` when it started at once, was only queued, or has not started."""

    @abc.abstractmethod
    async def list_run_waits(self, run_ids: list[str]) -> dict[str, RunWait]:
        """``get_run_wait`` of many runs at once (a page of them): only the runs that waited on a gate."""

    @abc.abstractmethod
    async def run_stats(self, res: int, since: int, function_id: str | None = None) -> list[RunStatsRow]:
        """The dashboard's chart data: per period of ``res`` ms (60000 or 3600000) from the period holding ``since``,
        oldest first (periods without runs are absent), for every function or for one."""

    @abc.abstractmethod
    async def list_child_runs(self, run_id: str, limit: int = 200) -> list[ChildRun]:
        """The runs the run invoked (``step.invoke``), oldest first."""

    @abc.abstractmethod
    async def get_event(self, internal_id: str) -> StoredEvent | None: ...

    # --- hardening: expression errors, dashboard sessions, login throttle (docs/security.md) ---
    @abc.abstractmethod
    async def list_expression_errors(self) -> list[ExpressionErrorRecord]:
        """The last failure per (function, place) of the expressions met while planning runs
        (``IngestBatch.expression_failures``, written by ``ingest``), with counts."""

    @abc.abstractmethod
    async def create_dashboard_session(self, sid: str, expires_at: int, now: int) -> None:
        """Store a dashboard login (and delete expired ones)."""

    @abc.abstractmethod
    async def revoke_dashboard_session(self, sid: str, now: int) -> None:
        """Log a session out, for every node, for good."""

    @abc.abstractmethod
    async def dashboard_session_valid(self, sid: str, now: int) -> bool:
        """Whether the session exists, has not expired and has not been revoked."""

    @abc.abstractmethod
    async def add_login_failure(self, address: str, now: int) -> int:
        """Count a failed dashboard login from ``address`` in the current minute; returns the count so far."""

    @abc.abstractmethod
    async def login_failures(self, address: str, now: int) -> int:
        """Failed dashboard logins from ``address`` in the current minute (all nodes)."""

    @abc.abstractmethod
    async def list_events(self, name: str | None, limit: int, before: str | None = None,
                          max_bytes: int = 8 * 1024 * 1024) -> list[StoredEvent]:  # fmt: skip
        """Newest first (in the order they were stored). ``before``: paging, only events stored before the one
        with this internal id (none if no event has it). At most ``limit`` events, and the page stops before the
        event whose data would take it past ``max_bytes`` (it holds at least one): what a page costs to read and
        serve stays bounded whatever the events hold."""

    @abc.abstractmethod
    async def find_events(self, pattern: str | None, limit: int, before: str | None = None, *,
                          include_internal: bool = False,
                          max_bytes: int = 8 * 1024 * 1024) -> list[StoredEvent]:  # fmt: skip
        """As ``list_events``, for the events whose name matches ``pattern`` (``*`` matches any characters,
        ``app/*``; None: any name), without the engine's own ``stepline/*`` and ``inngest/*`` events unless
        ``include_internal`` or the pattern itself starts with one of those prefixes. Without a pattern (and with
        a prefix pattern over dense names) the page is read from an index in event order; a pattern that matches
        few events reads the events stored after the last of them."""

    @abc.abstractmethod
    async def runs_of_events(self, event_ids: list[str]) -> dict[str, list[EventRun]]:
        """The runs each of these events started (by the event's internal id), oldest first, in one read."""

    # --- paused functions (docs/state_machine.md) ---
    @abc.abstractmethod
    async def pause_function(self, function_id: str, now: int) -> bool:
        """Pause a function for every node: its runs are still created but workers stop claiming them (and cron
        stops firing it) until ``resume_function``. Kept apart from the registry, so re-registering the function
        (an app re-sync) does not un-pause it. Returns False if it was paused already (its pause time is kept)."""

    @abc.abstractmethod
    async def resume_function(self, function_id: str, now: int) -> bool:
        """Un-pause a function; its held runs are due and workers of every process are told (as for new work).
        Returns False if it was not paused."""

    @abc.abstractmethod
    async def paused_functions(self) -> dict[str, int]:
        """The paused functions with the time each was paused (unix ms)."""

    # --- apps (synced over HTTP by the server) ---
    @abc.abstractmethod
    async def save_app(self, app: AppRecord) -> None:
        """Insert or update the app with this URL (an existing app keeps its ``created_at``)."""

    @abc.abstractmethod
    async def get_app(self, url: str) -> AppRecord | None: ...

    @abc.abstractmethod
    async def list_apps(self) -> list[AppRecord]:
        """Every app, oldest first."""

    @abc.abstractmethod
    async def delete_app(self, url: str) -> None:
        """Forget the app and, unless another app URL has the same app id, that app id's functions (bumping the
        registry version when functions were removed), in one transaction. Unknown URLs are ignored."""

    # --- cron schedules (core/scheduler.py) ---
    @abc.abstractmethod
    async def init_cron_schedules(self, function_id: str, initial: dict[str, int]) -> dict[str, int]:
        """Start tracking the function's cron expressions, the keys of ``initial``: an expression not tracked yet
        gets ``last_fire = initial[cron]`` (its most recent scheduled time at or before now, so a new schedule
        never fires for times before it was first seen); tracked ones keep theirs; the function's other
        expressions are forgotten (a changed cron starts afresh). Returns ``{cron: last_fire}``."""

    @abc.abstractmethod
    async def fire_cron(
        self, function_id: str, cron: str, scheduled_ms: int, batch: IngestBatch, matcher: WaitMatcher, now: int
    ) -> bool:
        """Fire one scheduled time: in one transaction, move the schedule's ``last_fire`` forward to
        ``scheduled_ms`` and, only if it was earlier, ingest ``batch`` (the timer event and the function's run).
        Returns whether this call fired it; of several workers racing the same time exactly one gets True."""

    # --- runs created directly (rerun) ---
    @abc.abstractmethod
    async def create_run(
        self, run: NewRun, steps: list[StepRecord], now: int, idle_reason: IdleReason | None = None
    ) -> None:
        """Insert one queued run without any idempotency check, with its cancel waits, and a copy of ``steps``
        (their ``run_id`` is replaced, their order kept) as its memo: claiming the run returns them.
        ``idle_reason`` is shown until a worker first runs it. The run's events must already be stored."""

    @abc.abstractmethod
    async def start_endpoint_run(self, run: NewRun, owner: str, lease_until: int, now: int) -> bool:
        """Insert a run that an app is already running (a durable endpoint, sync checkpointing): ``running``,
        leased by ``owner`` until ``lease_until`` and due then, so a worker resumes it if the app never ends it.
        The run's id is the app's; False (nothing written) when a run with this id exists. Its event must be stored."""

    # --- dashboard reads ---
    @abc.abstractmethod
    async def change_marker(self) -> object:
        """A cheap value (no table read) that changes whenever any connection or node commits a write; the
        dashboard polls it once per server to push live updates."""

    @abc.abstractmethod
    async def run_counts(self, ended_after: int, recent_after: int) -> list[RunCount]:
        """Per function and status: the live (queued, running) runs, and the runs that ended at or after
        ``ended_after`` (``recent``: at or after ``recent_after``, a later time)."""

    # --- realtime (stepline/realtime/, docs/realtime.md) ---
    @abc.abstractmethod
    async def publish_realtime(self, origin: str, messages: list[NewRealtimeMessage]) -> list[RealtimeRow]:
        """Store published messages (in order, one transaction) and return them with their ids, which increase with
        each message. Subscribers in other processes learn of them: see ``subscribe_realtime``."""

    @abc.abstractmethod
    async def realtime_messages_after(self, after_id: int, limit: int) -> list[RealtimeRow]:
        """Up to ``limit`` stored messages with an id above ``after_id``, of any channel, oldest first."""

    @abc.abstractmethod
    async def realtime_message(self, message_id: int) -> RealtimeRow | None: ...

    @abc.abstractmethod
    async def realtime_replay(self, keys: list[tuple[str, str]], after_id: int, since: int,
                              limit: int) -> list[RealtimeRow]:  # fmt: skip
        """The newest ``limit`` messages of these (channel, topic) pairs with an id above ``after_id`` and created at
        or after ``since`` (unix ms), oldest first."""

    @abc.abstractmethod
    async def realtime_last_id(self) -> int:
        """The highest message id stored (0 if none)."""

    @abc.abstractmethod
    async def prune_realtime(self, before: int) -> int:
        """Delete the messages created before ``before`` (unix ms), in batches; returns how many."""

    @abc.abstractmethod
    async def realtime_secret(self, name: str, now: int) -> str:
        """The secret called ``name``, made (random, 256 bits, hex) by the first caller of any process or node."""

    def subscribe_realtime(self, callback: Callable[[str], None]) -> bool:
        """Call ``callback`` (from any thread) with the notification of every ``publish_realtime`` of any process:
        a JSON text ``{"id", "o": origin, "m": [channel, topic, kind, payload, created_at]}`` or, for a message too
        large to travel in it, ``{"id", "o"}`` (read it with ``realtime_message``); ``""`` after the backend
        reconnected (notifications may have been missed: read ``realtime_messages_after``). Returns False when the
        backend cannot push these; subscribers then read ``realtime_messages_after`` when ``data_version`` changes."""
        return False

    def unsubscribe_realtime(self, callback: Callable[[str], None]) -> None:  # noqa: B027 - optional hook
        """Stop calling ``callback``."""

    @abc.abstractmethod
    async def run_statuses(self, run_ids: list[str]) -> dict[str, str]:
        """The status of each of these runs that exists (one read for every waiter of a process)."""

    # --- bulk cancellations requested through the REST API ---
    @abc.abstractmethod
    async def save_cancellation(self, cancellation: CancellationRecord) -> None: ...

    @abc.abstractmethod
    async def list_cancellations(self, limit: int = 100) -> list[CancellationRecord]:
        """Newest first."""

    # --- observability (docs/metrics.md, docs/tracing.md, docs/alerts.md) ---
    @abc.abstractmethod
    async def ping(self) -> None:
        """One cheap read, off the event loop (``stepline_store_up``); raises when the database cannot answer."""

    @abc.abstractmethod
    async def take_cluster_lease(self, name: str, owner: str, now: int, ttl_ms: int) -> ClusterLease | None:
        """Hold the lease ``name`` until ``now + ttl_ms`` if nobody else holds it (its holder's time ran out, or
        ``owner`` holds it already: then it is extended). Returns the lease, with the state its holders saved, or
        None when another owner holds it. Of several processes racing, exactly one gets it."""

    @abc.abstractmethod
    async def save_cluster_lease_state(self, name: str, owner: str, state: dict[str, Any], now: int) -> bool:
        """Store the holder's state with the lease; False (nothing stored) if ``owner`` no longer holds it."""

    @abc.abstractmethod
    async def release_cluster_lease(self, name: str, owner: str) -> None:
        """Give the lease up at once (its state stays for the next holder). Ignored if ``owner`` does not hold it."""

    @abc.abstractmethod
    async def cluster_gauges(self, now: int) -> ClusterGauges:
        """Per function: runs due now that no live lease holds (the backlog, with the oldest due time), live runs
        not due before a later time by idle reason, and runs a live lease holds. Reads only live runs (indexed), so
        its cost grows with them, not with the runs kept after they ended."""

    @abc.abstractmethod
    async def save_run_spans(self, spans: dict[str, list[dict[str, Any]]], now: int) -> dict[str, int]:
        """Append userland spans to their runs (by run id), at most ``RUN_SPAN_LIMIT`` per run, in one transaction.
        Returns how many spans of each run were stored: 0 for a run that does not exist or is full."""

    @abc.abstractmethod
    async def list_run_spans(self, run_id: str, limit: int = RUN_SPAN_LIMIT) -> list[RunSpan]:
        """The run's userland spans in the order they were received."""
