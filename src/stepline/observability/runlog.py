"""What the terminal says about runs: every failed attempt, every failed run, and (in ``dev``) every run's end.

Plain Python ``logging`` on the ``stepline.runs`` logger, so an app that embeds Stepline routes these records like
its own. Each record carries its fields in ``record.stepline`` (function, run_id, step, attempt, status,
duration_ms, error, url), which ``JsonFormatter`` (``--log-format json``) writes as JSON keys.

- A failed step attempt or function-level attempt that will be retried: WARNING, with the error and the retry time.
- A run that failed for good: ERROR, with the error and its stack.
- A run's end (completed, failed, cancelled): one line at ``END_LEVEL``. DEBUG by default: a production node ends
  thousands of runs a second, and a line each would cost it CPU; ``stepline dev`` sets INFO (``configure``).

With a dashboard URL configured (``stepline dev``), each line ends with the run's page.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

log = logging.getLogger("stepline.runs")
_settings: dict[str, Any] = {"end_level": logging.DEBUG, "dashboard": None}
MAX_STACK_LINES = 40


def configure(*, end_level: int = logging.DEBUG, dashboard_url: str | None = None) -> None:
    """``end_level``: the level of the one line per run end; ``dashboard_url``: link each line to the run's page."""
    _settings["end_level"] = end_level
    _settings["dashboard"] = dashboard_url.rstrip("/") if dashboard_url else None


def _url(run_id: str) -> str | None:
    base = _settings["dashboard"]
    return f"{base}/dashboard/runs/{run_id}" if base else None


def _error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "Error"
    name, message = error.get("name") or "Error", error.get("message") or ""
    return f"{name}: {message}" if message else str(name)


def _stack(error: dict[str, Any] | None) -> str:
    stack = (error or {}).get("stack")
    if not isinstance(stack, str) or not stack.strip():
        return ""
    lines = stack.rstrip().splitlines()
    if len(lines) > MAX_STACK_LINES:
        lines = [*lines[: MAX_STACK_LINES // 2], f"... {len(lines) - MAX_STACK_LINES} lines ...",
                 *lines[-MAX_STACK_LINES // 2 :]]  # fmt: skip
    return "\n" + "\n".join(lines)


def _suffix(url: str | None) -> str:
    return f" ({url})" if url else ""


def attempt_failed(function_id: str, run_id: str, step: str | None, attempt: int, error: dict[str, Any] | None,
                   retry_at: int | None) -> None:  # fmt: skip
    """An attempt failed and will be retried (``retry_at``, unix ms) or, with ``retry_at`` None, not."""
    if not log.isEnabledFor(logging.WARNING):
        return
    url = _url(run_id)
    where = f"step {step!r}" if step is not None else "function"
    then = f"retrying at {_iso(retry_at)}" if retry_at is not None else "not retried"
    fields = {"function": function_id, "run_id": run_id, "step": step, "attempt": attempt, "error": error or {},
              "retry_at": retry_at, "url": url}  # fmt: skip
    log.warning("%s of run %s (%s) failed (attempt %d), %s: %s%s", where, run_id, function_id, attempt + 1, then,
                _error_text(error), _suffix(url), extra={"stepline": fields})  # fmt: skip


def run_ended(function_id: str, run_id: str, status: str, duration_ms: int | None,
              error: dict[str, Any] | None) -> None:  # fmt: skip
    """A run ended: a failed run is an ERROR with its stack; every end is one line at ``END_LEVEL``."""
    level = logging.ERROR if status == "failed" else _settings["end_level"]
    if not log.isEnabledFor(level):  # the usual case on a busy node: nothing to build
        return
    url = _url(run_id)
    fields: dict[str, Any] = {"function": function_id, "run_id": run_id, "status": status, "duration_ms": duration_ms,
                              "url": url}  # fmt: skip
    took = f" in {duration_ms} ms" if duration_ms is not None else ""
    if status == "failed":
        fields["error"] = error or {}
        log.error("run %s of %s failed%s: %s%s%s", run_id, function_id, took, _error_text(error), _suffix(url),
                  _stack(error), extra={"stepline": fields})  # fmt: skip
        return
    if error:
        fields["error"] = error
    reason = f": {_error_text(error)}" if status == "cancelled" and error else ""
    log.log(level, "run %s of %s %s%s%s%s", run_id, function_id, status, took, reason, _suffix(url),
            extra={"stepline": fields})  # fmt: skip


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, any traceback, and the record's ``stepline`` fields
    (``run_id``, ``function``, ...) as top-level keys, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(int(record.created * 1000)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "stepline", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                if value is not None and key not in out:
                    out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str, fmt: str = "text") -> None:
    """The CLI's logging: stderr, ``level`` (debug, info, ...), ``fmt`` text or json (replaces any earlier setup)."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
