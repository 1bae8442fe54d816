"""What happens when an expression cannot be evaluated, at each place it is used (real stores, both backends).

- a trigger's ``if``: no run starts, the event is stored, the function shows the error;
- a key (idempotency, concurrency, throttle, priority, ...): that run fails at once with a clear error (and its
  ``on_failure`` runs); a field missing from the event is not a failure (the key is null, as on Inngest);
- a wait or cancel condition: it does not match, and the waiting run's log says why;
- a stored expression that no longer passes the checks: reported on its function and app, never evaluated.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from stepline import Concurrency, Context, Stepline, SyncContext
from stepline.core import cel_sandbox
from stepline.core.function import FunctionSpec
from stepline.storage.records import FunctionRecord, RunFilter

from .helpers import drain, only_run, runs

CRASHING_SUM = " + ".join(["1"] * 15_000) + " > 0"


async def test_a_failing_trigger_starts_nothing_and_is_shown_on_the_function(client: Stepline) -> None:
    @client.function(id="big", trigger={"event": "shop/order", "if": "event.data.amount > 100"})
    async def big(ctx: Context) -> str:
        return "big"

    @client.function(id="all", trigger="shop/order")
    async def every(ctx: Context) -> str:
        return "all"

    await client.ready()
    sent = await client.send({"name": "shop/order", "data": {"amount": "lots"}})  # string > int: no overload
    await client.send({"name": "shop/order", "data": {"amount": 500}})
    await client.send({"name": "shop/order", "data": {}})  # missing field: no match, not an error
    await drain(client)
    assert len(await runs(client, "big")) == 1
    assert len(await runs(client, "all")) == 3
    assert await client.store.get_event(sent[0]) is not None
    errors = await client.store.list_expression_errors()
    assert [(e.function_id, e.place, e.count) for e in errors] == [("test-app-big", "trigger 'shop/order' if", 1)]
    assert "no such overload" in errors[0].message.lower() or "overload" in errors[0].message.lower()


async def test_a_failing_key_fails_the_run_with_a_clear_error(client: Stepline) -> None:
    failures: list[dict[str, Any]] = []

    def on_failure(ctx: SyncContext) -> None:
        failures.append(ctx.event.data)

    @client.function(id="keyed", trigger="t/keyed", on_failure=on_failure,
                     concurrency=Concurrency(limit=1, key="event.data.user + 1"))  # fmt: skip
    async def keyed(ctx: Context) -> str:
        return "ran"

    await client.send({"name": "t/keyed", "data": {"user": "u1"}})  # "u1" + 1: no such overload
    await client.send({"name": "t/keyed", "data": {}})  # missing: the key is null, the run goes on
    await client.send({"name": "t/keyed", "data": {"user": 41}})
    await drain(client)
    found = sorted(await runs(client, "keyed"), key=lambda r: r.status)
    assert [r.status for r in found] == ["completed", "completed", "failed"]
    failed = found[2]
    assert failed.error["name"] == "ExpressionError"
    assert "concurrency key expression could not be evaluated" in failed.error["message"]
    assert [f["run_id"] for f in failures] == [failed.id]
    assert failures[0]["error"]["name"] == "ExpressionError"
    places = {e.place for e in await client.store.list_expression_errors()}
    assert places == {"concurrency key"}


async def test_a_failing_idempotency_key_fails_the_run(client: Stepline) -> None:
    @client.function(id="once", trigger="t/once", idempotency="event.data.id * 2")
    async def once(ctx: Context) -> str:
        return "ran"

    await client.send({"name": "t/once", "data": {"id": "x"}})
    await client.send({"name": "t/once", "data": {"id": 4}})
    await drain(client)
    statuses = sorted(r.status for r in await runs(client, "once"))
    assert statuses == ["completed", "failed"]


async def test_a_failing_wait_condition_does_not_match_and_is_logged_on_the_run(client: Stepline) -> None:
    @client.function(id="waiter", trigger="t/start")
    async def waiter(ctx: Context) -> Any:
        got = await ctx.step.wait_for_event("approval", event="t/approve", timeout="1h",
                                            if_exp="async.data.n + 1 > event.data.n")  # fmt: skip
        return None if got is None else got["data"]["n"]

    await client.send({"name": "t/start", "data": {"n": 1}})
    await drain(client)
    await client.send({"name": "t/approve", "data": {"n": "two"}})  # "two" + 1: cannot be evaluated
    await drain(client)
    run = await only_run(client, "waiter")
    assert run.status == "running"
    logs = await client.store.list_run_logs(run.id)
    assert len(logs) == 1 and logs[0].level == "WARNING"
    assert "wait_for_event condition could not be evaluated for event 't/approve'" in logs[0].message
    await client.send({"name": "t/approve", "data": {"n": 5}})
    await drain(client)
    run = await only_run(client, "waiter")
    assert run.status == "completed" and run.output == 5


async def test_a_stored_expression_over_the_limits_is_reported_and_never_evaluated(client: Stepline) -> None:
    """A trigger stored before the limits (here written straight into the registry) must not crash the process
    that routes events: it never fires, the function and app report it, every other function keeps working."""

    @client.function(id="fine", trigger="t/go")
    async def fine(ctx: Context) -> str:
        return "fine"

    await client.ready()
    record = FunctionRecord("legacy-crash", "legacy", "crash", "crash",
                            {"triggers": [{"event": "t/go", "expression": CRASHING_SUM}], "retries": 0})  # fmt: skip
    await client.store.register_functions("legacy", [record], client.engine.clock.now_ms())
    await client.send({"name": "t/go", "data": {}})
    await drain(client)
    assert (await only_run(client, "fine")).status == "completed"
    assert await client.store.list_runs(RunFilter(function_id="legacy-crash")) == []
    spec = FunctionSpec.from_record(record)
    assert len(spec.problems) == 1 and "characters long" in spec.problems[0]


async def test_comprehension_triggers_are_planned_off_the_event_loop(client: Stepline, monkeypatch: Any) -> None:
    """An expensive comprehension is cut off by its budget, and meanwhile the event loop keeps running."""
    cel_sandbox.shutdown()  # nothing held back from other tests
    monkeypatch.setenv("STEPLINE_CEL_BUDGET_MS", "300")

    @client.function(
        id="loops",
        trigger={"event": "t/loops", "if": "event.data.l.map(x, event.data.l.filter(y, y > x).size()).size() > 0"},
    )
    async def loops(ctx: Context) -> str:
        return "ran"

    await client.ready()
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await client.send({"name": "t/loops", "data": {"l": list(range(3))}})
    await client.send({"name": "t/loops", "data": {"l": list(range(6000))}})  # 36 million steps: cut off
    stop.set()
    await tick
    await drain(client)
    assert len(await runs(client, "loops")) == 1
    assert max(gaps) < 0.2, f"the event loop stalled for {max(gaps):.3f} s"
    errors = await client.store.list_expression_errors()
    assert "budget of 300 ms" in errors[0].message


async def test_registration_refuses_an_expression_over_the_limits(client: Stepline) -> None:
    with pytest.raises(ValueError, match="refused: the expression is 60,001 characters long"):
        client.function(id="crash", trigger={"event": "t/x", "if": CRASHING_SUM})(lambda ctx: None)
