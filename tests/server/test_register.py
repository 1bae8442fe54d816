"""App sync with bad input (issue 4): ``POST /fn/register`` from the SDKs, and the server's PUT to apps that are
down or answer garbage, on a real store (SQLite and PostgreSQL) over real sockets.

The server is ``create_app`` with its real lifespan; the app is ``FakeApp`` (see ``fake_app.py``), which on a PUT
can POST its functions to the server's ``/fn/register`` as the SDKs do.
"""

from __future__ import annotations

import json
from typing import Any

from stepline.protocol.signing import hashed_signing_key

from ..eventually import eventually
from .fake_app import (
    APP_ID,
    FALLBACK_KEY,
    SIGNING_KEY,
    FakeApp,
    MakeStack,
    Stack,
    complete,
    fn_config,
    raw,
    register_body,
    registers_on_put,
    sdk,
)


def rejected(res: Any, status: int, error: str, *, prefix: bool = False) -> None:
    """An error in the shape the SDKs read, with the exact message (or one starting with ``error``)."""
    body = res.json()
    assert (res.status_code, sorted(body), body["status"]) == (status, ["error", "status"], status), res.text
    if prefix:
        assert body["error"].startswith(error), res.text
    else:
        assert body["error"] == error, res.text


async def function_ids(s: Stack) -> list[str]:
    return sorted(f.id for f in await s.store.list_functions())


async def apps_api(s: Stack, **headers: str) -> list[dict[str, Any]]:
    res = await s.api.get("/v1/apps", headers=headers)
    assert res.status_code == 200, res.text
    data: list[dict[str, Any]] = res.json()["data"]
    return data


# --- malformed bodies ---------------------------------------------------------------------------------------------
async def test_malformed_register_bodies_are_400s_that_register_nothing(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack()
    ok = register_body(app.url, [fn_config(app.url, "charge")])
    cases: list[tuple[bytes | dict[str, Any], dict[str, str], str]] = [
        (b"{not json", {}, "the register body is not valid JSON: Expecting property name enclosed in double quotes: "
                           "line 1 column 2 (char 1)"),
        (b"", {}, "the register body is empty"),
        (b"\xff\xfe", {}, "the register body is not valid JSON: "),
        (b"[1]", {}, "the register body must be a JSON object"),
        ({k: v for k, v in ok.items() if k != "appName"}, {}, "the register body needs appName (or appname)"),
        ({**ok, "appName": ""}, {}, "the register body needs appName (or appname)"),
        ({**ok, "appName": 7}, {}, "the register body needs appName (or appname)"),
        ({k: v for k, v in ok.items() if k != "url"}, {}, "the register body needs the app's url, got None"),
        ({**ok, "url": "ftp://app"}, {}, "the register body needs the app's url, got 'ftp://app'"),
        (ok, {"x-inngest-expected-server-kind": "cloud"},
         "server kind mismatch: the SDK expects a 'cloud' server, this server is 'dev'"),
    ]  # fmt: skip
    for body, headers, error in cases:
        res = await s.register(body, **headers)
        rejected(res, 400, error, prefix=error.endswith(": "))  # the decoder's own words follow
        assert res.headers["x-inngest-server-kind"] == "dev"
    assert await function_ids(s) == []
    assert await s.store.list_apps() == []  # no app was named: nothing to attach an error to

    res = await s.register(json.dumps(ok).encode(), **{"content-type": "text/plain"})  # as the event API: not checked
    assert res.status_code == 200, res.text
    assert await function_ids(s) == ["shop-charge"]


# --- invalid function configs -----------------------------------------------------------------------------------
def bad(slug: str = "bad", **changes: Any) -> dict[str, Any]:
    config = fn_config("http://127.0.0.1:1/api/inngest", slug)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


CEL_ERROR = "invalid CEL expression 'event.data.x ==': ERROR: <input>:1:16: Syntax error: mismatched input '<EOF>'"
INVALID_CONFIGS: list[tuple[dict[str, Any], str]] = [
    (bad(triggers=[{"event": "shop/order", "expression": "event.data.x =="}]),
     f"function 'shop-bad': invalid CEL in triggers[0].expression: {CEL_ERROR}"),
    (bad(triggers=[{"event": "shop/order"}, {"event": "shop/paid", "expression": 5}]),
     "function 'shop-bad': triggers[1].expression must be a CEL expression string, got 5"),
    (bad(cancel=[{"event": "shop/cancelled", "if": "event.data.x =="}]),
     f"function 'shop-bad': invalid CEL in cancel[0].if: {CEL_ERROR}"),
    (bad(idempotency="event.data.x =="), f"function 'shop-bad': invalid CEL in idempotency: {CEL_ERROR}"),
    (bad(triggers=[]), "function 'shop-bad': triggers must be a non-empty list"),
    (bad(triggers=[{"name": "shop/order"}]), "function 'shop-bad': triggers[0] needs an event name or a cron"),
    (bad(steps={"step": {"runtime": {"type": "http"}}}),
     "function 'shop-bad': steps.*.runtime.url must be an http(s) URL, got None"),
    (bad(steps={"step": {"runtime": {"url": "http://a/api"}, "retries": {"attempts": 21}}}),
     "function 'shop-bad': retries.attempts must be an integer from 0 to 20, got 21"),
    (bad(timeouts={"finish": "forever"}),
     "function 'shop-bad': invalid timeouts.finish: invalid duration 'forever': expected a number followed by a unit "
     "(ms, s, m, h, d, w), like '30s' or '1h30m'"),
    (bad(id=None), "a function of app 'shop' has no id"),
    (bad("charge"), "function 'shop-charge' is registered twice"),
]  # fmt: skip


async def test_an_invalid_function_config_is_a_400_naming_it_and_the_app_keeps_working(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    app.start()
    app.script("shop-charge", complete("charged"))
    first = register_body(app.url, [fn_config(app.url, "charge")])
    assert (await s.register(first)).status_code == 200
    version = await s.store.registry_version()

    for config, error in INVALID_CONFIGS:
        res = await s.register(register_body(app.url, [fn_config(app.url, "charge"), config]))
        rejected(res, 400, error, prefix=error.endswith(CEL_ERROR))  # the CEL parser's own words follow
        assert await function_ids(s) == ["shop-charge"], error  # the previous registration stands
        stored = await s.store.get_app(app.url)
        assert stored is not None and stored.app_id == APP_ID
        assert stored.error == f"register rejected: {res.json()['error']}"  # shown in GET /v1/apps
    assert await s.store.registry_version() == version
    [listed] = await apps_api(s)
    assert (listed["url"], listed["app_id"], listed["function_count"]) == (app.url, APP_ID, 1)
    assert listed["error"] == f"register rejected: {INVALID_CONFIGS[-1][1]}"

    event_id = await s.send()  # the registered function still runs
    await s.drain()
    [run] = (await s.runs_of(event_id)).values()
    assert (run.function_id, run.status, run.output) == ("shop-charge", "completed", "charged")

    fixed = register_body(app.url, [fn_config(app.url, "charge"), fn_config(app.url, "refund", event="shop/refund")])
    res = await s.register(fixed)
    assert (res.status_code, res.json()["modified"]) == (200, True)
    assert await function_ids(s) == ["shop-charge", "shop-refund"]
    stored = await s.store.get_app(app.url)
    assert stored is not None and stored.error is None
    assert [a["error"] for a in await apps_api(s)] == [None]


async def test_a_register_body_over_max_body_bytes_is_a_413(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack(max_body_bytes=10_000)
    body = register_body(app.url, [fn_config(app.url, "charge", description="x" * 20_000)])
    res = await s.register(body)
    assert res.status_code == 413, res.text
    assert res.json()["status"] == 413 and "10000 bytes" in res.json()["error"]
    assert await function_ids(s) == []


# --- authentication ---------------------------------------------------------------------------------------------
async def test_a_cloud_server_needs_the_signing_key_bearer_to_register(app: FakeApp, make_stack: MakeStack) -> None:
    s = await make_stack(kind="cloud", signing_keys=(SIGNING_KEY, FALLBACK_KEY))
    body = register_body(app.url, [fn_config(app.url, "charge")])
    denied = "authentication failed: the Authorization bearer does not match the signing key"
    for authorization in [None, "Bearer", "Bearer " + hashed_signing_key("signkey-test-" + "ef" * 32),
                          "Basic " + hashed_signing_key(SIGNING_KEY), "Bearer signkey-test-" + "ef" * 32]:  # fmt: skip
        headers = {} if authorization is None else {"authorization": authorization}
        rejected(await s.register(body, **headers), 401, denied)
        assert (await s.api.post("/v1/apps/sync", json={"url": app.url}, headers=headers)).status_code == 401
    assert await function_ids(s) == []
    assert await s.store.list_apps() == []

    python, js = hashed_signing_key(SIGNING_KEY), hashed_signing_key(SIGNING_KEY, keep_prefix=True)
    for token in [python, js, SIGNING_KEY, hashed_signing_key(FALLBACK_KEY)]:
        res = await s.register(body, authorization=f"Bearer {token}")
        assert res.status_code == 200, (token, res.text)
    assert res.headers["x-inngest-server-kind"] == "cloud"
    rejected(await s.register(body, authorization=f"Bearer {python}", **{"x-inngest-expected-server-kind": "dev"}),
             400, "server kind mismatch: the SDK expects a 'dev' server, this server is 'cloud'")  # fmt: skip
    assert await function_ids(s) == ["shop-charge"]


# --- re-registration --------------------------------------------------------------------------------------------
async def test_an_unchanged_body_is_not_registered_again_and_both_app_name_keys_work(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack()
    js_body = register_body(app.url, [fn_config(app.url, "charge")], deployId="deploy-1")
    py_body = register_body(app.url, [fn_config(app.url, "charge")], name_key="appname")

    async def sync(body: dict[str, Any], modified: bool) -> None:
        before = await s.store.registry_version()
        res = await s.register(body)
        assert res.status_code == 200, res.text
        reply = res.json()
        assert (reply["ok"], reply["modified"], reply["app_id"]) == (True, modified, body.get("appName", APP_ID))
        assert isinstance(reply["sync_id"], str) and reply["sync_id"]
        assert "warnings" not in reply
        if not modified:
            assert await s.store.registry_version() == before

    await sync(js_body, True)
    await sync(js_body, False)
    await sync({**js_body, "deployId": "deploy-2"}, False)  # the deploy id is not part of the checksum
    await sync(py_body, True)  # the Python SDK's key: the same app (its body, and so its checksum, differ)
    await sync(py_body, False)
    assert await function_ids(s) == ["shop-charge"]
    changed = register_body(app.url, [fn_config(app.url, "charge", event="shop/paid")], name_key="appname")
    await sync(changed, True)
    [fn] = await s.store.list_functions()
    assert fn.config["triggers"] == [{"event": "shop/paid"}]

    renamed = register_body(app.url, [fn_config(app.url, "charge", app_id="till")], app_id="till")
    await sync(renamed, True)  # the same URL now serves another app: the old app's functions go
    assert await function_ids(s) == ["till-charge"]
    stored = await s.store.get_app(app.url)
    assert stored is not None and (stored.app_id, stored.sdk, stored.framework) == ("till", "py:v0.5.19", "fast_api")


# --- the server's PUT to the app ----------------------------------------------------------------------------------
async def wait_for_app_error(s: Stack, url: str, timeout: float = 10.0) -> str:
    async def error() -> str | None:
        stored = await s.store.get_app(url)
        return None if stored is None else stored.error

    return await eventually("the syncer to store an error", error, timeout, interval=0.01)


async def test_a_failed_sync_is_stored_on_the_app_and_cleared_by_the_next_good_sync(
    app: FakeApp, make_stack: MakeStack
) -> None:
    s = await make_stack(sdk_urls=(app.url,))  # the syncer PUTs it at start: it is down
    unreachable = f"the app at {app.url} could not be reached: ClientConnectorError: Cannot connect"
    assert (await wait_for_app_error(s, app.url)).startswith(unreachable)
    [listed] = await apps_api(s)
    assert (listed["url"], listed["app_id"], listed["synced_at"], listed["function_count"]) == (app.url, None, None, 0)
    assert listed["error"].startswith(unreachable)

    res = await s.api.post("/v1/apps/sync", json={"url": app.url})
    assert (res.status_code, res.json()["status"]) == (502, 502)
    assert res.json()["error"].startswith(unreachable)

    app.start()
    for answer, error in [
        (raw(500, "Internal Server Error"), "the app answered the sync with HTTP 500: Internal Server Error"),
        (raw(404, "Cannot PUT /api/inngest"), "the app answered the sync with HTTP 404: Cannot PUT /api/inngest"),
        (sdk(401, {"message": "Unauthorized"}), 'the app answered the sync with HTTP 401: {"message": "Unauthorized"}'),
        (sdk(200, {"error": "Server kind mismatch", "status": 400}), "the app's sync failed: Server kind mismatch"),
        (sdk(200, {"ok": False, "message": "no functions"}), "the app's sync failed: no functions"),
    ]:  # fmt: skip
        app.on_put = answer
        rejected(await s.api.post("/v1/apps/sync", json={"url": app.url}), 502, error)
        stored = await s.store.get_app(app.url)
        assert stored is not None and stored.error == error
        assert [a["error"] for a in await apps_api(s)] == [error]

    app.on_put = registers_on_put(s.url, register_body(app.url, [fn_config(app.url, "charge")]))
    res = await s.api.post("/v1/apps/sync", json={"url": app.url})
    assert (res.status_code, res.json()) == (200, {"data": {"url": app.url, "app_id": APP_ID}})
    stored = await s.store.get_app(app.url)
    assert stored is not None and (stored.app_id, stored.error, stored.synced_at) == (APP_ID, None, s.now())
    [listed] = await apps_api(s)
    assert (listed["app_id"], listed["error"], listed["function_count"]) == (APP_ID, None, 1)
    put = [c for c in app.calls if c.method == "PUT"][-1]
    assert (put.json(), put.headers["x-inngest-server-kind"]) == ({"url": app.url}, "dev")

    await app.astop()  # down again: the error is back, the app and its functions stay
    res = await s.api.post("/v1/apps/sync", json={"url": app.url})
    assert res.status_code == 502
    stored = await s.store.get_app(app.url)
    assert stored is not None and stored.app_id == APP_ID and stored.error is not None
    assert stored.error.startswith(unreachable)
    assert await function_ids(s) == ["shop-charge"]


async def test_the_newer_sync_payload_fields_are_accepted_and_kept(app: FakeApp, make_stack: MakeStack) -> None:
    """Issue 14 item 8: appVersion, featureObservations, a function's checkpoint config, a cron jitter and
    batchEvents.if, as the SDKs send them in 2026."""
    s = await make_stack()
    checkpointing = fn_config(app.url, "fast", checkpoint={"batch_steps": 3, "batch_interval": "3s",
                                                          "max_runtime": "0s"})  # fmt: skip
    cron = fn_config(app.url, "nightly", triggers=[{"cron": "0 3 * * *", "jitter": "30s"}])
    batched = fn_config(app.url, "batched", batchEvents={"maxSize": 10, "timeout": "5s",
                                                         "if": "event.data.bulk == true"})  # fmt: skip
    body = register_body(app.url, [checkpointing, cron, batched], appVersion="2026.12.1",
                         featureObservations={"v": 1, "flags": ["checkpointing"]})  # fmt: skip
    res = await s.register(body)
    assert res.status_code == 200, res.text
    [listed] = await apps_api(s)
    assert listed["app_version"] == "2026.12.1"
    functions = {f["id"]: f for f in (await s.api.get("/v1/functions")).json()["data"]}
    assert functions[f"{APP_ID}-fast"]["config"]["inngest"]["checkpoint"]["batch_steps"] == 3
    assert functions[f"{APP_ID}-nightly"]["config"]["triggers"] == [{"cron": "0 3 * * *", "jitter": "30s"}]
    assert functions[f"{APP_ID}-batched"]["config"]["flow"]["batch"]["if"] == "event.data.bulk == true"
