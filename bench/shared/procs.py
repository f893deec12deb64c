"""Running the benchmark's own processes: logging, the venvs' Pythons, JSON reports.

Every measurement runs in a process of its own, with the Python of the measured layer's
virtual environment, so that each layer is served by its own package and versions; these are
the few things every runner needs to start such a process and read what it reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def log(text: str) -> None:
    """Progress for the person running the benchmark: standard error, so the report on
    standard output stays clean."""
    print(text, file=sys.stderr, flush=True)


def python_of(venvs: Path, venv: str) -> Path:
    """The Python of the virtual environment ``venv`` under ``venvs``."""
    return Path(venvs) / venv / "bin" / "python"


def import_problem(python: Path, path: str) -> str | None:
    """``None`` when the class at ``path`` (module.Class) imports with ``python``, else why
    not (the last line of the error)."""
    module, _, name = path.rpartition(".")
    probe = f"import importlib; getattr(importlib.import_module({module!r}), {name!r})"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    if done.returncode:
        return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "import failed"
    return None


def versions_in(python: Path, names: list[str]) -> dict[str, str]:
    """The installed versions of the distributions ``names`` as ``python`` sees them."""
    probe = (
        "import json, importlib.metadata as m\n"
        f"names = {names!r}\n"
        "found = {}\n"
        "for n in names:\n"
        "    try: found[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(found))"
    )
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    found: dict[str, str] = json.loads(done.stdout) if done.returncode == 0 else {}
    return found


def run_json(command: list[str | Path], timeout: float) -> dict[str, Any]:
    """Run a measuring process; the JSON report on the last such line of its standard output,
    or a failed report with the end of its standard error."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr or ""
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        return {"ok": False, "error": f"no result within {timeout:.0f} s", "stderr": stderr[-4000:]}
    report: dict[str, Any] | None = None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            report = json.loads(line)
            break
    if report is None:
        report = {"ok": False, "error": f"no report (exit code {done.returncode})"}
    elif done.returncode and report.get("ok"):
        report.update(ok=False, error=f"exit code {done.returncode}")
    if done.stderr.strip():
        report["stderr"] = done.stderr[-4000:]
    report["wall"] = time.perf_counter() - started
    return report
