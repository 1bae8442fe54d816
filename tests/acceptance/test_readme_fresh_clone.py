"""A newcomer's first minutes, as the README tells them: clone the repository, run its first command
(`scripts/example`: a new .venv with Stepline's runtime dependencies only, the dev server, the shop demo), then
run the README's CLI lines exactly as printed, from another shell, while the example runs; Ctrl-C stops it; a
second `scripts/example` starts without installing anything. Bounded: about 45 s here (a warm pip cache)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ..pg_cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^Stepline dev server ready in ([0-9.]+) s\. Dashboard: (\S+)$")


def _newcomer_env(port: int) -> dict[str, str]:
    """A shell without this test run's virtualenv on PATH and without Stepline settings."""
    venv_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    dropped = ("STEPLINE_", "VIRTUAL_ENV", "PYTHON", "PYTEST", "COLUMNS", "NO_COLOR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(PATH=os.pathsep.join(path), STEPLINE_PORT=str(port))
    return env


class Example:
    """`scripts/example` in its own process group (so that Ctrl-C can be sent to all of it), its output read."""

    def __init__(self, clone: Path, env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(["scripts/example"], cwd=clone, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def ctrl_c(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self._reader.join(timeout=5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def _readme_cli_block() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```bash\n(.*?)^```$", readme, flags=re.DOTALL | re.MULTILINE)
    [block] = [b for b in blocks if "source .venv/bin/activate" in b]
    return [line for line in block.splitlines() if line.strip()]


def _bash(clone: Path, env: dict[str, str], lines: list[str]) -> subprocess.CompletedProcess[str]:
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    return subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


@pytest.mark.timeout(240)
def test_a_fresh_clone_runs_the_readme_as_printed(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the git repository to clone")
    clone = tmp_path / "stepline"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=60)
    env = _newcomer_env(free_port())
    assert subprocess.run(["bash", "-c", "command -v stepline"], env=env, capture_output=True).returncode != 0

    example = Example(clone, env)
    try:
        ready = example.wait_for(READY.pattern, timeout=120)
        first_run_s = time.monotonic() - example.started
        assert ready.group(2) == f"http://127.0.0.1:{env['STEPLINE_PORT']}/"
        example.wait_for(r"^Orders 1, 3, 5, 7, 9 will be shipped", timeout=30)  # the demo's orders are in

        lines = _readme_cli_block()
        send_at = next(i for i, line in enumerate(lines) if line.startswith("stepline send "))
        before = _bash(clone, env, lines[: send_at + 1])  # up to the send, whose output names the runs
        assert before.returncode == 0, before.stderr
        assert "shop-process-order" in before.stdout and "shop-fraud-check" in before.stdout  # runs list
        said = before.stderr.splitlines()
        assert said[0] == "started 2 runs:", before.stderr
        [run_id] = [ln.split()[0] for ln in said[1:] if ln.split()[1:] == ["shop-process-order"]]

        rest = [ln.replace("<run-id>", run_id) for ln in lines[send_at + 1 :]]
        after = _bash(clone, env, [lines[0], *rest])  # another line of the same shell: PATH as set there
        assert after.returncode == 0, after.stderr
        assert run_id in after.stdout  # runs list --status running, runs show
        assert f"Run       {run_id}" in after.stdout and "load-order" in after.stdout
        assert f"cancelled run {run_id} (shop-process-order)" in after.stderr
        assert re.search(r"started [0-9]+ reruns? of failed runs of shop-fraud-check", after.stderr)
        assert "shop/order.paid" in after.stdout  # events list
        assert "emailing ada@example.com the receipt of order 42" in after.stdout  # quickstart.py
        assert "run completed: {'status': 'sent'}" in after.stdout
    finally:
        code = example.ctrl_c()
    output = "\n".join(example.lines)
    assert code == 130, output
    assert [ln for ln in example.lines if ln.endswith("stopping")] == [
        next(ln for ln in example.lines if ln.endswith("SIGINT: stopping"))
    ], output
    assert "installing Stepline and its dependencies into .venv (once)" in output
    assert not (clone / "tests" / "compat" / "node_app" / "node_modules").exists()  # no npm packages
    assert not (clone / ".venv" / "bin" / "pytest").exists()  # no dev tools

    again = Example(clone, env)
    try:
        again.wait_for(READY.pattern, timeout=60)
        second_run_s = time.monotonic() - again.started
    finally:
        again.ctrl_c()
    assert "installing" not in "\n".join(again.lines)
    print(f"scripts/example ready after {first_run_s:.1f} s (fresh clone), {second_run_s:.1f} s (second run)")
    assert second_run_s < 15  # under 5 s on a quiet machine; this bound allows for a shared one
