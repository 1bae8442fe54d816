"""Run statistics for the dashboard's charts (``run_stats``), written once for every SQL backend. Mixed into
``SqlStore``.

Per function and period (a minute, ``MINUTE``, and an hour, ``HOUR``): the runs started (first claim), the runs
ended by status (completed, failed, cancelled), and two histograms in ``BOUNDS_MS`` buckets: run duration (first
claim to end) and due-to-start lag (as ``docs/metrics.md`` defines them). The minute rows are added in the
transaction that claims or ends the runs, so the counts are exact and never count a claim or an end that rolled
back. Each store instance adds to its own shard's rows (``shard``, random per process): nodes never wait on each
other's rows; readers sum the shards.

The hour rows are rolled up from the minute rows, off the hot path: an hour is rolled up once it is settled (its
end ``SETTLE_MS`` before the latest minute row, or before now when pruning), by whichever node reads the hourly
charts or prunes first. The roll-up is idempotent (``ON CONFLICT DO NOTHING``: a settled hour's minute rows no
longer change), so it needs no leader. An hourly read is the hour rows plus the minute rows after the last rolled-up
hour, summed per hour: exact either way. (A minute row written more than ``SETTLE_MS`` late, by a node whose clock
is that far behind, after its hour was rolled up, is counted in the minute charts only.) Queries: each backend's
``stats.sql``.

A percentile read from a histogram is interpolated linearly inside the bucket it falls in: the true value lies in
that bucket, so the error is at most the bucket's width (bounds 1-2-5 per decade: at most 2.5x the lower bound).
"""

from __future__ import annotations

import bisect
import functools
import random
from collections.abc import Callable
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
SETTLE_MS = 10 * MINUTE  # an hour is rolled up once it ended this long before the latest minute row (or now)


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

    def _at(self, function_id: str, now: int) -> _Delta:
        key = (MINUTE, now - now % MINUTE, function_id)  # only the minute: hours are rolled up from minutes
        delta = self.deltas.get(key)
        if delta is None:
            delta = self.deltas[key] = _Delta()
        return delta

    def started(self, function_id: str, lag_ms: int, now: int) -> None:
        d = self._at(function_id, now)
        d.counts["started"] += 1
        d.lags[bucket_of(lag_ms)] += 1

    def ended(self, function_id: str, status: str, started_at: int | None, now: int) -> None:
        if status not in COUNTS:
            return
        d = self._at(function_id, now)
        d.counts[status] += 1
        if started_at is not None:
            d.durations[bucket_of(now - started_at)] += 1


class SqlStatsMixin:
    """Needs ``_read`` from ``SqlStore``; finds its queries by the package of the concrete store class."""

    _stats_shard: int = random.randrange(SHARDS)  # this process's shard

    if TYPE_CHECKING:

        def _read(self, fn: Callable[[Any], T]) -> T: ...

        @property
        def writer(self) -> Any: ...

    def _add_stats(self, conn: Any, batch: StatsBatch) -> None:
        """Inside the transaction that claimed or ended the runs ``batch`` counts."""
        if not batch.deltas:
            return
        query = self._stats_queries["add_run_stats"]
        rows = [{"res": res, "at": at, "function_id": fid, "shard": self._stats_shard, **d.params()}
                for (res, at, fid), d in sorted(batch.deltas.items())]  # fmt: skip
        for row in rows:  # (one per function a transaction claims or ends runs of)
            conn.execute(query, row)

    @property
    def _stats_queries(self) -> dict[str, str]:
        return backend_queries(self, "stats.sql")

    def _hours_rolled_up(self, conn: Any) -> int:
        """The start of the first hour not rolled up yet (the hour after the last hour row)."""
        (last,) = conn.execute(self._stats_queries["max_run_stats_at"], {"res": HOUR}).fetchone()
        return 0 if last is None else int(last) + HOUR

    def _roll_up(self, conn: Any, settled_before: int) -> int:
        """Inside a write transaction: the hour rows of the hours that ended by ``settled_before``."""
        to = settled_before - settled_before % HOUR
        start = self._hours_rolled_up(conn)
        if to <= start:
            return 0
        return int(conn.execute(self._stats_queries["roll_up_hours"], {"from": start, "to": to}).rowcount)

    def _needs_roll_up(self, conn: Any) -> int | None:
        """Where a roll-up would end when settled minute rows wait for it (``None``: nothing to do)."""
        q = self._stats_queries
        (latest,) = conn.execute(q["max_run_stats_at"], {"res": MINUTE}).fetchone()
        if latest is None:
            return None
        settled = int(latest) - SETTLE_MS
        start, to = self._hours_rolled_up(conn), settled - settled % HOUR
        if to <= start or conn.execute(q["first_minute_between"], {"from": start, "to": to}).fetchone()[0] is None:
            return None
        return settled

    def _prune_stats(self, conn: Any, now: int) -> int:
        self._roll_up(conn, now - SETTLE_MS)  # before their minutes go
        q = self._stats_queries["prune_run_stats"]
        return sum(int(conn.execute(q, {"res": r, "before": now - KEPT_MS[r]}).rowcount) for r in RESOLUTIONS)

    def _stats_rows(self, res: int, since: int, function_id: str | None) -> list[list[int]]:
        name = "run_stats_all" if function_id is None else "run_stats_of_function"
        query = self._stats_queries[name]
        params = {"res": res, "since": since, "function_id": function_id}
        return [[int(v or 0) for v in row] for row in self._read(lambda c: c.execute(query, params).fetchall())]

    async def run_stats(self, res: int, since: int, function_id: str | None = None) -> list[RunStatsRow]:
        if res not in RESOLUTIONS:
            raise ValueError(f"res must be one of {RESOLUTIONS}, not {res}")
        since -= since % res
        if res == MINUTE:
            rows = self._stats_rows(MINUTE, since, function_id)
        else:
            settled = self._read(self._needs_roll_up)
            if settled is not None:
                await self.writer.run(functools.partial(self._roll_up, settled_before=settled))
            rolled = self._read(self._hours_rolled_up)
            hours = {row[0]: row for row in self._stats_rows(HOUR, since, function_id)}
            for minute in self._stats_rows(MINUTE, max(since, rolled), function_id):  # the hours not rolled up
                at = minute[0] - minute[0] % HOUR
                hours[at] = [at, *map(sum, zip(hours.get(at, [at] + [0] * (len(minute) - 1))[1:], minute[1:],
                                                strict=True))]  # fmt: skip
            rows = [hours[at] for at in sorted(hours)]
        return [RunStatsRow(n[0], n[1], n[2], n[3], n[4], tuple(n[5 : 5 + BUCKETS]), tuple(n[5 + BUCKETS :]))
                for n in rows]  # fmt: skip
