"""Server settings: dev (open, embedded SQLite) or start (signed, event keys, any store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from stepline.core.backoff import Backoff
from stepline.server.alert_rules import AlertRule
from stepline.server.outbound import OutboundPolicy

ServerKind = Literal["dev", "cloud"]

DEFAULT_PORT = 8288
MAX_BODY_BYTES = 64 * 1024 * 1024  # a whole event API request or SDK call response


@dataclass(frozen=True)
class ServerConfig:
    """``kind`` is what the server tells SDKs in ``X-Inngest-Server-Kind``: ``dev`` for ``stepline dev``,
    ``cloud`` for ``stepline start`` (signed calls, event keys checked)."""

    kind: ServerKind = "dev"
    signing_keys: tuple[str, ...] = ()  # the signing key, then its fallback (start mode)
    event_keys: frozenset[str] = frozenset()  # accepted event keys (start mode); dev accepts any key
    sdk_urls: tuple[str, ...] = ()  # apps to sync at start (-u)
    discovery: bool = True  # scan the usual local ports for apps until one syncs (dev)
    poll: bool = True  # re-sync every known app every poll_interval (else only apps in error)
    poll_interval: float = 5.0
    max_calls_per_app: int = 32  # calls in flight to one app origin (more wait for a slot)
    call_timeout: float = 300.0  # seconds an SDK call may take before it counts as failed (and is retried)
    max_body_bytes: int = MAX_BODY_BYTES
    gateway_timeout: float = 300.0  # seconds a step.fetch / step.ai.infer request may take (server/gateway.py)
    gateway_max_bytes: int = 4 * 1024 * 1024  # the largest answer a gateway step keeps (Inngest's step output limit)
    backoff: Backoff = field(default_factory=Backoff)  # between retries of failed calls and steps
    public_url: str | None = None  # how people reach this server (links in logs and alerts)
    admin_token: str | None = None  # the dashboard's login (start mode always has one; dev is open without)
    alert_webhook: str | None = None  # POSTed when runs fail (dashboard alerts): the rule "* URL"
    alert_rules: tuple[AlertRule, ...] = ()  # --alert-rule: per function glob, optionally a failure-rate threshold
    alert_cooldown: float = 60.0  # seconds after an alert during which further failures are summed up in one
    outbound_deny_private: bool = False  # refuse private/loopback targets of apps, gateways, webhooks (outbound.py)
    outbound_allow: tuple[str, ...] = ()  # hosts or CIDRs exempt from outbound_deny_private
    allowed_hosts: tuple[str, ...] = ()  # dev: Host names answered besides loopback ones (server/dev_guard.py)
    max_waiting_requests: int = 1000  # GET /v1/runs/{id}?wait= and /v1/events/{id}/runs?wait= at once; more: 429
    sync_apps: bool = True  # sync -u apps, re-sync and discover: one process per node (of --processes N: the first)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def signed(self) -> bool:
        return self.kind == "cloud"

    @property
    def all_alert_rules(self) -> list[AlertRule]:
        """``alert_rules``, with ``alert_webhook`` as the rule for every function."""
        rules = list(self.alert_rules)
        if self.alert_webhook:
            rules.insert(0, AlertRule("*", self.alert_webhook))
        return rules

    @property
    def outbound_policy(self) -> OutboundPolicy:
        """The outbound-request policy; the hosts of the operator's own ``-u`` URLs are trusted as given."""
        trusted = frozenset(h for h in (urlsplit(normalise_url(u)).hostname for u in self.sdk_urls) if h)
        return OutboundPolicy(deny_private=self.outbound_deny_private, allow=self.outbound_allow,
                              trusted_hosts=trusted)  # fmt: skip


def normalise_url(url: str) -> str:
    """An app URL from the operator's ``-u``: ``http://`` is assumed when no scheme is written (as Inngest's dev
    server does). URLs from the API, the dashboard and registrations must carry their scheme."""
    url = url.strip()
    return url if "://" in url else f"http://{url}"


def scaled_backoff(scale: float) -> Backoff:
    """Inngest's schedule and jitter multiplied by ``scale`` (``STEPLINE_BACKOFF_SCALE``; tests use 0.01)."""
    base = Backoff()
    return Backoff(schedule=tuple(d * scale for d in base.schedule), jitter=base.jitter * scale)
