"""App sync: the server PUTs an app's serve URL, the app's SDK POSTs its functions to ``/fn/register``.

``Syncer`` keeps apps in sync for the server's lifetime: the ``-u`` URLs at start, every known app again every
``poll_interval`` (only the ones in error with ``--no-poll``), and in dev mode autodiscovery on the usual local
ports until some app has synced. A failed sync is stored on the app and shown by the API and dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from stepline.core.ids import new_ulid
from stepline.protocol import signing
from stepline.server.bodies import BodyTimeout, BodyTooLarge, InvalidBody, parse_json, read_body
from stepline.server.config import normalise_url
from stepline.server.errors import error_response
from stepline.server.functions import FunctionConfigError, function_records
from stepline.server.outbound import OutboundFailed, OutboundRefused, OutboundTooLarge, excerpt
from stepline.server.state import ServerState, state_of
from stepline.storage.records import AppRecord

log = logging.getLogger("stepline.server.sync")

DISCOVERY_PORTS = (80, 443, *range(3000, 3011), 4321, 5000, 5173, 8000, 8080, 8081, 8888, *range(8910, 8916), 8787)
DISCOVERY_PATHS = ("/api/inngest", "/x/inngest", "/.netlify/functions/inngest", "/.redwood/functions/inngest")


# --- POST /fn/register ------------------------------------------------------------------------------------------
async def register(request: Request) -> Response:
    st = state_of(request)
    if st.config.signed and not signing.bearer_matches(request.headers.get("authorization"), st.config.signing_keys):
        return error_response(401, "authentication failed: the Authorization bearer does not match the signing key")
    expected = request.headers.get("x-inngest-expected-server-kind")
    if expected and expected != st.config.kind:
        return error_response(
            400, f"server kind mismatch: the SDK expects a {expected!r} server, this server is {st.config.kind!r}"
        )
    try:
        raw = await read_body(request, st.config.max_body_bytes)
    except BodyTooLarge:
        return error_response(413, f"the register body is larger than {st.config.max_body_bytes} bytes")
    except BodyTimeout as exc:
        return error_response(408, str(exc))
    try:
        body = parse_json(raw, "the register body")
    except InvalidBody as exc:
        return error_response(400, str(exc))
    if not isinstance(body, dict):
        return error_response(400, "the register body must be a JSON object")
    app_id = body.get("appName") or body.get("appname") or body.get("app_name")
    url = body.get("url")
    if not isinstance(app_id, str) or not app_id:
        return error_response(400, "the register body needs appName (or appname)")
    if len(app_id) > MAX_APP_ID_CHARS:
        return error_response(400, f"the app's id is {len(app_id)} characters long; the limit is {MAX_APP_ID_CHARS}")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return error_response(400, f"the register body needs the app's url, got {url!r:.200}")
    try:
        st.outbound.policy.check_url(url)
    except OutboundRefused as exc:
        return error_response(400, f"the app's url is refused by the outbound policy: {exc}")
    try:
        records = function_records(app_id, body.get("functions"))
        for record in records:
            if record.config.get("url"):
                try:
                    st.outbound.policy.check_url(str(record.config["url"]))
                except OutboundRefused as exc:
                    raise FunctionConfigError(f"function {record.id!r}: its url is refused by the outbound "
                                              f"policy: {exc}") from None  # fmt: skip
    except FunctionConfigError as exc:
        await _save_sync_error(st, url, app_id, f"register rejected: {exc}")
        return error_response(400, str(exc))
    checksum = hashlib.sha256(json.dumps({k: v for k, v in body.items() if k != "deployId"},
                                         sort_keys=True).encode()).hexdigest()  # fmt: skip
    now = st.engine.clock.now_ms()
    existing = await st.engine.store.get_app(url)
    modified = existing is None or existing.checksum != checksum or existing.app_id != app_id
    if modified:
        if existing is not None and existing.app_id and existing.app_id != app_id:
            await st.engine.store.register_functions(existing.app_id, [], now)
        await st.engine.register(app_id, records)
    unenforced = sorted({(r.id, o) for r in records for o in r.config.get("unenforced", [])})
    for fn_id, option in unenforced:
        log.warning("app %s: function %s registers %s, which Stepline stores but does not enforce yet",
                    app_id, fn_id, option)  # fmt: skip
    await st.engine.store.save_app(
        AppRecord(
            url=url,
            app_id=app_id,
            sdk=_str(body.get("sdk")),
            framework=_str(body.get("framework")),
            app_version=_str(body.get("appVersion")),
            checksum=checksum,
            synced_at=now,
            error=None,
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
    )
    reply: dict[str, Any] = {"ok": True, "modified": modified, "app_id": app_id, "sync_id": new_ulid()}
    if unenforced:
        reply["warnings"] = [f"{fn}: {opt} is stored but not enforced yet" for fn, opt in unenforced]
    return JSONResponse(reply)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


async def _save_sync_error(st: ServerState, url: str, app_id: str | None, error: str) -> None:
    now = st.engine.clock.now_ms()
    existing = await st.engine.store.get_app(url)
    if existing is None:
        app = AppRecord(url=url, app_id=app_id, sdk=None, framework=None, app_version=None, checksum=None,
                        synced_at=None, error=error, created_at=now, updated_at=now)  # fmt: skip
    else:
        app = AppRecord(url=url, app_id=existing.app_id or app_id, sdk=existing.sdk, framework=existing.framework,
                        app_version=existing.app_version, checksum=existing.checksum, synced_at=existing.synced_at,
                        error=error, created_at=existing.created_at, updated_at=now)  # fmt: skip
    await st.engine.store.save_app(app)


# --- server -> app: PUT ---------------------------------------------------------------------------------------------
SYNC_ANSWER_LIMIT = 1024 * 1024


async def sync_app(st: ServerState, url: str) -> str | None:
    """PUT the app so its SDK registers its functions. Returns the error (also stored on the app), or None.

    ``url`` as the operator, the API or the dashboard gave it (callers outside the operator's ``-u`` check that it
    has a scheme). The PUT goes through the outbound policy; what the app answers is quoted in a short,
    printable excerpt."""
    body = signing.canonical_json({"url": url})
    headers = {"Content-Type": "application/json", "X-Inngest-Server-Kind": st.config.kind, "User-Agent": "stepline"}
    if st.config.signed and st.config.signing_keys:
        headers["X-Inngest-Signature"] = signing.sign(
            body, st.config.signing_keys[0], int(st.engine.clock.now_ms() / 1000)
        )
    error: str | None = None
    try:
        resp = await st.outbound.request("PUT", url, body=body, headers=headers, timeout=30.0,
                                         max_bytes=SYNC_ANSWER_LIMIT)  # fmt: skip
    except OutboundRefused as exc:
        error = f"the app at {url} is refused by the outbound policy: {exc}"
    except OutboundTooLarge as exc:
        error = f"the app at {url} answered the sync with more than {exc.limit} bytes"
    except (OutboundFailed, TimeoutError) as exc:
        reason = str(exc) or "no answer within 30 s"
        error = f"the app at {url} could not be reached: {reason}"
    else:
        error = _put_error(resp.status, resp.body)
    if error is not None:
        await _save_sync_error(st, url, None, error)
    return error


def _put_error(status: int, content: bytes) -> str | None:
    try:
        payload = json.loads(content)
    except ValueError:
        payload = None
    message = None
    if isinstance(payload, dict):
        # Python's SDK relays the server's register reply with HTTP 200 even when it failed.
        if payload.get("error"):
            message = str(payload["error"])
        elif payload.get("ok") is False or (isinstance(payload.get("status"), int) and payload["status"] >= 400):
            message = str(payload.get("message") or payload)
    if status >= 300:
        return f"the app answered the sync with HTTP {status}: {excerpt(message or content)}"
    if message:
        return f"the app's sync failed: {excerpt(message)}"
    return None


MAX_APP_ID_CHARS = 256
API_BODY_LIMIT = 64 * 1024  # POST /v1/apps/sync: a URL
RETRY_BACKOFF_CAP = 300.0  # seconds: a failing app is retried after poll_interval, 2x, 4x, ... up to this


class Syncer:
    """Keeps apps synced. An app whose sync fails is retried with backoff (``poll_interval`` doubled per failure
    up to ``RETRY_BACKOFF_CAP``), not every ``poll_interval`` forever; a success resets it."""

    def __init__(self, st: ServerState) -> None:
        self.st = st
        self._task: asyncio.Task[None] | None = None
        self._failing: dict[str, tuple[int, float]] = {}  # url -> (failures in a row, loop time of the next try)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Syncer]:
        self._task = asyncio.create_task(self._loop(), name="stepline-syncer")
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        cfg = self.st.config
        for url in cfg.sdk_urls:
            await self._sync_quietly(normalise_url(url))
        while True:
            await asyncio.sleep(cfg.poll_interval)
            try:
                apps = await self.st.engine.store.list_apps()
            except Exception as exc:
                log.warning("listing apps failed: %s", exc)
                continue
            known = {a.url for a in apps}
            for url in map(normalise_url, cfg.sdk_urls):
                if url not in known and self._due(url):
                    await self._sync_quietly(url)
            for app in apps:
                if (cfg.poll or app.error) and self._due(app.url):
                    await self._sync_quietly(app.url)
            if cfg.discovery and not any(a.synced_at for a in apps):
                await self.discover()

    def _due(self, url: str) -> bool:
        failing = self._failing.get(url)
        return failing is None or asyncio.get_running_loop().time() >= failing[1]

    async def _sync_quietly(self, url: str) -> None:
        try:
            error = await sync_app(self.st, url)
        except Exception as exc:  # the store went away: try again next round
            log.warning("syncing %s failed: %s", url, exc)
            return
        if not error:
            self._failing.pop(url, None)
            return
        count = self._failing.get(url, (0, 0.0))[0] + 1
        delay = min(RETRY_BACKOFF_CAP, self.st.config.poll_interval * 2 ** min(count - 1, 16))
        self._failing[url] = (count, asyncio.get_running_loop().time() + delay)
        log.info("sync of %s failed (%d in a row; next try in %.0f s): %s", url, count, delay, error)

    async def discover(self) -> list[str]:
        """Probe the usual local ports for an SDK (a GET answered with ``X-Inngest-SDK``) and sync what answers."""
        ports = list(DISCOVERY_PORTS)
        if os.environ.get("PORT", "").isdigit():
            ports.append(int(os.environ["PORT"]))
        found: list[str] = []

        async def probe(port: int) -> None:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.2)
            except (OSError, TimeoutError):
                return
            writer.close()
            for path in DISCOVERY_PATHS:
                url = f"http://127.0.0.1:{port}{path}"
                try:
                    resp = await self.st.http.get(url, timeout=2.0)
                except httpx.HTTPError:
                    continue
                if "x-inngest-sdk" in resp.headers:
                    found.append(url)
                    return

        own = _own_port(self.st)
        await asyncio.gather(*(probe(p) for p in ports if p != own))
        for url in found:
            await self._sync_quietly(url)
        return found


def _own_port(st: ServerState) -> int | None:
    value = st.config.extra.get("port")
    return int(value) if value and value.isdigit() else None


async def resync(request: Request) -> Response:
    """``POST /v1/apps/sync`` ``{"url": ...}``: sync one app now (dashboard and CLI)."""
    st = state_of(request)
    if st.config.signed and not signing.bearer_matches(request.headers.get("authorization"), st.config.signing_keys):
        return error_response(401, "authentication required: Authorization: Bearer <signing key>")
    try:
        body = parse_json(await read_body(request, API_BODY_LIMIT))
    except BodyTooLarge as exc:
        return error_response(413, str(exc))
    except BodyTimeout as exc:
        return error_response(408, str(exc))
    except InvalidBody as exc:
        return error_response(400, f'{exc}; expected JSON: {{"url": "http://host:port/api/inngest"}}')
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url:
        return error_response(400, "the body needs the app's url")
    url = url.strip()
    try:
        st.outbound.policy.check_url(url)
    except OutboundRefused as exc:
        return error_response(400, str(exc))
    error = await sync_app(st, url)
    if error:
        return error_response(502, error)
    app = await st.engine.store.get_app(url)
    return JSONResponse({"data": {"url": url, "app_id": app.app_id if app else None}})


def routes() -> list[BaseRoute]:
    return [
        Route("/fn/register", register, methods=["POST"]),
        Route("/v1/apps/sync", resync, methods=["POST"]),
    ]
