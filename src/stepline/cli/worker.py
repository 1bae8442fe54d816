"""``stepline worker MODULE:ATTR``: import the user's app and run its functions until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import traceback
from typing import Any

import click

from stepline.cli import observe as observe_cli
from stepline.cli.common import CliError, NotFoundError, db_location, db_option, display_path, make_store
from stepline.cli.display import plural
from stepline.client import Stepline

log = logging.getLogger("stepline.cli")


def _where(exc: BaseException) -> str:
    """`` (at file:line)`` of the innermost user frame of an import failure, without importlib's frames."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (at {exc.filename}:{exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    frames = [f for f in frames if not f.filename.endswith(os.path.join("stepline", "cli", "worker.py"))]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _import_failed(module_name: str, exc: BaseException) -> CliError:
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return CliError(f"importing module {module_name!r} failed: {type(exc).__name__}: {text}{_where(exc)}")


def load_client(target: str, app_dir: str) -> Stepline:
    """The ``Stepline`` object named by ``MODULE:ATTR`` (ATTR may be dotted). Raises CliError (exit 2)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr or ":" in attr:
        raise CliError(f"expected MODULE:ATTR (for example 'myapp.jobs:client'), got {target!r}")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(f"cannot import module {module_name!r}: no module named {exc.name!r} (searched "
                           f"{path} and the installed packages)") from None  # fmt: skip
        raise _import_failed(module_name, exc) from None
    except Exception as exc:
        raise _import_failed(module_name, exc) from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Stepline):
        raise CliError(f"{target!r} is a {type(obj).__name__}, not a stepline.Stepline client")
    return obj


def use_store(client: Stepline, location: str) -> None:
    """Point ``client`` (and its engine) at the store at ``location``, keeping its functions and clock."""
    client.use_store(make_store(location))


async def serve(client: Stepline, concurrency: int, threads: int, db_label: str,
                observe: observe_cli.Observe | None = None) -> bool:  # fmt: skip
    """Run a worker until a signal. The first SIGINT/SIGTERM stops claiming and lets active runs finish (up
    to the worker's grace period); a second one cancels them (releasing their leases once running steps
    return); a third exits at once. Returns whether the stop was forced."""
    try:
        await client.ready()
    except Exception as exc:
        await client.close()
        raise NotFoundError(f"cannot open database {db_label}: {type(exc).__name__}: {exc}") from None
    worker = client.worker(concurrency=concurrency, threads=threads)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("%s: stopping; active runs may finish (send it again to cancel them)", sig.name)
            worker.stop()
            return
        if signals_seen > 2:
            log.warning("%s a third time: exiting now", sig.name)
            sys.stderr.flush()
            os._exit(130)
        log.warning("%s again: cancelling active runs (a third signal exits at once)", sig.name)
        for task in asyncio.all_tasks(loop):
            if task is not main_task:
                task.cancel()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
            pass
    # Announced once the signal handlers are in place: a SIGTERM sent on seeing this line stops the worker cleanly.
    functions = ", ".join(sorted(client.functions)) or "none"
    log.info("stepline worker: app %s, db %s, %d function(s): %s",
             client.app_id, db_label, len(client.functions), functions)  # fmt: skip
    if not client.functions:
        log.warning("app %r defines no functions: this worker will never run anything", client.app_id)
    runtime = None
    if observe is not None and observe.metrics_port is not None:
        from stepline.observability.endpoint import MetricsRuntime

        runtime = MetricsRuntime(client.engine, owner=worker.owner)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if runtime is not None and observe is not None:
                await stack.enter_async_context(observe_cli.metrics_listener(observe, runtime))
                await stack.enter_async_context(runtime.running())
            await worker.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await client.close()
    log.info("stepline worker stopped: started %s, resumed runs %s (after sleeps, waits and retries)",
             plural(worker.runs_started, "run"), plural(worker.runs_resumed, "time"))  # fmt: skip
    return signals_seen > 1


@click.command("worker")
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--concurrency", type=click.IntRange(min=1), default=200, show_default=True,
              help="Most runs executing at once.")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), default=32, show_default=True,
              help="Threads for synchronous (def) functions.")  # fmt: skip
@click.option("--app-dir", default=".", show_default=True, help="Directory added to sys.path before importing.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)  # fmt: skip
@observe_cli.options
@db_option()
@click.pass_context
def worker_command(ctx: click.Context, /, target: str, concurrency: int, threads: int, app_dir: str,
                   log_level: str, **options: Any) -> None:  # fmt: skip
    """Run the functions of a Stepline app until stopped.

    MODULE:ATTR names the ``Stepline`` client, e.g. ``myapp.jobs:client``. SIGINT or SIGTERM stops the
    worker after its active runs finish; a second signal cancels them.
    """
    observe = observe_cli.take(options)
    observe_cli.setup_logging(observe, log_level)
    client = load_client(target, app_dir)
    location, explicit = db_location(ctx)
    if explicit:
        use_store(client, location)
    try:
        with observe_cli.tracing():
            forced = asyncio.run(serve(client, concurrency, threads, display_path(client.store, location), observe))
    except KeyboardInterrupt:  # before the signal handlers were installed
        raise SystemExit(130) from None
    if forced:
        # A synchronous function may still hold a thread that Python would wait for at exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
