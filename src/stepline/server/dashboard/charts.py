"""The dashboard's charts: server-rendered SVG (``templates/charts.html``) from the store's run statistics
(``Store.run_stats``, ``storage/sql_stats.py``) and the cluster-wide backlog (``Store.cluster_gauges``), as
``docs/metrics.md`` defines each quantity. Pure functions, no I/O (``pages.charts_page`` reads the store).

- Runs started, completed and failed per minute: exact counts, a point per minute over 1 h and 24 h; over 7 d a
  point per hour (the hour's count divided by 60: a per-minute average).
- Run duration and due-to-start lag, p50/p95/p99 per period: read from the period's histogram, interpolated
  linearly inside the bucket the percentile falls in (the error is at most that bucket's width).
- Backlog: runs due now that no worker executes, per function (a gauge: now, not a history).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from stepline.server.dashboard import views
from stepline.storage.records import RunStatsRow
from stepline.storage.sql_stats import BOUNDS_MS, HOUR, MINUTE

RANGES: dict[str, tuple[int, int]] = {
    "1h": (3_600_000, MINUTE),
    "24h": (86_400_000, MINUTE),
    "7d": (7 * 86_400_000, HOUR),
}
WIDTH, HEIGHT = 640, 180
PAD_L, PAD_R, PAD_T, PAD_B = 48, 8, 8, 22
QUANTILES = (0.5, 0.95, 0.99)
MAX_DOTS = 90  # a series with more points is drawn as a line only


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (ms) of a histogram in ``BOUNDS_MS`` buckets, interpolated inside its bucket; None when
    empty. The last bucket has no upper bound: a quantile there is reported as its lower bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            lo = 0 if i == 0 else BOUNDS_MS[i - 1]
            if i >= len(BOUNDS_MS):
                return float(lo)
            return lo + (BOUNDS_MS[i] - lo) * max(rank - seen, 0) / n
        seen += n
    return float(BOUNDS_MS[-1])


@dataclass(frozen=True)
class Series:
    name: str
    css: str  # the series' class (its colour)
    points: str  # SVG polyline points
    values: list[float | None]  # one per period (None: nothing in it)
    total: float | None  # counts: the sum over the range; percentiles: over the whole range's histogram
    dots: list[tuple[float, float]]  # the points as dots too, when there are few (one alone draws no line)


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    unit: str  # "runs/min" or "ms"
    periods: list[int]  # each period's start (ms)
    series: list[Series]
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_ticks: list[tuple[float, str, str]]  # (x, label, text-anchor)
    log: bool
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def empty(self) -> bool:
        return all(v is None or v == 0 for s in self.series for v in s.values)


def _x(i: int, n: int) -> float:
    return PAD_L + (WIDTH - PAD_L - PAD_R) * (i / max(n - 1, 1))


def _scale(top: float, log: bool) -> tuple[float, ...]:
    if log:
        return (1.0, 10.0 ** math.ceil(math.log10(max(top, 10.0))))
    return (0.0, max(top, 1.0))


def _y(v: float, lo: float, hi: float, log: bool) -> float:
    span_px = HEIGHT - PAD_T - PAD_B
    if log:
        frac = (math.log10(max(v, lo)) - math.log10(lo)) / max(math.log10(hi) - math.log10(lo), 1e-9)
    else:
        frac = (v - lo) / max(hi - lo, 1e-9)
    return round(HEIGHT - PAD_B - span_px * min(max(frac, 0.0), 1.0), 1)


def _nice(top: float) -> float:
    if top <= 1:
        return 1.0
    mag = 10.0 ** math.floor(math.log10(top))
    return next(float(m * mag) for m in (1, 2, 2.5, 5, 10) if m * mag >= top)


def _x_ticks(periods: list[int], res: int) -> list[tuple[float, str, str]]:
    n = len(periods)
    out = []
    for i in (0, n // 4, n // 2, 3 * n // 4, n - 1):
        if 0 <= i < n:
            stamp = views.utc(periods[i])
            anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
            out.append((_x(i, n), stamp[5:10] if res == HOUR else stamp[11:16], anchor))
    return out


def _chart(cid: str, title: str, unit: str, periods: list[int], res: int,
           series: list[tuple[str, str, list[float | None], float | None]], log: bool) -> Chart:  # fmt: skip
    top = max([v for _, _, vals, _ in series for v in vals if v is not None] + [0.0])
    lo, hi = _scale(top if log else _nice(top), log)
    n = len(periods)
    built = []
    for name, css, vals, total in series:
        xy = [(round(_x(i, n), 1), _y(v, lo, hi, log)) for i, v in enumerate(vals) if v is not None]
        dots = xy if len(xy) <= MAX_DOTS and (log or any(v for v in vals)) else []
        built.append(Series(name, css, " ".join(f"{x},{y}" for x, y in xy), vals, total, dots))
    if log:
        ticks = [10.0**k for k in range(0, math.ceil(math.log10(hi)) + 1)]
        y_ticks = [(_y(t, lo, hi, log), views.duration(t)) for t in ticks]
    else:
        y_ticks = [(_y(hi * f, lo, hi, log), f"{hi * f:g}") for f in (0, 0.5, 1)]
    return Chart(cid, title, unit, periods, built, y_ticks, _x_ticks(periods, res), log)


def build(rows: list[RunStatsRow], range_key: str, now: int) -> list[Chart]:
    """The charts of one range (``RANGES``) from the store's rows (periods without runs are zeros)."""
    span, res = RANGES[range_key]
    end = now - now % res
    periods = list(range(end - span + res, end + res, res))
    by_at = {r.at: r for r in rows}
    per_min = 60_000 / res  # hours: the per-minute average
    counts: dict[str, list[float | None]] = {"started": [], "completed": [], "failed": []}
    for at in periods:
        r = by_at.get(at)
        for k in counts:
            counts[k].append(round((getattr(r, k) if r else 0) * per_min, 3))
    in_range = [by_at[at] for at in periods if at in by_at]
    totals = {k: float(sum(getattr(r, k) for r in in_range)) for k in counts}
    throughput = _chart("runs", "Runs per minute" + (" (hourly average)" if res == HOUR else ""), "runs/min",
                        periods, res, [(k.capitalize(), f"c-{k}", counts[k], totals[k]) for k in counts],
                        log=False)  # fmt: skip
    out = [throughput]
    for cid, title, attr in (("duration", "Run duration", "durations"), ("lag", "Due-to-start lag", "lags")):
        whole = [sum(col) for col in zip(*(getattr(r, attr) for r in in_range), strict=True)] if in_range else []
        series = []
        for q in QUANTILES:
            vals = [quantile(getattr(by_at[at], attr), q) if at in by_at else None for at in periods]
            series.append((f"p{round(q * 100)}", f"c-p{round(q * 100)}", vals, quantile(whole, q) if whole else None))
        out.append(_chart(cid, title, "ms", periods, res, series, log=True))
    return out
