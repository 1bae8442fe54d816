"""Inngest's retry and error semantics over HTTP (issue 14, items 1-2), with a scripted app on a real socket, the
real server and store, and the fake clock (retries 10 s, 20 s, 40 s after failed attempts 0, 1, 2).

- Every stretch of code between two steps gets the function's full retries: the attempt sent to the SDK
  (``ctx.attempt``) starts again at 0 once a step ends.
- A function-level error in a targeted call counts against that step's attempts, as Inngest's queue item of the
  step does; the other parallel steps' results are kept.
- Errors are stored and returned exactly as the SDK sent them; the run-end events carry Inngest's
  ``{error, name, message, stack?}``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from stepline.core.ids import hash_step_id

from .fake_app import (
    APP_ID,
    Call,
    FakeApp,
    MakeStack,
    Reply,
    Stack,
    complete,
    fn_config,
    fn_error,
    ops,
    register_body,
    sdk,
    step_op,
)


def fid(slug: str) -> str:
    return f"{APP_ID}-{slug}"


async def register(s: Stack, app: FakeApp, *functions: dict[str, Any]) -> None:
    res = await s.register(register_body(app.url, list(functions)))
    assert res.status_code == 200, res.text


def by_step(**replies: list[Reply | Callable[[Call], Reply]]) -> Callable[[Call], Reply]:
    """Answers per called step: ``step`` for discovery calls, else the user's step id (hashed when called); the
    last reply of each list repeats; a callable answers from the call."""
    queues = {("step" if k == "step" else hash_step_id(k)): deque(v) for k, v in replies.items()}

    def answer(call: Call) -> Reply:
        queue = queues[call.step_id or "step"]
        reply = queue.popleft() if len(queue) > 1 else queue[0]
        return reply(call) if callable(reply) else reply

    return answer


def planned(*user_ids: str, **opts: Any) -> Reply:
    return ops(*({"op": "StepPlanned", "id": hash_step_id(u), "name": u, "displayName": u, "opts": opts or None}
                 for u in user_ids))  # fmt: skip


def attempts(app: FakeApp, slug: str, step: str = "step") -> list[int]:
    want = step if step == "step" else hash_step_id(step)
    return [c.json()["ctx"]["attempt"] for c in app.calls_of(fid(slug)) if c.step_id == want]


async def test_each_stretch_between_steps_gets_the_full_retries(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    # retries: 1. Fails once before its first step and once after it: both stretches are retried.
    app.script(fid("stretch"), fn_error("Error", "before"), ops(step_op("first", 1)), fn_error("Error", "after"),
               complete("done"))  # fmt: skip
    await register(s, app, fn_config(app.url, "stretch", retries=1))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("stretch")]
    assert (run.status, run.attempt, run.due_at) == ("running", 1, s.now() + 10_000)
    await s.advance(10)  # attempt 1 runs the step; the discovery after it is attempt 0 of the next stretch
    run = await s.run(run.id)
    assert (run.status, run.attempt, run.due_at) == ("running", 1, s.now() + 10_000), run  # not failed
    await s.advance(10)
    run = await s.run(run.id)
    assert (run.status, run.output) == ("completed", "done"), run
    assert attempts(app, "stretch") == [0, 1, 0, 1]
    assert {c.json()["ctx"]["max_attempts"] for c in app.calls_of(fid("stretch"))} == {2}


async def test_a_sleep_ends_the_stretch_and_its_retries(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    nap = {"op": "Sleep", "id": hash_step_id("nap"), "name": "1m", "displayName": "nap"}
    app.script(fid("napper"), fn_error("Error", "before"), ops(nap), fn_error("Error", "after"), complete("done"))
    await register(s, app, fn_config(app.url, "napper", retries=1))
    event_id = await s.send()
    await s.drain()
    await s.advance(10)  # attempt 1 reaches the sleep: the run rests with its attempt back at 0
    run = (await s.runs_of(event_id))[fid("napper")]
    assert (run.attempt, run.idle_reason["kind"]) == (0, "sleeping"), run
    await s.advance(60)
    await s.advance(10)
    assert (await s.run(run.id)).status == "completed"
    assert attempts(app, "napper") == [0, 1, 0, 1]


async def test_a_function_error_in_a_targeted_call_retries_that_step_and_keeps_the_others(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    app.start()
    app.script(fid("par"), by_step(
        step=[planned("a", "b"), complete("joined")],
        a=[fn_error("Error", "a's call failed"), ops(step_op("a", "A"))],
        b=[ops(step_op("b", "B"))],
    ))  # fmt: skip
    await register(s, app, fn_config(app.url, "par", retries=2))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("par")]
    assert (run.status, run.attempt) == ("running", 0), run  # the run's own attempt is untouched
    assert run.idle_reason == {"kind": "retrying", "step": "a", "until": s.now() + 10_000,
                               "error": "Error: a's call failed"}  # fmt: skip
    steps = {st.display_id: st for st in await s.store.list_steps(run.id)}
    assert (steps["b"].status, steps["b"].output) == ("completed", "B")  # kept: b is not called again
    assert (steps["a"].status, steps["a"].attempts, steps["a"].error["message"]) == ("retrying", 1, "a's call failed")
    await s.advance(10)
    run = await s.run(run.id)
    assert (run.status, run.output) == ("completed", "joined"), run
    assert attempts(app, "par", "a") == [0, 1]
    # the run page's timeline: each attempt of "a" with its outcome, the failed one's error and backoff
    tries = await s.store.list_step_attempts(run.id)
    assert [(t.step_id, t.attempt, t.status) for t in tries] == [(hash_step_id("a"), 1, "failed"),
                                                                 (hash_step_id("a"), 2, "completed")]  # fmt: skip
    assert tries[0].error is not None and tries[0].error["message"] == "a's call failed"
    assert tries[0].retry_at is not None and tries[0].ended_at < tries[0].retry_at
    assert tries[0].ended_at < tries[1].started_at <= tries[1].ended_at  # (the call's own time is real time)
    assert attempts(app, "par", "b") == [0]


async def test_a_targeted_call_out_of_attempts_fails_the_run(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    app.script(fid("par-doomed"), by_step(step=[planned("a", "b")], a=[fn_error("Error", "a is broken")],
                                          b=[ops(step_op("b", "B"))]))  # fmt: skip
    await register(s, app, fn_config(app.url, "par-doomed", retries=1))
    event_id = await s.send()
    await s.drain()
    await s.advance(10)
    run = (await s.runs_of(event_id))[fid("par-doomed")]
    assert (run.status, run.error["message"]) == ("failed", "a is broken"), run
    assert attempts(app, "par-doomed", "a") == [0, 1]


async def test_errors_are_kept_as_the_sdk_sent_them_and_events_carry_inngests_shape(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    app.start()
    step_error = {"name": "StepError", "message": "card declined", "stack": None, "code": "step_error"}
    run_error = {"name": "StepError", "message": "card declined", "stack": None, "code": "step_error",
                 "cause": {"name": "Error", "message": "declined by the bank"}}  # fmt: skip
    failed_op = {"op": "StepFailed", "id": hash_step_id("charge"), "name": "charge", "displayName": "charge",
                 "error": step_error}  # fmt: skip
    app.script(fid("shapes"), ops(failed_op), sdk(500, run_error))
    no_retry = {"name": "NonRetriableError", "message": "bad input", "stack": "NonRetriableError: bad input\n  at x"}
    app.script(fid("strict"), sdk(400, no_retry, **{"x-inngest-no-retry": "true"}))
    await register(s, app, fn_config(app.url, "shapes", retries=0), fn_config(app.url, "strict", retries=3))
    event_id = await s.send()
    await s.drain()
    runs = await s.runs_of(event_id)
    run = runs[fid("shapes")]
    assert (run.status, run.error) == ("failed", run_error)  # stored exactly: the null stack is kept
    [step] = await s.store.list_steps(run.id)
    assert step.error == step_error
    # The memo the SDK got back for the failed step is its error as it sent it.
    [_, second] = app.calls_of(fid("shapes"))
    assert second.json()["steps"][hash_step_id("charge")] == {"error": step_error}
    # The REST API returns them as stored, null stack included.
    rest_run = (await s.api.get(f"/v1/runs/{run.id}")).json()["data"]
    assert rest_run["error"] == run_error
    [rest_step] = (await s.api.get(f"/v1/runs/{run.id}/steps")).json()["data"]
    assert rest_step["error"] == step_error and "stack" in rest_step["error"]
    # The run-end events carry the error as Inngest's executor does.
    failed = {e.data["function_id"]: e.data for e in await s.events("stepline/function.failed")}
    finished = {e.data["function_id"]: e.data for e in await s.events("stepline/function.finished")}
    expected = {"error": "invalid status code: 500", "name": "StepError", "message": "card declined",
                "cause": {"name": "Error", "message": "declined by the bank"}}  # fmt: skip
    assert failed[fid("shapes")]["error"] == expected
    assert finished[fid("shapes")]["error"] == expected
    assert failed[fid("strict")]["error"] == {"error": "NonRetriableError", **no_retry}
    assert runs[fid("strict")].error == no_retry


# --- item 8: sleeps and waits of more than a year, StepNotFound ----------------------------------------------------
async def test_a_sleep_or_wait_longer_than_a_year_fails_the_run_at_once(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    nap = {"op": "Sleep", "id": hash_step_id("nap"), "name": "400d", "displayName": "nap"}
    wait = {"op": "WaitForEvent", "id": hash_step_id("w"), "name": "shop/paid", "displayName": "w",
            "opts": {"timeout": "367d"}}  # fmt: skip
    app.script(fid("sleepy"), ops(nap))
    app.script(fid("patient"), ops(wait))
    await register(s, app, fn_config(app.url, "sleepy", retries=3), fn_config(app.url, "patient", retries=3))
    event_id = await s.send()
    await s.drain()
    runs = await s.runs_of(event_id)
    # As Inngest since 2026: refused with its error, no retry.
    assert (runs[fid("sleepy")].status, runs[fid("sleepy")].error) == (
        "failed",
        {
            "name": "InngestErrTimeoutTooLong",
            "message": 'The sleep "400d" ends more than one year in the future; sleeps may last at most one year.',
        },
    )
    assert (runs[fid("patient")].status, runs[fid("patient")].error) == ("failed", {
        "name": "InngestErrTimeoutTooLong", "message": 'The wait-for-event timeout "367d" expires more than one year '
        "in the future; timeouts may last at most one year."})  # fmt: skip
    assert len(app.calls) == 2


async def test_a_step_the_app_no_longer_has_is_rediscovered_not_retried(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    gone = sdk(500, {"error": 'Could not find step "old" to run; timed out.', "requestedStep": hash_step_id("old"),
                     "foundSteps": [], "totalFoundSteps": 0}, **{"x-inngest-no-retry": "false"})  # fmt: skip
    spec_op = ops({"op": "StepNotFound", "id": hash_step_id("older")})
    app.script(fid("changed"), by_step(step=[planned("old", "older"), complete("new code")], old=[gone],
                                       older=[spec_op]))  # fmt: skip
    await register(s, app, fn_config(app.url, "changed", retries=1))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("changed")]
    assert (run.status, run.output, run.attempt) == ("completed", "new code", 0), run  # no backoff, no retry
    assert [c.step_id for c in app.calls_of(fid("changed"))].count("step") == 2
    assert await s.store.list_steps(run.id) == []
