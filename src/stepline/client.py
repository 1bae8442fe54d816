"""The Stepline client: define functions, send events, run a worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from stepline.core.backoff import Backoff
from stepline.core.clock import Clock
from stepline.core.context import Handler
from stepline.core.engine import Engine, EventInput
from stepline.core.errors import UnknownRunError
from stepline.core.flow import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from stepline.core.function import (
    CancelOn,
    FunctionDef,
    Timeouts,
    TriggerInput,
    build_function,
    failure_function,
)
from stepline.core.worker import Worker
from stepline.realtime import tokens
from stepline.realtime.hub import Subscription
from stepline.realtime.messages import new_message
from stepline.storage import Store, store_from_url
from stepline.storage.records import RunFilter, RunRecord, StepRecord

T = TypeVar("T")


class _LoopThread:
    """A private event loop in a daemon thread, so sync callers can use the async engine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="stepline-client", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Stepline:
    """One app's functions and its connection to a store.

    ``store`` is a Store, a SQLite path, or None for ``STEPLINE_DB`` / ``.stepline/stepline.db``.
    """

    def __init__(self, app_id: str, store: Store | str | os.PathLike[str] | None = None, *,
                 clock: Clock | None = None) -> None:  # fmt: skip
        if not app_id or not isinstance(app_id, str):
            raise ValueError("app_id must be a non-empty string")
        self.app_id = app_id
        self.store: Store = store if isinstance(store, Store) else store_from_url(store)
        self.engine = Engine(self.store, clock)
        self.functions: dict[str, FunctionDef] = {}
        self._ready = False
        self._ready_lock: asyncio.Lock | None = None
        self._portal: _LoopThread | None = None
        self._portal_lock = threading.Lock()

    # --- definitions ---
    def function(
        self,
        *,
        id: str,
        trigger: TriggerInput | Sequence[TriggerInput],
        name: str | None = None,
        retries: int = 4,
        backoff: Backoff | None = None,
        on_failure: Handler | None = None,
        cancel_on: Sequence[CancelOn | Mapping[str, Any]] = (),
        timeouts: Timeouts | Mapping[str, Any] | None = None,
        idempotency: str | None = None,
        retention: str | int | float | dt.timedelta | None = None,
        concurrency: int | Concurrency | Mapping[str, Any] | Sequence[Concurrency | Mapping[str, Any]] | None = None,
        throttle: Throttle | Mapping[str, Any] | None = None,
        rate_limit: RateLimit | Mapping[str, Any] | None = None,
        debounce: Debounce | Mapping[str, Any] | None = None,
        priority: Priority | Mapping[str, Any] | None = None,
        batch: Batch | Mapping[str, Any] | None = None,
        singleton: Singleton | Mapping[str, Any] | None = None,
    ) -> Callable[[Handler], FunctionDef]:
        """Declare a durable function. The handler takes ``ctx`` and may be ``async def`` (``ctx: Context``) or
        ``def`` (``ctx: SyncContext``).

        ``trigger``: an event name (``*`` wildcards), ``{"event": ..., "if": CEL}``, or ``{"cron": "[TZ=Zone ]m h
        dom mon dow"}``: a cron function runs once per scheduled time across all workers, with an
        ``inngest/scheduled.timer`` event; after downtime only the most recent missed time fires.

        Flow control (``stepline.flow`` option classes or dicts): ``concurrency`` (a limit, or up to two
        ``Concurrency`` with keys and scopes), ``throttle``, ``rate_limit``, ``debounce``, ``priority``, ``batch``
        (the handler gets ``ctx.events``) and ``singleton``. Invalid options raise ValueError naming the field."""
        flow = {"concurrency": concurrency, "throttle": throttle, "rate_limit": rate_limit, "debounce": debounce,
                "priority": priority, "batch": batch, "singleton": singleton}  # fmt: skip

        def decorate(handler: Handler) -> FunctionDef:
            fn = build_function(
                app_id=self.app_id, slug=id, handler=handler, trigger=trigger, name=name, retries=retries,
                backoff=backoff, idempotency=idempotency, cancel_on=cancel_on, timeouts=timeouts,
                retention=retention, flow=flow,
            )  # fmt: skip
            if fn.id in self.functions:
                raise ValueError(f"function id {id!r} is defined twice in app {self.app_id!r}")
            self.functions[fn.id] = fn
            if on_failure is not None:
                failure = failure_function(fn, on_failure)
                self.functions[failure.id] = failure
            self._ready = False
            return fn

        return decorate

    # --- setup ---
    def use_store(self, store: Store | str | os.PathLike[str]) -> None:
        """Point this client at another store (e.g. the CLI's ``--db``). Only before it is used."""
        if self._ready:
            raise RuntimeError("use_store() must be called before the client is used (before ready/send/worker)")
        self.store = store if isinstance(store, Store) else store_from_url(store)
        self.engine = Engine(self.store, self.engine.clock)

    async def ready(self) -> Engine:
        """Open the store and register this app's functions (once). A client with no functions (a process
        that only sends events) registers nothing, so it never removes another process's functions."""
        if not self._ready:
            await self.store.open()
            if self.functions:
                await self.engine.register(self.app_id, [f.record() for f in self.functions.values()])
            self._ready = True
        return self.engine

    # --- events ---
    async def send(self, events: EventInput | Sequence[EventInput]) -> list[str]:
        """Store events and start the runs they trigger. Returns the events' ids, in order."""
        engine = await self.ready()
        result = await engine.ingest(events)
        return result.event_ids

    def send_sync(self, events: EventInput | Sequence[EventInput]) -> list[str]:
        """``send`` for synchronous code (web handlers, scripts)."""
        return self._call(self.send(events))

    async def send_signal(self, signal: str, data: Any = None) -> str | None:
        """Resume the run waiting for ``signal`` (``ctx.step.wait_for_signal``) with ``data``. Returns that run's id,
        or None when no run waits for it (the signal is not kept for a later wait, as on Inngest)."""
        engine = await self.ready()
        return await engine.send_signal(signal, data)

    def send_signal_sync(self, signal: str, data: Any = None) -> str | None:
        """``send_signal`` for synchronous code."""
        return self._call(self.send_signal(signal, data))

    # --- reading runs ---
    async def get_run(self, run_id: str) -> RunRecord | None:
        """A run's status, output or error, timings and why it is idle."""
        await self.ready()
        return await self.store.get_run(run_id)

    async def runs_for_event(self, event_id: str) -> list[RunRecord]:
        """The runs an event (by the id ``send`` returned) started, oldest first."""
        await self.ready()
        return list(reversed(await self.store.list_runs(RunFilter(event_id=event_id, limit=1000))))

    async def steps(self, run_id: str) -> list[StepRecord]:
        """A run's steps in the order they were first recorded."""
        await self.ready()
        return await self.store.list_steps(run_id)

    async def cancel(self, run_id: str) -> bool:
        engine = await self.ready()
        return await engine.cancel_run(run_id)

    # --- waiting for results ---
    async def wait_for_run(self, run_id: str, timeout: float = 30.0) -> RunRecord:
        """The run once it has ended (completed, failed, cancelled): its ``status``, ``output`` or ``error``.

        Raises ``UnknownRunError`` for an unknown id and ``TimeoutError`` if it has not ended within ``timeout``
        seconds. Waiting costs no query per waiter: see ``core/waiting.py``."""
        engine = await self.ready()
        run = await self.store.get_run(run_id)
        if run is None:
            raise UnknownRunError(f"no run has id {run_id!r}")
        if not run.ended and not await engine.waiters.wait([run_id], timeout):
            raise TimeoutError(f"run {run_id} had not ended after {timeout:g} s")
        ended = await self.store.get_run(run_id)
        if ended is None:
            raise UnknownRunError(f"run {run_id!r} was deleted while waiting for it")
        return ended

    async def send_and_wait(self, events: EventInput | Sequence[EventInput], timeout: float = 30.0
                            ) -> list[RunRecord]:  # fmt: skip
        """Send events, then wait for every run they started to end; returns those runs (oldest first) with their
        ``output`` or ``error``. Raises ``TimeoutError`` if any has not ended within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        engine = await self.ready()
        result = await engine.ingest(events)
        run_ids = list(result.created_run_ids)
        left = max(0.0, deadline - time.monotonic())
        if run_ids and not await engine.waiters.wait(run_ids, left):
            raise TimeoutError(f"the runs of the events sent had not all ended after {timeout:g} s")
        runs = [await self.store.get_run(r) for r in run_ids]
        return [r for r in runs if r is not None]

    # --- realtime ---
    async def publish(self, channel: str, topic: str, data: Any) -> int:
        """Publish a realtime message from outside a function (inside one: ``ctx.publish``). Returns its id."""
        engine = await self.ready()
        msg = new_message(channel, topic, data, engine.clock.now_ms())
        [message_id] = await engine.realtime.publish([msg])
        return message_id

    async def subscribe(self, channel: str, topics: str | Iterable[str], *, since: int | None = None) -> Subscription:
        """Receive the messages published on ``topics`` of ``channel`` (in this process or any other on the same
        database)::

            async with await client.subscribe("csv:job-1", ["progress"], since=0) as sub:
                async for msg in sub:          # msg.data, msg.topic, msg.id, msg.run_id
                    ...

        ``since``: first replay the messages still kept (a few minutes) after this id (0: all of them). A
        subscriber that falls far behind is disconnected: iterating raises ``SubscriptionClosed`` with the reason."""
        engine = await self.ready()
        names = [topics] if isinstance(topics, str) else list(topics)
        return await engine.realtime.subscribe([(channel, t) for t in names], since=since)

    async def realtime_token(self, channel: str, topics: str | Iterable[str],
                             expires_in: float = tokens.DEFAULT_EXPIRY_S) -> str:  # fmt: skip
        """A token a browser (or the npm SDK's ``subscribe``) uses to subscribe to ``topics`` of ``channel`` on the
        Stepline server of this database: ``GET /v1/realtime/sse?token=...`` or the browser script. It is needed
        to connect, not to stay connected; it expires after ``expires_in`` seconds (60 by default)."""
        engine = await self.ready()
        return await engine.realtime.token(channel, [topics] if isinstance(topics, str) else list(topics), expires_in)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError("inside async code, await the async method instead of calling the *_sync one")
        with self._portal_lock:
            if self._portal is None:
                self._portal = _LoopThread()
        return self._portal.call(coro)

    # --- workers ---
    def worker(self, **options: Any) -> Worker:
        """A worker for this app's functions (see ``Worker`` for options). Call ``await client.ready()`` first."""
        return Worker(self.engine, self.functions.values(), **options)

    async def run_worker(self, **options: Any) -> None:
        await self.ready()
        await self.worker(**options).run()

    async def close(self) -> None:
        await self.store.close()

    def close_sync(self) -> None:
        if self._portal is not None:
            self._portal.call(self.store.close())
            self._portal.close()
            self._portal = None
        else:
            asyncio.run(self.store.close())
