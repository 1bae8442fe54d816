"""Per-run log capture: the Python ``logging`` records a run's in-process function code emits.

One ``RunLogHandler`` sits on the root logger (installed once per process by ``install()``). While the executor runs
a function it sets a context variable to the run's ``RunLogCapture``; the handler appends the records emitted in
that context (the function body, async steps on the loop, sync functions and steps in the worker's thread pool,
which get a copy of the context, ``ctx.group.parallel`` branches) to it. Outside any run the handler returns after
one context-variable read. Stepline's own ``stepline.*`` loggers are not captured, except ``stepline.fn.*``, the
loggers behind ``ctx.logger``.

Rules:

- **New work only.** A resumed run replays its function from the start, skipping memoised steps, so code before
  them runs again. Records emitted while the execution is still replaying (some step recorded by an earlier
  execution has not been reached yet, and no new step has been planned) are dropped: every line is stored once.
- **No transaction per line.** Captured lines wait in memory and are written with the run's next write (a step's
  result, its suspension, a function-level retry, the run's end): ``StepDriver`` takes them into
  ``StepUpdate.logs``, the executor into ``RunFinish.logs`` or ``retry_run``. Lines of an execution that lost its
  lease or was cancelled after its last write are dropped.
- **Bounded.** An execution keeps at most ``RUN_LOG_LIMIT`` lines in memory, a message at most
  ``RUN_LOG_MESSAGE_LIMIT`` characters; the store keeps at most ``RUN_LOG_LIMIT`` lines per run and counts the
  rest in one last line.
- ``ctx.logger`` records at INFO and above are captured even when the logging configuration would drop them (the
  root logger's default level is WARNING); plain loggers are captured when the configuration lets their records
  through, as any handler would see them. Runs of HTTP functions log in their app's process: nothing is captured.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from stepline.storage.records import RUN_LOG_LIMIT, RUN_LOG_MESSAGE_LIMIT, RunLogLine, RunLogs

FUNCTION_LOGGERS = "stepline.fn."  # ctx.logger's loggers: "stepline.fn.<slug>"
CTX_LOGGER_LEVEL = logging.INFO  # ctx.logger records at this level and above are always captured

_capture: contextvars.ContextVar[RunLogCapture | None] = contextvars.ContextVar("stepline_run_logs", default=None)
_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("stepline_run_log_step", default=None)
_formatter = logging.Formatter()
_install_lock = threading.Lock()


def format_message(record: logging.LogRecord) -> str:
    """The record's message with its traceback and stack, cut at ``RUN_LOG_MESSAGE_LIMIT`` characters."""
    try:
        text = record.getMessage()
    except Exception:  # bad format arguments: keep what was given
        text = f"{record.msg!r} % {record.args!r}"
    if record.exc_info:
        text += "\n" + _formatter.formatException(record.exc_info)
    elif record.exc_text:
        text += "\n" + record.exc_text
    if record.stack_info:
        text += "\n" + record.stack_info
    if len(text) > RUN_LOG_MESSAGE_LIMIT:
        text = f"{text[:RUN_LOG_MESSAGE_LIMIT]}… [{len(text) - RUN_LOG_MESSAGE_LIMIT} more characters]"
    return text.replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL


class RunLogCapture:
    """The log lines of one execution of one run, kept until the run's next write takes them."""

    def __init__(self, now: Callable[[], int], replaying: bool = False) -> None:
        self._now = now
        self.replaying = replaying  # StepDriver clears it once the execution reaches new work
        self.closed = False  # the execution ended: its last lines were written
        self._lines: list[RunLogLine] = []
        self._kept = 0
        self._dropped = 0
        self._lock = threading.Lock()  # sync functions log from the thread pool

    def add(self, record: logging.LogRecord, step_id: str | None) -> None:
        if self.replaying or self.closed:
            return
        with self._lock:
            if self._kept >= RUN_LOG_LIMIT:
                self._dropped += 1
                return
            self._kept += 1
        line = RunLogLine(self._now(), record.levelname, record.name, format_message(record), step_id)
        with self._lock:
            self._lines.append(line)

    def take(self) -> RunLogs | None:
        """The lines captured since the last ``take`` (None if there are none)."""
        if not self._lines and not self._dropped:
            return None
        with self._lock:
            logs = RunLogs(tuple(self._lines), self._dropped)
            self._lines = []
            self._dropped = 0
        return logs


def _captured_by_handler(name: str) -> bool:
    return not (name == "stepline" or name.startswith("stepline.")) or name.startswith(FUNCTION_LOGGERS)


class RunLogHandler(logging.Handler):
    """Appends records to the capture of the run executing in the current context (none: does nothing)."""

    def handle(self, record: logging.LogRecord) -> bool:
        capture = _capture.get()
        if capture is not None and _captured_by_handler(record.name):
            capture.add(record, _step.get())
        if record.levelno >= logging.WARNING and logging.root.handlers == [self]:
            self._last_resort(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def _last_resort(self, record: logging.LogRecord) -> None:
        """Being a root handler switches off ``logging.lastResort`` (stderr output of warnings when nothing is
        configured): do its job when no other handler saw the record."""
        last = logging.lastResort
        if last is None or record.levelno < last.level:
            return
        node: logging.Logger | None = logging.getLogger(record.name)
        while node is not None:
            if any(h is not self for h in node.handlers):
                return
            node = node.parent
        last.handle(record)


_handler = RunLogHandler()


def install() -> None:
    """Put the capture handler on the root logger (once per process; idempotent)."""
    if _handler in logging.root.handlers:
        return
    with _install_lock:
        if _handler not in logging.root.handlers:
            logging.root.addHandler(_handler)


def activate(capture: RunLogCapture) -> contextvars.Token[RunLogCapture | None]:
    """Capture the records of the current context (and of tasks and threads started from it) into ``capture``."""
    install()
    return _capture.set(capture)


def deactivate(token: contextvars.Token[RunLogCapture | None]) -> None:
    _capture.reset(token)


def enter_step(step_id: str) -> contextvars.Token[str | None]:
    """Records of the current context belong to this run step until ``leave_step``."""
    return _step.set(step_id)


def leave_step(token: contextvars.Token[str | None]) -> None:
    _step.reset(token)


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """``ctx.logger``: a ``logging.Logger``-like adapter named after the function (``stepline.fn.<slug>``), with the
    run id in its records' ``extra``. Its records go through the logging configuration as usual, and are captured
    into the run's log at INFO and above even when that configuration drops them."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            super().log(level, msg, *args, **kwargs)
            return
        capture = _capture.get()
        if capture is None or capture.replaying or level < CTX_LOGGER_LEVEL:
            return
        msg, options = self.process(msg, kwargs)
        exc_info = options.get("exc_info")
        if exc_info and not isinstance(exc_info, tuple):
            exc_info = (
                (type(exc_info), exc_info, exc_info.__traceback__)
                if isinstance(exc_info, BaseException)
                else sys.exc_info()
            )
        extra: Mapping[str, object] | None = options.get("extra")
        record = self.logger.makeRecord(self.logger.name, level, "(ctx.logger)", 0, msg, args, exc_info or None,
                                        extra=extra)  # fmt: skip
        capture.add(record, _step.get())
