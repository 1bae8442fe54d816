"""The run page's timeline: a waterfall on the run's own time axis, built from the store's records. Pure functions,
no I/O (``pages.run_page`` reads the records).

One lane per step, in the order the steps began (parallel steps are lanes whose bars overlap in time):

- a ``run`` step: one bar per attempt (``step_attempts`` for a step attempted more than once, else the step's own
  row), failed attempts with their errors, and the backoff between an attempt and the next as a gap bar;
- sleeps, waits and invokes: one span from the step's start to its end (or, while it lasts, to the axis' end);
- before the first lane, the time the run waited to start when there was some, named by what held it
  (``Store.get_run_wait``: throttled, blocked by concurrency, a paused function...; else queued);
- userland spans (``POST /v1/traces/userland``) under the step whose attempt was running when they started, nested
  by their parent span; the others under the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stepline.server.dashboard import views
from stepline.storage.records import ChildRun, RunRecord, RunSpan, RunWait, StepAttempt, StepRecord

MIN_WIDTH_PCT = 0.4  # a bar of no length is still a visible tick
TICKS = 5
SPAN_SLACK_MS = 5  # a span that starts this close to an attempt still belongs to it (clocks of app and server)
# What held a run before its start, in words (``RunWait.kind``, the idle reason's kind at its first claim).
WAIT_WORDS = {"throttled": "throttled", "debounced": "debounced", "batch": "batched",
              "concurrency": "blocked by concurrency", "rate_limited": "rate limited",
              "singleton": "held by a singleton run", "paused": "delayed (function paused)"}  # fmt: skip


def wait_words(kind: str) -> str:
    return WAIT_WORDS.get(kind, kind.replace("_", " "))


@dataclass(frozen=True)
class Bar:
    kind: str  # attempt, backoff, sleep, wait, invoke, queued, gate (held by flow control or a pause), other
    status: str  # completed, failed, running, retrying, sleeping, waiting, invoking, queued
    start: int  # unix ms
    end: int  # unix ms (the axis' end while it lasts)
    open: bool  # still going: ``end`` is now, not its end
    left_pct: float
    width_pct: float
    attempt: int | None = None  # from 1, for attempts
    error: dict[str, Any] | None = None
    until: int | None = None  # a sleep's or backoff's planned end
    label: str | None = None  # a gate: what held the run (``wait_words``)

    @property
    def duration_ms(self) -> int:
        return self.end - self.start

    @property
    def title(self) -> str:
        """The bar's tooltip: what it is and how long it took."""
        what = {"attempt": f"attempt {self.attempt}", "backoff": "backoff before the next attempt",
                "queued": "waiting to start"}.get(self.kind, self.label or self.kind)  # fmt: skip
        took = views.duration(self.duration_ms) + (" so far" if self.open else "")
        err = f": {self.error.get('name', 'Error')}: {self.error.get('message', '')}" if self.error else ""
        return f"{what} ({self.status}), {took}{err}"


@dataclass(frozen=True)
class SpanBar:
    name: str
    span_id: str
    depth: int  # nesting under the other spans of the same lane (0: top)
    left_pct: float
    width_pct: float
    took: str
    error: str
    attributes: list[tuple[str, str]]


@dataclass
class Lane:
    step: StepRecord | None  # None: the run's own lane (waiting to start, spans outside any step)
    bars: list[Bar] = field(default_factory=list)
    spans: list[SpanBar] = field(default_factory=list)
    children: list[ChildRun] = field(default_factory=list)

    @property
    def attempts(self) -> list[Bar]:
        return [b for b in self.bars if b.kind == "attempt"]


@dataclass
class Timeline:
    start: int
    end: int
    before_start: Bar | None  # the time the run waited before it started
    lanes: list[Lane]
    outside: list[SpanBar]  # userland spans that started in no step's attempt
    ticks: list[tuple[float, str]]  # (left %, "+1.5 s")

    @property
    def span_ms(self) -> int:
        return self.end - self.start


class _Axis:
    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, max(end, start + 1)

    def place(self, start: int, end: int) -> tuple[float, float]:
        total = self.end - self.start
        a = min(max(start, self.start), self.end)
        b = min(max(end, a), self.end)
        left = 100 * (a - self.start) / total
        width = max(100 * (b - a) / total, MIN_WIDTH_PCT)
        return round(min(left, 100 - MIN_WIDTH_PCT), 3), round(width, 3)

    def bar(self, kind: str, status: str, start: int, end: int | None, **kw: Any) -> Bar:
        stop = self.end if end is None else end
        left, width = self.place(start, stop)
        return Bar(kind, status, start, max(stop, start), end is None, left, width, **kw)

    def ticks(self) -> list[tuple[float, str]]:
        total = self.end - self.start
        return [(round(100 * i / (TICKS - 1), 3), "0" if i == 0 else "+" + views.duration(total * i / (TICKS - 1)))
                for i in range(TICKS)]  # fmt: skip


_KINDS = {"sleep": "sleep", "wait_for_event": "wait", "wait_for_signal": "wait", "invoke": "invoke"}


def _run_step_bars(axis: _Axis, s: StepRecord, tries: list[StepAttempt], now: int) -> list[Bar]:
    if not tries:  # attempted once (or recorded before attempts were kept): the step's row is the attempt
        if s.status == "retrying":
            bars = [axis.bar("attempt", "failed", s.started_at, s.started_at, attempt=max(s.attempts, 1),
                             error=s.error)]  # fmt: skip
            if s.wake_at:
                bars.append(axis.bar("backoff", "retrying", s.started_at, s.wake_at if s.wake_at <= now else None,
                                     until=s.wake_at))  # fmt: skip
            return bars
        status = s.status if s.status in ("completed", "failed") else "running"
        return [axis.bar("attempt", status, s.started_at, s.ended_at if s.ended_at is not None else None,
                         attempt=max(s.attempts, 1), error=s.error if s.status == "failed" else None)]  # fmt: skip
    bars = []
    for i, t in enumerate(tries):
        bars.append(axis.bar("attempt", t.status, t.started_at, t.ended_at, attempt=t.attempt, error=t.error))
        if t.retry_at is None:
            continue
        nxt = tries[i + 1].started_at if i + 1 < len(tries) else None
        if nxt is not None:
            bars.append(axis.bar("backoff", "completed", t.ended_at, nxt, until=t.retry_at))
        elif s.status == "retrying":  # the next attempt has not started yet
            bars.append(axis.bar("backoff", "retrying", t.ended_at, None if t.retry_at > now else t.retry_at,
                                 until=t.retry_at))  # fmt: skip
    return bars


def _step_bars(axis: _Axis, s: StepRecord, tries: list[StepAttempt], now: int) -> list[Bar]:
    if s.kind == "run":
        return _run_step_bars(axis, s, tries, now)
    kind = _KINDS.get(s.kind, "other")
    return [axis.bar(kind, s.status, s.started_at, s.ended_at, error=s.error, until=s.wake_at)]


def _ns_ms(value: Any) -> int | None:
    try:
        return int(value) // 1_000_000
    except (TypeError, ValueError):
        return None


def _span_lanes(axis: _Axis, lanes: list[Lane], spans: list[RunSpan]) -> list[SpanBar]:
    """Put each span under the lane whose attempt (or span) was running when it started; returns the others."""
    outside: list[SpanBar] = []
    rows = views.userland_spans(spans)
    depth: dict[str, int] = {}
    for raw, row in zip(spans, rows, strict=True):
        start = _ns_ms(raw.span.get("startTimeUnixNano"))
        end = _ns_ms(raw.span.get("endTimeUnixNano"))
        if start is None:
            continue
        end = start if end is None or end < start else end
        d = depth[row.parent_id] + 1 if row.parent_id in depth else 0
        depth[row.span_id] = d
        left, width = axis.place(start, end)
        bar = SpanBar(row.name, row.span_id, d, left, width, row.took, row.error, row.attributes)
        home = next((lane for lane in lanes if any(b.start - SPAN_SLACK_MS <= start <= b.end + SPAN_SLACK_MS
                                                   for b in lane.attempts)), None)  # fmt: skip
        (home.spans if home is not None else outside).append(bar)
    return outside


def build(run: RunRecord, steps: list[StepRecord], attempts: list[StepAttempt], spans: list[RunSpan],
          children: list[ChildRun], now: int, wait: RunWait | None = None) -> Timeline:  # fmt: skip
    """The run's timeline: its axis runs from the run's creation to its end (or now, while it is live). ``wait``:
    what held the run before its start (``Store.get_run_wait``)."""
    end = run.ended_at if run.ended_at is not None else now
    for s in steps:
        end = max(end, s.ended_at or s.started_at)
    by_step: dict[str, list[StepAttempt]] = {}
    for a in attempts:
        by_step.setdefault(a.step_id, []).append(a)
    for tries in by_step.values():
        end = max(end, *(t.ended_at for t in tries))
    axis = _Axis(run.created_at, end)
    before: Bar | None = None
    if run.started_at is not None and wait is not None:
        before = axis.bar("gate", "completed", wait.since, wait.until, label=wait_words(wait.kind))
    elif run.started_at is not None and run.started_at > run.created_at:
        before = axis.bar("queued", "completed", run.created_at, run.started_at)
    elif run.started_at is None and run.status == "queued":
        before = axis.bar("queued", "queued", run.created_at, None)
    kids: dict[str | None, list[ChildRun]] = {}
    for c in children:
        kids.setdefault(c.parent_step_id, []).append(c)
    lanes = [Lane(s, _step_bars(axis, s, by_step.get(s.step_id, []), now), [], kids.get(s.step_id, []))
             for s in steps]  # fmt: skip
    outside = _span_lanes(axis, lanes, spans)
    return Timeline(axis.start, axis.end, before, lanes, outside, axis.ticks())


def waited_text(run: RunRecord, reason: Mapping[str, Any] | None, now: int, wait: RunWait | None = None) -> str:
    """What the time before the run's start was (or is, while it waits): ``throttled 1.20 s``."""
    if run.started_at is None:
        why = views.idle_text(reason, now) if reason else "Queued to start"
        return f"{why} for {views.duration(now - run.created_at)} so far"
    if wait is not None:
        return f"{wait_words(wait.kind).capitalize()} {views.duration(wait.duration_ms)}"
    return f"Queued {views.duration(run.started_at - run.created_at)}"
