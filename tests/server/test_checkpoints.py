"""Checkpointing (issue 14, item 7): the server offers discovery calls ``ctx.fn_id`` and ``ctx.qi_id``; an SDK that
checkpoints POSTs each step's result to ``/v1/checkpoint/{run_id}/async`` during the call. A scripted app on a real
socket plays the npm SDK (its script POSTs the checkpoints back to the real server), with the real store and the
fake clock."""

from __future__ import annotations

from typing import Any

import httpx

from stepline.core.ids import hash_step_id

from .fake_app import SIGNING_KEY, Call, FakeApp, MakeStack, Reply, fn_config, ops, sdk
from .test_retry_semantics import fid, register

RUN_COMPLETE_ID = hash_step_id("complete")


def ran(user_id: str, data: Any) -> dict[str, Any]:
    return {"op": "StepRun", "id": hash_step_id(user_id), "name": user_id, "displayName": user_id, "data": data,
            "userland": {"id": user_id}}  # fmt: skip


def complete_op(data: Any) -> dict[str, Any]:
    return {"op": "RunComplete", "id": RUN_COMPLETE_ID, "data": data}


class Checkpointer:
    """The app side of checkpointing: POSTs ops for the run of a call, as the npm SDK does, and keeps the answers."""

    def __init__(self, server_url: str, headers: dict[str, str] | None = None) -> None:
        self.url = server_url
        self.headers = headers or {}
        self.answers: list[tuple[int, str]] = []

    async def post(self, call: Call, *ops_: dict[str, Any], qi_id: str | None = None, run_id: str | None = None) -> int:
        ctx = call.json()["ctx"]
        body = {"run_id": run_id or ctx["run_id"], "fn_id": ctx["fn_id"], "qi_id": qi_id or ctx["qi_id"],
                "request_id": "r1", "steps": list(ops_), "ts": 0}  # fmt: skip
        async with httpx.AsyncClient() as http:
            res = await http.post(f"{self.url}/v1/checkpoint/{body['run_id']}/async", json=body, headers=self.headers)
        self.answers.append((res.status_code, res.text))
        return res.status_code


async def test_a_run_of_checkpointed_steps_takes_one_call(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    cp = Checkpointer(s.url)

    async def sdk_run(call: Call) -> Reply:
        assert call.json()["ctx"]["fn_id"] == fid("fast") and call.json()["ctx"]["qi_id"]
        planned = {"op": "StepPlanned", "id": hash_step_id("a"), "displayName": "a", "opts": {}}
        await cp.post(call, planned, ran("a", 1))  # the leading edge, then the result
        await cp.post(call, ran("b", 2))
        return ops(complete_op({"sum": 3}))

    app.script(fid("fast"), sdk_run)
    await register(s, app, fn_config(app.url, "fast"))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("fast")]
    assert (run.status, run.output) == ("completed", {"sum": 3}), run
    assert [code for code, _ in cp.answers] == [200, 200]
    assert all(text == "" for _, text in cp.answers)  # an empty body, as Inngest's (the SDK reads the status)
    steps = await s.store.list_steps(run.id)
    assert [(st.display_id, st.output, st.status) for st in steps] == [("a", 1, "completed"), ("b", 2, "completed")]
    assert len(app.calls_of(fid("fast"))) == 1


async def test_checkpointed_steps_are_in_the_memo_of_the_next_call(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    cp = Checkpointer(s.url)
    nap = {"op": "Sleep", "id": hash_step_id("nap"), "name": "10s", "displayName": "nap"}

    async def first(call: Call) -> Reply:
        await cp.post(call, ran("a", "A"))
        await cp.post(call, ran("b", "B"))
        return ops(nap)  # an op the server must schedule: the SDK hands back

    async def second(call: Call) -> Reply:
        ctx = call.json()
        # An earlier dispatch of this run checkpointing now (a call that should be over) is stale.
        assert await cp.post(call, ran("late", 1), qi_id=cp_first_qi[0]) == 409
        return ops(complete_op([ctx["steps"], ctx["ctx"]["stack"]]))

    cp_first_qi: list[str] = []

    def script(call: Call) -> Any:
        if not cp_first_qi:
            cp_first_qi.append(call.json()["ctx"]["qi_id"])
            return first(call)
        return second(call)

    app.script(fid("napper"), script)
    await register(s, app, fn_config(app.url, "napper"))
    event_id = await s.send()
    await s.drain()
    await s.advance(10)
    run = (await s.runs_of(event_id))[fid("napper")]
    steps, stack = run.output
    ids = [hash_step_id(x) for x in ("a", "b", "nap")]
    assert steps == {ids[0]: {"data": "A"}, ids[1]: {"data": "B"}, ids[2]: None}, steps
    assert stack == {"stack": ids, "current": 3}
    assert cp.answers[-1][0] == 409 and "stale dispatch" in cp.answers[-1][1]


async def test_checkpoints_that_cannot_be_taken_are_precise_errors(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    cp = Checkpointer(s.url)
    codes: dict[str, int] = {}

    async def sdk_run(call: Call) -> Reply:
        codes["unknown run"] = await cp.post(call, ran("a", 1), run_id="01ARZ3NDEKTSV4RRFFQ69G5FAV")
        codes["bad qi"] = await cp.post(call, ran("a", 1), qi_id="not-ours")
        codes["async op"] = await cp.post(call, {"op": "Sleep", "id": hash_step_id("z"), "name": "1s"})
        codes["no id"] = await cp.post(call, {"op": "StepRun", "data": 1})
        codes["first"] = await cp.post(call, ran("a", 1))
        codes["again, same"] = await cp.post(call, ran("a", 1))
        codes["again, other"] = await cp.post(call, ran("a", 2))  # another result: the SDK must not go on
        return ops(complete_op("done"))

    app.script(fid("picky"), sdk_run)
    await register(s, app, fn_config(app.url, "picky"))
    event_id = await s.send()
    await s.drain()
    run = (await s.runs_of(event_id))[fid("picky")]
    assert run.status == "completed"
    assert codes == {"unknown run": 404, "bad qi": 400, "async op": 400, "no id": 400, "first": 200,
                     "again, same": 200, "again, other": 409}, (codes, cp.answers)  # fmt: skip
    assert "cannot checkpoint a Sleep op" in cp.answers[2][1]
    ended = Call("POST", "/", {}, {}, app.calls[0].body, 0.0)
    assert await cp.post(ended, ran("b", 1)) == 409  # the run has ended
    assert "has ended" in cp.answers[-1][1]


async def test_checkpoints_need_the_signing_key_in_start_mode(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack(kind="cloud", signing_keys=(SIGNING_KEY,))
    res = await s.api.post("/v1/checkpoint/01ARZ3NDEKTSV4RRFFQ69G5FAV/async", json={"steps": []})
    assert res.status_code == 401, res.text
    assert sdk  # (the signed flow end to end is the npm SDK's, in tests/compat/test_parity.py)
