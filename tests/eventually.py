"""One way to wait for something in tests: ``await eventually("what", probe)`` (or ``eventually_sync`` in blocking
code) polls ``probe`` until it returns a truthy value, which it returns; after ``timeout`` seconds it fails saying
what it waited for, with ``diagnostics`` (a string, or a callable giving one: a process's output, say).

For what a test cannot observe directly (a server coming up, another process's writes). Code under the test's
control should be driven instead: the engine's ``FakeClock``, ``worker.run_until_idle()``, an event it sets."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
Diagnostics = str | Callable[[], str]


def _failure(what: str, timeout: float, diagnostics: Diagnostics) -> AssertionError:
    extra = diagnostics() if callable(diagnostics) else diagnostics
    return AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{extra}" if extra else ""))


async def eventually(
    what: str,
    probe: Callable[[], T | Awaitable[T | None] | None],
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
    diagnostics: Diagnostics = "",
) -> T:
    """Poll ``probe`` (sync or async) on the event loop until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value: Any = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise _failure(what, timeout, diagnostics)
        await asyncio.sleep(interval)


def eventually_sync(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    diagnostics: Diagnostics = "",
) -> T:
    """``eventually`` for blocking code (a test driving a server in another thread or process)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(what, timeout, diagnostics)
        time.sleep(interval)
