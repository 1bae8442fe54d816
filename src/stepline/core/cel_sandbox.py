"""Evaluation of the CEL expressions whose cost the static limits cannot bound, in a child process, on a budget.

An expression with a comprehension (``all``, ``exists``, ``exists_one``, ``map``, ``filter``) costs as much as the
lists in the data it reads: ``event.data.l.map(x, event.data.l.filter(y, y > x))`` is 40,000 steps over a
200-element list and 10^12 over a million elements. The CEL library holds the GIL while it evaluates and cannot
be interrupted, so a thread would not help: such expressions go to one child process per Stepline process,
which is killed when an evaluation passes its budget (``STEPLINE_CEL_BUDGET_MS``, 100 ms by default) and started
again for the next one. The child also caps its memory (``CHILD_MEMORY_BYTES``), and whatever the library does
with an input (a crash included) ends that evaluation with an error, never the server.

An expression that was cut off is held back for ``QUARANTINE_SECONDS`` on inputs at least half as large as the
one that was cut off: those evaluations fail at once with the same error, so a stream of hostile events costs one
budget per quarantine period, not one per event, while the expression's ordinary (smaller) inputs still go.

Expressions without comprehensions never come here: they are evaluated in-process (``expressions.py``).

Protocol (one JSON document per line): the parent sends ``{"s": source, "b": bindings}``, the child answers
``{"ok": value}`` or ``{"error": message}``; it prints ``{"ready": true}`` once at start.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["SandboxError", "evaluate_isolated", "shutdown"]

DEFAULT_BUDGET_MS = 100
QUARANTINE_SECONDS = 60.0
START_TIMEOUT_SECONDS = 15.0
LOCK_TIMEOUT_SECONDS = 2.0
CHILD_MEMORY_BYTES = 1024 * 1024 * 1024


class SandboxError(Exception):
    """The evaluation failed, was cut off, or the sandbox could not run it; the message says which."""


def _budget_seconds() -> float:
    raw = os.environ.get("STEPLINE_CEL_BUDGET_MS", "")
    try:
        return max(1, int(raw)) / 1000 if raw else DEFAULT_BUDGET_MS / 1000
    except ValueError:
        return DEFAULT_BUDGET_MS / 1000


class _Child:
    """One running sandbox process and the buffer of what it printed."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],  # by path: the child imports only the stdlib and cel
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self.buf = b""
        self.eof = False
        ready = self.read_line(START_TIMEOUT_SECONDS)
        if ready is None or json.loads(ready) != {"ready": True}:
            self.kill()
            raise SandboxError("the expression sandbox did not start")

    def read_line(self, timeout: float) -> bytes | None:
        """The next line the child prints, or None when ``timeout`` passes or the child is gone."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self.eof = True
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def send(self, message: bytes) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(message + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class _Sandbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: _Child | None = None
        # source -> (until, input size that was cut off, the error): inputs at least half that size fail at once
        self._quarantine: dict[str, tuple[float, int, str]] = {}

    def evaluate(self, source: str, bindings: dict[str, Any]) -> Any:
        try:
            message = json.dumps({"s": source, "b": bindings}, separators=(",", ":")).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise SandboxError(f"the values cannot be passed to the expression sandbox: {exc}") from None
        held = self._quarantine.get(source)
        if held is not None:
            until, size, error = held
            if until <= time.monotonic():
                del self._quarantine[source]
            elif len(message) >= size // 2:
                raise SandboxError(f"{error} (held back for {QUARANTINE_SECONDS:.0f} s on inputs this large)")
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_SECONDS):
            raise SandboxError("the expression sandbox is busy with other evaluations; not evaluated")
        try:
            return self._evaluate_locked(source, message)
        finally:
            self._lock.release()

    def _evaluate_locked(self, source: str, message: bytes) -> Any:
        if self._child is not None and self._child.proc.poll() is not None:
            self._discard()  # it died between evaluations: start another
        if self._child is None:
            self._child = _Child()
        child = self._child
        budget = _budget_seconds()
        if not child.send(message):
            self._discard()
            raise SandboxError("the expression sandbox stopped before the evaluation; not evaluated")
        line = child.read_line(budget)
        if line is None:
            try:  # gone (its output closed as it died), or still busy past the budget?
                child.proc.wait(timeout=5 if child.eof else 0)
                crashed = True
            except subprocess.TimeoutExpired:
                crashed = False
            self._discard()
            if crashed:
                error = "evaluating the expression crashed the expression sandbox (the server is unaffected)"
            else:
                error = f"the evaluation took longer than its budget of {budget * 1000:.0f} ms and was cut off"
            self._quarantine[source] = (time.monotonic() + QUARANTINE_SECONDS, len(message), error)
            if len(self._quarantine) > 1000:
                self._quarantine.pop(next(iter(self._quarantine)))
            raise SandboxError(error)
        answer = json.loads(line)
        if "error" in answer:
            raise SandboxError(str(answer["error"]))
        return answer.get("ok")

    def _discard(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child = None

    def shutdown(self) -> None:
        with self._lock:
            self._discard()
            self._quarantine.clear()


_SANDBOX = _Sandbox()
atexit.register(_SANDBOX.shutdown)


def evaluate_isolated(source: str, bindings: dict[str, Any]) -> Any:
    """Evaluate ``source`` (already checked by ``cel_limits``) over JSON ``bindings`` in the sandbox; blocks the
    calling thread for at most the budget (plus waiting for the sandbox). Raises SandboxError."""
    return _SANDBOX.evaluate(source, bindings)


def shutdown() -> None:
    """Stop the sandbox process (it is started again when needed) and forget what was held back."""
    _SANDBOX.shutdown()


# --- the child ------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    import cel

    if isinstance(value, cel.OptionalValue):
        return _plain(value.value()) if value.has_value() else None
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _child_main() -> None:  # pragma: no cover - runs in the child process (tests drive it through the parent)
    import resource

    import cel

    try:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    except (ValueError, OSError):
        pass
    programs: dict[str, Any] = {}
    out = sys.stdout.buffer
    out.write(b'{"ready":true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            source = request["s"]
            program = programs.get(source)
            if program is None:
                if len(programs) > 256:
                    programs.clear()
                program = programs[source] = cel.compile(source)
            reply: dict[str, Any] = {"ok": _plain(program.execute(request["b"]))}
        except BaseException as exc:  # a panic in the library is a BaseException
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            message = str(exc).strip()
            reply = {"error": f"{type(exc).__name__}: {message}" if message else type(exc).__name__}
        try:
            data = json.dumps(reply, separators=(",", ":"), allow_nan=False)
        except ValueError:
            data = json.dumps({"error": "the expression's value is not JSON (NaN or infinity)"})
        out.write(data.encode() + b"\n")
        out.flush()


if __name__ == "__main__":  # pragma: no cover
    _child_main()
