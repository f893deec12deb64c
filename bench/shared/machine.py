"""What a result says about where it was measured: the machine, its load, the commit.

Numbers from a small machine shared with other work only make sense next to these, so every
runner stores them with its records. Standard library only: the runners call it from any
``python3``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def machine() -> dict[str, Any]:
    """The CPU model, the number of cores and the operating system."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                system = line.split("=", 1)[1].strip('"') + f", Linux {platform.release()}"
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": system}


def cpus_and_python() -> str:
    """The short form the burst results keep: cores and this Python's version."""
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


def cores_and_platform() -> str:
    """The short form the failover results keep: cores and the platform."""
    return f"{os.cpu_count()} cores, {platform.platform()}"


def load_average() -> float:
    """The one-minute load average: how busy the machine was when a run started."""
    return os.getloadavg()[0]


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (``/proc/stat``); 0 where unknown."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def installed_server_version() -> str:
    """The version of the ``valkey-server`` on the PATH, for runs that start their own."""
    try:
        done = subprocess.run(["valkey-server", "--version"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    words = [w for w in done.stdout.split() if w.startswith("v=")]
    return words[0][2:] if words else done.stdout.strip()


def git_state() -> dict[str, Any]:
    """The commit checked out and the files under ``src/`` with uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "src_changes": changed}
