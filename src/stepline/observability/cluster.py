"""Cluster-wide gauges, exported by exactly one process of the cluster, and the store's health for ``/metrics``.

Counts that describe the whole cluster (the backlog, sleeping and waiting runs, running runs) would be counted once
per node if every process exported them, and a ``sum()`` over the scrapes would multiply them. So one process leads:
every process that exports metrics tries, every ``tick`` seconds, to take (or keep) the store's ``metrics`` cluster
lease (``Store.take_cluster_lease``: one holder at a time across every process sharing the database, for ``ttl``
seconds). The holder reads ``Store.cluster_gauges`` (indexed reads of the live runs only) and sets the gauges; a
process that loses or cannot renew the lease zeroes and drops them before its lease's time is out, so two processes
never export them for the same moment. A leader that dies is replaced when its lease expires (``ttl``, 15 s).

The read's cost grows with the live runs (about 0.7 s for a million sleeping runs on SQLite, ``bench/
metrics_queries.py``): the leader reads at most every ``refresh`` seconds, and never spends more than ``budget``
(5 %) of its time on it: after a read of T seconds the next comes at least T / budget later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from stepline.core.background import background
from stepline.core.clock import Clock
from stepline.observability.metrics import Metrics
from stepline.storage.base import Store
from stepline.storage.records import ClusterGauges

log = logging.getLogger("stepline.metrics")
LEASE_NAME = "metrics"


class ClusterGaugeLeader:
    def __init__(self, store: Store, clock: Clock, metrics: Metrics, owner: str, *, tick: float = 5.0,
                 ttl: float = 15.0, refresh: float = 5.0, budget: float = 0.05) -> None:  # fmt: skip
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.owner = owner
        self.tick_seconds = tick
        self.ttl_ms = int(ttl * 1000)
        self.refresh = refresh
        self.budget = budget
        self.leading_until = 0  # unix ms: the end of the lease this process holds (0: it does not lead)
        self._next_read = 0.0  # monotonic time of the next cluster_gauges read
        self._reading: asyncio.Future[ClusterGauges] | None = None  # the read in flight (it runs in a thread)
        self.reads = 0

    @property
    def leading(self) -> bool:
        return self.leading_until > self.clock.now_ms()

    async def tick(self) -> None:
        """One round: take or keep the lease; as the leader, refresh the gauges when it is time."""
        now = self.clock.now_ms()
        try:
            lease = await self.store.take_cluster_lease(LEASE_NAME, self.owner, now, self.ttl_ms)
        except Exception as exc:
            log.warning("metrics leader: cannot reach the store: %s: %s", type(exc).__name__, exc)
            lease = None
            if self.leading_until and now + int(self.tick_seconds * 1000) < self.leading_until:
                return  # still ours until it expires: keep the last values, try again next round
        if lease is None:
            if self.leading_until:
                self.stop_leading()
            return
        if not self.leading_until:
            log.info("metrics: this process exports the cluster-wide gauges (backlog, idle and running runs)")
        self.leading_until = lease.expires_at
        if time.monotonic() >= self._next_read:
            await self.read(now)

    async def read(self, now: int) -> None:
        started = time.monotonic()
        try:
            # Shielded: a read runs in a thread on the store's connection, and the store must not close under it;
            # stopping waits for it (``running``).
            self._reading = asyncio.ensure_future(self.store.cluster_gauges(now))
            gauges = await asyncio.shield(self._reading)
        except Exception as exc:
            log.warning("metrics leader: reading the cluster gauges failed: %s: %s", type(exc).__name__, exc)
            return
        took = time.monotonic() - started
        self.reads += 1
        self._next_read = started + max(self.refresh, took / self.budget)
        if self.leading:  # the lease may have run out while reading
            self.metrics.set_cluster(gauges, now, took)

    def stop_leading(self) -> None:
        self.leading_until = 0
        self._next_read = 0.0
        self.metrics.clear_cluster()

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.tick_seconds)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ClusterGaugeLeader]:
        try:
            async with background(self.run(), "stepline-metrics-leader"):
                yield self
        finally:
            await _settled(self._reading)
            if self.leading_until:
                self.stop_leading()
                with contextlib.suppress(Exception):  # hand over at once rather than when the lease expires
                    await self.store.release_cluster_lease(LEASE_NAME, self.owner)


async def _settled(future: asyncio.Future[Any] | None, timeout: float = 5.0) -> None:
    """Wait up to ``timeout`` for a store call running in a thread to end (its result is not wanted)."""
    if future is None or future.done():
        return
    await asyncio.wait([future], timeout=timeout)
    if future.done() and not future.cancelled():
        future.exception()  # retrieved: no "exception never retrieved" warning


class StoreHealth:
    """``stepline_store_up``: whether the store answered a cheap read within ``timeout`` (checked at each scrape).

    A read that hangs (a database that does not answer) is not started again while it hangs: the scrape answers 0 at
    once, so ``/metrics`` stays within a scrape timeout while the database is down."""

    def __init__(self, store: Store, timeout: float = 2.0) -> None:
        self.store = store
        self.timeout = timeout
        self.up = 1.0
        self._inflight: asyncio.Future[None] | None = None

    async def close(self) -> None:
        """Wait (a while) for a check still running in its thread: the store may close after this."""
        await _settled(self._inflight)

    async def check(self) -> float:
        if self._inflight is not None and not self._inflight.done():
            self.up = 0.0
            return self.up
        self._inflight = asyncio.ensure_future(self.store.ping())
        try:
            await asyncio.wait_for(asyncio.shield(self._inflight), self.timeout)
            self.up = 1.0
        except Exception:
            self.up = 0.0
            if self._inflight.done():
                self._inflight.exception()  # retrieved: no "exception never retrieved" warning
        return self.up
