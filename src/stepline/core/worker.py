"""The in-process worker: claims due runs of the functions it defines and executes them concurrently.

It sleeps until it is notified (events sent from this process), another process committed work (SQLite: the
local wake channel, ``stepline.storage.wake``; without one, a ``data_version`` poll every ``change_poll_interval``),
or the next run falls due; at the latest after ``poll_interval``, when it claims anyway (the safety net). Leases
are renewed while runs execute; a worker that dies stops renewing and another worker takes its runs over when the
leases expire.

With pushed notifications (PostgreSQL ``LISTEN``) every transaction that makes work due tells every worker the
earliest due time it created: work due now is claimed at once, later work (sleeps, retries, wait timeouts)
sets a local timer. ``next_due_at`` is then read only at start, when such a timer fires, and at the safety
poll (which also finds the expiring leases of dead workers), not on every wake-up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stepline.core.engine import DEFAULT_RETENTION, PAUSE_CHECK_SECONDS, Engine
from stepline.core.errors import LeaseLost
from stepline.core.executor import Executor
from stepline.core.function import FunctionDef
from stepline.core.ids import new_ulid
from stepline.core.loops import call_in_loop
from stepline.core.scheduler import CronScheduler
from stepline.core.wakeups import WakeState, safety_poll, watches_data_version
from stepline.core.worker_parts import ClaimableFunction, FunctionSource, RunExecutor, StaticFunctions
from stepline.observability import hooks
from stepline.storage.records import ClaimedRun

log = logging.getLogger("stepline.worker")


class Worker:
    def __init__(
        self,
        engine: Engine,
        functions: Iterable[FunctionDef] = (),
        *,
        source: FunctionSource[ClaimableFunction] | None = None,
        executor: Callable[[str], RunExecutor[Any]] | None = None,
        concurrency: int = 200,
        claim_batch: int = 100,
        claim_interval: float = 0.004,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        change_poll_interval: float = 0.002,
        threads: int = 32,
        owner: str | None = None,
        shutdown_grace: float = 10.0,
        retention: dt.timedelta | None = DEFAULT_RETENTION,
        prune_interval: float = 3600.0,
    ) -> None:
        self.engine = engine
        # What runs: the functions given (in-process), or ``source`` (e.g. the server's registry of HTTP functions),
        # executed by ``Executor``, or by what ``executor(owner)`` makes (e.g. the server's ``HttpExecutor``).
        self.source: FunctionSource[ClaimableFunction] = StaticFunctions(functions) if source is None else source
        self._concurrency = concurrency
        self.claim_batch = claim_batch
        # Under load, claims come at most this often (pushed mode): notifications arriving in between are served
        # by one claim of several runs instead of one claim each (with many nodes every NOTIFY wakes every node).
        # A claim after a quiet spell is never delayed, so an idle worker starts new work at once.
        self.claim_interval = claim_interval
        self._last_claim = 0.0
        self._gated_for: object = None  # the function set _gated and _function_ids were derived from
        self._gated: frozenset[str] = frozenset()  # its functions claimed through flow control
        self._function_ids: list[str] = []  # its function ids
        self.lease_ms = int(lease_seconds * 1000)
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.retention = retention  # None: this worker never prunes
        self.prune_interval = prune_interval
        self.change_poll_interval = change_poll_interval
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{new_ulid()[-8:]}"
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stepline-fn")
        self.executor: RunExecutor[Any] = (
            Executor(engine, self.owner, self._threads, {f.id: f for f in functions})
            if executor is None
            else executor(self.owner)
        )
        self._active: dict[str, asyncio.Task[None]] = {}
        self._active_fn: dict[str, str] = {}  # run id -> function id, for the runs in _active
        self._claim_limit = 0  # what the last claim asked for
        self.wakes = WakeState()  # the wake-up decisions (core/wakeups.py)
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watching = False  # not pushed, but the store wakes us on other processes' commits (no fast poll)
        self._commit_wake_pending = False  # a wake-up from watch_commits is scheduled on the loop, not yet run
        self.runs_started = 0  # runs this worker executed first
        self.runs_resumed = 0  # executions of runs begun before (after a sleep, a wait, a retry, another worker)
        self.scheduler = CronScheduler(engine)  # cron functions of this worker (started only if it has some)
        self._scheduled: object = None  # the function set last given to the scheduler
        self._scheduler_task: asyncio.Task[None] | None = None

    # --- wake-ups ---
    def _on_commit(self, due_at: int | None) -> None:
        """``watch_commits`` (the store's thread, after every commit of any process that made work due): wake the
        loop to claim and read the next due time. Under load one scheduled wake-up serves every commit until the
        loop runs it (each costs a cross-thread call otherwise); the claim it makes comes after all of them."""
        if self._commit_wake_pending:
            return
        self._commit_wake_pending = True
        call_in_loop(self._loop, self._commit_woken)

    def _commit_woken(self) -> None:
        self._commit_wake_pending = False
        self._note_due(None)

    def _on_notify(self, due_at: int | None = None) -> None:
        """The store's notification (any thread): work is due at ``due_at`` (None: unknown, look)."""
        call_in_loop(self._loop, self._note_due, due_at)

    def _on_engine_notify(self) -> None:
        """This process wrote something that may have made work due (see ``WakeState.engine_notified``)."""
        if self.wakes.engine_notified():
            self._on_notify(None)

    def _note_due(self, due_at: int | None) -> None:
        if self.wakes.note_due(due_at, self.engine.clock.now_ms()):
            self._wake.set()

    @property
    def functions(self) -> Mapping[str, ClaimableFunction]:
        """The functions this worker runs now."""
        return self.source.functions

    @property
    def concurrency(self) -> int:
        """Most runs executing at once (the source's limit for its current functions, if it has one)."""
        limit = self.source.concurrency
        return self._concurrency if limit is None else limit

    def _claimable(self) -> tuple[list[str], int]:
        """The functions whose runs the next claim may take, and at most how many: every function, up to the free
        slots, or nothing when all slots are taken; the source may narrow both. What it returns also decides
        whether the worker looks for due work at all."""
        free = self.concurrency - len(self._active)
        if free <= 0:
            return [], 0
        self._derive_from_functions()
        narrowed, room = self.source.claimable(self._active_fn.values(), free)
        ids = self._function_ids if narrowed is None else narrowed
        paused = self.engine.paused
        if paused:  # paused functions' runs stay where they are (due, unclaimed) until resumed
            return [f for f in ids if f not in paused], room
        return ids, room

    def _derive_from_functions(self) -> None:
        if self._gated_for is not self.functions:  # once per function set (the source may replace it)
            self._gated_for = self.functions
            self._gated = frozenset(fid for fid, f in self.functions.items() if f.gates_claims)
            self._function_ids = list(self.functions)

    async def _claim_and_spawn(self) -> int:
        await self.source.refresh()
        functions, room = self._claimable()
        self._claim_limit = limit = min(room, self.claim_batch)
        # A claim that left functions out and got less than it asked for did not take everything due: the runs of
        # the functions left out wait for room, and a run that ends (no notification) is what makes it.
        self.wakes.claim_narrowed = len(functions) < len(self.functions)
        if limit <= 0 or not functions:
            return 0
        self._derive_from_functions()
        now = self.engine.clock.now_ms()
        claimed = await self.engine.store.claim_runs(self.owner, functions, now, limit, self.lease_ms, self._gated)
        if claimed and (obs := hooks.current) is not None:
            obs.runs_claimed(claimed, now)
        for c in claimed:
            task = asyncio.create_task(self._execute(c.run.id, c), name=f"stepline-run-{c.run.id}")
            self._active[c.run.id] = task
            self._active_fn[c.run.id] = c.run.function_id
        started = sum(1 for c in claimed if c.run.started_at == now)  # a first claim sets started_at to now
        self.runs_started += started
        self.runs_resumed += len(claimed) - started
        return len(claimed)

    async def _execute(self, run_id: str, claimed: ClaimedRun) -> None:
        try:
            await self.executor.execute(self.functions[claimed.run.function_id], claimed)
        except asyncio.CancelledError:
            pass
        except BaseException:
            log.exception("run %s: the executor failed; the run will be retried when its lease expires", run_id)
        finally:
            # The run may already be executing again in a newer task (its suspension committed and this worker
            # re-claimed it before this task got here): only forget our own entry.
            if self._active.get(run_id) is asyncio.current_task():
                del self._active[run_id]
                del self._active_fn[run_id]
            if self.wakes.run_ended():
                self._wake.set()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            ids = list(self._active)
            if not ids:
                continue
            try:
                now = self.engine.clock.now_ms()
                lost = await self.engine.store.renew_leases(self.owner, ids, now, self.lease_ms)
            except Exception:
                log.exception("renewing leases failed")
                continue
            renewed_until = now + self.lease_ms
            for run_id in ids:
                driver = self.executor.drivers.get(run_id)
                if driver is None:
                    continue
                if run_id in lost:
                    driver.stop = LeaseLost()
                else:
                    driver.lease_until = renewed_until

    async def _watch_paused(self) -> None:
        """Read the paused functions every ``PAUSE_CHECK_SECONDS``, so pauses and resumes made on other nodes reach
        this worker (a running run stops before its next step; a resumed function's runs are claimed at once)."""
        version: int | None = None
        while True:
            await asyncio.sleep(PAUSE_CHECK_SECONDS)
            before = self.engine.paused
            try:
                seen, version = version, self.engine.store.data_version()  # SQLite: nothing committed, nothing to read
                if version is not None and version == seen:
                    continue
                after = await self.engine.refresh_paused(force=True)
            except Exception:
                continue  # the database went away: the worker loop reports it
            if before - after:
                self._claim_wanted = self._reread_due = True
                self._wake.set()

    async def _prune_periodically(self) -> None:
        """Retention: every ``prune_interval`` (first after a minute), delete what is older than ``retention``.
        Several workers may prune at once; deletes are idempotent."""
        if self.retention is None:
            return
        await asyncio.sleep(min(60.0, self.prune_interval))
        while True:
            try:
                result = await self.engine.prune(self.retention)
                if result.runs or result.events:
                    log.info("retention: pruned %s", result)
            except Exception:
                log.exception("pruning failed; will try again")
            await asyncio.sleep(self.prune_interval)

    async def _wait_for_work(self) -> None:
        if self.wakes.pushed:
            await self._wait_pushed()
        else:
            await self._wait_polling()
            self.wakes.polled()

    async def _wait_pushed(self) -> None:
        """Sleep until a notification, the earliest known timer, or the safety poll."""
        loop = asyncio.get_running_loop()
        clock = self.engine.clock
        claimable, _ = self._claimable()
        if self.wakes.wants_next_due(bool(claimable)):
            next_due = await self.engine.store.next_due_at(claimable)
            if self.wakes.learned_next_due(next_due, clock.now_ms()):
                return  # work is due now: claim it
        deadline = loop.time() + safety_poll(self.poll_interval, self.lease_ms)
        while not self._wake.is_set() and not self._stopping:
            left = self.wakes.sleep_for(deadline - loop.time(), clock.now_ms())
            if left <= 0:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                pass
        self.wakes.slept(self._wake.is_set() or self._stopping, clock.now_ms(), loop.time() >= deadline)

    async def _wait_polling(self) -> None:
        loop = asyncio.get_running_loop()
        # With the wake channel, other processes' commits wake this worker: the claim without one is the safety net
        # only (dead workers' leases), as when pushed; without it, every poll_interval.
        timeout = safety_poll(self.poll_interval, self.lease_ms) if self._watching else self.poll_interval
        claimable, room = self._claimable()
        if claimable:
            next_due = await self.engine.store.next_due_at(claimable)
            if next_due is not None:
                timeout = min(timeout, max(0.0, (next_due - self.engine.clock.now_ms()) / 1000))
        deadline = loop.time() + timeout
        # Notice other processes' commits by polling data_version (SQLite without a wake channel).
        poll = watches_data_version(room, self._watching)
        version = self.engine.store.data_version() if poll else None
        while not self._wake.is_set() and not self._stopping:
            left = deadline - loop.time()
            if left <= 0:
                return
            step = left if version is None else min(left, self.change_poll_interval)
            try:
                await asyncio.wait_for(self._wake.wait(), step)
            except TimeoutError:
                pass
            if version is not None and self.engine.store.data_version() != version:
                return

    # --- cron ---
    def _sync_scheduler(self, start: bool = True) -> None:
        """Give the scheduler the current function set when it changed; start its task at the first cron."""
        if self.functions is not self._scheduled:
            self._scheduled = self.functions
            self.scheduler.set_functions(self.source.cron_specs())
        if start and self._scheduler_task is None and self.scheduler.has_schedules:
            self._scheduler_task = asyncio.create_task(self.scheduler.run(), name="stepline-cron")

    # --- running ---
    async def run(self) -> None:
        """Run until ``stop()`` is called."""
        self._loop = asyncio.get_running_loop()
        self.engine.add_listener(self._on_engine_notify)
        pushed = self.engine.store.subscribe(self._on_notify)
        self._commit_wake_pending = False
        self._watching = not pushed and self.engine.store.watch_commits(self._on_commit)
        self.wakes.started(pushed)
        renew = asyncio.create_task(self._renew_leases())
        prune = asyncio.create_task(self._prune_periodically())
        watch = asyncio.create_task(self._watch_paused())
        try:
            await self.engine.refresh_paused(force=True)  # before the first claim
        except Exception as exc:  # the database is not there yet: the loop below retries, the watch reads again
            log.warning("worker: reading the paused functions failed: %s: %s", type(exc).__name__, exc)
        backoff = 0.1
        try:
            while not self._stopping:
                self._wake.clear()
                self._sync_scheduler()
                try:
                    self.wakes.turn(self.engine.clock.now_ms())
                    if self.wakes.claim_wanted and self._claimable()[1] > 0:
                        gap = self.wakes.claim_gap(self._last_claim, time.monotonic(), self.claim_interval)
                        if gap > 0:
                            await asyncio.sleep(gap)
                        self._last_claim = time.monotonic()
                        self.wakes.claiming()
                        functions = self.functions
                        claimed = await self._claim_and_spawn()
                        changed = self.functions is not functions  # a refresh changed the set: look at all of it
                        if self.wakes.claimed(claimed, self._claim_limit, changed) and self._claimable()[1] > 0:
                            continue
                    await self._wait_for_work()
                    backoff = 0.1
                except Exception as exc:  # the database went away: keep the process, retry with backoff
                    self.wakes.failed()
                    log.warning("worker loop: %s: %s; retrying in %.1f s", type(exc).__name__, exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            prune.cancel()
            watch.cancel()
            if self._scheduler_task is not None:
                self._scheduler_task.cancel()
                await asyncio.gather(self._scheduler_task, return_exceptions=True)
                self._scheduler_task = None
            self.engine.remove_listener(self._on_engine_notify)
            self.engine.store.unsubscribe(self._on_notify)
            if self._watching:
                self.engine.store.unwatch_commits(self._on_commit)
            await self._shutdown()  # runs still executing keep their leases renewed until they end
            renew.cancel()

    async def run_until_idle(self, max_rounds: int = 10_000) -> None:
        """Execute every run that is due now (and whatever becomes due at the same clock time), then return.

        For tests with a fake clock: advance the clock, call this, assert. Cron schedules due now fire first.
        """
        self._loop = asyncio.get_running_loop()
        await self.engine.refresh_paused(force=True)
        await self.source.refresh()  # so that cron functions added since the last claim are scheduled
        self._sync_scheduler(start=False)
        if self.scheduler.has_schedules:
            await self.scheduler.fire_due()
        for _ in range(max_rounds):
            # A claim made while runs were executing may have raced their final writes (which can create or
            # wake runs): only a claim made with nothing executing, that finds nothing, means idle.
            busy = bool(self._active)
            claimed = await self._claim_and_spawn()
            if self._active:
                await asyncio.wait(list(self._active.values()), return_when=asyncio.FIRST_COMPLETED)
                continue
            if not claimed and not busy:
                return
        raise RuntimeError(f"runs were still due after {max_rounds} rounds")

    def close(self) -> None:
        """Release the thread pool of a worker used only through ``run_until_idle``."""
        self._threads.shutdown(wait=True)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _shutdown(self) -> None:
        if self._active:
            _, pending = await asyncio.wait(list(self._active.values()), timeout=self.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        self._threads.shutdown(wait=False, cancel_futures=True)
