"""Summarise a py-spy profile (``--format raw``: collapsed stacks) as plain-text tables.

    python3 bench/profile_summary.py PROFILE.txt [--top 25]

Prints where the samples went: waiting for the network (the event loop's ``select``) against
running, then *self* time (samples whose innermost Python frame is the function; time in C
code, a system call for instance, counts for the Python function that called it) by module
group (this package, valkey-py, asyncio, msgpack...) and by function, the innermost native
functions when the profile was recorded with ``--native``, and *total* time (samples with the
function anywhere in the stack). Standard library only.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

#: Module groups, by the start of a frame's file path as py-spy prints it.
GROUPS = (
    ("channels_valkey/", "channels_valkey"),
    ("channels_redis/", "channels_redis"),
    ("valkey/", "valkey-py"),
    ("redis/", "redis-py"),
    ("msgpack/", "msgpack"),
    ("asyncio/", "asyncio"),
    ("channels/", "channels"),
    # The benchmark's own code, as py-spy names it (relative to its folder on sys.path).
    ("measuring/", "benchmark"),
    ("shared/", "benchmark"),
    ("workload.py", "benchmark"),
)


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """Stacks (outermost frame first) of ``(function, file)`` with their sample counts."""
    stacks = []
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text:
            continue
        frames = []
        for frame in stack_text.split(";"):
            match = FRAME.match(frame)
            frames.append((match["function"], match["file"]) if match else (frame, ""))
        stacks.append((frames, int(count)))
    return stacks


def is_python(frame: tuple[str, str]) -> bool:
    file = frame[1]
    return file.endswith(".py") or file.startswith("<")


def group_of(file: str) -> str:
    for prefix, name in GROUPS:
        if file.startswith(prefix) or f"/{prefix}" in file:
            return name
    return "other"


def waiting(frames: list[tuple[str, str]]) -> bool:
    """Whether the sample is the event loop waiting in ``select``/``epoll``."""
    return any(
        function in ("EpollSelector.select", "BaseSelector.select", "select")
        and "selectors" in file
        for function, file in frames
    )


def table(title: str, counts: Counter[str], total: int, top: int) -> list[str]:
    lines = [title, ""]
    for name, count in counts.most_common(top):
        lines.append(f"{100 * count / total:6.1f}%  {count:6d}  {name}")
    lines.append("")
    return lines


def summarise(path: Path, top: int, label: str | None = None) -> str:
    stacks = parse(path)
    total = sum(count for _, count in stacks)
    idle = sum(count for frames, count in stacks if waiting(frames))
    busy = [(frames, count) for frames, count in stacks if not waiting(frames)]
    busy_total = max(1, total - idle)
    own: Counter[str] = Counter()
    native: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for frames, count in busy:
        python = [frame for frame in frames if is_python(frame)] or frames
        function, file = python[-1]
        own[f"{function} ({file})"] += count
        groups[group_of(file)] += count
        if not is_python(frames[-1]):
            native[f"{frames[-1][0]} ({frames[-1][1]})"] += count
        for name in {f"{function} ({file})" for function, file in python}:
            inclusive[name] += count
    lines = [
        f"{label or path.name}: {total} samples; waiting in select {idle} "
        f"({100 * idle / max(1, total):.1f}%), running {total - idle} "
        f"({100 * (total - idle) / max(1, total):.1f}%). Percentages below are of running.",
        "",
    ]
    lines += table(
        "Self time by module group (of the innermost Python frame):", groups, busy_total, top
    )
    lines += table("Self time by function:", own, busy_total, top)
    if native:
        lines += table(
            "Self time by native function (recorded with --native):", native, busy_total, top
        )
    lines += table("Total time by function (anywhere in the stack):", inclusive, busy_total, top)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    options = parser.parse_args()
    print(summarise(options.profile, options.top))
    return 0
