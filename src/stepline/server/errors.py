"""Error responses in the shape the SDKs read: ``{"error": message, "status": code}``."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)
