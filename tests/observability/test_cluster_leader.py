"""The cluster-wide gauges come from exactly one process at a time: the holder of the store's ``metrics`` lease. Two
processes on one database (two stores), a fake clock: the second takes over when the first stops renewing, and the
first, finding the lease taken, drops its series, so a sum over both scrapes stays right."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stepline import FakeClock
from stepline.observability.cluster import ClusterGaugeLeader
from stepline.observability.metrics import Metrics
from stepline.storage.base import Store

from ..backends import Backend
from ..storage.builders import FN, MATCH, OTHER_FN, sleeping, start, start_and_claim


def exported(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render(None)
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name.startswith(("stepline_backlog", "stepline_idle", "stepline_running", "stepline_cluster_leader")):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def cluster_sum(*metrics: Metrics) -> dict[str, float]:
    total: dict[str, float] = {}
    for m in metrics:
        for (name, labels), v in exported(m).items():
            key = name + str(dict(labels))
            total[key] = total.get(key, 0.0) + v
    return total


@pytest.fixture
async def stores(backend: Backend, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    async with backend.fresh(tmp_path) as first:
        second = backend.same_database(first)
        await second.open()
        try:
            yield first, second
        finally:
            await second.close()


async def test_one_leader_exports_and_the_other_takes_over(stores: tuple[Store, Store]) -> None:
    first, second = stores
    clock = FakeClock(dt.datetime.fromtimestamp(1_767_225_600, dt.UTC))
    now = clock.now_ms()
    await start(first, FN, now=now - 3000)  # due, nobody executes it: the backlog
    await start(first, FN, now=now - 1000)
    napping = await start_and_claim(first, "w1", OTHER_FN, now=now - 500)

    await first.suspend_run(napping.run.id, "w1", [sleeping("nap", now + 3_600_000)], {"kind": "sleeping"}, MATCH,
                            now - 400)  # fmt: skip
    a = ClusterGaugeLeader(first, clock, Metrics(), "node-a")
    b = ClusterGaugeLeader(second, clock, Metrics(), "node-b")
    await a.tick()
    await b.tick()
    assert (a.leading, b.leading) == (True, False)
    got = exported(a.metrics)
    assert got[("stepline_backlog_runs", (("function", FN),))] == 2
    assert got[("stepline_backlog_oldest_seconds", (("function", FN),))] == 3.0
    assert got[("stepline_idle_runs", (("function", OTHER_FN), ("reason", "sleeping")))] == 1
    assert got[("stepline_cluster_leader", ())] == 1
    assert exported(b.metrics) == {("stepline_cluster_leader", ()): 0}
    expected = cluster_sum(a.metrics, b.metrics)

    # node-a stops renewing (it died, or cannot reach the database): node-b takes over once the lease expired.
    clock.advance(dt.timedelta(seconds=10))
    await b.tick()
    assert not b.leading
    clock.advance(dt.timedelta(seconds=6))
    await b.tick()
    assert b.leading and exported(b.metrics)[("stepline_backlog_runs", (("function", FN),))] == 2
    # node-a comes back, finds the lease taken and drops its cluster-wide series: the sum is what it was.
    await a.tick()
    assert not a.leading and exported(a.metrics) == {("stepline_cluster_leader", ()): 0}
    oldest = "stepline_backlog_oldest_seconds{'function': 'app-fn'}"
    assert cluster_sum(a.metrics, b.metrics) == {**expected, oldest: 3.0 + 16}  # the oldest due run aged 16 s


async def test_a_leader_that_stops_hands_over_at_once(stores: tuple[Store, Store]) -> None:
    first, second = stores
    clock = FakeClock(dt.datetime.fromtimestamp(1_767_225_600, dt.UTC))
    a = ClusterGaugeLeader(first, clock, Metrics(), "node-a", tick=3600)
    b = ClusterGaugeLeader(second, clock, Metrics(), "node-b")
    await a.tick()
    async with a.running():
        await b.tick()
        assert not b.leading
    assert not a.leading  # stopping released the lease
    await b.tick()
    assert b.leading
