"""Errors users raise or catch, and the internal signals the executor uses to unwind a run."""

from __future__ import annotations

import datetime as dt
import traceback
from typing import Any

from stepline.core.durations import to_utc


class SteplineError(Exception):
    """Base class for errors Stepline raises for bad input or misuse."""


class EventValidationError(SteplineError, ValueError):
    """An event could not be accepted (bad name, data not JSON-compatible, reserved prefix, ...)."""


class UnknownFunctionError(SteplineError, LookupError):
    """A function id that no registered function has."""


class UnknownRunError(SteplineError, LookupError):
    """No run has this id (``client.wait_for_run``)."""


class SerializationError(SteplineError, TypeError):
    """A step result, run output or event payload that cannot be stored as JSON."""


class StepIdConflictError(SteplineError):
    """A step id reused with a different meaning: the code no longer matches the run's history."""


class NonRetriableError(Exception):
    """Raise from a step or a function to fail it now, with no further retries."""


class RetryAfterError(Exception):
    """Raise to be retried no sooner than the given time (seconds from now or an aware datetime)."""

    def __init__(self, message: str, retry_after: float | int | dt.timedelta | dt.datetime) -> None:
        super().__init__(message)
        if isinstance(retry_after, dt.datetime):
            self.retry_at: dt.datetime | None = to_utc(retry_after)
            self.delay: dt.timedelta | None = None
        elif isinstance(retry_after, dt.timedelta):
            self.retry_at, self.delay = None, retry_after
        else:
            if retry_after < 0:
                raise ValueError(f"retry_after must not be negative, got {retry_after}")
            self.retry_at, self.delay = None, dt.timedelta(seconds=retry_after)

    def earliest(self, now: dt.datetime) -> dt.datetime:
        """When the retry may happen, given the current time."""
        if self.retry_at is not None:
            return max(self.retry_at, now)
        assert self.delay is not None
        return now + self.delay


class StepError(Exception):
    """A step failed for good (retries exhausted or non-retriable); catch it to handle the failure.

    ``name``, ``message`` and ``stack`` describe the original error as it was recorded.
    """

    def __init__(self, step_id: str, name: str, message: str, stack: str | None = None) -> None:
        super().__init__(f"step {step_id!r} failed: {name}: {message}")
        self.step_id = step_id
        self.name = name
        self.message = message
        self.stack = stack


def retrying_reason(step: str | None, until: int, error: dict[str, Any] | None) -> dict[str, Any]:
    """The idle reason of a run whose step (or, ``step`` None, whose function) waits for its next attempt: when,
    and after which error (``Name: message``, cut at 200 characters), as the dashboard and the REST API show it."""
    reason: dict[str, Any] = {"kind": "retrying"}
    if step is not None:
        reason["step"] = step
    reason["until"] = until
    if error:
        text = f"{error.get('name') or 'Error'}: {error.get('message') or ''}".rstrip(": ")
        reason["error"] = text if len(text) <= 200 else text[:199] + "…"
    return reason


def serialize_error(exc: BaseException) -> dict[str, Any]:
    """The stored form of an error: Inngest's ``{name, message, stack}``."""
    if isinstance(exc, StepError):
        return {"name": exc.name, "message": exc.message, "stack": exc.stack}
    return {
        "name": type(exc).__name__,
        "message": str(exc),
        "stack": "".join(traceback.format_exception(exc)),
    }


def run_end_error(error: dict[str, Any] | None, reason: str | None = None) -> dict[str, Any]:
    """A run's error as the run-end events carry it (``data.error`` of ``function.finished`` / ``.failed``, and the
    memo of a failed invoke), in Inngest's shape: ``{error, name, message, stack?}``.

    ``error`` is the stored error (what the SDK or the in-process code produced, kept as it was); ``reason`` says
    why the attempt failed when that is not the error itself (``invalid status code: 500`` for an SDK's error
    answer, as Inngest's executor writes it). Empty strings take Inngest's defaults; ``stack`` is left out when
    there is none, as Inngest does; a ``cause`` is kept.
    """
    error = error or {}

    def text(key: str) -> str | None:
        value = error.get(key)
        return value if isinstance(value, str) and value else None

    message = text("message") or reason or "Function execution error"
    out: dict[str, Any] = {"error": text("error") or reason or message, "name": text("name") or "Error",
                           "message": message}  # fmt: skip
    if text("stack"):
        out["stack"] = error["stack"]
    if error.get("cause") is not None:
        out["cause"] = error["cause"]
    return out


# --- internal control flow: BaseException so user code's `except Exception` cannot swallow it ---


class _RunSignal(BaseException):
    """Base of the signals that unwind user code when a run must stop executing in this process."""


class Suspend(_RunSignal):
    """The run has nothing more to do now (sleeping, waiting, retrying later)."""


class RunCancelled(_RunSignal):
    """The run was cancelled (or timed out) while executing; stop without recording anything more."""


class LeaseLost(_RunSignal):
    """Another worker owns this run now; stop executing it here."""


class ReplayRun(_RunSignal):
    """A step's result, held back and used by the code already, lost to another one stored meanwhile (a worker
    that lost the lease wrote first): stop, and replay the run from the store at once."""
