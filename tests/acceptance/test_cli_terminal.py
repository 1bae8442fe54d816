"""How the CLI looks: colour and status symbols in a real terminal (a pty), plain text when piped or with
NO_COLOR, tables within 100 columns that wrap a long note instead of cutting it, progress displays on a
terminal, whole `--help` summaries, `stepline start` naming every missing setting at once, and one "stopping"
line when the server stops."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from stepline import Context, FakeClock, NonRetriableError, Stepline

from ..pg_cluster import free_port
from .servers import wait_for_health
from .test_cli import STEPLINE, _env, cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
USEFUL_TAIL = "so the order was NOT charged: retry it from the dashboard"
LONG_ERROR = (
    "the payment provider answered 502 Bad Gateway three times in a row while confirming the card, " + USEFUL_TAIL
)


def in_terminal(cwd: Path, *args: str, env: dict[str, str] | None = None, columns: int = 100) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal of ``columns`` columns; everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environment = {k: v for k, v in (env or _env()).items() if k not in ("COLUMNS", "LINES", "TERM")}
    environment["TERM"] = "xterm-256color"
    proc = subprocess.Popen([*STEPLINE, *args], cwd=cwd, env=environment, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, close_fds=True)  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=10) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode().replace("\r\n", "\n")


def visible(text: str) -> str:
    return ANSI.sub("", text)


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with a completed run, a failed one (with a long error) and 30 ended runs two days old."""
    path = tmp_path_factory.mktemp("cli-terminal")
    clock = FakeClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    client = Stepline("look", str(path / "tmp.db"), clock=clock)

    @client.function(id="ship", trigger="look/ship")
    async def ship(ctx: Context) -> Any:
        return await ctx.step.run("label", lambda: {"label": "L-1"})

    @client.function(id="charge", trigger="look/charge", retries=0)
    async def charge(ctx: Context) -> Any:
        def fail() -> None:
            raise NonRetriableError(LONG_ERROR)

        return await ctx.step.run("charge-card", fail)

    async def fill() -> None:
        await client.send([{"name": "look/ship"} for _ in range(30)])
        worker = client.worker()
        await worker.run_until_idle()
        clock.advance(dt.timedelta(days=2) - dt.timedelta(seconds=5))
        await client.send([{"name": "look/ship"}, {"name": "look/charge"}])
        await worker.run_until_idle()
        worker.close()
        await client.close()

    import asyncio

    asyncio.run(fill())
    return path


def test_a_terminal_gets_colour_and_symbols_within_its_width(db_dir: Path) -> None:
    out = in_terminal(db_dir, "runs", "list", "--db", "tmp.db", "--limit", "5")
    assert "\x1b[" in out  # colour
    shown = visible(out)
    assert "✓ completed" in shown and "✗ failed" in shown
    assert max(len(line) for line in shown.splitlines()) <= 100
    assert USEFUL_TAIL in " ".join(" ".join(shown.split()).split())  # wrapped onto several lines, not cut


def test_no_color_and_pipes_get_plain_text_within_100_columns(db_dir: Path) -> None:
    plain = in_terminal(db_dir, "runs", "list", "--db", "tmp.db", "--limit", "5", env={**_env(), "NO_COLOR": "1"})
    piped = cli(db_dir, "runs", "list", "--db", "tmp.db", "--limit", "5")
    assert piped.returncode == 0
    for out in (plain, piped.stdout):
        assert "\x1b[" not in out and "✓" not in out and "✗" not in out
        assert " completed " in out and " failed " in out
        assert max(len(line) for line in out.splitlines()) <= 100
        assert all(line == line.rstrip() for line in out.splitlines())
        words = " ".join(out.split())
        assert USEFUL_TAIL in words  # the note's end is there, over several lines


def test_runs_show_says_the_status_and_attempts_in_words(db_dir: Path) -> None:
    listed = cli(db_dir, "runs", "list", "--db", "tmp.db", "--status", "failed", "--json").stdout
    failed_id = listed.split('"id":"')[1].split('"')[0]
    shown = in_terminal(db_dir, "runs", "show", failed_id, "--db", "tmp.db")
    lines = visible(shown).splitlines()
    assert any(line.split() == ["Status", "✗", "failed"] for line in lines), lines
    assert "attempt" not in visible(shown).split("Steps")[0]  # a first attempt is not worth a word
    assert LONG_ERROR in visible(shown)  # the run's error line is never wrapped or cut


def test_db_prune_shows_progress_on_a_terminal(db_dir: Path) -> None:
    out = in_terminal(db_dir, "db", "prune", "--older-than", "1d", "--batch-size", "5", "--db", "tmp.db")
    shown = visible(out)
    assert "⠋ pruning what ended before 1d ago" in shown  # a spinner while it works, then the totals so far
    assert "pruning: 30 runs, 30 steps" in shown  # (drawn up to 10 times a second, so not every transaction's)
    # The 30 runs' triggers and their function.finished events go with them.
    assert shown.strip().endswith("pruned 30 runs, 30 steps, 60 events, 0 idempotency keys")


def test_bulk_cancel_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    client = Stepline("bulk", str(tmp_path / "tmp.db"))

    @client.function(id="nap", trigger="bulk/nap")
    async def nap(ctx: Context) -> Any:
        await ctx.step.sleep("zz", "1h")

    async def fill() -> None:
        await client.send([{"name": "bulk/nap"} for _ in range(12)])
        await client.close()

    import asyncio

    asyncio.run(fill())
    out = visible(in_terminal(tmp_path, "runs", "cancel", "--all", "--yes", "--db", "tmp.db"))
    assert "cancelling 12 runs" in out and "12/12" in out
    assert out.strip().endswith("✓ cancelled 12 runs")


def test_every_help_summary_is_whole(tmp_path: Path) -> None:
    for group in ([], ["runs"], ["events"], ["db"], ["functions"]):
        proc = cli(tmp_path, *group, "--help")
        assert proc.returncode == 0
        commands = proc.stdout.split("Commands:")[1]
        assert "..." not in commands, commands
        assert all(line.rstrip().endswith(".") for line in commands.strip().splitlines()), commands
    assert "postgresql://" in cli(tmp_path, "runs", "list", "--help").stdout  # --db names PostgreSQL URLs


def test_start_names_every_missing_setting_at_once(tmp_path: Path) -> None:
    env = {k: v for k, v in _env().items() if not k.startswith(("STEPLINE_", "INNGEST_"))}
    proc = cli(tmp_path, "start", "--db", "tmp.db", env=env)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "a signing key: --signing-key or STEPLINE_SIGNING_KEY" in line
    assert "at least one event key: --event-key or STEPLINE_EVENT_KEYS" in line
    only_one = cli(tmp_path, "start", "--db", "tmp.db", "--event-key", "abc", env=env)
    assert "signing key" in only_one.stderr and "event key" not in only_one.stderr


def test_the_server_says_stopping_once(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([*STEPLINE, "dev", "--port", str(port), "--host", "127.0.0.1", "--no-discovery",
                             "--db", "tmp.db"], cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for_health(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert [line for line in err.splitlines() if line.endswith("stopping")] == [
        next(line for line in err.splitlines() if line.endswith("SIGTERM: stopping"))
    ], err
