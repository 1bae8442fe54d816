"""Run statistics for the dashboard's charts (``run_stats``), written once for every SQL backend. Mixed into
``SqlStore``.

Per function and period (a minute, ``MINUTE``, and an hour, ``HOUR``): the runs started (first claim), the runs
ended by status (completed, failed, cancelled), and two histograms in ``BOUNDS_MS`` buckets: run duration (first
claim to end) and due-to-start lag (as ``docs/metrics.md`` defines them). They are added in the transaction that
claims or ends the runs, so the counts are exact and never count a claim or an end that rolled back. Each store
instance adds to its own shard's rows (``shard``, random per process): nodes never wait on each other's rows;
readers sum the shards. Queries: each backend's ``stats.sql``.

A percentile read from a histogram is interpolated linearly inside the bucket it falls in: the true value lies in
that bucket, so the error is at most the bucket's width (bounds 1-2-5 per decade: at most 2.5x the lower bound).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from stepline.storage.records import RunStatsRow
from stepline.storage.sql import backend_queries

T = TypeVar("T")
MINUTE, HOUR = 60_000, 3_600_000
RESOLUTIONS = (MINUTE, HOUR)
# Upper bounds (ms) of the histogram buckets d0.. and l0..; the last bucket (index len(BOUNDS_MS)) has none.
BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000,
             1_800_000, 3_600_000, 21_600_000, 86_400_000)  # fmt: skip
BUCKETS = len(BOUNDS_MS) + 1
COUNTS = ("started", "completed", "failed", "cancelled")
KEPT_MS = {MINUTE: 8 * 24 * HOUR, HOUR: 400 * 24 * HOUR}  # how long each resolution's rows are kept (prune)
SHARDS = 16


def bucket_of(ms: int) -> int:
    """The histogram bucket of a duration: the first whose upper bound is at least ``ms``."""
    return bisect.bisect_left(BOUNDS_MS, max(ms, 0))


class _Delta:
    """What one transaction adds to the rows of one function and period."""

    __slots__ = ("counts", "durations", "lags")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTS, 0)
        self.durations = [0] * BUCKETS
        self.lags = [0] * BUCKETS

    def params(self) -> dict[str, int]:
        out = dict(self.counts)
        out.update({f"d{i}": n for i, n in enumerate(self.durations)})
        out.update({f"l{i}": n for i, n in enumerate(self.lags)})
        return out


class StatsBatch:
    """The statistics one transaction adds: ``started``/``ended`` per run, then ``SqlStatsMixin._add_stats``."""

    def __init__(self) -> None:
        self.deltas: dict[tuple[int, int, str], _Delta] = {}

    def _at(self, function_id: str, now: int) -> Iterable[_Delta]:
        for res in RESOLUTIONS:
            key = (res, now - now % res, function_id)
            delta = self.deltas.get(key)
            if delta is None:
                delta = self.deltas[key] = _Delta()
            yield delta

    def started(self, function_id: str, lag_ms: int, now: int) -> None:
        b = bucket_of(lag_ms)
        for d in self._at(function_id, now):
            d.counts["started"] += 1
            d.lags[b] += 1

    def ended(self, function_id: str, status: str, started_at: int | None, now: int) -> None:
        if status not in COUNTS:
            return
        b = None if started_at is None else bucket_of(now - started_at)
        for d in self._at(function_id, now):
            d.counts[status] += 1
            if b is not None:
                d.durations[b] += 1


class SqlStatsMixin:
    """Needs ``_read`` from ``SqlStore``; finds its queries by the package of the concrete store class."""

    _stats_shard: int = random.randrange(SHARDS)  # this process's shard

    if TYPE_CHECKING:

        def _read(self, fn: Callable[[Any], T]) -> T: ...

    def _add_stats(self, conn: Any, batch: StatsBatch) -> None:
        """Inside the transaction that claimed or ended the runs ``batch`` counts."""
        if not batch.deltas:
            return
        query = self._stats_queries["add_run_stats"]
        rows = [{"res": res, "at": at, "function_id": fid, "shard": self._stats_shard, **d.params()}
                for (res, at, fid), d in sorted(batch.deltas.items())]  # fmt: skip
        for row in rows:  # (at most 2 per function a transaction claims or ends runs of)
            conn.execute(query, row)

    @property
    def _stats_queries(self) -> dict[str, str]:
        return backend_queries(self, "stats.sql")

    def _prune_stats(self, conn: Any, now: int) -> int:
        q = self._stats_queries["prune_run_stats"]
        return sum(int(conn.execute(q, {"res": r, "before": now - KEPT_MS[r]}).rowcount) for r in RESOLUTIONS)

    async def run_stats(self, res: int, since: int, function_id: str | None = None) -> list[RunStatsRow]:
        if res not in RESOLUTIONS:
            raise ValueError(f"res must be one of {RESOLUTIONS}, not {res}")
        name = "run_stats_all" if function_id is None else "run_stats_of_function"
        query = self._stats_queries[name]
        params = {"res": res, "since": since - since % res, "function_id": function_id}
        rows = self._read(lambda c: c.execute(query, params).fetchall())
        out = []
        for at, *values in rows:
            n = [int(v or 0) for v in values]
            out.append(RunStatsRow(int(at), n[0], n[1], n[2], n[3], tuple(n[4 : 4 + BUCKETS]),
                                   tuple(n[4 + BUCKETS :])))  # fmt: skip
        return out
