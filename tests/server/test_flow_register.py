"""Flow control registered by the Inngest SDKs (issue 5): ``server/functions.py`` turns ``concurrency``,
``throttle``, ``rateLimit``, ``debounce``, ``priority``, ``batchEvents`` and ``singleton`` into the normalised
``config["flow"]`` (``core/flow.py``) that in-process functions store, and refuses a bad value with the function
and the field named as the app wrote them.

The function configs below are what the SDKs really send (checked against npm ``inngest@4.24.0``'s
``InngestFunction.getConfig`` and PyPI ``inngest==0.5.19``'s ``FunctionConfig.to_dict``): JS passes the user's
options through as written (``concurrency`` a number, an object or a list; absent fields absent), Python always
sends every option, ``null`` when unset, ``concurrency`` as a list, durations as ``"<n><unit>"`` strings with the
largest whole unit, and ``throttle.burst`` 1 by default.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from stepline.core.flow import normalize_flow
from stepline.server.functions import FunctionConfigError, function_record

from .fake_app import APP_ID, FakeApp, MakeStack, Stack, complete, fn_config, register_body
from .test_register import CEL_ERROR, function_ids, rejected

URL = "http://127.0.0.1:1/api/inngest"
PY_NULLS = {"batchEvents": None, "cancel": None, "concurrency": None, "debounce": None, "idempotency": None,
            "priority": None, "rateLimit": None, "throttle": None, "timeouts": None, "singleton": None}  # fmt: skip


def flow_of(**options: Any) -> dict[str, Any] | None:
    flow: dict[str, Any] | None = function_record(APP_ID, fn_config(URL, "limited", **options)).config.get("flow")
    return flow


# --- conversion -------------------------------------------------------------------------------------------------
def test_the_python_sdks_options_with_their_nulls() -> None:
    """``inngest.Concurrency(limit=1, key=..., scope="env")``, ``Throttle(limit=1, period=timedelta(seconds=2))``
    (burst defaults to 1), ``RateLimit(limit=1, period=timedelta(hours=1), key=...)``,
    ``Debounce(period=timedelta(seconds=1), timeout=timedelta(minutes=1))``, ``Priority(run=...)``,
    ``Singleton(mode="skip", key=...)``, as ``to_dict()`` gives them."""
    sent: dict[str, Any] = {**PY_NULLS,
            "concurrency": [{"key": "event.data.k", "limit": 1, "scope": "env"}],
            "debounce": {"key": None, "period": "1s", "timeout": "1m"},
            "priority": {"run": "event.data.p"},
            "rateLimit": {"key": "event.data.k", "limit": 1, "period": "1h"},
            "throttle": {"key": None, "limit": 1, "period": "2s", "burst": 1},
            "singleton": {"key": "event.data.k", "mode": "skip"}}  # fmt: skip
    record = function_record(APP_ID, fn_config(URL, "limited", **sent))
    assert record.config["flow"] == {
        "concurrency": [{"limit": 1, "key": "event.data.k", "scope": "env"}],
        "throttle": {"limit": 1, "period_ms": 2000, "burst": 1, "key": None},
        "rate_limit": {"limit": 1, "period_ms": 3_600_000, "key": "event.data.k"},
        "debounce": {"period_ms": 1000, "key": None, "timeout_ms": 60_000},
        "priority": {"run": "event.data.p"},
        "singleton": {"mode": "skip", "key": "event.data.k"},
    }
    assert {k: record.config["inngest"][k] for k in sent} == sent  # still kept verbatim
    assert "unenforced" not in record.config

    batch = {**PY_NULLS, "batchEvents": {"maxSize": 3, "timeout": "2s", "key": None, "if": None}}
    assert flow_of(**batch) == {"batch": {"max_size": 3, "timeout_ms": 2000, "key": None, "if": None}}
    assert flow_of(**PY_NULLS) is None  # nothing set: no "flow" at all
    assert flow_of(**{**PY_NULLS, "concurrency": []}) is None  # the onFailure function's config


def test_the_js_sdks_options_as_written() -> None:
    assert flow_of(concurrency=2) == {"concurrency": [{"limit": 2, "key": None, "scope": "fn"}]}
    assert flow_of(concurrency={"limit": 1, "key": "event.data.k"}) == {
        "concurrency": [{"limit": 1, "key": "event.data.k", "scope": "fn"}]
    }
    assert flow_of(concurrency=[{"limit": 1, "key": "event.data.k", "scope": "account"}, {"limit": 5}]) == {
        "concurrency": [
            {"limit": 1, "key": "event.data.k", "scope": "account"},
            {"limit": 5, "key": None, "scope": "fn"},
        ]
    }
    assert flow_of(
        throttle={"limit": 3, "period": "1h30m"},  # no burst: none
        rateLimit={"limit": 10, "period": "1d", "key": "event.data.user"},
        debounce={"period": "1w", "key": "event.data.user", "timeout": "1w"},
        singleton={"key": "event.data.user", "mode": "cancel"},
    ) == {
        "throttle": {"limit": 3, "period_ms": 5_400_000, "burst": 0, "key": None},
        "rate_limit": {"limit": 10, "period_ms": 86_400_000, "key": "event.data.user"},
        "debounce": {"period_ms": 604_800_000, "key": "event.data.user", "timeout_ms": 604_800_000},
        "singleton": {"mode": "cancel", "key": "event.data.user"},
    }
    assert flow_of(
        batchEvents={"maxSize": 100, "timeout": "60s", "key": "event.data.k", "if": "event.data.b == true"}
    ) == {"batch": {"max_size": 100, "timeout_ms": 60_000, "key": "event.data.k", "if": "event.data.b == true"}}
    assert flow_of(throttle={"limit": 2, "period": "6s", "burst": 1}) == {
        "throttle": {"limit": 2, "period_ms": 6000, "burst": 1, "key": None}  # limit + burst start at once
    }


def test_what_inngest_reads_as_no_limit_or_no_option() -> None:
    # concurrency 0: "use the maximum available concurrency" (the JS SDK's docs); Inngest's server skips it.
    assert flow_of(concurrency=0) is None
    assert flow_of(concurrency={"limit": 0}) is None
    assert flow_of(concurrency=[{"limit": 0}, {"limit": 2, "key": "event.data.k"}]) == {
        "concurrency": [{"limit": 2, "key": "event.data.k", "scope": "fn"}]
    }
    # priority without an expression (the JS type has run optional), empty keys and an empty debounce timeout.
    assert flow_of(priority={}) is None
    assert flow_of(priority={"run": ""}) is None
    assert flow_of(
        debounce={"period": "5s", "key": "", "timeout": ""}, rateLimit={"limit": 1, "period": "1m", "key": ""}
    ) == {
        "debounce": {"period_ms": 5000, "key": None, "timeout_ms": None},
        "rate_limit": {"limit": 1, "period_ms": 60_000, "key": None},
    }
    # Fields the server does not know are kept verbatim under "inngest" but do not fail the registration.
    assert flow_of(throttle={"limit": 1, "period": "1s", "future": True}) == {
        "throttle": {"limit": 1, "period_ms": 1000, "burst": 0, "key": None}
    }


def test_the_flow_config_is_the_one_in_process_functions_store() -> None:
    """Same options, same stored dict: the engine cannot tell an HTTP function's flow from an in-process one's."""
    flow = flow_of(concurrency=[{"limit": 2, "key": "event.data.k"}], throttle={"limit": 1, "period": "1m", "burst": 2},
                   rateLimit={"limit": 5, "period": "1h"}, debounce={"period": "10s", "timeout": "1m"},
                   priority={"run": "event.data.p"}, singleton={"mode": "skip"})  # fmt: skip
    assert flow == normalize_flow("limited", {
        "concurrency": [{"limit": 2, "key": "event.data.k"}], "throttle": {"limit": 1, "period": "1m", "burst": 2},
        "rate_limit": {"limit": 5, "period": "1h"}, "debounce": {"period": "10s", "timeout": "1m"},
        "priority": {"run": "event.data.p"}, "singleton": {"mode": "skip"}})  # fmt: skip


# --- bad values -------------------------------------------------------------------------------------------------
def bad(**options: Any) -> dict[str, Any]:
    return fn_config(URL, "bad", **options)


ERR = "function 'shop-bad': "
INVALID_FLOW: list[tuple[dict[str, Any], str]] = [
    # concurrency
    (bad(concurrency=-1), "concurrency.limit must be from 1 to 100000, got -1"),
    (bad(concurrency={"limit": 1.5}), "concurrency.limit must be an integer, got 1.5"),
    (bad(concurrency=True), "concurrency must be a number, an object or a list of objects, got True"),
    (bad(concurrency="2"), "concurrency must be a number, an object or a list of objects, got '2'"),
    (bad(concurrency=[3]), "concurrency[0] must be an object {limit, key?, scope?}, got 3"),
    (bad(concurrency=[{"limit": 0}, {"limit": 2, "key": "event.data.k", "scope": "team"}]),
     "concurrency[1].scope must be 'fn', 'env' or 'account', got 'team'"),
    (bad(concurrency={"limit": 1, "scope": "env"}), "concurrency.key is required for a limit with scope 'env'"),
    (bad(concurrency=[{"limit": 1}, {"limit": 2, "scope": "account"}]),
     "concurrency[1].key is required for a limit with scope 'account'"),
    (bad(concurrency=[{"limit": 1}, {"limit": 2}, {"limit": 3}]), "concurrency: at most 2 limits per function, got 3"),
    (bad(concurrency={"limit": 1, "key": "event.data.x =="}), f"concurrency.key: invalid expression: {CEL_ERROR}"),
    # throttle
    (bad(throttle={"limit": 0, "period": "1s"}), "throttle.limit must be from 1 to 100000, got 0"),
    (bad(throttle={"period": "1s"}), "throttle.limit must be an integer, got None"),
    (bad(throttle={"limit": 1}), "throttle.period is required"),
    (bad(throttle={"limit": 1, "period": "500ms"}), "throttle.period must be from 1s to 7d, got 500ms"),
    (bad(throttle={"limit": 1, "period": "8d"}), "throttle.period must be from 1s to 7d, got 8d"),
    (bad(throttle={"limit": 1, "period": 60}),
     "throttle.period must be a duration string like '30s' or '1h30m', got 60"),
    (bad(throttle={"limit": 1, "period": "1s", "burst": -1}), "throttle.burst must be from 0 to 100000, got -1"),
    (bad(throttle={"limit": 1, "period": "1s", "key": "event.data.x =="}),
     f"throttle.key: invalid expression: {CEL_ERROR}"),
    (bad(throttle=[{"limit": 1, "period": "1s"}]), "throttle must be an object, got [{'limit': 1, 'period': '1s'}]"),
    # rateLimit
    (bad(rateLimit={"limit": 0, "period": "1h"}), "rateLimit.limit must be from 1 to 100000, got 0"),
    (bad(rateLimit={"limit": 1, "period": "25h"}), "rateLimit.period must be from 1s to 1d, got 25h"),
    (bad(rateLimit={"limit": 1, "period": ""}),
     "rateLimit.period: invalid duration '': the string is empty; expected a number followed by a unit (ms, s, m, "
     "h, d, w), like '30s' or '1h30m'"),
    (bad(rateLimit={"limit": 1, "period": "1h", "key": "event.data.x =="}),
     f"rateLimit.key: invalid expression: {CEL_ERROR}"),
    # debounce
    (bad(debounce={"period": "0s"}), "debounce.period must be from 1s to 7d, got 0s"),
    (bad(debounce={"period": "soon"}),
     "debounce.period: invalid duration 'soon': expected a number followed by a unit (ms, s, m, h, d, w), like "
     "'30s' or '1h30m'"),
    (bad(debounce={"period": "5s", "timeout": "1s"}),
     "debounce.timeout (1s) must not be shorter than debounce.period (5s)"),
    (bad(debounce={"period": "5s", "key": "event.data.x =="}), f"debounce.key: invalid expression: {CEL_ERROR}"),
    # priority
    (bad(priority={"run": "event.data.x =="}), f"priority.run: invalid expression: {CEL_ERROR}"),
    (bad(priority={"run": 5}), "priority.run must be a CEL expression string, got 5"),
    # batchEvents
    (bad(batchEvents={"maxSize": 0, "timeout": "2s"}), "batchEvents.maxSize must be from 1 to 1000, got 0"),
    (bad(batchEvents={"maxSize": 3}), "batchEvents.timeout is required"),
    (bad(batchEvents={"maxSize": 3, "timeout": "61s"}), "batchEvents.timeout must be from 1s to 1m, got 61s"),
    (bad(batchEvents={"maxSize": 3, "timeout": "2s", "if": "event.data.x =="}),
     f"batchEvents.if: invalid expression: {CEL_ERROR}"),
    (bad(batchEvents={"maxSize": 3, "timeout": "2s", "key": "event.data.x =="}),
     f"batchEvents.key: invalid expression: {CEL_ERROR}"),
    (bad(batchEvents={"maxSize": 3, "timeout": "2s"}, debounce={"period": "1s"}),
     "batchEvents cannot be combined with debounce (as in Inngest)"),
    # singleton
    (bad(singleton={"mode": "replace"}), "singleton.mode must be 'skip' or 'cancel', got 'replace'"),
    (bad(singleton={"key": "event.data.k"}), "singleton.mode must be 'skip' or 'cancel', got None"),
    (bad(singleton={"mode": "skip", "key": "event.data.x =="}), f"singleton.key: invalid expression: {CEL_ERROR}"),
    (bad(singleton="skip"), "singleton must be an object, got 'skip'"),
]  # fmt: skip


@pytest.mark.parametrize(("config", "error"), INVALID_FLOW, ids=[e.split(" ")[0] for _, e in INVALID_FLOW])
def test_a_bad_flow_value_names_the_function_and_the_field(config: dict[str, Any], error: str) -> None:
    with pytest.raises(FunctionConfigError) as caught:
        function_record(APP_ID, config)
    message = str(caught.value)
    if error.endswith(CEL_ERROR):  # the CEL parser's own words follow
        assert message.startswith(ERR + error), message
    else:
        assert message == ERR + error


# --- registration over HTTP, on a real store ------------------------------------------------------------------
async def test_flow_options_are_enforced_not_reported(
    app: FakeApp, make_stack: MakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    s = await make_stack()
    options: dict[str, Any] = {
        "concurrency": [{"limit": 2, "key": "event.data.user"}], "throttle": {"limit": 1, "period": "1s"},
        "rateLimit": {"limit": 10, "period": "1m", "key": "event.data.user"},
        "debounce": {"period": "5s", "timeout": "1m"}, "priority": {"run": "event.data.priority"},
        "singleton": {"key": "event.data.user", "mode": "skip"},
    }  # fmt: skip
    batched = fn_config(app.url, "batched", batchEvents={"maxSize": 10, "timeout": "5s"})
    body = register_body(app.url, [fn_config(app.url, "limited", **options), batched])
    with caplog.at_level(logging.WARNING, logger="stepline.server.sync"):
        res = await s.register(body)
    assert res.status_code == 200, res.text
    assert "warnings" not in res.json()
    assert not [r for r in caplog.records if r.name == "stepline.server.sync"]
    configs = {f["id"]: f["config"] for f in (await s.api.get("/v1/functions")).json()["data"]}
    assert set(configs["shop-limited"]["flow"]) == {"concurrency", "throttle", "rate_limit", "debounce", "priority",
                                                    "singleton"}  # fmt: skip
    assert configs["shop-batched"]["flow"] == {"batch": {"max_size": 10, "timeout_ms": 5000, "key": None, "if": None}}
    assert {k: configs["shop-limited"]["inngest"][k] for k in options} == options
    assert not any("unenforced" in c for c in configs.values())
    specs = {f.id: f for f in await s.store.list_functions()}
    assert specs["shop-limited"].config["flow"]["rate_limit"] == {"limit": 10, "period_ms": 60_000,
                                                                  "key": "event.data.user"}  # fmt: skip


async def test_an_invalid_flow_config_fails_the_apps_registration_and_keeps_its_functions(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    app.start()
    app.script("shop-charge", complete("charged"))
    first = register_body(app.url, [fn_config(app.url, "charge", rateLimit={"limit": 5, "period": "1m"})])
    assert (await s.register(first)).status_code == 200
    version = await s.store.registry_version()
    cases = [(c, e) for c, e in INVALID_FLOW if "concurrency" in c or "rateLimit" in c or "batchEvents" in c][::3]
    cases += [(bad(singleton={"mode": "replace"}), "singleton.mode must be 'skip' or 'cancel', got 'replace'")]
    assert len(cases) >= 6
    for config, error in cases:
        res = await s.register(register_body(app.url, [fn_config(app.url, "charge"), config]))
        rejected(res, 400, ERR + error, prefix=error.endswith(CEL_ERROR))
        assert await function_ids(s) == ["shop-charge"], error  # the previous registration stands
        stored = await s.store.get_app(app.url)
        assert stored is not None and stored.error == f"register rejected: {res.json()['error']}"
    assert await s.store.registry_version() == version
    [fn] = await s.store.list_functions()
    assert fn.config["flow"] == {"rate_limit": {"limit": 5, "period_ms": 60_000, "key": None}}

    event_id = await s.send()  # the registered function still runs
    await s.drain()
    [run] = (await s.runs_of(event_id)).values()
    assert (run.function_id, run.status, run.output) == ("shop-charge", "completed", "charged")


# --- the engine enforces what was registered -------------------------------------------------------------------
async def registered(s: Stack, app: FakeApp, **options: Any) -> None:
    app.start()
    app.script(f"{APP_ID}-limited", lambda call: complete({"events": len(call.json()["events"])}))
    res = await s.register(register_body(app.url, [fn_config(app.url, "limited", **options)]))
    assert res.status_code == 200, res.text


async def test_a_registered_rate_limit_skips_runs_of_an_http_function(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    await registered(s, app, rateLimit={"limit": 1, "period": "1h", "key": "event.data.user"})
    first, second, other = [await s.send(data={"user": u}) for u in ("ada", "ada", "bob")]
    await s.drain()
    assert [(await s.runs_of(e))[f"{APP_ID}-limited"].status for e in (first, second, other)] == [
        "completed", "skipped", "completed"]  # fmt: skip
    skipped = (await s.runs_of(second))[f"{APP_ID}-limited"]
    assert skipped.idle_reason is not None and skipped.idle_reason["kind"] == "rate_limited", skipped.idle_reason
    assert len(app.calls_of(f"{APP_ID}-limited")) == 2


async def test_registered_batch_events_start_one_run_with_every_event(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    await registered(s, app, batchEvents={"maxSize": 3, "timeout": "2s"})
    ids = [await s.send(data={"n": n}) for n in range(4)]
    await s.drain()
    [batch] = (await s.runs_of(ids[0])).values()
    assert (batch.status, batch.output, batch.batch) == ("completed", {"events": 3}, ids[:3])
    [call] = app.calls_of(f"{APP_ID}-limited")
    assert [e["data"]["n"] for e in call.json()["events"]] == [0, 1, 2]
    [alone] = (await s.runs_of(ids[3])).values()  # the fourth opened the next batch: it waits for the timeout
    assert alone.status == "queued"
    await s.advance(2)
    assert (await s.run(alone.id)).output == {"events": 1}
    assert json.loads(app.calls_of(f"{APP_ID}-limited")[-1].body)["events"][0]["data"] == {"n": 3}
