"""The cron scheduler: fires a worker's cron functions once per scheduled time, however many workers run it.

Every ``Worker`` (in-process, and the server's ``HttpWorker``) runs one for the cron functions it executes. It
sleeps on the engine's clock until the next scheduled time of any of them, then calls ``Store.fire_cron``,
which moves the schedule's ``last_fire`` forward and stores the ``inngest/scheduled.timer`` event with the
function's run in one transaction: when several workers or nodes wake for the same time, one fires and the
others find ``last_fire`` already there.

A paused function's scheduled times pass without a run (its schedule moves forward as if fired), so resuming it
starts nothing for the times it was paused: the next run is at its next scheduled time.

Missed times (the workers were down, or the clock jumped): when a worker looks again, only the most recent
scheduled time at or before now fires, once; the earlier ones are skipped and counted in a warning. A schedule
seen for the first time (a new function, or a changed cron) starts at now: it never fires for earlier times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from stepline.core.clock import from_ms, sleep_until
from stepline.core.cron import CronSchedule
from stepline.core.engine import Engine, new_run
from stepline.core.events import StoredEvent
from stepline.core.function import FunctionSpec
from stepline.core.ids import new_ulid, ulid_from
from stepline.core.triggers import MIN_JITTER_MS, CronTrigger
from stepline.storage.records import IngestBatch

__all__ = ["SCHEDULED_TIMER", "CronScheduler", "NotACronFunction", "run_cron_now", "scheduled_batch", "timer_event_id"]

FIRE_RETRY_MS = 5000  # a schedule whose fire failed tries again after this long
log = logging.getLogger("stepline.cron")
SCHEDULED_TIMER = "inngest/scheduled.timer"


def timer_event_id(scheduled_ms: int) -> str:
    """The timer event's ``id``: the scheduled time in RFC 3339 UTC, as Inngest (``2026-01-05T09:00:00Z``)."""
    return from_ms(scheduled_ms).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def scheduled_batch(spec: FunctionSpec, cron: str, scheduled_ms: int, now: int,
                    engine: Engine | None = None) -> IngestBatch:  # fmt: skip
    """The timer event of one scheduled time and the run it starts, for ``spec`` only (no fan-out to other
    functions triggered by the event name). The event's internal id and the run's idempotency key are derived
    from (function, scheduled time), so a retried or raced fire stores nothing twice. With the ``engine``, a run
    whose flow-control key cannot be evaluated is stored as failed (``Engine.plan_run``) instead of raising."""
    digest = hashlib.sha1(f"{spec.id}\x00{cron}\x00{scheduled_ms}".encode()).digest()[:10]
    internal_id = ulid_from(scheduled_ms, digest)
    event_id = timer_event_id(scheduled_ms)
    fire_ms = scheduled_ms + jitter_for(spec, cron, digest)
    event = StoredEvent(
        internal_id=internal_id,
        id=event_id,
        name=SCHEDULED_TIMER,
        data={"cron": cron, "scheduledAt": timer_event_id(scheduled_ms), "fireAt": timer_event_id(fire_ms)},
        user={},
        ts=scheduled_ms,
        v=None,
        received_at=now,
    )
    key = f"cron:{event_id}"
    if engine is not None:
        run = engine.plan_run(spec, event, now, idempotency_key=key)
    else:
        run = new_run(spec, internal_id, now, idempotency_key=key, event=event.as_dict())  # + flow control
    if fire_ms > now and run.failure is None:
        run = dataclasses.replace(run, due_at=fire_ms)  # the jitter: the run starts at its fire time
    return IngestBatch([event], [run])


class NotACronFunction(ValueError):
    """Run-now asked of a function without a cron trigger."""


async def run_cron_now(engine: Engine, function_id: str, cron: str | None = None) -> tuple[str, str]:
    """Start a cron function now, outside its schedule: a fresh ``inngest/scheduled.timer`` event (its own id, the
    time now; no jitter) and the function's run, in one transaction. The schedule is not touched: the next
    scheduled time stays what it was. ``cron``: which of several cron triggers (default: the first). Returns the
    event's internal id and the run's id. Raises UnknownFunctionError, or NotACronFunction."""
    spec = await engine.require_function(function_id)
    crons = [t.cron for t in spec.triggers if isinstance(t, CronTrigger)]
    if not crons:
        raise NotACronFunction(f"function {function_id!r} has no cron trigger: invoke it instead")
    if cron is not None and cron not in crons:
        raise NotACronFunction(f"function {function_id!r} has no cron trigger {cron!r} (it has {', '.join(crons)})")
    now = engine.clock.now_ms()
    internal_id = new_ulid()
    stamp = timer_event_id(now)
    event = StoredEvent(internal_id=internal_id, id=internal_id, name=SCHEDULED_TIMER,
                        data={"cron": cron or crons[0], "scheduledAt": stamp, "fireAt": stamp},
                        user={}, ts=now, v=None, received_at=now)  # fmt: skip
    run = engine.plan_run(spec, event, now)
    await engine.store.ingest(IngestBatch([event], [run]), engine.matcher, now)
    engine.notify()
    return internal_id, run.id


def jitter_for(spec: FunctionSpec, cron: str, seed: bytes) -> int:
    """The delay of one scheduled run, in ms: from 1 s up to the cron's jitter, derived from the scheduled time (so
    every worker computes the same one), as Inngest's deterministic jitter; 0 without a jitter."""
    jitter = max((t.jitter_ms for t in spec.triggers if isinstance(t, CronTrigger) and t.cron == cron), default=0)
    if not jitter:
        return 0
    span = max(jitter - MIN_JITTER_MS, 0)
    return MIN_JITTER_MS + int.from_bytes(seed[:8], "big") % (span + 1)


@dataclass
class _Schedule:
    spec: FunctionSpec
    cron: str
    schedule: CronSchedule
    last: int  # the last scheduled time fired (by any worker) or skipped, as far as this worker knows
    next_at: int  # the next scheduled time after ``last``


class CronScheduler:
    """Fires the cron functions it is given (``set_functions``); ``run`` loops, ``fire_due`` fires what is due."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._specs: dict[str, FunctionSpec] = {}
        self._schedules: list[_Schedule] = []
        self._dirty = False  # the function set changed: read the stored state again before firing
        self._changed = asyncio.Event()
        self.fired = 0  # scheduled times this scheduler fired (tests, metrics)
        self.skipped = 0  # missed scheduled times it skipped

    def set_functions(self, specs: Iterable[FunctionSpec]) -> None:
        """The functions to schedule (those without a cron trigger are ignored); wakes ``run`` if they changed."""
        crons = {s.id: s for s in specs if any(isinstance(t, CronTrigger) for t in s.triggers)}
        if crons != self._specs:
            self._specs = crons
            self._dirty = True
            self._changed.set()

    @property
    def has_schedules(self) -> bool:
        return bool(self._specs)

    def next_fire_at(self) -> int | None:
        """The earliest scheduled time this scheduler will try to fire next (None: nothing scheduled)."""
        return min((s.next_at for s in self._schedules), default=None)

    async def _load(self) -> None:
        now = self.engine.clock.now_ms()
        schedules: list[_Schedule] = []
        for spec in self._specs.values():
            crons = {t.cron: t.schedule for t in spec.triggers if isinstance(t, CronTrigger)}
            initial = {cron: sched.latest_at_or_before(now) for cron, sched in crons.items()}
            stored = await self.engine.store.init_cron_schedules(spec.id, initial)
            for cron, sched in crons.items():
                last = stored.get(cron, initial[cron])
                schedules.append(_Schedule(spec, cron, sched, last, sched.next_after(last)))
        self._schedules = schedules
        self._dirty = False

    async def fire_due(self) -> int:
        """Fire every schedule whose next time has come (the most recent due time of each); returns how many
        this call fired (a time another worker fired first is not counted)."""
        if self._dirty:
            await self._load()
        now = self.engine.clock.now_ms()
        fired = 0
        for s in self._schedules:
            if s.next_at > now:
                continue
            latest = s.schedule.latest_at_or_before(now)
            if latest > s.last and s.spec.id in await self.engine.refresh_paused():
                # Paused: the time passes without a run (stored, so no node fires it, or a burst, on resume).
                await self.engine.store.fire_cron(s.spec.id, s.cron, latest, IngestBatch([], []), self.engine.matcher,
                                                  now)  # fmt: skip
                s.last = latest
            if latest > s.last:
                batch = scheduled_batch(s.spec, s.cron, latest, now, self.engine)
                try:
                    won = await self.engine.store.fire_cron(s.spec.id, s.cron, latest, batch, self.engine.matcher, now)
                except Exception:  # one schedule failing (a bad function config, say) must not hold the others
                    log.exception("function %s, cron %r: firing %s failed; retrying in %d s", s.spec.id, s.cron,
                                  timer_event_id(latest), FIRE_RETRY_MS // 1000)  # fmt: skip
                    s.next_at = now + FIRE_RETRY_MS
                    continue
                if won:
                    fired += 1
                    missed = s.schedule.count_between(s.last, latest)
                    if missed:
                        self.skipped += missed
                        log.warning(
                            "function %s, cron %r: skipped %d missed scheduled time(s) between %s and %s; fired "
                            "only the most recent, %s", s.spec.id, s.cron, missed, timer_event_id(s.last),
                            timer_event_id(latest), timer_event_id(latest),
                        )  # fmt: skip
                s.last = latest
            s.next_at = s.schedule.next_after(s.last)
        if fired:
            self.fired += fired
            self.engine.notify()
        return fired

    async def run(self) -> None:
        """Fire schedules as they fall due, until cancelled. Sleeps on the engine's clock (a FakeClock wakes it
        when advanced); with no schedules it only waits for ``set_functions``."""
        backoff = 0.1
        while True:
            self._changed.clear()
            try:
                await self.fire_due()
                backoff = 0.1
            except Exception as exc:  # the database went away: retry, reloading the stored state
                self._dirty = bool(self._specs)
                log.warning("cron scheduler: %s: %s; retrying in %.1f s", type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            await self._sleep(self.next_fire_at())

    async def _sleep(self, until: int | None) -> None:
        waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._changed.wait())}
        if until is not None:
            waits.add(asyncio.ensure_future(sleep_until(self.engine.clock, until)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
