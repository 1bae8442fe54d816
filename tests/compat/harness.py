"""Processes and HTTP for the compatibility tests: a real ``stepline dev``/``stepline start`` server and an app built
with an official, unmodified Inngest SDK, each a subprocess on a free loopback port.

The tests observe what a user would: the event API's answers, the REST API's runs and steps, and what the app
itself recorded (every call into a handler and every execution of a step body is one JSON line in the app's
``COMPAT_LOG`` file, tagged with the test's ``token``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest

from ..eventually import eventually_sync

COMPAT_DIR = Path(__file__).resolve().parent
REPO_ROOT = COMPAT_DIR.parents[1]
NODE_APP_DIR = COMPAT_DIR / "node_app"
PY_APP_DIR = COMPAT_DIR / "py_app"
_SCRIPT = Path(sys.executable).with_name("stepline")
STEPLINE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "stepline.cli.main"]

Mode = Literal["dev", "signed"]
MODES: tuple[Mode, ...] = ("dev", "signed")
TERMINAL = frozenset({"Completed", "Failed", "Cancelled"})
DEADLINE_S = 15.0  # the longest any single wait may take; the expected path is far shorter
STARTUP_S = 30.0
T = TypeVar("T")


def new_token() -> str:
    return uuid.uuid4().hex[:16]


def step_hash(step_id: str, repeat: int = 0) -> str:
    """The SDKs' hashed step id: sha1 of the user's id, of ``"<id>:<n>"`` for the n-th repeat."""
    return hashlib.sha1((step_id if repeat == 0 else f"{step_id}:{repeat}").encode()).hexdigest()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _clean_env() -> dict[str, str]:
    """The runner's environment without anything that would point a server or an SDK somewhere else."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INNGEST_", "STEPLINE_")) and k not in {"PORT", "COMPAT_LOG", "COMPAT_APP_ID"}
    }


def node_or_skip(*packages: str) -> str:
    """The ``node`` binary, when the node app's dependencies (``inngest`` and ``packages``, e.g. ``tsx``) are
    installed. Otherwise skip (locally) or fail (in CI, where ``.ci/run`` installs them with ``npm ci``)."""
    node = shutil.which("node")
    problem = None
    missing = [p for p in ("inngest", *packages) if not (NODE_APP_DIR / "node_modules" / p / "package.json").exists()]
    if node is None:
        problem = "node is not on PATH"
    elif missing:
        problem = (
            f"{NODE_APP_DIR / 'node_modules'} lacks {', '.join(missing)}: run `npm ci --prefix tests/compat/node_app`"
        )
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the Node SDK compatibility tests cannot run in CI: {problem}", pytrace=False)
        pytest.skip(f"Node SDK compatibility tests skipped: {problem}")
    assert node is not None
    return node


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return f"--- {self.name} (exit {self.proc.poll()}) {self.log} ---\n{_tail(self.log)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn(name: str, cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> Proc:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Proc(name, proc, log)


@dataclass(frozen=True)
class AppSpec:
    """How to start one SDK app: ``cmd(port)`` gives the command line, ``cwd`` its directory."""

    name: str
    app_id: str
    cwd: Path
    cmd: Callable[[int], list[str]]


def node_app(script: str, app_id: str) -> AppSpec:
    """A script in ``node_app/``; a TypeScript one (``.ts``) runs through tsx (``node --import tsx``), no build."""
    loader = ["--import", "tsx"] if script.endswith(".ts") else []
    node = node_or_skip(*loader[1:])
    return AppSpec(f"node {script}", app_id, NODE_APP_DIR, lambda port: [node, *loader, script])


def python_app(app_id: str = "compat-py", module: str = "app") -> AppSpec:
    return AppSpec(
        f"python {module}.py",
        app_id,
        PY_APP_DIR,
        lambda port: [
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
    )


@dataclass
class Stack:
    """One server and one app, wired together in ``mode`` (dev: unsigned; signed: ``stepline start``)."""

    spec: AppSpec
    mode: Mode
    workdir: Path
    server_port: int = field(default_factory=free_port)
    app_port: int = field(default_factory=free_port)
    signing_key: str = field(default_factory=lambda: f"signkey-test-{secrets.token_hex(32)}")
    event_key: str = field(default_factory=lambda: f"evkey-{secrets.token_hex(8)}")
    server: Proc | None = None
    app: Proc | None = None
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))

    # --- addresses ----------------------------------------------------------------------------------------------
    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def serve_url(self) -> str:
        return f"{self.app_url}/api/inngest"

    @property
    def app_log(self) -> Path:
        return self.workdir / "records.jsonl"

    @property
    def app_id(self) -> str:
        return self.spec.app_id

    @property
    def sdk(self) -> str:
        return "node" if self.spec.name.startswith("node") else "python"

    def fn_id(self, local_id: str) -> str:
        return f"{self.app_id}-{local_id}"

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> Stack:
        try:
            self._start_app()
            self._start_server()
            self._wait_synced()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in (self.app, self.server):
            if p is not None:
                p.stop()
        self.http.close()

    def restart_app(self) -> None:
        """Start the app again on the same port (after it crashed or was stopped)."""
        if self.app is not None:
            self.app.stop()
        self._start_app()

    def _app_env(self) -> dict[str, str]:
        env = _clean_env()
        env.update(
            PORT=str(self.app_port), COMPAT_LOG=str(self.app_log), COMPAT_APP_ID=self.app_id, PYTHONUNBUFFERED="1"
        )
        if self.mode == "dev":
            env["INNGEST_DEV"] = self.server_url
        else:
            env.update(
                INNGEST_BASE_URL=self.server_url, INNGEST_SIGNING_KEY=self.signing_key, INNGEST_EVENT_KEY=self.event_key
            )
        return env

    def _start_app(self) -> None:
        self.app = spawn(
            self.spec.name,
            self.spec.cmd(self.app_port),
            cwd=self.spec.cwd,
            env=self._app_env(),
            log=self.workdir / "app.log",
        )

        def up() -> bool:
            self._require_alive()
            with contextlib.suppress(httpx.HTTPError):
                return self.http.get(f"{self.app_url}/healthz").status_code == 200
            return False

        wait_for(f"the {self.spec.name} app to listen on {self.app_url}", up, timeout=STARTUP_S, stack=self)

    def server_command(self) -> list[str]:
        db = str(self.workdir / "stepline.db")
        common = ["--host", "127.0.0.1", "--port", str(self.server_port), "--db", db, "-u", self.serve_url]
        if self.mode == "dev":
            return [*STEPLINE, "dev", *common, "--no-discovery"]
        return [*STEPLINE, "start", *common, "--signing-key", self.signing_key, "--event-key", self.event_key]

    def _start_server(self) -> None:
        env = _clean_env()
        env["STEPLINE_BACKOFF_SCALE"] = "0.01"  # Inngest's 15 s first retry becomes 0.15 s
        self.server = spawn(
            f"stepline {'dev' if self.mode == 'dev' else 'start'}",
            self.server_command(),
            cwd=self.workdir,
            env=env,
            log=self.workdir / "server.log",
        )

        def healthy() -> bool:
            self._require_alive()
            with contextlib.suppress(httpx.HTTPError):
                return self.http.get(f"{self.server_url}/health").status_code == 200
            return False

        wait_for("the server's GET /health", healthy, timeout=STARTUP_S, stack=self)

    def _wait_synced(self) -> None:
        """The server syncs the app (PUT, then the SDK registers): until then events start no runs. Send pings until
        one starts a run."""

        def ping_runs() -> bool:
            [event_id] = self.send({"name": "compat/ping", "data": {}})
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                if self.runs_of(event_id):
                    return True
                time.sleep(0.05)
            return False

        wait_for("the app to sync (a compat/ping event to start a run)", ping_runs, timeout=STARTUP_S, stack=self)

    def _require_alive(self) -> None:
        for p in (self.app, self.server):
            if p is not None and not p.alive():
                raise AssertionError(f"{p.name} exited early\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        parts = [f"mode={self.mode} server={self.server_url} app={self.serve_url}"]
        parts += [p.output() for p in (self.server, self.app) if p is not None]
        return "\n".join(parts)

    # --- event API ----------------------------------------------------------------------------------------------
    def post_events(self, body: Any, key: str | None = None) -> httpx.Response:
        key = key if key is not None else (self.event_key if self.mode == "signed" else "test")
        return self.http.post(f"{self.server_url}/e/{key}", json=body)

    def send(self, *events: dict[str, Any]) -> list[str]:
        """POST /e/{key} with a JSON array; returns the internal event ids."""
        resp = self.post_events(list(events))
        assert resp.status_code == 200, f"POST /e answered {resp.status_code}: {resp.text}"
        body = resp.json()
        assert body.get("status") == 200 and len(body["ids"]) == len(events), body
        return list(body["ids"])

    def sdk_send(self, *events: dict[str, Any]) -> list[str]:
        """Sends through the app's own SDK client (``inngest.send`` / ``client.send``)."""
        resp = self.http.post(f"{self.app_url}/send", json={"events": list(events)})
        assert resp.status_code == 200, f"the app's SDK send failed ({resp.status_code}): {resp.text}"
        return list(resp.json()["ids"])

    # --- REST API -----------------------------------------------------------------------------------------------
    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.signing_key}"} if self.mode == "signed" else {}

    def rest(self, path: str) -> Any:
        resp = self.http.get(f"{self.server_url}{path}", headers=self.auth)
        assert resp.status_code == 200, f"GET {path} answered {resp.status_code}: {resp.text}"
        return resp.json()["data"]

    def runs_of(self, event_id: str) -> list[dict[str, Any]]:
        return list(self.rest(f"/v1/events/{event_id}/runs") or [])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.rest(f"/v1/runs/{run_id}"))

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.rest(f"/v1/runs/{run_id}/steps") or [])

    def steps_by_name(self, run_id: str) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for s in self.steps(run_id):
            out.setdefault(s["name"], []).append(s)
        return out

    # --- waiting ------------------------------------------------------------------------------------------------
    def wait_runs(self, event_id: str, count: int = 1, timeout: float = DEADLINE_S) -> list[dict[str, Any]]:
        return wait_for(
            f"{count} run(s) of event {event_id}",
            lambda: runs if len(runs := self.runs_of(event_id)) >= count else None,
            timeout=timeout,
            stack=self,
        )

    def wait_ended(self, run_id: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
        return wait_for(
            f"run {run_id} to end",
            lambda: run if (run := self.run(run_id))["status"] in TERMINAL else None,
            timeout=timeout,
            stack=self,
        )

    def wait_status(self, run_id: str, status: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
        run = self.wait_ended(run_id, timeout)
        assert run["status"] == status, f"run {run_id} ended {run['status']}, expected {status}: {run}"
        return run

    def trigger(self, name: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Sends one event that starts exactly one run; returns (event id, that run once it has ended)."""
        [event_id] = self.send({"name": name, "data": data})
        [run] = self.wait_runs(event_id)
        return event_id, self.wait_ended(run["run_id"])

    # --- what the app recorded ----------------------------------------------------------------------------------
    def records(self, token: str, **match: Any) -> list[dict[str, Any]]:
        try:
            lines = self.app_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line being written
            if rec.get("token") == token and all(rec.get(k) == v for k, v in match.items()):
                out.append(rec)
        return out

    def wait_records(self, token: str, count: int = 1, timeout: float = DEADLINE_S, **match: Any) -> list[dict]:
        return wait_for(
            f"{count} app record(s) {match} for token {token}",
            lambda: recs if len(recs := self.records(token, **match)) >= count else None,
            timeout=timeout,
            stack=self,
        )


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = DEADLINE_S,
    stack: Stack | None = None,
    interval: float = 0.05,
) -> T:
    diagnostics = stack.diagnostics if stack is not None else ""
    return eventually_sync(what, probe, timeout, interval=interval, diagnostics=diagnostics)


def hold_for(what: str, check: Callable[[], Any], until: float, stack: Stack | None = None) -> None:
    """Asserts ``check()`` stays truthy until monotonic time ``until`` (for "nothing more happens" checks)."""
    while True:
        if not check():
            extra = f"\n{stack.diagnostics()}" if stack is not None else ""
            raise AssertionError(f"{what} stopped holding{extra}")
        if time.monotonic() >= until:
            return
        time.sleep(0.1)


@contextlib.contextmanager
def running_stack(spec: AppSpec, mode: Mode, workdir: Path) -> Iterator[Stack]:
    stack = Stack(spec, mode, workdir).start()
    try:
        yield stack
    finally:
        stack.stop()
