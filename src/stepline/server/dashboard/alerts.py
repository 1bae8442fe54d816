"""Failure alerts: a webhook POST when runs fail, once per cluster, without flooding it (docs/alerts.md).

Rules (``--alert-rule``, repeatable; ``--alert-webhook URL`` is the rule ``* URL``) say which functions (a glob on the
function id, as ``/v1/functions`` lists it) alert which webhook, and how:

- Without a threshold, every failed run alerts: the first failure after a quiet period is posted at once, with the
  run's link and error; the failures of the next ``cooldown`` seconds are held and posted as one summary when it
  ends (counts per function and the first few links), which starts a new cooldown. A burst of a thousand failures
  makes two posts; steady failures one summary per cooldown.
- With a threshold (``rate>20%/10m``), the rule alerts when the matching functions' failure rate over the window
  (failed runs / runs that completed or failed in it) is above it, at most once per window while it stays above.

Once per cluster: every server with alert rules tries to hold the store's ``alerts`` cluster lease; only the holder
checks and posts. What it has delivered is kept with the lease (per rule: the newest failure event posted and the
end of the cooldown), written after each post: a holder that dies mid-send leaves its lease to expire and the next
holder posts again from the last delivered failure. Delivery is at least once (a receiver may see a post twice
after such a handover), never zero times for a failure stored while some server had rules. Failed runs are found
through their ``stepline/function.failed`` events, newest first by name down to the last delivered one, and only
when the store's change marker moved.

Bodies: ``{"text": "...", "stepline": {"kind": "run.failed" | "runs.failed" | "rate", ...}}`` by default (``text``
makes it readable as a Slack or Mattermost incoming webhook as it is), or Slack's own shape with the ``slack`` option
(``{"text", "blocks"}``: mrkdwn with links). Every post goes through the server's outbound-request policy
(``server/outbound.py``) with a 10 s deadline; a post that fails (no answer, a 5xx) is tried again at the next
checks, three times in all, then dropped with an error in the log; a refused URL or a 4xx is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from stepline.core.background import background
from stepline.core.clock import Clock
from stepline.core.events import FUNCTION_FAILED
from stepline.server.alert_rules import AlertRule
from stepline.server.outbound import OutboundClient, OutboundFailed, OutboundRefused, OutboundTooLarge
from stepline.storage.base import Store

log = logging.getLogger("stepline.server.alerts")

LISTED = 10  # failures listed in a summary (the rest are counted)
SCAN_LIMIT = 1000  # failure events read per check at most (more are counted as "and more")
LEASE = "alerts"
POST_ATTEMPTS = 3


@dataclass(frozen=True)
class Failure:
    run_id: str
    function_id: str
    error: dict[str, Any]
    event_id: str


@dataclass
class _Post:
    body: dict[str, Any]
    delivered: str | None  # the newest failure event it covers (the rule's cursor once it is posted)
    attempts: int = 0


@dataclass
class _RuleState:
    delivered: str | None = None  # newest failure event posted (kept with the lease)
    read: str | None = None  # newest failure event read (this holder's)
    quiet_until: int = 0  # unix ms: before this, failures are held for the next summary
    held: list[Failure] = field(default_factory=list)
    held_extra: int = 0  # failures beyond SCAN_LIMIT in one check, counted only
    pending: _Post | None = None  # a post to try again
    rate_quiet_until: int = 0


class FailureAlerts:
    """The alerting of one server; only the process that holds the ``alerts`` lease checks and posts."""

    def __init__(self, store: Store, clock: Clock, outbound: OutboundClient, rules: list[AlertRule], *,
                 owner: str, cooldown: float = 60.0, base_url: str = "", check_interval: float = 1.0,
                 lease_seconds: float = 15.0) -> None:  # fmt: skip
        self.store = store
        self.clock = clock
        self.outbound = outbound
        self.rules = rules
        self.owner = owner
        self.cooldown_ms = int(cooldown * 1000)
        self.base_url = base_url.rstrip("/")
        self.check_interval = check_interval
        self.lease_ms = int(lease_seconds * 1000)
        self.states: dict[str, _RuleState] = {}
        self.holding = False
        self.posts = 0
        self._newest: str | None = None  # the newest failure event when this process first held the lease

    # --- the lease ---
    async def take_lease(self) -> bool:
        """Hold (or keep) the cluster's alerts lease; on taking it, load what earlier holders delivered."""
        lease = await self.store.take_cluster_lease(LEASE, self.owner, self.clock.now_ms(), self.lease_ms)
        if lease is None:
            if self.holding:
                log.info("failure alerts: another server sends them now")
            self.holding = False
            self.states.clear()
            return False
        if not self.holding:
            self.holding = True
            saved = (lease.state or {}).get("rules", {})
            newest = await self.store.list_events(FUNCTION_FAILED, 1)
            start = newest[0].internal_id if newest else None
            for rule in self.rules:
                kept = saved.get(rule.key)
                if isinstance(kept, dict):  # delivered by an earlier holder: go on from there
                    state = _RuleState(kept.get("cursor"), kept.get("cursor"), int(kept.get("quiet_until") or 0),
                                       rate_quiet_until=int(kept.get("rate_quiet_until") or 0))  # fmt: skip
                else:  # a rule never seen: only failures from now on
                    state = _RuleState(start, start)
                self.states[rule.key] = state
            await self._save()
        return True

    async def _save(self) -> None:
        rules = {key: {"cursor": s.delivered, "quiet_until": s.quiet_until, "rate_quiet_until": s.rate_quiet_until}
                 for key, s in self.states.items()}  # fmt: skip
        if not await self.store.save_cluster_lease_state(LEASE, self.owner, {"rules": rules}, self.clock.now_ms()):
            self.holding = False  # the lease ran out meanwhile: the next holder goes on from what was saved

    # --- reading failures ---
    async def _failures_after(self, cursor: str | None) -> tuple[list[Failure], str | None, bool]:
        """Failures stored after ``cursor``, oldest first; the newest event read; whether more were left unread."""
        found: list[Failure] = []
        before: str | None = None
        newest: str | None = None
        more = False
        while True:
            page = await self.store.list_events(FUNCTION_FAILED, 100, before=before)
            if not page:
                break
            newest = newest or page[0].internal_id
            done = False
            for ev in page:
                if ev.internal_id == cursor:
                    done = True
                    break
                data = ev.data
                error = data.get("error") if isinstance(data.get("error"), dict) else {}
                found.append(Failure(str(data.get("run_id", "?")), str(data.get("function_id", "?")),
                                     error or {}, ev.internal_id))  # fmt: skip
            if done or len(page) < 100:
                break
            if len(found) >= SCAN_LIMIT:
                more = True
                break
            before = page[-1].internal_id
        found.reverse()
        return found, newest or cursor, more

    # --- one round ---
    async def check(self) -> None:
        """Take or keep the lease; as its holder, post what each rule says now."""
        if not await self.take_lease():
            return
        for rule in self.rules:
            state = self.states[rule.key]
            if rule.rate is not None:
                await self._check_rate(rule, state)
            else:
                await self._check_failures(rule, state)

    async def _check_failures(self, rule: AlertRule, state: _RuleState) -> None:
        if state.pending is not None:
            if not await self._post(rule, state, state.pending):
                return
        failures, newest, more = await self._failures_after(state.read)
        state.read = newest
        failures = [f for f in failures if rule.matches(f.function_id)]
        state.held_extra += int(more)
        now = self.clock.now_ms()
        if failures and now >= state.quiet_until and not state.held:
            first, *rest = failures
            state.quiet_until = now + self.cooldown_ms
            state.held += rest
            if not await self._post(rule, state, _Post(self.single(rule, first), first.event_id)):
                return
        else:
            state.held += failures
        if (state.held or state.held_extra) and now >= state.quiet_until:
            held, extra = state.held, state.held_extra
            state.held, state.held_extra = [], 0
            state.quiet_until = now + self.cooldown_ms
            delivered = held[-1].event_id if held else state.read
            await self._post(rule, state, _Post(self.summary(rule, held, extra), delivered))
        elif not failures and not state.held and state.read != state.delivered and state.pending is None:
            state.delivered = state.read  # only other functions' failures since: nothing to post for this rule
            await self._save()

    async def _check_rate(self, rule: AlertRule, state: _RuleState) -> None:
        assert rule.rate is not None
        now = self.clock.now_ms()
        if state.pending is not None:
            await self._post(rule, state, state.pending)
            return
        if now < state.rate_quiet_until:
            return
        counts = await self.store.run_counts(now - rule.rate.window_ms, now - rule.rate.window_ms)
        failed = sum(c.count for c in counts if c.status == "failed" and rule.matches(c.function_id))
        ended = sum(c.count for c in counts if c.status in ("completed", "failed") and rule.matches(c.function_id))
        if not failed or 100 * failed / ended <= rule.rate.percent:
            return
        state.rate_quiet_until = now + rule.rate.window_ms
        by_function = Counter({c.function_id: c.count for c in counts if c.status == "failed"
                               and rule.matches(c.function_id)})  # fmt: skip
        await self._post(rule, state, _Post(self.rate_alert(rule, failed, ended, dict(by_function)), state.delivered))

    # --- bodies ---
    def link(self, run_id: str) -> str:
        return f"{self.base_url}/dashboard/runs/{run_id}"

    def _item(self, f: Failure) -> dict[str, Any]:
        error = {k: f.error.get(k) for k in ("name", "message", "stack") if f.error.get(k) is not None}
        return {"run_id": f.run_id, "function_id": f.function_id, "error": error, "url": self.link(f.run_id)}

    def single(self, rule: AlertRule, f: Failure) -> dict[str, Any]:
        err = f"{f.error.get('name', 'Error')}: {f.error.get('message', '')}".strip()
        text = f"Stepline: run {f.run_id} of {f.function_id} failed: {err}\n{self.link(f.run_id)}"
        if rule.slack:
            return _slack(f"*Stepline*: run <{self.link(f.run_id)}|{f.run_id}> of `{f.function_id}` failed: {err}")
        return {"text": text, "stepline": {"kind": "run.failed", "count": 1, "functions": {f.function_id: 1},
                                           "failures": [self._item(f)]}}  # fmt: skip

    def summary(self, rule: AlertRule, held: list[Failure], extra: int) -> dict[str, Any]:
        by_function = Counter(f.function_id for f in held)
        count = len(held)
        more = " and more" if extra else ""
        head = (f"{count}{more} more runs failed in the last {self.cooldown_ms // 1000} s: "
                + ", ".join(f"{fn} ({n})" for fn, n in by_function.most_common()))  # fmt: skip
        if rule.slack:
            lines = [f"*Stepline*: {head}"] + [f"• `{f.function_id}`: {f.error.get('message', '')} "
                                              f"<{self.link(f.run_id)}|{f.run_id}>" for f in held[:LISTED]]  # fmt: skip
            if count > LISTED:
                lines.append(f"• ... {count - LISTED} more")
            return _slack("\n".join(lines))
        lines = [f"Stepline: {head}"]
        for f in held[:LISTED]:
            lines.append(f"- {f.function_id}: {f.error.get('message', '')} {self.link(f.run_id)}")
        if count > LISTED:
            lines.append(f"- ... {count - LISTED} more")
        return {"text": "\n".join(lines), "stepline": {"kind": "runs.failed", "count": count, "more": bool(extra),
                "functions": dict(by_function), "failures": [self._item(f) for f in held[:LISTED]]}}  # fmt: skip

    def rate_alert(self, rule: AlertRule, failed: int, ended: int, by_function: dict[str, int]) -> dict[str, Any]:
        assert rule.rate is not None
        window = rule.rate.text.split("/", 1)[1]
        percent = 100 * failed / ended
        text = (f"Stepline: {percent:.0f}% of the runs of {rule.pattern} failed in the last {window} ({failed} of "
                f"{ended}; threshold {rule.rate.percent:g}%): " + ", ".join(f"{fn} ({n})" for fn, n in
                                                                           sorted(by_function.items())))  # fmt: skip
        if rule.slack:
            return _slack(text.replace("Stepline:", "*Stepline*:", 1) + f"\n<{self.base_url}/dashboard/runs|runs>")
        return {"text": text, "stepline": {"kind": "rate", "functions": by_function, "failed": failed,
                "ended": ended, "percent": round(percent, 2), "threshold": rule.rate.percent,
                "window_ms": rule.rate.window_ms, "pattern": rule.pattern}}  # fmt: skip

    # --- posting ---
    async def _post(self, rule: AlertRule, state: _RuleState, post: _Post) -> bool:
        """Post; True when it is done with (delivered, or given up on). Keeps what was delivered with the lease."""
        self.posts += 1
        post.attempts += 1
        retry = False
        try:
            answer = await self.outbound.request("POST", rule.url, headers={"Content-Type": "application/json"},
                                                 body=json.dumps(post.body).encode(), timeout=10.0,
                                                 max_bytes=64 * 1024)  # fmt: skip
        except OutboundRefused as exc:
            log.error("failure alert to %s refused by the outbound-request policy: %s", rule.url, exc)
        except (OutboundFailed, OutboundTooLarge, TimeoutError) as exc:
            log.warning("failure alert to %s not delivered (attempt %d of %d): %s: %s", rule.url, post.attempts,
                        POST_ATTEMPTS, type(exc).__name__, exc)  # fmt: skip
            retry = True
        else:
            if answer.status >= 500:
                log.warning("failure alert to %s answered HTTP %s (attempt %d of %d)", rule.url, answer.status,
                            post.attempts, POST_ATTEMPTS)  # fmt: skip
                retry = True
            elif answer.status >= 300:
                log.error("failure alert to %s answered HTTP %s: %s", rule.url, answer.status,
                          answer.body[:200].decode(errors="replace"))  # fmt: skip
        if retry and post.attempts < POST_ATTEMPTS:
            state.pending = post
            return False
        if retry:
            log.error("failure alert to %s dropped after %d attempts", rule.url, POST_ATTEMPTS)
        state.pending = None
        if post.delivered is not None:
            state.delivered = post.delivered
        await self._save()
        return True

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FailureAlerts]:
        try:
            async with background(self._loop(), "stepline-alerts"):
                yield self
        finally:
            if self.holding:
                with contextlib.suppress(Exception):  # hand over at once, not when the lease expires
                    await self.store.release_cluster_lease(LEASE, self.owner)

    async def _loop(self) -> None:
        marker: object = None
        rounds = 0
        while True:
            try:
                current = await self.store.change_marker()
                rounds += 1
                # Read failures when something changed; keep the lease (and check rates) every few seconds.
                if current is None or current != marker or rounds % 5 == 0 or any(
                        s.held or s.pending for s in self.states.values()):  # fmt: skip
                    marker = current
                    await self.check()
            except Exception as exc:  # the store is away: try again next round
                log.warning("failure alerts: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.check_interval)


def _slack(text: str) -> dict[str, Any]:
    """Slack's incoming-webhook shape: the text (shown in notifications) and one mrkdwn section."""
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}]}
