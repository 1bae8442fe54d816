"""What the compat tests read back from the Python apps (``app.py``, ``parity_app.py``): every call into a function
handler and every execution of a step body is appended as one JSON line to ``$COMPAT_LOG``, with the test's token."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import inngest

LOG_PATH = os.environ.get("COMPAT_LOG", "")
_log_lock = threading.Lock()


def record(**entry: Any) -> None:
    line = json.dumps({"t": time.time(), "sdk": "python", **entry}) + "\n"
    if LOG_PATH:
        with _log_lock, open(LOG_PATH, "a", encoding="utf-8") as f:
            f.write(line)


def token_of(event: inngest.Event) -> Any:
    """The event data's token, also for the inngest/function.failed event an on_failure handler receives."""
    data = event.data or {}
    if "token" in data:
        return data["token"]
    original = data.get("event")
    if isinstance(original, dict):
        return (original.get("data") or {}).get("token")
    return None
