"""Store conformance: what observability keeps in the store.

Cluster leases (one holder per name across processes: the metrics leader, the alert sender), the cluster-wide
gauges (backlog, idle and running runs per function), the trace context stored with events, and the userland spans
apps send for their runs (capped per run, pruned with the run).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from stepline.storage.base import Store
from stepline.storage.records import RUN_SPAN_LIMIT, ClusterGauges, RunFinish

from .builders import (
    DAY,
    FN,
    LEASE,
    MATCH,
    NOW,
    OTHER_FN,
    SEC,
    event,
    ingest,
    new_run,
    sleeping,
    start,
    start_and_claim,
)

Reopen = Callable[[Store], AbstractAsyncContextManager[Store]]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def by_function(g: ClusterGauges) -> tuple[dict[str, int], dict[tuple[str, str], int], dict[str, int]]:
    return ({f: n for f, n, _ in g.backlog}, {(f, k): n for f, k, n in g.idle}, dict(g.running))


async def test_one_holder_at_a_time_until_its_time_runs_out(store: Store, reopen: Reopen) -> None:
    async with reopen(store) as other:
        got = await store.take_cluster_lease("metrics", "a", NOW, 10 * SEC)
        assert got is not None and (got.owner, got.expires_at, got.state) == ("a", NOW + 10 * SEC, None)
        assert await other.take_cluster_lease("metrics", "b", NOW + 1, 10 * SEC) is None
        # The holder extends it; another name is independent.
        again = await store.take_cluster_lease("metrics", "a", NOW + 5 * SEC, 10 * SEC)
        assert again is not None and again.expires_at == NOW + 15 * SEC
        assert await other.take_cluster_lease("alerts", "b", NOW + 1, 10 * SEC) is not None
        # Once its time ran out, anyone takes it over, and the old holder cannot write its state any more.
        assert await other.take_cluster_lease("metrics", "b", NOW + 15 * SEC - 1, 10 * SEC) is None
        taken = await other.take_cluster_lease("metrics", "b", NOW + 15 * SEC, 10 * SEC)
        assert taken is not None and taken.owner == "b"
        assert not await store.save_cluster_lease_state("metrics", "a", {"x": 1}, NOW + 16 * SEC)


async def test_racing_processes_get_one_lease(store: Store, reopen: Reopen) -> None:
    async with reopen(store) as b, reopen(store) as c:
        got = await asyncio.gather(*(s.take_cluster_lease("metrics", o, NOW, 10 * SEC)
                                     for s, o in ((store, "a"), (b, "b"), (c, "c"))))  # fmt: skip
        assert len([g for g in got if g is not None]) == 1


async def test_state_is_kept_for_the_next_holder_and_release_hands_over_at_once(store: Store, reopen: Reopen) -> None:
    async with reopen(store) as other:
        assert await store.take_cluster_lease("alerts", "a", NOW, 60 * SEC) is not None
        assert await store.save_cluster_lease_state("alerts", "a", {"cursor": "01X", "n": [1, 2]}, NOW + 1)
        await other.release_cluster_lease("alerts", "b")  # not the holder: ignored
        assert await other.take_cluster_lease("alerts", "b", NOW + 2, 60 * SEC) is None
        await store.release_cluster_lease("alerts", "a")
        taken = await other.take_cluster_lease("alerts", "b", NOW + 3, 60 * SEC)
        assert taken is not None and taken.state == {"cursor": "01X", "n": [1, 2]}


async def test_cluster_gauges_count_backlog_idle_and_running_runs(store: Store) -> None:
    # Two runs due now of FN, one due later (throttled, stored due later), one of OTHER_FN running, one sleeping,
    # and an ended one (counted nowhere).
    await start(store, FN, now=NOW - 5 * SEC)
    await start(store, FN, now=NOW - 2 * SEC)
    ev = event(received_at=NOW)
    later = dataclasses.replace(new_run(ev, FN), due_at=NOW + DAY)
    await ingest(store, [ev], [later])
    running = await start_and_claim(store, "w1", OTHER_FN, now=NOW - 3 * SEC)
    napping = await start_and_claim(store, "w1", OTHER_FN, now=NOW - 2 * SEC)
    await store.suspend_run(napping.run.id, "w1", [sleeping("nap", NOW + DAY)], {"kind": "sleeping"}, MATCH, NOW - SEC)
    done = await start_and_claim(store, "w1", OTHER_FN, now=NOW - SEC)
    await store.finish_run(done.run.id, "w1", RunFinish("completed", output=1), MATCH, NOW - SEC)

    gauges = await store.cluster_gauges(NOW)
    backlog, idle, live = by_function(gauges)
    assert backlog == {FN: 2}
    assert [t for f, _, t in gauges.backlog if f == FN] == [NOW - 5 * SEC]  # the oldest due time
    assert idle == {(FN, "other"): 1, (OTHER_FN, "sleeping"): 1}  # a run due later with no idle reason: "other"
    assert live == {OTHER_FN: 1}
    # A lease that ran out puts its run back in the backlog.
    backlog, _, live = by_function(await store.cluster_gauges(NOW - 3 * SEC + LEASE))
    assert backlog == {FN: 2, OTHER_FN: 1} and live == {}
    assert running.run.id


async def test_events_keep_the_trace_context_of_their_send(store: Store) -> None:
    traced = dataclasses.replace(event(), traceparent=TRACEPARENT)
    plain = event()
    await ingest(store, [traced, plain], [new_run(traced), new_run(plain)])
    got = await store.get_event(traced.internal_id)
    assert got is not None and got.traceparent == TRACEPARENT
    assert (await store.get_event(plain.internal_id)).traceparent is None  # type: ignore[union-attr]
    claimed = await store.claim_runs("w1", [FN], NOW, 10, LEASE)
    assert sorted(str(c.event.traceparent) for c in claimed) == sorted([TRACEPARENT, "None"])


async def test_userland_spans_are_kept_with_their_run_capped_and_pruned(store: Store) -> None:
    c = await start_and_claim(store)
    span = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "db query"}
    stored = await store.save_run_spans({c.run.id: [span, {**span, "name": "second"}], "no-such-run": [span]}, NOW)
    assert stored == {c.run.id: 2, "no-such-run": 0}
    found = await store.list_run_spans(c.run.id)
    assert [(s.seq, s.span["name"]) for s in found] == [(1, "db query"), (2, "second")]
    assert found[0].span == span and found[0].received_at == NOW
    # At most RUN_SPAN_LIMIT per run: the rest are refused (and counted by the caller).
    many = [{**span, "name": f"s{i}"} for i in range(RUN_SPAN_LIMIT)]
    assert await store.save_run_spans({c.run.id: many}, NOW + 1) == {c.run.id: RUN_SPAN_LIMIT - 2}
    assert len(await store.list_run_spans(c.run.id)) == RUN_SPAN_LIMIT
    assert len(await store.list_run_spans(c.run.id, limit=3)) == 3
    # Pruned with the run.
    await store.finish_run(c.run.id, "w1", RunFinish("completed", output=1), MATCH, NOW + 2)
    result = await store.prune(NOW + 40 * DAY, NOW + 39 * DAY, {})
    assert result.runs == 1
    assert await store.list_run_spans(c.run.id) == []
