"""Settings of a served app (mode, keys, server URLs) and its functions as ``/fn/register`` describes them.

Resolution order, each value: the ``serve()`` argument, then ``STEPLINE_*``, then ``INNGEST_*`` environment
variables, as the Inngest SDKs read them (``../shared/inngest-protocol.md`` section 1):

- **mode** ``cloud`` when a signing key is passed to ``serve()``, or when one is in the environment and neither
  ``STEPLINE_DEV`` nor ``INNGEST_DEV`` is set (to anything but ``""``, ``0``, ``false``); otherwise ``dev``. Cloud
  mode verifies every call's ``X-Inngest-Signature`` and authenticates to the server with the hashed key.
- **server URL** ``base_url`` > ``STEPLINE_BASE_URL`` > ``INNGEST_API_BASE_URL`` > ``INNGEST_BASE_URL`` > the
  ``*_DEV`` value when it is a URL > ``http://127.0.0.1:8288``. Events go to ``INNGEST_EVENT_API_BASE_URL`` if it
  is set (and ``base_url`` is not), else to the same server.
- **serve URL** (what the server calls back): ``serve_url`` > ``INNGEST_SERVE_ORIGIN`` + ``INNGEST_SERVE_PATH`` >
  the URL the sync request (PUT) came to. Set it in production: a request's ``Host`` header is the client's word.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stepline.core.durations import format_duration
from stepline.core.function import DEFAULT_WAIT_TIMEOUT, FunctionDef
from stepline.protocol import signing

if TYPE_CHECKING:
    from stepline.client import Stepline

Mode = Literal["dev", "cloud"]

SCHEMA_VERSION = "2024-05-24"
DEFAULT_BASE_URL = "http://127.0.0.1:8288"
DEV_EVENT_KEY = "NO_EVENT_KEY_SET"  # what the Inngest SDKs send to a dev server, which accepts any key
_OFF = ("", "0", "false")
_DEFAULT_CANCEL_MS = int(DEFAULT_WAIT_TIMEOUT.total_seconds() * 1000)


def sdk_version() -> str:
    import stepline

    return stepline.__version__


def sdk_header() -> str:
    """``X-Inngest-SDK`` of every response: ``stepline-py:v<version>``."""
    return f"stepline-py:v{sdk_version()}"


@dataclass(frozen=True)
class ServeConfig:
    app_id: str
    mode: Mode
    signing_keys: tuple[str, ...]  # the key, then its fallback
    event_key: str | None
    api_base: str
    event_base: str
    serve_url: str | None
    framework: str

    @property
    def cloud(self) -> bool:
        return self.mode == "cloud"

    @property
    def bearer(self) -> dict[str, str]:
        """``Authorization`` for calls to the server (cloud mode): the Python SDK's bare hashed key."""
        if not self.signing_keys:
            return {}
        return {"Authorization": f"Bearer {signing.hashed_signing_key(self.signing_keys[0])}"}


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _check_key(key: str, what: str) -> str:
    key = key.strip()
    try:
        signing.hashed_signing_key(key)
    except ValueError:
        raise ValueError(f"{what} must be hex, optionally prefixed 'signkey-<env>-', got {key[:12]!r}...") from None
    return key


def resolve_config(
    client: Stepline,
    *,
    serve_url: str | None,
    signing_key: str | None,
    base_url: str | None,
    event_key: str | None,
    framework: str,
    env: Mapping[str, str] | None = None,
) -> ServeConfig:
    env = os.environ if env is None else env
    dev_flag = _env(env, "STEPLINE_DEV", "INNGEST_DEV")
    dev = dev_flag is not None and dev_flag.lower() not in _OFF
    key = signing_key or _env(env, "STEPLINE_SIGNING_KEY", "INNGEST_SIGNING_KEY")
    mode: Mode = "cloud" if signing_key or (key and not dev) else "dev"
    keys: list[str] = []
    if key:
        keys.append(_check_key(key, "the signing key"))
        fallback = _env(env, "STEPLINE_SIGNING_KEY_FALLBACK", "INNGEST_SIGNING_KEY_FALLBACK")
        if fallback:
            keys.append(_check_key(fallback, "the fallback signing key"))
    dev_url = dev_flag if dev and dev_flag and ("://" in dev_flag or ":" in dev_flag) else None
    api = base_url or _env(env, "STEPLINE_BASE_URL", "INNGEST_API_BASE_URL", "INNGEST_BASE_URL") or dev_url
    events = base_url or _env(env, "INNGEST_EVENT_API_BASE_URL") or api
    if serve_url is None:
        origin = _env(env, "INNGEST_SERVE_ORIGIN")
        if origin:
            serve_url = origin.rstrip("/") + "/" + (_env(env, "INNGEST_SERVE_PATH") or "api/inngest").lstrip("/")
    return ServeConfig(
        app_id=client.app_id,
        mode=mode,
        signing_keys=tuple(keys),
        event_key=event_key or _env(env, "STEPLINE_EVENT_KEY", "INNGEST_EVENT_KEY"),
        api_base=_origin(api or DEFAULT_BASE_URL),
        event_base=_origin(events or DEFAULT_BASE_URL),
        serve_url=_origin(serve_url) if serve_url else None,
        framework=framework,
    )


def _origin(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def select_functions(client: Stepline, functions: Iterable[FunctionDef] | None) -> dict[str, FunctionDef]:
    """The functions to serve by composite id: all of the client's, or the given ones with their on_failure
    handlers."""
    if functions is None:
        return dict(client.functions)
    out: dict[str, FunctionDef] = {}
    for fn in functions:
        if not isinstance(fn, FunctionDef):
            raise TypeError(f"serve(functions=...) takes FunctionDefs (from @client.function), got {fn!r}")
        if fn.app_id != client.app_id:
            raise ValueError(f"function {fn.id!r} belongs to app {fn.app_id!r}, not to {client.app_id!r}")
        out[fn.id] = fn
        failure = client.functions.get(f"{fn.id}-failure")
        if failure is not None and failure.failure_of == fn.id:
            out[failure.id] = failure
    if not out:
        raise ValueError("serve(functions=[]) serves nothing: pass None to serve every function of the client")
    return out


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def wire_event_name(name: str) -> str:
    """Stepline's system events under the names every Inngest server knows (``inngest/function.failed``)."""
    return "inngest/" + name[len("stepline/") :] if name.startswith("stepline/function.") else name


def _duration_ms(ms: int) -> str:
    return format_duration(dt.timedelta(milliseconds=ms))


def function_config(fn: FunctionDef, serve_url: str) -> dict[str, Any]:
    """One function of the ``/fn/register`` body (the shape ``server/functions.py`` parses)."""
    c = fn.config()
    triggers: list[dict[str, Any]] = []
    for t in c["triggers"]:
        if "cron" in t:
            triggers.append({"cron": t["cron"]})
        else:
            item: dict[str, Any] = {"event": wire_event_name(t["event"])}
            if t.get("expression"):
                item["expression"] = t["expression"]
            triggers.append(item)
    url = with_query(serve_url, fnId=fn.id, stepId="step")
    out: dict[str, Any] = {
        "id": fn.id,
        "name": fn.name,
        "triggers": triggers,
        "steps": {
            "step": {
                "id": "step",
                "name": "step",
                "runtime": {"type": "http", "url": url},
                "retries": {"attempts": fn.retries},  # Inngest counts retries here: attempts + 1 calls at most
            }
        },
    }
    cancel: list[dict[str, Any]] = []
    for x in c.get("cancel", []):
        item = {"event": wire_event_name(x["event"])}
        if x.get("expression"):
            item["if"] = x["expression"]
        if x["timeout_ms"] != _DEFAULT_CANCEL_MS:
            item["timeout"] = _duration_ms(x["timeout_ms"])
        cancel.append(item)
    if cancel:
        out["cancel"] = cancel
    timeouts = c.get("timeouts") or {}
    if timeouts:
        out["timeouts"] = {k: _duration_ms(timeouts[f"{k}_ms"]) for k in ("start", "finish") if f"{k}_ms" in timeouts}
    if c.get("idempotency"):
        out["idempotency"] = c["idempotency"]
    return out


def register_body(config: ServeConfig, functions: Sequence[FunctionDef], url: str) -> dict[str, Any]:
    return {
        "url": url,
        "deployType": "ping",
        "appName": config.app_id,
        "sdk": f"py:stepline-{sdk_version()}",
        "v": "0.1",
        "framework": config.framework,
        "capabilities": {"trust_probe": "v1"},
        "functions": [function_config(fn, url) for fn in functions],
    }
