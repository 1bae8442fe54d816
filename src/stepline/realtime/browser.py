"""The browser script (``static/stepline-realtime.js``): package data, served by the server at
``/v1/realtime/stepline-realtime.js``; any page may also serve it itself."""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["browser_script"]


@functools.cache
def browser_script() -> str:
    """The script's text."""
    return resources.files("stepline.realtime").joinpath("static/stepline-realtime.js").read_text(encoding="utf-8")
