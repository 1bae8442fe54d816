"""How the CLI prints: colour and status symbols on a terminal, plain text when piped or with ``NO_COLOR``.

Everything goes through rich with markup, highlighting and emoji codes off, so run outputs, errors and event
data print exactly as stored. Tables take the terminal's width (100 columns when piped, or ``COLUMNS``) and
wrap their last, free-text column instead of cutting it. Progress displays draw only on a terminal.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

PIPED_WIDTH = 100

# status -> (symbol, style): runs (queued ... skipped) and steps (sleeping ... retrying)
STATUS_LOOK: dict[str, tuple[str, str]] = {
    "completed": ("✓", "green"),
    "failed": ("✗", "bold red"),
    "running": ("●", "cyan"),
    "queued": ("○", "yellow"),
    "cancelled": ("⊘", "magenta"),
    "skipped": ("↷", "blue"),
    "sleeping": ("◷", "blue"),
    "waiting": ("◌", "blue"),
    "invoking": ("→", "blue"),
    "retrying": ("↻", "yellow"),
}
_SAY: dict[str, tuple[str, str]] = {"ok": ("✓", "green"), "note": ("•", "cyan"), "warn": ("!", "yellow")}


@dataclass(frozen=True)
class Look:
    """A console for one stream and whether it gets colour and symbols (a terminal without ``NO_COLOR``)."""

    console: Console
    fancy: bool

    @classmethod
    def of(cls, stream: Literal["stdout", "stderr"]) -> Look:
        file = sys.stdout if stream == "stdout" else sys.stderr
        terminal = _isatty(file)
        width = None if terminal else _piped_width()
        console = Console(file=file, width=width, markup=False, highlight=False, emoji=False)
        return cls(console, console.is_terminal and not console.no_color)

    def styled(self, text: str, style: str) -> Text:
        return Text(text, style=style if self.fancy else "")

    def status(self, status: str, suffix: str = "") -> Text:
        """``✓ completed`` in green on a terminal; ``completed`` elsewhere."""
        symbol, style = STATUS_LOOK.get(status, ("", ""))
        if not self.fancy or not symbol:
            return Text(status + suffix)
        return Text(f"{symbol} {status}{suffix}", style=style)

    def say(self, kind: Literal["ok", "note", "warn"], message: str | Text) -> None:
        """One message line (a symbol before it on a terminal), never wrapped."""
        line = Text()
        if self.fancy:
            symbol, style = _SAY[kind]
            line.append(symbol + " ", style=style)
        line.append(message)
        self.console.print(line, soft_wrap=True)

    def line(self, text: str | Text = "") -> None:
        self.console.print(text, soft_wrap=True)

    def table(self, *columns: str | Column) -> Table:
        table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), expand=False,
                      header_style="bold" if self.fancy else "")  # fmt: skip
        for column in columns:
            spec = column if isinstance(column, Column) else Column(column)
            flexible = spec.wrap or spec.clip  # the columns that give way when the table is too wide
            table.add_column(spec.header, no_wrap=not flexible, overflow="fold" if spec.wrap else "ellipsis",
                             min_width=spec.min_width, max_width=spec.max_width)  # fmt: skip
        return table

    def print_table(self, table: Table) -> None:
        if self.fancy:
            self.console.print(table)
            return
        with self.console.capture() as captured:  # plain text: without the cells' padding at the ends of lines
            self.console.print(table)
        self.console.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))

    def fields(self, rows: Sequence[tuple[str, str | Text | None]]) -> None:
        """``Label     value`` lines, labels aligned; values are never wrapped (copy them whole)."""
        width = max((len(label) for label, _ in rows), default=0) + 2
        for label, value in rows:
            line = self.styled(label.ljust(width), "bold")
            line.append(value if isinstance(value, Text) else Text("-" if value is None else value))
            self.console.print(line, soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Ticker]:
        """A live progress display on a terminal (a bar when ``total`` is known, else a spinner); nothing
        elsewhere. It goes away when done: print the outcome after it."""
        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns.append(TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True, disable=not self.fancy) as bar:
            yield Ticker(bar, bar.add_task(description, total=total))


@dataclass(frozen=True)
class Ticker:
    """One task of a progress display."""

    bar: Progress
    task: TaskID

    def advance(self, steps: int = 1) -> None:
        self.bar.advance(self.task, steps)

    def describe(self, description: str) -> None:
        self.bar.update(self.task, description=description)


@dataclass(frozen=True)
class Column:
    header: str
    wrap: bool = False  # a free-text column that gives way when space is short: folded over several lines
    clip: bool = False  # one that gives way by cutting its end (fill it with one_line(...))
    min_width: int | None = None
    max_width: int | None = None


def one_line(text: str) -> Text:
    """A cell that stays on one line, cut with ``…`` where its column ends (a ``Column(clip=True)``)."""
    return Text(text, no_wrap=True, overflow="ellipsis")


def _isatty(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


def _piped_width() -> int:
    try:
        return max(40, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return PIPED_WIDTH


# --- times ---
def ago(ms: int | None, now_ms: int | None = None) -> str:
    """How long ago, in one short unit: ``12s ago``, ``5m ago``, ``3h ago``, ``2d ago``; a date after 60 days."""
    if ms is None:
        return "-"
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    seconds = max(0, (now_ms - ms) // 1000)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            if unit == "d" and seconds >= 60 * 86_400:
                return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def took(start_ms: int | None, end_ms: int | None) -> str:
    """A duration in at most two units: ``350ms``, ``2.1s``, ``3m04s``, ``2h05m``, ``3d04h``."""
    if start_ms is None or end_ms is None:
        return "-"
    ms = max(0, end_ms - start_ms)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d{seconds % 86_400 // 3600:02d}h"


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 run``, ``3 runs`` (``many`` for irregular plurals)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"
