"""The web dashboard: server-rendered pages under ``/dashboard`` (``/`` redirects there), live updates over
server-sent events, a login in ``start`` mode, and failure alerts to a webhook.

``server/app.py`` mounts ``app.routes(dash)`` and runs ``app.running(dash, ...)`` for the server's lifetime. This
file imports nothing: its modules import each other directly, so importing one never runs the others.
"""
