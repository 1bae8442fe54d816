from __future__ import annotations

import asyncio

from stepline import FakeClock, Stepline


async def test_one_step_run_completes(client: Stepline, clock: FakeClock) -> None:
    calls: list[int] = []

    @client.function(id="hello", trigger="app/hello")
    async def hello(ctx):  # type: ignore[no-untyped-def]
        value = await ctx.step.run("compute", lambda: calls.append(1) or ctx.event.data["n"] * 2)
        return {"doubled": value}

    await client.ready()
    ids = await client.send({"name": "app/hello", "data": {"n": 21}})
    worker = client.worker()
    await worker.run_until_idle()
    runs = await client.store.list_runs(__import__("stepline.storage.records", fromlist=["RunFilter"]).RunFilter())
    assert len(ids) == 1
    assert [r.status for r in runs] == ["completed"]
    assert runs[0].output == {"doubled": 42}
    assert calls == [1]
    await asyncio.sleep(0)
