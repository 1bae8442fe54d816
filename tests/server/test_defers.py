"""Defers (issue 14, item 8): the lazy ``DeferAdd`` / ``DeferAbort`` ops, with a scripted app on a real socket, the
real server and store, and the fake clock."""

from __future__ import annotations

from typing import Any

from stepline.core.ids import hash_step_id

from .fake_app import Call, FakeApp, MakeStack, Reply, fn_config, fn_error, ops
from .test_checkpoints import complete_op, ran
from .test_retry_semantics import by_step, fid, register


def defer_op(user_id: str, data: Any, fn_slug: str = "shop-later") -> dict[str, Any]:
    return {"op": "DeferAdd", "id": hash_step_id(user_id), "name": user_id, "displayName": user_id,
            "opts": {"fn_slug": fn_slug, "input": data}, "userland": {"id": user_id}}  # fmt: skip


def abort_op(user_id: str) -> dict[str, Any]:
    return {"op": "DeferAbort", "id": hash_step_id(f"{hash_step_id(user_id)}:abort"), "name": user_id,
            "opts": {"target_hashed_id": hash_step_id(user_id), "fn_slug": "shop-later", "id": user_id}}  # fmt: skip


LATER = {
    "triggers": [{"event": "inngest/deferred.schedule", "expression": "event.data._inngest.fn_slug == 'shop-later'"}]
}


async def test_defers_ride_on_ops_and_schedule_their_function_at_the_end(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    seen: list[dict[str, Any]] = []

    def finish(call: Call) -> Reply:
        seen.append(call.json().get("defers") or {})
        # A retransmit of the first defer (dedupes), an abort of the second, a third with the end.
        return ops(defer_op("a", {"n": 1}), abort_op("b"), defer_op("c", {"n": 3}), complete_op("done"))

    app.script(fid("parent"), by_step(step=[ops(defer_op("a", {"n": 1}), defer_op("b", {"n": 2}), ran("work", 1)),
                                            finish]))  # fmt: skip
    app.script(fid("later"), lambda call: Reply(200, b'"later ran"', {"x-inngest-sdk": "js:v4.24.0"}))
    await register(s, app, fn_config(app.url, "parent"), fn_config(app.url, "later", **LATER))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("parent")]
    assert (run.status, run.output) == ("completed", "done"), run
    # The second call told the SDK which defers it reported (so it does not report them again).
    assert seen == [{hash_step_id("a"): {"abortable": True}, hash_step_id("b"): {"abortable": True}}]
    # ... and their records are not in the memo the SDK replays.
    second = app.calls_of(fid("parent"))[1].json()
    assert list(second["steps"]) == [hash_step_id("work")] and second["ctx"]["stack"]["stack"] == [hash_step_id("work")]
    scheduled = await s.events("inngest/deferred.schedule")
    assert sorted(e.data["n"] for e in scheduled) == [1, 3]  # the aborted one is not scheduled
    first = next(e for e in scheduled if e.data["n"] == 1)
    assert first.data["_inngest"] == {"fn_slug": "shop-later", "parent_fn_slug": fid("parent"),
                                      "parent_run_id": run.id, "parent_app_id": "shop",
                                      "parent_fn_id": fid("parent")}  # fmt: skip
    later_runs = [c for c in app.calls_of(fid("later"))]
    assert len(later_runs) == 2
    kinds = sorted((st.display_id, st.kind) for st in await s.store.list_steps(run.id))
    assert kinds == [("a", "defer"), ("b", "defer"), ("b", "defer_abort"), ("c", "defer"), ("work", "run")]


async def test_defer_limits_and_a_failed_run_still_schedules(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    many = [defer_op(f"d{i}", {"i": i}) for i in range(21)]  # one more than a run may have
    huge = defer_op("huge", {"blob": "x" * (4 * 1024 * 1024)})
    app.script(fid("greedy"), ops(*many, huge, ran("work", 1)), fn_error("Error", "the end", 400,
                                                                        **{"x-inngest-no-retry": "true"}))  # fmt: skip
    app.script(fid("later"), Reply(200, b"null", {"x-inngest-sdk": "js:v4.24.0"}))
    await register(s, app, fn_config(app.url, "greedy"), fn_config(app.url, "later", **LATER))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("greedy")]
    assert run.status == "failed"  # a failed run schedules its defers too, as Inngest
    defers = {st.display_id: st for st in await s.store.list_steps(run.id) if st.kind == "defer"}
    assert len(defers) == 20 and "d20" not in defers and "huge" not in defers  # the 21st is ignored
    assert len(await s.events("inngest/deferred.schedule")) == 20


async def test_an_oversized_defer_is_stored_as_rejected(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    huge = defer_op("huge", {"blob": "x" * (4 * 1024 * 1024)})
    app.script(fid("big"), ops(huge, complete_op("done")))
    await register(s, app, fn_config(app.url, "big"), fn_config(app.url, "later", **LATER))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("big")]
    assert run.status == "completed"  # a defer never fails its run
    [rejected] = await s.store.list_steps(run.id)
    assert (rejected.status, rejected.error["name"]) == ("failed", "DeferRejected"), rejected
    assert "limit is 4194304" in rejected.error["message"]
    assert await s.events("inngest/deferred.schedule") == []
