"""Serve Stepline functions from an existing FastAPI/Starlette or Flask app, at one path.

FastAPI (and any Starlette app) gets a route whose endpoint is the ``serve()`` ASGI app: the exact path only,
with no redirect for a missing trailing slash (servers do not follow redirects on POST/PUT).

Flask gets a view at ``path`` that returns the ``serve()`` app wrapped as WSGI by ``a2wsgi.ASGIMiddleware``
(Flask runs a WSGI application returned by a view). One implementation of the protocol serves both kinds of
framework, and a2wsgi runs it on one event loop in a background thread, which both async handlers and sync
handlers (whose steps reach the loop from worker threads) need. A native Flask view would need a new event loop
per request and a second copy of the request/response handling. The view goes through Flask's routing, so
``before_request`` hooks apply; exempt it from CSRF protection if an extension adds one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from starlette.applications import Starlette
from starlette.routing import Route

from stepline.core.function import FunctionDef
from stepline.serving.app import build_app

if TYPE_CHECKING:
    from flask import Flask

    from stepline.client import Stepline

METHODS = ["GET", "PUT", "POST"]


def serve_fastapi(app: Starlette, client: Stepline, path: str = "/api/inngest",
                  functions: Iterable[FunctionDef] | None = None, *, serve_url: str | None = None,
                  signing_key: str | None = None, base_url: str | None = None,
                  event_key: str | None = None) -> Starlette:  # fmt: skip
    """Serve ``client``'s functions from a FastAPI (or Starlette) ``app`` at ``path``. Options as ``serve()``.
    Returns the served ASGI app."""
    served = build_app(client, functions, serve_url=serve_url, signing_key=signing_key, base_url=base_url,
                       event_key=event_key, framework="fastapi")  # fmt: skip
    app.router.routes.append(Route(path, endpoint=served, methods=METHODS, include_in_schema=False))
    return served


def serve_flask(flask_app: Flask, client: Stepline, path: str = "/api/inngest",
                functions: Iterable[FunctionDef] | None = None, *, serve_url: str | None = None,
                signing_key: str | None = None, base_url: str | None = None,
                event_key: str | None = None) -> Starlette:  # fmt: skip
    """Serve ``client``'s functions from a Flask app at ``path`` (needs ``a2wsgi``: ``pip install
    'stepline[flask]'``). Options as ``serve()``. Returns the served ASGI app."""
    try:
        from a2wsgi import ASGIMiddleware
    except ImportError:
        raise ImportError("serve_flask needs the a2wsgi package: pip install 'stepline[flask]'") from None
    served = build_app(client, functions, serve_url=serve_url, signing_key=signing_key, base_url=base_url,
                       event_key=event_key, framework="flask")  # fmt: skip
    wsgi = ASGIMiddleware(cast(Any, served))

    def stepline_serve() -> Any:
        return wsgi

    flask_app.add_url_rule(path, endpoint=f"stepline_serve:{path}", view_func=stepline_serve, methods=METHODS)
    return served
