"""``stepline.serve``: Stepline functions behind a URL, executed by a Stepline (or any Inngest-protocol) server.

The app answers the SDK side of the protocol (``../shared/inngest-protocol.md`` sections 3 to 6) on whatever path
it is mounted at:

- ``GET``: introspection (``mode``, ``function_count``, ...). In cloud mode an unsigned request gets 401.
- ``PUT``: sync. The app registers its functions with ``POST {base_url}/fn/register`` and answers the PUT with
  ``{"message", "modified"}`` (or the server's error with its status). As with the Inngest SDKs, an unsigned PUT
  is accepted in cloud mode (the registration itself is authenticated and goes only to ``base_url``); a PUT with
  a bad signature, or from a server of the other kind (``X-Inngest-Server-Kind``), is refused.
- ``POST ?fnId=&stepId=``: a call. Verified in cloud mode (401 otherwise), then run by ``driver.run_call``.
- ``POST ?probe=trust``: 200 with an empty body once the signature checks out.

Every response carries ``X-Inngest-SDK: stepline-py:v<version>``; in cloud mode call responses are signed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline.core.errors import NonRetriableError, SteplineError
from stepline.core.function import FunctionDef
from stepline.protocol import signing
from stepline.realtime.messages import PublishError
from stepline.serving.call import CallRequest, CallResult, parse_call
from stepline.serving.config import (
    DEV_EVENT_KEY,
    SCHEMA_VERSION,
    ServeConfig,
    register_body,
    resolve_config,
    sdk_header,
    sdk_version,
    select_functions,
    with_query,
)
from stepline.serving.driver import run_call

if TYPE_CHECKING:
    from stepline.client import Stepline

log = logging.getLogger("stepline.serving")
HTTP_TIMEOUT_S = 30.0


class _Served:
    def __init__(self, config: ServeConfig, functions: dict[str, FunctionDef]) -> None:
        self.config = config
        self.functions = functions
        self.known_ids = frozenset(functions)

    # --- responses ---
    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None,
              sign_with: str | None = None) -> Response:  # fmt: skip
        return self._respond(status, json.dumps(body, separators=(",", ":")).encode(), headers, sign_with)

    def _respond(self, status: int, raw: bytes, headers: dict[str, str] | None = None,
                 sign_with: str | None = None) -> Response:  # fmt: skip
        out = {"X-Inngest-SDK": sdk_header(), "X-Inngest-Framework": self.config.framework, **(headers or {})}
        if sign_with is not None:
            out[signing.SIGNATURE_HEADER] = signing.sign(raw, sign_with, int(time.time()))
        return Response(raw, status_code=status, headers=out, media_type="application/json")

    def _unauthorized(self) -> Response:
        return self._json(401, {"message": "Unauthorized"})

    def _verify(self, request: Request, raw: bytes) -> str | None:
        """The signing key that signed the request, or None (never None-checked in dev mode)."""
        try:
            message = signing.canonicalize_json_bytes(raw)
        except ValueError:
            return None
        return signing.verify_signature(message, request.headers.get(signing.SIGNATURE_HEADER),
                                        self.config.signing_keys, int(time.time()))  # fmt: skip

    def _kind_mismatch(self, request: Request) -> str | None:
        kind = request.headers.get("x-inngest-server-kind")
        if kind and kind != self.config.mode:
            return f"the server is in {kind} mode but this app is in {self.config.mode} mode"
        return None

    # --- dispatch ---
    async def endpoint(self, request: Request) -> Response:
        try:
            if request.method == "GET":
                return await self.introspect(request)
            if request.method == "PUT":
                return await self.sync(request)
            return await self.call(request)
        except Exception as exc:  # a bug here must still answer in the SDK's shape (retriable)
            log.exception("serving %s %s failed", request.method, request.url.path)
            return self._json(500, {"name": type(exc).__name__, "message": str(exc)})

    # --- GET ---
    async def introspect(self, request: Request) -> Response:
        if (mismatch := self._kind_mismatch(request)) is not None:
            return self._json(403, {"message": mismatch, "code": "server_kind_mismatch"})
        cfg = self.config
        body: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "mode": cfg.mode,
            "function_count": len(self.functions),
            "has_event_key": cfg.event_key is not None,
            "has_signing_key": bool(cfg.signing_keys),
            "has_signing_key_fallback": len(cfg.signing_keys) > 1,
        }
        if cfg.cloud:
            if self._verify(request, b"") is None:
                return self._unauthorized()
            body.update(
                authentication_succeeded=True, app_id=cfg.app_id, api_origin=cfg.api_base,
                event_api_origin=cfg.event_base, framework=cfg.framework, sdk_language="py",
                sdk_version=sdk_version(), serve_origin=None, serve_path=None, env=None,
                capabilities={"trust_probe": "v1"},
                signing_key_hash=signing.hashed_signing_key(cfg.signing_keys[0]),
                signing_key_fallback_hash=(signing.hashed_signing_key(cfg.signing_keys[1])
                                           if len(cfg.signing_keys) > 1 else None),
            )  # fmt: skip
        return self._json(200, body)

    # --- PUT ---
    async def sync(self, request: Request) -> Response:
        if (mismatch := self._kind_mismatch(request)) is not None:
            return self._json(400, {"message": mismatch, "modified": False, "code": "server_kind_mismatch"})
        raw = await request.body()
        if self.config.cloud and request.headers.get(signing.SIGNATURE_HEADER) and self._verify(request, raw) is None:
            return self._unauthorized()  # unsigned syncs are accepted, as by the SDKs; a bad signature is not
        url = self.config.serve_url or str(request.url.replace(query=""))
        body = register_body(self.config, list(self.functions.values()), url)
        target = f"{self.config.api_base}/fn/register"
        if request.query_params.get("deployId"):
            target = with_query(target, deployId=request.query_params["deployId"])
        headers = {"X-Inngest-SDK": sdk_header(), "X-Inngest-Framework": self.config.framework, **self.config.bearer}
        if request.headers.get("x-inngest-server-kind"):
            headers["X-Inngest-Expected-Server-Kind"] = request.headers["x-inngest-server-kind"]
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
                resp = await http.post(target, json=body, headers=headers)
        except httpx.HTTPError as exc:
            message = f"registering with {target} failed: {type(exc).__name__}: {exc}"
            log.warning("%s", message)
            return self._json(500, {"message": message, "modified": False})
        try:
            reply = resp.json()
        except ValueError:
            reply = None
        reply = reply if isinstance(reply, dict) else {}
        if resp.status_code == 200 and not reply.get("error"):
            return self._json(200, {"message": "Successfully registered", "modified": bool(reply.get("modified"))})
        status = reply["status"] if isinstance(reply.get("status"), int) else resp.status_code
        message = str(reply.get("error") or reply.get("message") or resp.text[:500] or f"HTTP {resp.status_code}")
        log.warning("registering with %s failed (%s): %s", target, status, message)
        return self._json(status if status >= 400 else 500, {"message": message, "modified": False})

    # --- POST ---
    async def call(self, request: Request) -> Response:
        raw = await request.body()
        key: str | None = None
        if self.config.cloud:
            key = self._verify(request, raw)
            if key is None:
                return self._unauthorized()
        params = request.query_params
        if params.get("probe") is not None:
            if params["probe"] != "trust":
                return self._json(400, {"message": f"unknown probe {params['probe']!r}"})
            return self._respond(200, b"", sign_with=key)
        fn_id = params.get("fnId") or ""
        fn = self.functions.get(fn_id) or self.functions.get(f"{self.config.app_id}-{fn_id}")
        if fn is None:
            return self._json(404, {"name": "FunctionNotFound", "message": (
                f"this app ({self.config.app_id}) serves no function {fn_id!r}")}, sign_with=key)  # fmt: skip
        try:
            call = parse_call(json.loads(raw), fn.id, params.get("stepId") or "step")
        except ValueError as exc:
            return self._json(400, {"name": "InvalidCall", "message": str(exc)}, sign_with=key)
        if call.use_api:
            try:
                await self._fetch_state(call.run_id, call)
            except (httpx.HTTPError, SteplineError) as exc:
                return self._json(500, {"name": "StateUnavailable", "message": str(exc)}, sign_with=key)
        result: CallResult = await run_call(fn, call, self.send_events, self.known_ids, self.publish)
        return self._json(result.status, result.body, result.headers, sign_with=key)

    async def _fetch_state(self, run_id: str, call: CallRequest) -> None:
        """``use_api``: the memo and events were too large for the call body; read them from the server."""
        headers = {"X-Inngest-SDK": sdk_header(), **self.config.bearer}
        base = f"{self.config.api_base}/v0/runs/{quote(run_id, safe='')}"
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
            actions = await http.get(f"{base}/actions", headers=headers)
            batch = await http.get(f"{base}/batch", headers=headers)
        for resp in (actions, batch):
            if resp.status_code != 200:
                raise SteplineError(f"GET {resp.request.url} answered {resp.status_code}: {resp.text[:300]}")
        steps, events = actions.json(), batch.json()
        if not isinstance(steps, dict) or not isinstance(events, list):
            raise SteplineError("the server's run state is not {actions: object, batch: list}")
        call.steps = steps
        call.events = [e for e in events if isinstance(e, dict)]

    async def publish(self, channel: str, topic: str, data: Any, run_id: str) -> int | None:
        """``ctx.publish``'s code: POST the message to the server's realtime API (signed in cloud mode)."""
        url = f"{self.config.api_base}/v1/realtime/publish"
        params = {"channel": channel, "topic": topic, "run_id": run_id}
        headers = {"X-Inngest-SDK": sdk_header(), **self.config.bearer}
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
            resp = await http.post(url, params=params, json=data, headers=headers)
        if resp.status_code != 200:
            try:
                detail = resp.json().get("error")
            except ValueError:
                detail = resp.text[:300]
            raise PublishError(f"the realtime API ({self.config.api_base}) answered {resp.status_code}: {detail}",
                               resp.status_code)  # fmt: skip
        ids = resp.json().get("ids") or [None]
        return ids[0] if isinstance(ids[0], int) else None

    async def send_events(self, events: list[dict[str, Any]]) -> list[str]:
        """``step.send_event``'s code: POST the events to the event API and return their ids."""
        key = self.config.event_key
        if key is None:
            if self.config.cloud:
                raise NonRetriableError("step.send_event needs an event key: serve(event_key=...) or "
                                        "STEPLINE_EVENT_KEY / INNGEST_EVENT_KEY")  # fmt: skip
            key = DEV_EVENT_KEY
        url = f"{self.config.event_base}/e/{quote(key, safe='')}"
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
            resp = await http.post(url, json=events, headers={"X-Inngest-SDK": sdk_header()})
        try:
            reply = resp.json()
        except ValueError:
            reply = None
        if resp.status_code != 200 or not isinstance(reply, dict) or reply.get("error"):
            detail = reply.get("error") if isinstance(reply, dict) else resp.text[:300]
            raise SteplineError(f"the event API ({self.config.event_base}) answered {resp.status_code}: {detail}")
        ids = reply.get("ids")
        if not isinstance(ids, list) or len(ids) != len(events):
            raise SteplineError(f"the event API returned {ids!r} for {len(events)} events")
        return [str(i) for i in ids]


def build_app(client: Stepline, functions: Iterable[FunctionDef] | None = None, *, serve_url: str | None = None,
              signing_key: str | None = None, base_url: str | None = None, event_key: str | None = None,
              framework: str = "starlette") -> Starlette:  # fmt: skip
    config = resolve_config(client, serve_url=serve_url, signing_key=signing_key, base_url=base_url,
                            event_key=event_key, framework=framework)  # fmt: skip
    served = _Served(config, select_functions(client, functions))
    app = Starlette(routes=[Route("/{path:path}", served.endpoint, methods=["GET", "PUT", "POST"])])
    app.state.stepline_serve = served
    return app


def serve(
    client: Stepline,
    functions: Iterable[FunctionDef] | None = None,
    *,
    serve_url: str | None = None,
    signing_key: str | None = None,
    base_url: str | None = None,
    event_key: str | None = None,
) -> Starlette:
    """An ASGI app (Starlette) that serves ``client``'s functions (or ``functions``) over the Inngest SDK protocol,
    so a Stepline server (``stepline dev``/``stepline start``) or any Inngest server runs them by calling a URL.

    The same ``@client.function`` handlers run in-process under ``client.worker()``. The app answers on any path:
    run it directly (``uvicorn module:app``, served at e.g. ``http://host:port/api/inngest``) or add it to an app
    with ``serve_fastapi`` / ``serve_flask``.

    - ``serve_url``: the URL the server calls (default: the URL the server's sync request came to).
    - ``signing_key``: ``signkey-<env>-<hex>``; given (or set in ``STEPLINE_SIGNING_KEY``/``INNGEST_SIGNING_KEY``
      without ``*_DEV``), the app is in cloud mode: calls must be signed, registration is authenticated.
    - ``base_url``: the server (default ``http://127.0.0.1:8288``; see ``serving/config.py`` for the variables).
    - ``event_key``: for ``step.send_event`` (required in cloud mode).

    Differences from in-process execution: ``step.send_event`` is a ``run`` step that posts to the event API;
    ``ctx.event.internal_id`` is the event's ``id``; ``backoff`` and ``retention`` are the server's. Parallel steps
    found together are reported together (``StepPlanned``); see ``serving/driver.py`` for the exact rules.
    """
    return build_app(client, functions, serve_url=serve_url, signing_key=signing_key, base_url=base_url,
                     event_key=event_key)  # fmt: skip
