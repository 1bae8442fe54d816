"""How ``serve()`` resolves its mode, keys and URLs from arguments and the environment, and what it registers."""

from __future__ import annotations

from typing import Any

import pytest

from stepline import CancelOn, Context, CronTrigger, Stepline, Timeouts
from stepline.server.functions import function_record
from stepline.serving.config import function_config, register_body, resolve_config

KEY = "signkey-test-" + "ab" * 32
CLIENT = Stepline("cfg")


@CLIENT.function(id="f", trigger=["cfg/a", CronTrigger("*/5 * * * *")], retries=2, idempotency="event.data.id",
                 cancel_on=[CancelOn("cfg/stop", match="data.id", timeout="1h")],
                 timeouts=Timeouts(start="10s", finish="5m"), on_failure=lambda ctx: None)  # fmt: skip
async def f(ctx: Context) -> None:
    pass


def resolve(env: dict[str, str], **kw: Any) -> Any:
    args: dict[str, Any] = {"serve_url": None, "signing_key": None, "base_url": None, "event_key": None,
                            "framework": "starlette", **kw}  # fmt: skip
    return resolve_config(CLIENT, env=env, **args)


def test_mode_and_urls() -> None:
    assert resolve({}).mode == "dev" and resolve({}).api_base == "http://127.0.0.1:8288"
    assert resolve({}, signing_key=KEY).mode == "cloud"
    assert resolve({"INNGEST_SIGNING_KEY": KEY}).mode == "cloud"
    assert resolve({"INNGEST_SIGNING_KEY": KEY, "INNGEST_DEV": "1"}).mode == "dev"
    assert resolve({"INNGEST_SIGNING_KEY": KEY, "STEPLINE_DEV": "0"}).mode == "cloud"
    assert resolve({"INNGEST_DEV": "http://devhost:9000"}).api_base == "http://devhost:9000"
    env = {"INNGEST_BASE_URL": "http://a:1/", "INNGEST_EVENT_API_BASE_URL": "http://b:2"}
    assert (resolve(env).api_base, resolve(env).event_base) == ("http://a:1", "http://b:2")
    assert resolve(env, base_url="c:3").event_base == "http://c:3"
    origin = resolve({"INNGEST_SERVE_ORIGIN": "https://app.example", "INNGEST_SERVE_PATH": "/x/inngest"})
    assert origin.serve_url == "https://app.example/x/inngest"
    fallback = resolve({"INNGEST_SIGNING_KEY": KEY, "INNGEST_SIGNING_KEY_FALLBACK": "cd" * 32})
    assert fallback.signing_keys == (KEY, "cd" * 32)
    with pytest.raises(ValueError, match="hex"):
        resolve({}, signing_key="signkey-test-nothex")


def test_registered_config_is_what_the_server_parses() -> None:
    url = "http://app:3000/api/inngest"
    body = register_body(resolve({}), list(CLIENT.functions.values()), url)
    assert body["appName"] == "cfg" and body["framework"] == "starlette" and body["deployType"] == "ping"
    main = function_config(f, url)
    assert main["steps"]["step"]["runtime"]["url"] == f"{url}?fnId=cfg-f&stepId=step"
    assert main["steps"]["step"]["retries"] == {"attempts": 2}
    parsed = function_record("cfg", main).config
    assert parsed["triggers"] == f.config()["triggers"]
    for key in ("retries", "idempotency", "cancel", "timeouts"):
        assert parsed[key] == f.config()[key], key
    failure = function_record("cfg", function_config(CLIENT.functions["cfg-f-failure"], url))
    assert failure.config["failure_of"] == "cfg-f" and failure.config["retries"] == 0
