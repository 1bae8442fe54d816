"""Alert rules: which functions' failures alert which webhook (``--alert-rule``; see dashboard/alerts.py)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from stepline.core.durations import parse_duration

_RATE = re.compile(r"^rate>(\d+(?:\.\d+)?)%/(\S+)$")


@dataclass(frozen=True)
class RateThreshold:
    percent: float
    window_ms: int
    text: str


@dataclass(frozen=True)
class AlertRule:
    """Which functions alert which webhook: every failure, or a failure rate above a threshold."""

    pattern: str
    url: str
    rate: RateThreshold | None = None
    slack: bool = False

    @property
    def key(self) -> str:
        """How the rule's delivery state is kept with the lease."""
        return " ".join(p for p in (self.pattern, self.url, self.rate.text if self.rate else "") if p)

    def matches(self, function_id: str) -> bool:
        return fnmatch.fnmatchcase(function_id, self.pattern)


def parse_rule(text: str, *, slack: bool = False) -> AlertRule:
    """``GLOB URL [rate>N%/WINDOW] [slack]`` (space-separated). Raises ValueError saying what is wrong."""
    parts = text.split()
    if len(parts) < 2:
        raise ValueError(f"an alert rule is 'GLOB URL [rate>N%/WINDOW] [slack]', got {text!r}")
    pattern, url, *options = parts
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the alert rule {text!r} needs an http(s) webhook URL as its second word, got {url!r}")
    rate = None
    for option in options:
        if option == "slack":
            slack = True
            continue
        m = _RATE.match(option)
        if m is None:
            raise ValueError(f"unknown alert rule option {option!r} in {text!r} (expected rate>N%/WINDOW or slack)")
        percent = float(m.group(1))
        if not 0 <= percent < 100:
            raise ValueError(f"the rate threshold in {text!r} must be between 0 and 100 %")
        try:
            window = int(parse_duration(m.group(2)).total_seconds() * 1000)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the rate window in {text!r}: {exc}") from None
        if window < 1000:
            raise ValueError(f"the rate window in {text!r} must be at least 1s")
        rate = RateThreshold(percent, window, option)
    return AlertRule(pattern, url, rate, slack)
