"""Failure alerts: POST a JSON message to a webhook when runs fail, without flooding it.

Failed runs are found through their ``stepline/function.failed`` events (stored in the transaction that failed
the run), read newest first by name through the events index, down to the last one already seen; the read only
happens when the store's change marker moved. The first failure after a quiet period is posted at once, with
the run's link and error. Failures in the ``cooldown`` that follows are held and posted as one summary when it
ends (counts per function and the first few links), which starts a new cooldown. So a burst of a thousand
failures makes two posts, and steady failures one summary per cooldown.

The body is ``{"text": "...", "stepline": {"kind": "run.failed" | "runs.failed", "count", "functions",
"failures": [{"run_id", "function_id", "error", "url"}]}}``: ``text`` makes it readable as a Slack or
Mattermost incoming webhook as it is. A post that fails is logged and not retried.

Every server with ``--alert-webhook`` alerts (several nodes on one PostgreSQL database each post).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from stepline.core.clock import Clock
from stepline.core.events import FUNCTION_FAILED
from stepline.storage.base import Store

log = logging.getLogger("stepline.server.alerts")

LISTED = 10  # failures listed in a summary (the rest are counted)
SCAN_LIMIT = 1000  # failure events read per check at most (more are counted as "and more")


@dataclass(frozen=True)
class Failure:
    run_id: str
    function_id: str
    error: dict[str, Any]
    event_id: str


class FailureAlerts:
    def __init__(self, store: Store, clock: Clock, http: httpx.AsyncClient, webhook: str, *,
                 cooldown: float = 60.0, base_url: str = "", check_interval: float = 1.0) -> None:  # fmt: skip
        self.store = store
        self.clock = clock
        self.http = http
        self.webhook = webhook
        self.cooldown_ms = int(cooldown * 1000)
        self.base_url = base_url.rstrip("/")
        self.check_interval = check_interval
        self.quiet_until = 0  # unix ms: before this, failures are held for the next summary
        self.held: list[Failure] = []
        self.held_extra = 0  # failures beyond SCAN_LIMIT in one check, counted only
        self.last_seen: str | None = None  # internal id of the newest failure event already handled
        self.started = False
        self.posts = 0

    async def start(self) -> None:
        """Remember the newest failure so far: only failures after the server started are alerted."""
        newest = await self.store.list_events(FUNCTION_FAILED, 1)
        self.last_seen = newest[0].internal_id if newest else None
        self.started = True

    async def new_failures(self) -> list[Failure]:
        """Failures stored since the last call, oldest first."""
        found: list[Failure] = []
        before: str | None = None
        newest: str | None = None
        while len(found) < SCAN_LIMIT:
            page = await self.store.list_events(FUNCTION_FAILED, 100, before=before)
            if not page:
                break
            newest = newest or page[0].internal_id
            done = False
            for ev in page:
                if ev.internal_id == self.last_seen:
                    done = True
                    break
                data = ev.data
                error = data.get("error") if isinstance(data.get("error"), dict) else {}
                found.append(Failure(str(data.get("run_id", "?")), str(data.get("function_id", "?")),
                                     error or {}, ev.internal_id))  # fmt: skip
            if done or len(page) < 100:
                break
            before = page[-1].internal_id
        else:
            self.held_extra += 1  # more than SCAN_LIMIT since the last check: say "and more"
        if newest is not None:
            self.last_seen = newest
        found.reverse()
        return found

    async def check(self) -> None:
        """Read new failures, post what the rate limit allows now, hold the rest."""
        if not self.started:
            await self.start()
        failures = await self.new_failures()
        now = self.clock.now_ms()
        if failures and now >= self.quiet_until and not self.held:
            first, *rest = failures
            self.quiet_until = now + self.cooldown_ms
            self.held += rest
            await self.post(self.single(first))
        else:
            self.held += failures
        if self.held and now >= self.quiet_until:
            held, extra = self.held, self.held_extra
            self.held, self.held_extra = [], 0
            self.quiet_until = now + self.cooldown_ms
            await self.post(self.summary(held, extra))

    def link(self, run_id: str) -> str:
        return f"{self.base_url}/dashboard/runs/{run_id}"

    def _item(self, f: Failure) -> dict[str, Any]:
        error = {k: f.error.get(k) for k in ("name", "message", "stack") if f.error.get(k) is not None}
        return {"run_id": f.run_id, "function_id": f.function_id, "error": error, "url": self.link(f.run_id)}

    def single(self, f: Failure) -> dict[str, Any]:
        err = f"{f.error.get('name', 'Error')}: {f.error.get('message', '')}".strip()
        text = f"Stepline: run {f.run_id} of {f.function_id} failed: {err}\n{self.link(f.run_id)}"
        return {"text": text, "stepline": {"kind": "run.failed", "count": 1, "functions": {f.function_id: 1},
                                           "failures": [self._item(f)]}}  # fmt: skip

    def summary(self, held: list[Failure], extra: int) -> dict[str, Any]:
        by_function = Counter(f.function_id for f in held)
        count = len(held)
        more = " and more" if extra else ""
        lines = [f"Stepline: {count}{more} more runs failed in the last {self.cooldown_ms // 1000} s: "
                 + ", ".join(f"{fn} ({n})" for fn, n in by_function.most_common())]  # fmt: skip
        for f in held[:LISTED]:
            lines.append(f"- {f.function_id}: {f.error.get('message', '')} {self.link(f.run_id)}")
        if count > LISTED:
            lines.append(f"- ... {count - LISTED} more")
        return {"text": "\n".join(lines), "stepline": {"kind": "runs.failed", "count": count, "more": bool(extra),
                "functions": dict(by_function), "failures": [self._item(f) for f in held[:LISTED]]}}  # fmt: skip

    async def post(self, body: dict[str, Any]) -> None:
        self.posts += 1
        try:
            resp = await self.http.post(self.webhook, json=body, timeout=10.0)
        except httpx.HTTPError as exc:
            log.warning("failure alert to %s not delivered: %s: %s", self.webhook, type(exc).__name__, exc)
            return
        if resp.status_code >= 300:
            log.warning("failure alert to %s answered HTTP %s: %s", self.webhook, resp.status_code, resp.text[:200])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FailureAlerts]:
        task = asyncio.create_task(self._loop(), name="stepline-alerts")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        marker: object = None
        while True:
            try:
                current = await self.store.change_marker()
                if current is None or current != marker or self.held:
                    marker = current
                    await self.check()
            except Exception as exc:  # the store is away: try again next round
                log.warning("failure alerts: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.check_interval)
