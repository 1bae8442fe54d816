"""Processes for the observability tests: ``stepline dev``/``start``/``worker`` and SDK apps as subprocesses on free
loopback ports (the compatibility tests' primitives), and reading a real Prometheus scrape."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..compat.harness import STARTUP_S, STEPLINE, Proc, _clean_env, free_port, spawn, wait_for

HERE = Path(__file__).resolve().parent

__all__ = ["HERE", "STEPLINE", "Proc", "free_port", "wait_for"]


def env(**extra: str) -> dict[str, str]:
    """A clean environment (nothing pointing elsewhere, no OTEL_* of the runner) with ``extra``."""
    out = {k: v for k, v in _clean_env().items() if not k.startswith(("OTEL_", "PROMETHEUS_"))}
    out.update(PYTHONUNBUFFERED="1", **extra)
    return out


def http_ok(url: str, proc: Proc | None = None, **kw: Any) -> bool:
    if proc is not None and not proc.alive():
        raise AssertionError(f"{proc.name} exited early\n{proc.output()}")
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2.0, **kw).status_code == 200
    return False


@contextlib.contextmanager
def process(name: str, cmd: list[str], workdir: Path, ready_url: str | None = None,
            **env_extra: str) -> Iterator[Proc]:  # fmt: skip
    proc = spawn(name, cmd, cwd=workdir, env=env(**env_extra), log=workdir / f"{name.replace(' ', '-')}.log")
    try:
        if ready_url is not None:
            wait_for(f"{name} at {ready_url}", lambda: http_ok(ready_url, proc), timeout=STARTUP_S)
        yield proc
    finally:
        proc.stop()


def python_app(module: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", f"{module}:app", "--app-dir", str(HERE), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]  # fmt: skip


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A real scrape, parsed by prometheus-client: ``{(sample name, sorted labels): value}``."""
    response = httpx.get(url, headers=headers, timeout=10.0)
    assert response.status_code == 200, f"GET {url} answered {response.status_code}: {response.text[:300]}"
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels (0 when absent, as Prometheus reads a missing counter)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def names(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {name for name, _ in samples}
