"""Waiting for a server subprocess to answer, for the acceptance tests that start one."""

from __future__ import annotations

import subprocess
import time
import urllib.request


def wait_for_health(url: str, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Until ``GET {url}/health`` answers; fails at once if ``proc`` exits, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"the server exited with {proc.returncode}: {err}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.1)
