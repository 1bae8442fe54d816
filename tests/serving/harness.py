"""Real processes for the serving tests: a ``stepline dev``/``stepline start`` subprocess and served apps in threads
of the test process (uvicorn for ASGI apps, werkzeug for Flask), each on a free loopback port.

The apps run in this process so functions can record what they saw in plain dicts the tests read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from ..eventually import eventually_sync

_SCRIPT = Path(sys.executable).with_name("stepline")
STEPLINE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "stepline.cli.main"]
TERMINAL = frozenset({"Completed", "Failed", "Cancelled"})
DEADLINE_S = 10.0
T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = DEADLINE_S, diagnostics: str = "") -> T:
    return eventually_sync(what, probe, timeout, interval=0.03, diagnostics=diagnostics)


class AsgiThread:
    """uvicorn serving an ASGI app from a daemon thread."""

    def __init__(self, app: Any, port: int) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", ws="none",
                                http="h11")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{port}", daemon=True)

    def start(self) -> None:
        self.thread.start()
        wait_for("uvicorn to start", lambda: self.server.started)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class WsgiThread:
    """werkzeug serving a WSGI app (Flask) from a daemon thread."""

    def __init__(self, app: Any, port: int) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"werkzeug-{port}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "STEPLINE_"))}
    env["STEPLINE_BACKOFF_SCALE"] = "0.01"  # Inngest's 15 s first retry becomes 0.15 s
    return env


@dataclass
class Server:
    """A ``stepline dev`` (or ``start``, with ``signing_key``) subprocess and a REST client for it."""

    workdir: Path
    app_urls: list[str]
    port: int = field(default_factory=free_port)
    signing_key: str | None = None
    event_key: str = "test"
    extra_args: list[str] = field(default_factory=list)
    discovery: bool = False  # e.g. ["--app", "module:client", "--app-dir", path]
    proc: subprocess.Popen[bytes] | None = None
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"server-{self.port}.log"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.signing_key}"} if self.signing_key else {}

    def start(self) -> Server:
        common = ["--host", "127.0.0.1", "--port", str(self.port), "--db", str(self.workdir / f"s-{self.port}.db"),
                  "--poll-interval", "1"]  # fmt: skip
        for url in self.app_urls:
            common += ["-u", url]
        common += self.extra_args
        if self.signing_key:
            cmd = [*STEPLINE, "start", *common, "--signing-key", self.signing_key, "--event-key", self.event_key]
        else:
            cmd = [*STEPLINE, "dev", *common, *([] if self.discovery else ["--no-discovery"])]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)  # fmt: skip

        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"the server exited\n{self.output()}"
            with contextlib.suppress(httpx.HTTPError):
                return self.http.get(f"{self.url}/health").status_code == 200
            return False

        wait_for("the server's /health", healthy, timeout=30, diagnostics=self.output())

        def synced() -> bool:
            apps = {a["url"]: a for a in self.rest("/v1/apps") if a.get("url")}
            return all(u in apps and apps[u]["synced_at"] and not apps[u]["error"] for u in self.app_urls)

        wait_for(f"{self.app_urls} to sync", synced, timeout=30, diagnostics=self.output())
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()

    def output(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        except FileNotFoundError:
            return "(no server output)"

    # --- event API and REST API ---
    def send(self, name: str, data: dict[str, Any] | None = None) -> str:
        resp = self.http.post(f"{self.url}/e/{self.event_key}", json=[{"name": name, "data": data or {}}])
        assert resp.status_code == 200, resp.text
        [event_id] = resp.json()["ids"]
        return str(event_id)

    def rest(self, path: str) -> Any:
        resp = self.http.get(f"{self.url}{path}", headers=self.auth)
        assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text}"
        return resp.json()["data"]

    def run_of(self, event_id: str) -> dict[str, Any]:
        [run] = wait_for(f"a run of event {event_id}", lambda: self.rest(f"/v1/events/{event_id}/runs"),
                         diagnostics=self.output())  # fmt: skip
        return dict(run)

    def ended(self, run_id: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            run: dict[str, Any] = self.rest(f"/v1/runs/{run_id}")
            return run if run["status"] in TERMINAL else None

        return wait_for(f"run {run_id} to end", probe, timeout, diagnostics=self.output())

    def trigger(self, name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one event that starts one run; the run once it ended."""
        return self.ended(self.run_of(self.send(name, data))["run_id"])

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.rest(f"/v1/runs/{run_id}/steps"))
