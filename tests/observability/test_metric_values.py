"""Retry and store-retry metrics against a known workload (in-process, SQLite and PostgreSQL, a fake clock):
``stepline_retries_total`` by level, ``stepline_step_attempts_total`` by outcome, and
``stepline_store_write_retries_total`` for a transient write error the writer retried, and
``stepline_dashboard_streams`` while dashboard pages listen."""

from __future__ import annotations

import datetime as dt
from typing import Any

from stepline import Backoff, FakeClock, Stepline
from stepline.observability.metrics import Metrics

from ..integration.helpers import advance, drain, runs

QUICK = Backoff(schedule=(dt.timedelta(seconds=1),), jitter=dt.timedelta(0))


def samples(m: Metrics, metric: Any, **match: str) -> dict[tuple[str, ...], float]:
    """``{label values (sorted by name) other than match: value}`` of a counter's ``_total`` samples."""
    m.flush()
    out: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in match.items()) and s.value:
                out[tuple(v for k, v in sorted(s.labels.items()) if k not in match)] = s.value
    return out


async def test_step_and_run_retries_are_counted_by_level(client: Stepline, clock: FakeClock, metrics: Metrics) -> None:
    calls = {"step": 0, "body": 0}

    @client.function(id="flaky-step", trigger="m/step", retries=3, backoff=QUICK)
    async def flaky_step(ctx: Any) -> str:
        def work() -> str:
            calls["step"] += 1
            if calls["step"] <= 2:
                raise RuntimeError("not yet")
            return "ok"

        return str(await ctx.step.run("work", work))

    @client.function(id="flaky-body", trigger="m/body", retries=1, backoff=QUICK)
    async def flaky_body(ctx: Any) -> str:
        calls["body"] += 1
        if calls["body"] == 1:
            raise RuntimeError("outside any step")
        return "ok"

    await client.send([{"name": "m/step"}, {"name": "m/body"}])
    await drain(client)
    for _ in range(4):
        await advance(client, clock, 1.5)
    assert [r.status for r in await runs(client)] == ["completed", "completed"]
    app = client.app_id
    assert samples(metrics, metrics.retries, function=f"{app}-flaky-step") == {("step",): 2}
    assert samples(metrics, metrics.retries, function=f"{app}-flaky-body") == {("run",): 1}
    assert samples(metrics, metrics.step_attempts, function=f"{app}-flaky-step") == {
        ("run", "retrying"): 2, ("run", "completed"): 1}  # fmt: skip


async def test_a_transient_write_error_is_retried_and_counted(client: Stepline, metrics: Metrics) -> None:
    writer: Any = client.store.writer  # type: ignore[attr-defined]
    failures = {"left": 1}

    class Flaky(Exception):
        pass

    def flaky_write(conn: Any) -> str:
        if failures["left"]:
            failures["left"] -= 1
            raise Flaky("connection reset")
        return "written"

    threads = getattr(writer, "writers", [writer])  # PostgreSQL: a group of writer connections
    transient = threads[0]._is_transient
    for w in threads:
        w._is_transient = lambda exc: isinstance(exc, Flaky) or transient(exc)
    try:
        assert await writer.run(flaky_write) == "written"
    finally:
        for w in threads:
            w._is_transient = transient
    assert samples(metrics, metrics.store_retries) == {(): 1}


async def test_dashboard_streams_are_counted_while_they_listen(client: Stepline, metrics: Metrics) -> None:
    from stepline.server.dashboard.sse import ChangeHub

    def streams() -> float:
        [family] = metrics.streams.collect()
        return sum(s.value for s in family.samples)

    hub = ChangeHub(client.engine)
    async with hub.running():
        first: Any = hub.changes(heartbeat=0.01)  # (async generators: aclose ends them)
        second: Any = hub.changes(heartbeat=0.01)
        await anext(first)  # a change or a heartbeat: both are listening
        await anext(second)
        assert streams() == 2
        await first.aclose()
        assert streams() == 1
    await second.aclose()  # the hub closed: the last one ends too
    assert streams() == 0
