"""Cron functions of apps synced over HTTP: the server's worker fires them (driven here with a fake clock), and a
cron that does not parse fails the app's sync naming the function and the field, keeping what was registered."""

from __future__ import annotations

from stepline.core.scheduler import SCHEDULED_TIMER
from stepline.storage.records import RunFilter

from .fake_app import APP_ID, FakeApp, MakeStack, complete, fn_config, register_body


async def test_an_http_cron_function_fires_once_per_scheduled_time(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    fid = f"{APP_ID}-nightly"
    app.script(fid, complete("a"), complete("b"))
    config = fn_config(app.url, "nightly", triggers=[{"cron": "TZ=Europe/Paris */10 * * * *"}])
    assert (await s.register(register_body(app.url, [config]))).status_code == 200
    await s.drain()  # the server's worker picks the schedule up (first seen now: nothing fires)
    assert app.calls_of(fid) == []
    await s.advance(9 * 60)
    assert app.calls_of(fid) == []
    await s.advance(60)  # 00:10
    await s.advance(60)
    await s.advance(9 * 60)  # 00:20
    calls = app.calls_of(fid)
    assert [c.json()["event"]["id"] for c in calls] == ["2026-01-01T00:10:00Z", "2026-01-01T00:20:00Z"]
    event = calls[0].json()["event"]
    at = "2026-01-01T00:10:00Z"
    assert (event["name"], event["data"]) == (SCHEDULED_TIMER, {"cron": "TZ=Europe/Paris */10 * * * *",
                                                                "scheduledAt": at, "fireAt": at})  # fmt: skip
    done = await s.store.list_runs(RunFilter(function_id=fid, limit=10))
    assert sorted(r.status for r in done) == ["completed", "completed"]


async def test_a_bad_cron_fails_the_sync_naming_function_and_field(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    first = register_body(app.url, [fn_config(app.url, "charge")])
    assert (await s.register(first)).status_code == 200
    cases = [
        ("0 25 * * *", "function 'shop-bad': invalid triggers[0].cron: invalid cron '0 25 * * *': hour field '25' "
                       "is not valid (0-23)"),
        ("TZ=Nowhere/Land 0 9 * * *", "function 'shop-bad': invalid triggers[0].cron: invalid cron "
                                      "'TZ=Nowhere/Land 0 9 * * *': unknown time zone 'Nowhere/Land'"),
        ("* * * *", "function 'shop-bad': invalid triggers[0].cron: invalid cron '* * * *': expected 5 fields"),
    ]  # fmt: skip
    for cron, error in cases:
        bad = fn_config(app.url, "bad", triggers=[{"cron": cron}])
        res = await s.register(register_body(app.url, [fn_config(app.url, "charge"), bad]))
        assert res.status_code == 400, res.text
        assert res.json()["error"].startswith(error), res.text
        assert sorted(f.id for f in await s.store.list_functions()) == ["shop-charge"]  # the previous sync stands


async def test_a_cron_jitter_delays_the_run_and_a_bad_one_fails_the_sync(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    app.start()
    fid = f"{APP_ID}-spread"
    app.script(fid, complete("done"))
    bad = fn_config(app.url, "spread", triggers=[{"cron": "*/10 * * * *", "jitter": "10m"}])
    res = await s.register(register_body(app.url, [bad]))
    assert res.status_code == 400, res.text
    assert res.json()["error"] == ("function 'shop-spread': invalid triggers[0].jitter: cron jitter must be from 1s "
                                   "to 5m, got '10m'")  # fmt: skip
    config = fn_config(app.url, "spread", triggers=[{"cron": "*/10 * * * *", "jitter": "2m"}])
    assert (await s.register(register_body(app.url, [config]))).status_code == 200
    await s.drain()
    await s.advance(10 * 60)  # 00:10: fired, the run is due a little later
    [run] = await s.store.list_runs(RunFilter(function_id=fid, limit=10))
    scheduled = s.now()
    assert run.status == "queued" and scheduled + 1_000 <= run.due_at <= scheduled + 120_000, run
    assert app.calls_of(fid) == []
    await s.advance((run.due_at - scheduled) / 1000)
    [call] = app.calls_of(fid)
    data = call.json()["event"]["data"]
    assert data["scheduledAt"] == "2026-01-01T00:10:00Z" and data["fireAt"] > data["scheduledAt"], data
