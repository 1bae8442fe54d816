"""``stepline dev|start --processes N``: N server processes on one port, sharing the store, under one supervisor.

The supervisor (the process the command started) binds the listening sockets, opens the store once (migrations run
there, and a database that cannot be opened fails the command before any child starts), then starts N children:
fresh interpreters (``python -c ...child_main()``) that inherit the sockets and read their ``ServeSpec`` (pickled)
from stdin. Each child is a whole server (``cli/server.py``): the kernel hands every new connection to one of the
processes accepting on the shared socket. What runs in every process and what once per node or cluster:
``docs/architecture.md`` ("Several server processes").

- A child says it serves by writing a byte on a pipe. A child that exits with an error before any child ever served
  (a bad ``--app``, an unreadable database) stops them all and the command exits with its code: nothing to restart.
- A child that exits later, without the supervisor asking (a crash, ``kill -9``, the OOM killer), is restarted at
  once; one that keeps crashing within ``CRASH_WINDOW`` seconds of its start waits longer each time (up to 30 s).
- SIGTERM or SIGINT: the supervisor sends SIGTERM to every child, each drains as a single server does (stops
  accepting, finishes its requests and the runs it executes), and the supervisor exits when all have (0 when every
  child exited cleanly). A second signal is passed on again; a third kills the children.
- The children run in their own session (a terminal's Ctrl-C reaches the supervisor only, which passes it on once)
  and stop by themselves when the supervisor dies.
- Prometheus metrics: each child writes to ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory the supervisor removes
  at exit, unless the operator set one), a scrape of any child sums them (``observability/metrics.py``); an ended
  child's live gauges are dropped (``process_exited``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from stepline.cli.common import NotFoundError, make_store, redact
from stepline.cli.server import Role, ServeSpec, serve_child
from stepline.observability.metrics import MULTIPROCESS_DIR_ENV

log = logging.getLogger("stepline.cli")

CRASH_WINDOW = 10.0  # a child that ends sooner than this after its start counts as crash-looping
MAX_RESTART_DELAY = 30.0
_CHILD = "from stepline.cli.processes import child_main; child_main()"


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes]
    ready: IO[bytes]  # the read end of the child's ready pipe
    started: float
    served: bool = False


@dataclass
class Supervisor:
    spec: ServeSpec
    sockets: list[socket.socket]
    env: dict[str, str]
    children: dict[int, Child] = field(default_factory=dict)
    crashes: dict[int, int] = field(default_factory=dict)  # index -> crashes in a row (within CRASH_WINDOW)
    restart_at: dict[int, float] = field(default_factory=dict)  # index -> monotonic time of its restart
    signals: int = 0
    ever_served: bool = False
    exit_code: int = 0

    def spawn(self, index: int) -> None:
        read_fd, write_fd = os.pipe()
        fds = [s.fileno() for s in self.sockets]
        env = {**self.env, "STEPLINE_CHILD": f"{index};{write_fd};{','.join(map(str, fds))}"}
        proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, env=env,
                                pass_fds=(*fds, write_fd), start_new_session=True)  # fmt: skip
        os.close(write_fd)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(pickle.dumps(self.spec))
            proc.stdin.close()
        os.set_blocking(read_fd, False)
        self.children[index] = Child(index, proc, os.fdopen(read_fd, "rb", buffering=0), time.monotonic())
        log.info("process %d started (pid %d)", index, proc.pid)
        if self.signals:  # a signal came while it was being started: on_signal did not know it yet
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if self.signals > 2 else signal.SIGTERM)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            log.info("%s: stopping %d processes", name, len(self.children))
        elif self.signals > 2:
            log.warning("%s a third time: killing the processes", name)
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGKILL if self.signals > 2 else signal.SIGTERM)

    def reap(self, child: Child, code: int) -> None:
        from stepline.observability.metrics import process_exited

        del self.children[child.index]
        child.ready.close()
        process_exited(child.proc.pid)
        if self.signals:
            if code not in (0, -signal.SIGTERM, -signal.SIGINT) and not self.exit_code:
                self.exit_code = 1  # the first failure's code stands (a child that could not start: its own)
            return
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        if not self.ever_served and code > 0:  # it could not start (it said why): the others will not either
            log.error("process %d (pid %d) exited with %s before serving: stopping", child.index, child.proc.pid, how)
            self.exit_code = code if code > 0 else 1
            self.on_signal(signal.SIGTERM, None)
            return
        ran = time.monotonic() - child.started
        crashes = self.crashes[child.index] = self.crashes.get(child.index, 0) + 1 if ran < CRASH_WINDOW else 0
        delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** (crashes - 1)) if crashes else 0.0
        log.warning("process %d (pid %d) exited with %s after %.1f s: restarting it%s", child.index, child.proc.pid,
                    how, ran, f" in {delay:.1f} s" if delay else "")  # fmt: skip
        self.restart_at[child.index] = time.monotonic() + delay

    def loop(self) -> int:
        selector = selectors.DefaultSelector()
        registered: dict[int, Child] = {}
        while self.children or (self.restart_at and not self.signals):
            for child in list(self.children.values()):
                if not child.served and child.proc.pid not in registered:
                    selector.register(child.ready, selectors.EVENT_READ, child)
                    registered[child.proc.pid] = child
            for key, _ in selector.select(timeout=0.1):
                child = key.data
                with contextlib.suppress(OSError):
                    if child.ready.read(1):
                        child.served = self.ever_served = True
                        log.info("process %d (pid %d) serves", child.index, child.proc.pid)
                selector.unregister(child.ready)
                del registered[child.proc.pid]
            for child in list(self.children.values()):
                code = child.proc.poll()
                if code is not None:
                    if child.proc.pid in registered:
                        selector.unregister(child.ready)
                        del registered[child.proc.pid]
                    self.reap(child, code)
            now = time.monotonic()
            for index, at in list(self.restart_at.items()):
                if self.signals:
                    self.restart_at.clear()
                elif now >= at:
                    del self.restart_at[index]
                    self.spawn(index)
        selector.close()
        return self.exit_code


def supervise(spec: ServeSpec, sockets: list[socket.socket]) -> int:
    """Run ``spec.processes`` children until SIGTERM/SIGINT; the exit code (0: every child stopped cleanly)."""
    asyncio.run(_migrate(spec.location))
    env = dict(os.environ)
    own_dir = None
    if not env.get(MULTIPROCESS_DIR_ENV):
        own_dir = env[MULTIPROCESS_DIR_ENV] = tempfile.mkdtemp(prefix="stepline-metrics-")
    os.environ[MULTIPROCESS_DIR_ENV] = env[MULTIPROCESS_DIR_ENV]  # for process_exited
    sup = Supervisor(spec, sockets, env)
    previous = {sig: signal.signal(sig, sup.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        shown = ", ".join(f"{h}:{spec.port}" for h in spec.hosts[: len(sockets)])
        log.info("stepline %s: %d processes on %s", "dev" if spec.config.kind == "dev" else "start", spec.processes,
                 shown)  # fmt: skip
        for index in range(spec.processes):
            sup.spawn(index)
        code = sup.loop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in sup.children.values():  # only after an error in the supervisor itself
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        for s in sockets:
            s.close()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    log.info("stepline: every process stopped")
    return code


async def _migrate(location: str) -> None:
    """Open the store once before the children do: migrations run here, and a bad database fails at once."""
    store = make_store(location)
    try:
        await store.open()
    except Exception as exc:
        raise NotFoundError(f"cannot open database {redact(location)}: {type(exc).__name__}: {exc}") from None
    await store.close()


def child_main() -> None:
    """A child's entry point: its role from ``$STEPLINE_CHILD``, its ``ServeSpec`` from stdin."""
    import click

    index, ready_fd, fds = os.environ.pop("STEPLINE_CHILD").split(";")
    spec = pickle.loads(sys.stdin.buffer.read())  # written by our own supervisor, through a pipe
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    sockets = [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd]
    try:
        serve_child(spec, Role(int(index), sockets, int(ready_fd)))
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
