"""Serve Stepline functions over the Inngest SDK protocol, so a server runs them by calling a URL."""

from stepline.serving.adapters import serve_fastapi, serve_flask
from stepline.serving.app import serve

__all__ = ["serve", "serve_fastapi", "serve_flask"]
