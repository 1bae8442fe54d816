"""The observability options of ``stepline dev``, ``start`` and ``worker``: log format, run-end lines, metrics port.

- ``--log-format text|json``: one JSON object per line for log shippers (``observability/runlog.py``).
- ``--metrics-port N`` (``--metrics-host``, default 127.0.0.1): Prometheus metrics on a separate, unauthenticated
  listener. The server also has ``/metrics`` on its main port (authenticated in ``start``).
- Run ends: one line per run in ``dev`` (INFO, with the run's dashboard link); ``start`` and ``worker`` log them at
  ``--log-level debug`` only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from stepline.cli.common import CliError
from stepline.observability import runlog

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Observe:
    log_format: str = "text"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


def options(fn: F) -> F:
    """Add ``--log-format``, ``--metrics-port`` and ``--metrics-host`` (passed on as ``observe=Observe(...)``)."""

    decorators = [
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                     envvar="STEPLINE_LOG_FORMAT", help="json: one JSON object per line (for log shippers)."),
        click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, envvar="STEPLINE_METRICS_PORT",
                     help="Also serve Prometheus metrics on this port (GET /metrics, no authentication)."),
        click.option("--metrics-host", default="127.0.0.1", show_default=True, envvar="STEPLINE_METRICS_HOST",
                     help="Address of the --metrics-port listener."),
    ]  # fmt: skip
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def take(kwargs: dict[str, Any]) -> Observe:
    """Pop the options added by ``options`` from a command's keyword arguments."""
    return Observe(
        log_format=kwargs.pop("log_format", "text") or "text",
        metrics_port=kwargs.pop("metrics_port", None),
        metrics_host=kwargs.pop("metrics_host", "127.0.0.1") or "127.0.0.1",
    )


def setup_logging(observe: Observe, level: str, *, dev_dashboard: str | None = None) -> None:
    """The process's logging; ``dev_dashboard`` (``stepline dev``): one INFO line per run end, linked to its page."""
    runlog.setup_logging(level, observe.log_format)
    if dev_dashboard is not None:
        runlog.configure(end_level=logging.INFO, dashboard_url=dev_dashboard)
    else:
        runlog.configure(end_level=logging.DEBUG)


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """OpenTelemetry traces if the ``OTEL_*`` variables ask for them, flushed (at most 5 s) when the command ends;
    then the startup heap is settled (``observability.settle_heap``)."""
    from stepline.observability import settle_heap
    from stepline.observability.tracing import configure_from_env

    configured = configure_from_env()
    settle_heap()
    try:
        yield
    finally:
        if configured is not None:
            configured.shutdown()


@contextlib.asynccontextmanager
async def metrics_listener(observe: Observe, runtime: Any) -> AsyncIterator[None]:
    """The ``--metrics-port`` listener for ``runtime`` (a ``MetricsRuntime``), if the option was given."""
    if observe.metrics_port is None:
        yield
        return
    from stepline.observability.endpoint import serve_port

    try:
        listener = serve_port(runtime, observe.metrics_host, observe.metrics_port)
        await listener.__aenter__()
    except OSError as exc:
        raise CliError(str(exc)) from None
    logging.getLogger("stepline.cli").info("metrics on http://%s:%d/metrics", observe.metrics_host,
                                           observe.metrics_port)  # fmt: skip
    try:
        yield
    finally:
        await listener.__aexit__(None, None, None)
