"""``stepline_flow_control_total`` against a known workload: every decision counted once (SQLite and PostgreSQL).

Two ways it was counted more than once: a run waiting on a full concurrency key was counted ``blocked`` again each
time it was checked again while still waiting, and a decision made in a write the writer ran again (another write of
its group commit failed, so the batch ran a second time without it) was counted by both runs of the batch.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from stepline import Concurrency, Debounce, FakeClock, RateLimit, Stepline, Throttle
from stepline.observability.metrics import Metrics

from ..integration.helpers import runs


def flow_counts(m: Metrics, function: str) -> dict[tuple[str, str], float]:
    """``{(gate, action): value}`` of one function, as a scrape would show it."""
    m.flush()
    out: dict[tuple[str, str], float] = {}
    for family in m.flow_total.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels["function"] == function and s.value:
                out[(s.labels["gate"], s.labels["action"])] = s.value
    return out


async def test_ingest_gates_count_each_event_once(client: Stepline, clock: FakeClock, metrics: Metrics) -> None:
    @client.function(id="limited", trigger="flow/limited", rate_limit=RateLimit(limit=1, period="1m"))
    async def limited(ctx: Any) -> None:
        return None

    @client.function(id="throttled", trigger="flow/throttled", throttle=Throttle(limit=1, period="1m"))
    async def throttled(ctx: Any) -> None:
        return None

    @client.function(id="debounced", trigger="flow/debounced", debounce=Debounce(period="10s"))
    async def debounced(ctx: Any) -> None:
        return None

    await client.ready()
    for name in ("flow/limited", "flow/throttled", "flow/debounced"):
        for n in range(4):
            await client.send({"name": name, "data": {"n": n}})
    app = client.app_id
    assert flow_counts(metrics, f"{app}-limited") == {("rate_limit", "skipped"): 3}
    assert flow_counts(metrics, f"{app}-throttled") == {("throttle", "delayed"): 3}  # the first starts at once
    # the first event opens the debounced run (delayed), the next three move it (merged)
    assert flow_counts(metrics, f"{app}-debounced") == {("debounce", "delayed"): 1, ("debounce", "merged"): 3}
    assert [r.status for r in await runs(client, "limited")].count("skipped") == 3


async def test_a_run_waiting_on_a_full_key_is_blocked_once_however_often_it_is_checked(
    client: Stepline, clock: FakeClock, metrics: Metrics
) -> None:
    @client.function(id="one-slot", trigger="flow/one", concurrency=Concurrency(limit=1))
    async def one(ctx: Any) -> None:
        return None

    await client.ready()
    await client.send([{"name": "flow/one", "data": {"n": n}} for n in range(3)])
    fid = f"{client.app_id}-one-slot"
    store, lease = client.store, 30_000
    now = clock.now_ms()
    holder = await store.claim_runs("node-a", [fid], now, 10, lease, frozenset({fid}))
    assert len(holder) == 1  # the other two wait: blocked
    assert flow_counts(metrics, fid) == {("concurrency", "blocked"): 2}
    # The holder renews its lease again and again; the waiting runs are checked again (the fallback for a holder
    # that dies) and still find the key full: they are still the same two waits.
    rechecked = 0
    for _ in range(3):
        now += lease - 1
        assert await store.renew_leases("node-a", [holder[0].run.id], now, lease) == []  # none lost
        now += 2  # the first waiting run's check comes (the holder's old lease expiry)
        assert await store.claim_runs("node-b", [fid], now, 10, lease, frozenset({fid})) == []
        rechecked += 1
    assert rechecked == 3
    assert flow_counts(metrics, fid) == {("concurrency", "blocked"): 2}
    idle = [r.idle_reason for r in await runs(client, "one-slot") if r.id != holder[0].run.id]
    assert [i["kind"] if i else None for i in idle] == ["concurrency", "concurrency"]


async def test_a_write_run_again_by_the_writer_counts_its_decisions_once(
    client: Stepline, clock: FakeClock, metrics: Metrics
) -> None:
    """The group commit applies a failing write and a send in one transaction, rolls it back and runs the send
    again alone: its throttle decision must be counted once."""

    @client.function(id="throttled", trigger="flow/t", throttle=Throttle(limit=1, period="1m"))
    async def throttled(ctx: Any) -> None:
        return None

    await client.ready()
    await client.send({"name": "flow/t", "data": {}})  # takes the throttle's one slot: the next is delayed
    group: Any = client.store.writer  # type: ignore[attr-defined]
    writers: list[Any] = list(getattr(group, "writers", [group]))  # PostgreSQL: several, used round-robin
    gate = threading.Event()
    holding = [threading.Event() for _ in writers]

    def hold(i: int) -> Any:
        def op(conn: Any) -> None:  # keeps a writer busy while the next writes queue up behind it
            holding[i].set()
            gate.wait(10)

        return op

    def fail(conn: Any) -> None:
        raise ValueError("this write fails")

    held = [w.submit(hold(i)) for i, w in enumerate(writers)]
    for h in holding:
        assert await asyncio.to_thread(h.wait, 10)
    sent = asyncio.ensure_future(client.send({"name": "flow/t", "data": {}}))
    for _ in range(500):  # until the send's write is queued on one of them
        await asyncio.sleep(0.01)
        if any(w._queue.qsize() >= 1 for w in writers):
            break
    failing = [w.submit(fail) for w in writers]  # queued after the send: on its writer, in the same transaction
    gate.set()
    for h in held:
        await asyncio.wrap_future(h)
    await sent
    for f in failing:
        with pytest.raises(ValueError, match="this write fails"):
            await asyncio.wrap_future(f)
    assert flow_counts(metrics, f"{client.app_id}-throttled") == {("throttle", "delayed"): 1}
    assert len(await runs(client, "throttled")) == 2
