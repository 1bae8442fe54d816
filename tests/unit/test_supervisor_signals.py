"""``--processes N``'s supervisor (``cli/processes.py``): a SIGTERM that arrives while a child is being started
(a crash-looping child's restart, say) reaches that child too, instead of leaving the supervisor waiting for a
child nobody asked to stop."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
from typing import Any

import pytest

from stepline.cli.processes import Supervisor


def test_a_signal_during_a_childs_start_stops_that_child_too(monkeypatch: pytest.MonkeyPatch) -> None:
    sup = Supervisor(spec=None, sockets=[], env={})  # type: ignore[arg-type]
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real_popen([sys.executable, "-c", "import sys, time; sys.stdin.read(); time.sleep(60)"],
                          stdin=subprocess.PIPE, start_new_session=True)  # fmt: skip
        sup.on_signal(signal.SIGTERM, None)  # the operator's SIGTERM, before the child is in sup.children
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(pickle, "dumps", lambda _: b"")
    sup.spawn(0)
    child = sup.children[0]
    try:
        assert child.proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        child.proc.kill()
        child.ready.close()
