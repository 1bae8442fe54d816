#!/usr/bin/env python
"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) of the benchmark.

    .venv/bin/py-spy record -r 250 --threads --format raw -o /tmp/one-batch.txt -- \
        .venv/bin/python bench/run_sqlite.py --only one-batch --runs 20000
    .venv/bin/python bench/pyspy_summary.py /tmp/one-batch.txt

Prints, for the samples taken while the measured scenario ran (import/startup samples are dropped: stacks
without a ``stepline`` or benchmark frame below the event loop are still counted under "other"):

* samples per thread (py-spy records only non-idle samples unless run with --idle);
* "self in our code": each sample is charged to the deepest ``stepline/`` frame of its stack, i.e. the
  Stepline line that was executing or that called into the stdlib / sqlite3 / json / pydantic code at the top
  of the stack; grouped by function, with the top lines;
* "inclusive": samples whose stack contains each ``stepline/`` function;
* the top leaf frames overall (where the CPU actually was, Stepline or not).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*?):(?P<line>\d+)\)$")


def parse(path: str) -> list[tuple[str, list[tuple[str, str, int]], int]]:
    out = []
    with open(path) as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if not raw:
                continue
            stack_text, _, count = raw.rpartition(" ")
            parts = stack_text.split(";")
            thread = parts[0]
            frames = []
            for fr in parts[1:]:
                m = FRAME.match(fr)
                if m:
                    frames.append((m["func"], m["file"], int(m["line"])))
                else:
                    frames.append((fr, "?", 0))
            out.append((thread, frames, int(count)))
    return out


def ours(file: str) -> bool:
    return "stepline/" in file and "bench/" not in file


def thread_name(t: str) -> str:
    name = t.split(":", 1)[-1].strip()
    return re.sub(r"_\d+$", "_N", name)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    stacks = parse(args.profile)
    # drop import-time samples and the benchmark's watchdog timer (py-spy counts its timed wait as active)
    stacks = [s for s in stacks if not any(f[0] == "_find_and_load" for f in s[1]) and "bench-watchdog" not in s[0]]
    total = sum(c for _, _, c in stacks)
    print(f"{args.profile}: {total} non-idle samples (imports and the watchdog thread excluded)\n")

    by_thread: Counter[str] = Counter()
    self_fn: Counter[tuple[str, str]] = Counter()
    self_line: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)
    self_thread: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    leaf_kind: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    incl: Counter[tuple[str, str]] = Counter()
    leaf: Counter[tuple[str, str]] = Counter()
    outside = 0
    for thread, frames, c in stacks:
        tn = thread_name(thread)
        by_thread[tn] += c
        if frames:
            lf = frames[-1]
            leaf[(lf[0], lf[1])] += c
        deepest = None
        for i, fr in enumerate(frames):
            if ours(fr[1]):
                deepest = i
        if deepest is None:
            outside += c
            continue
        func, file, line = frames[deepest]
        key = (func, file)
        self_fn[key] += c
        self_line[key][line] += c
        self_thread[key][tn] += c
        callee = frames[deepest + 1] if deepest + 1 < len(frames) else None
        leaf_kind[key][f"{callee[0]} ({callee[1]})" if callee else "<own bytecode / C call>"] += c
        for k in {(f[0], f[1]) for f in frames if ours(f[1])}:
            incl[k] += c

    print("samples per thread:")
    for tn, c in by_thread.most_common():
        print(f"  {c:7d} {100 * c / total:5.1f}%  {tn}")
    print(f"\nsamples with no stepline frame on the stack (event loop, benchmark, thread pool idle spin): "
          f"{outside} ({100 * outside / total:.1f}%)\n")  # fmt: skip

    print(f"top {args.top} self-in-our-code (deepest stepline frame), % of all samples:")
    for (func, file), c in self_fn.most_common(args.top):
        lines = ", ".join(f"{ln}:{n}" for ln, n in self_line[(func, file)].most_common(4))
        threads = ", ".join(f"{t}" for t, _ in self_thread[(func, file)].most_common(2))
        print(f"  {c:7d} {100 * c / total:5.1f}%  {func} ({file})  [lines {lines}] [{threads}]")
        for kind, n in leaf_kind[(func, file)].most_common(3):
            print(f"  {'':15} {n:6d}  -> {kind}")
    print(f"\ntop {args.top} inclusive stepline functions:")
    for (func, file), c in incl.most_common(args.top):
        print(f"  {c:7d} {100 * c / total:5.1f}%  {func} ({file})")
    print(f"\ntop {args.top} leaf frames (any code):")
    for (func, file), c in leaf.most_common(args.top):
        print(f"  {c:7d} {100 * c / total:5.1f}%  {func} ({file})")


if __name__ == "__main__":
    main()
