"""Retry backoff schedules, defaulting to Inngest's."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Self

__all__ = ["EXPONENTIAL_STEPS", "INNGEST_SCHEDULE", "Backoff"]

INNGEST_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=15),
    timedelta(seconds=30),
    timedelta(minutes=1),
    timedelta(minutes=2),
    timedelta(minutes=5),
    timedelta(minutes=10),
    timedelta(minutes=20),
    timedelta(minutes=40),
    timedelta(hours=1),
    timedelta(hours=2),
)
"""Inngest's base retry delays; attempts past the end reuse the last value."""

EXPONENTIAL_STEPS = 20
"""Number of schedule entries computed by :meth:`Backoff.exponential`."""

_ZERO = timedelta(0)


@dataclass(frozen=True)
class Backoff:
    """Delay before retrying after a failed attempt: ``schedule[attempt] + jitter * rand()``."""

    schedule: tuple[timedelta, ...] = INNGEST_SCHEDULE
    jitter: timedelta = field(default=timedelta(seconds=30))

    def __post_init__(self) -> None:
        schedule = tuple(self.schedule)
        if not schedule:
            raise ValueError("invalid backoff schedule: it must contain at least one delay")
        for index, delay in enumerate(schedule):
            if not isinstance(delay, timedelta):
                raise ValueError(f"invalid backoff schedule entry {index}: {delay!r} is not a timedelta")
            if delay < _ZERO:
                raise ValueError(f"invalid backoff schedule entry {index}: {delay!r} is negative")
        if not isinstance(self.jitter, timedelta):
            raise ValueError(f"invalid backoff jitter {self.jitter!r}: expected a timedelta")
        if self.jitter < _ZERO:
            raise ValueError(f"invalid backoff jitter {self.jitter!r}: must not be negative")
        object.__setattr__(self, "schedule", schedule)

    @classmethod
    def exponential(
        cls,
        base: timedelta,
        factor: float = 2.0,
        *,
        max_delay: timedelta,
        jitter: timedelta,
    ) -> Self:
        """Build a backoff whose delays are ``base * factor**attempt``, capped at ``max_delay``.

        The schedule is precomputed for :data:`EXPONENTIAL_STEPS` attempts; later attempts reuse
        the last entry (which is ``max_delay`` once the cap is reached).
        """
        if base < _ZERO:
            raise ValueError(f"invalid backoff base {base!r}: must not be negative")
        if isinstance(factor, bool) or not math.isfinite(factor) or factor < 1.0:
            raise ValueError(f"invalid backoff factor {factor!r}: must be a finite number >= 1")
        if max_delay < _ZERO:
            raise ValueError(f"invalid backoff max_delay {max_delay!r}: must not be negative")
        if max_delay < base:
            raise ValueError(f"invalid backoff max_delay {max_delay!r}: must be at least base ({base!r})")
        delays: list[timedelta] = []
        current = base
        for _ in range(EXPONENTIAL_STEPS):
            delays.append(min(current, max_delay))
            if current >= max_delay:
                current = max_delay
                continue
            try:
                current = current * factor
            except OverflowError:
                current = max_delay
        return cls(schedule=tuple(delays), jitter=jitter)

    def base_delay(self, attempt: int) -> timedelta:
        """The un-jittered delay after the 0-based ``attempt`` failed."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"invalid attempt {attempt!r}: expected a non-negative integer")
        return self.schedule[min(attempt, len(self.schedule) - 1)]

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> timedelta:
        """Delay after the 0-based ``attempt`` failed, with ``jitter * rand()`` added.

        ``rand`` must return a value in ``[0, 1]``.
        """
        base = self.base_delay(attempt)
        r = rand()
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"invalid random value {r!r}: rand() must return a number in [0, 1]")
        return base + self.jitter * r
