"""Idle CPU of ``stepline dev`` and ``stepline worker`` on SQLite, and the wake-up of a run sent from another process.

Starts an idle ``stepline dev`` (no discovery) and an idle ``stepline worker`` (one function) on one fresh SQLite
file, waits ``--warmup`` seconds, then reads each process tree's CPU time (``/proc/<pid>/stat``: utime + stime of
the process and its children) over ``--seconds``. Then ``--samples`` events are sent one at a time from this
process (a third process on the same file) and the time from just before ``send`` to the function's first line
(written by the worker into a file) is reported as p50/p95.

    .venv/bin/python bench/idle_cpu.py                   # 20 s idle, 50 samples
    .venv/bin/python bench/idle_cpu.py --seconds 60      # the issue's measure

Run it with another checkout's ``src`` first on ``PYTHONPATH`` for a before/after pair in the same session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = """
import time
from stepline import Stepline
client = Stepline("idle-bench")
OUT = {out!r}

@client.function(id="probe", trigger="bench/probe")
async def probe(ctx):
    with open(OUT, "a") as f:
        f.write(f"{{ctx.event.data['i']}} {{time.time()}}\\n")
"""

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants, in seconds."""
    total = 0.0
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS
        todo.extend(children.get(p, []))
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


async def latency(db: Path, out: Path, samples: int) -> list[float]:
    from stepline import Stepline
    from stepline.storage.sqlite.store import SQLiteStore

    client = Stepline("idle-bench-sender", SQLiteStore(db))
    await client.ready()
    sent: dict[int, float] = {}
    try:
        for i in range(samples):
            await asyncio.sleep(0.05)
            sent[i] = time.time()
            await client.send({"name": "bench/probe", "data": {"i": i}})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = out.read_text().splitlines() if out.exists() else []
            if len(lines) >= samples:
                break
            await asyncio.sleep(0.1)
    finally:
        await client.close()
    started = {int(a): float(b) for a, b in (line.split() for line in out.read_text().splitlines())}
    return [(started[i] - sent[i]) * 1000 for i in sent if i in started]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="idle measuring window (default 20)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds after start-up before measuring")
    ap.add_argument("--samples", type=int, default=50, help="events sent from another process (default 50)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    stepline = [sys.executable, "-m", "stepline.cli.main"]
    with tempfile.TemporaryDirectory(prefix="stepline-idle-") as tmp:
        work = Path(tmp)
        db, out = work / "idle.db", work / "started.txt"
        (work / "idle_app.py").write_text(APP.format(out=str(out)))
        port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), tmp]))}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": tmp}
        dev = subprocess.Popen([*stepline, "dev", "--db", str(db), "--port", str(port), "--no-discovery",
                                "--host", "127.0.0.1", "--log-level", "warning"], **quiet)  # type: ignore[call-overload]  # fmt: skip
        worker = subprocess.Popen([*stepline, "worker", "idle_app:client", "--db", str(db), "--app-dir", tmp,
                                   "--log-level", "warning"], **quiet)  # type: ignore[call-overload]  # fmt: skip
        try:
            wait_for_port(port)
            time.sleep(args.warmup)
            c0 = {"dev": cpu_seconds(dev.pid), "worker": cpu_seconds(worker.pid)}
            t0 = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - t0
            idle = {k: (cpu_seconds(p.pid) - c0[k]) / elapsed * 100 for k, p in (("dev", dev), ("worker", worker))}
            lat = asyncio.run(latency(db, out, args.samples))
        finally:
            for p in (dev, worker):
                p.send_signal(signal.SIGTERM)
            for p in (dev, worker):
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
    lat.sort()
    result = {
        "idle_seconds": round(elapsed, 1),
        "dev_cpu_percent": round(idle["dev"], 3),
        "worker_cpu_percent": round(idle["worker"], 3),
        "latency_samples": len(lat),
        "latency_p50_ms": round(statistics.median(lat), 2) if lat else None,
        "latency_p95_ms": round(lat[int(len(lat) * 0.95) - 1], 2) if lat else None,
        "load_average": os.getloadavg(),
    }
    print(f"idle {result['idle_seconds']} s: stepline dev {result['dev_cpu_percent']:.2f} % of a core, "
          f"stepline worker {result['worker_cpu_percent']:.2f} %; a run sent from another process starts after "
          f"p50 {result['latency_p50_ms']} ms, p95 {result['latency_p95_ms']} ms ({len(lat)}/{args.samples} "
          f"samples; load {result['load_average'][0]:.1f})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
