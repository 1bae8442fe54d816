"""Signals in-process (issue 14, item 6): ``ctx.step.wait_for_signal`` and ``client.send_signal``, on a real store
(SQLite and PostgreSQL) with the fake clock."""

from __future__ import annotations

from typing import Any

from stepline import Context, FakeClock, Stepline, SyncContext

from .helpers import advance, drain, only_run, runs, steps


async def test_a_signal_resumes_the_waiting_run_with_its_data(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="approver", trigger="t/approve")
    async def approver(ctx: Context) -> Any:
        got = await ctx.step.wait_for_signal("approval", signal=f"approve-{ctx.event.data['order']}", timeout="1h")
        return {"got": got}

    assert await client.send_signal("approve-7", {"early": True}) is None  # nobody waits: not kept
    await client.send({"name": "t/approve", "data": {"order": 7}})
    await drain(client)
    run = await only_run(client)
    assert run.status == "running" and run.idle_reason is not None
    assert run.idle_reason["message"] == "waiting for signal 'approve-7' until 2026-01-01T01:00:00Z"
    assert (run.idle_reason["signal"], run.idle_reason["step"]) == ("approve-7", "approval")
    assert await client.send_signal("approve-7", {"by": "alice"}) == run.id
    await drain(client)
    run = await only_run(client)
    assert (run.status, run.output) == ("completed", {"got": {"signal": "approve-7", "data": {"by": "alice"}}})
    [step] = await steps(client, run.id)
    assert (step.kind, step.status) == ("wait_for_signal", "completed")
    assert await client.send_signal("approve-7", {}) is None  # consumed with the run


async def test_a_signal_wait_times_out_with_none(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="impatient", trigger="t/impatient")
    def impatient(ctx: SyncContext) -> Any:  # the sync flavour
        return {"got": ctx.step.wait_for_signal("ping", signal="never", timeout="10m")}

    await client.send({"name": "t/impatient"})
    await drain(client)
    await advance(client, clock, 600)
    run = await only_run(client)
    assert (run.status, run.output) == ("completed", {"got": None})
    assert await client.send_signal("never") is None  # the timed-out wait listens no more


async def test_one_run_waits_for_a_signal_a_second_fails_or_replaces(client: Stepline, clock: FakeClock) -> None:
    @client.function(id="strict", trigger="t/strict")
    async def strict(ctx: Context) -> Any:
        return await ctx.step.wait_for_signal("s", signal="shared", timeout="1h")

    @client.function(id="taker", trigger="t/taker")
    async def taker(ctx: Context) -> Any:
        return await ctx.step.wait_for_signal("s", signal="shared", timeout="1h", on_conflict="replace")

    await client.send({"name": "t/strict", "data": {"n": 1}})
    await drain(client)
    await client.send({"name": "t/strict", "data": {"n": 2}})
    await drain(client)
    first, second = sorted(await runs(client, "strict"), key=lambda r: r.created_at)
    assert first.status == "running"
    assert second.status == "failed" and "signal conflict" in second.error["message"], second  # at once, no retry
    await client.send({"name": "t/taker"})
    await drain(client)
    taker_run = await only_run(client, "taker")
    assert await client.send_signal("shared", "x") == taker_run.id
    await drain(client)
    assert (await only_run(client, "taker")).output == {"signal": "shared", "data": "x"}
    assert (await client.get_run(first.id)).status == "running"  # type: ignore[union-attr]  # waits for its timeout
