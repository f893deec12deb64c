"""The main benchmark's runner: every workload on every layer, interleaved, round by round.

Each round measures the PING ceiling, then every workload on every layer, the layers' order
rotated by one per round (A B C, B C A, C A B, ...), so that slow drifts of the machine spread
over all of them. Before each measurement the server is flushed and its statistics reset;
afterwards any message left queued fails it. Each measurement is a ``workload.py`` process
with the Python of the layer's venv; this module only starts them and collects their reports,
so it needs nothing beyond the standard library. ``runners/cluster.py`` measures the same way on
other topologies, and ``--profile`` records single workloads under py-spy.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

from catalogue import CEILING_VENVS, WORKLOADS, Layer, Workload
from shared.procs import log, python_of, run_json
from shared.server_state import queued_messages, reset_server
from shared.stats import rotated

BENCH = Path(__file__).resolve().parents[1]
#: The measuring process, run with the Python of the measured layer's venv.
WORKLOAD = BENCH / "measuring" / "workload.py"


def timeout_of(options: argparse.Namespace) -> float:
    """How long one measuring process may take before it counts as failed."""
    return float(2 * options.seconds + options.warmup + 240)


def recorded_options(options: argparse.Namespace, workloads: list[str]) -> dict[str, Any]:
    """The options a result records, which its report quotes."""
    return {
        "rounds": options.rounds,
        "seconds": options.seconds,
        "warmup": options.warmup,
        "workloads": workloads,
    }


def measure_command(
    python: Path, url: str, path: str, kind: str, workload: str, seconds: float, warmup: float
) -> list[str | Path]:
    """The ``workload.py measure`` command line of one measurement."""
    command: list[str | Path] = [python, WORKLOAD, "measure"]
    command += ["--url", url, "--layer", path, "--kind", kind]
    command += ["--workload", workload, "--seconds", str(seconds)]
    command += ["--warmup", str(warmup)]
    return command


def measure_on(
    url: str, command: list[str | Path], timeout: float, tags: dict[str, Any]
) -> dict[str, Any]:
    """On a freshly reset server: the measurement's report, tagged, failed if it left
    messages queued."""
    reset_server(url)
    record = run_json(command, timeout)
    record.update(tags)
    record["leftover"] = queued_messages(url)
    if record["leftover"] and record.get("ok"):
        record.update(ok=False, error=f"{record['leftover']} messages left queued")
    return record


def run_all(options: argparse.Namespace, layers: list[Layer]) -> list[dict[str, Any]]:
    """Every round: the ceilings, then every chosen workload on every layer that runs it."""
    records: list[dict[str, Any]] = []
    workloads = [w for w in WORKLOADS if w.key in options.workloads]
    for round_index in range(options.rounds):
        records += _ceilings(options, round_index)
        for workload in workloads:
            chosen = [layer for layer in layers if layer.kind in workload.kinds]
            for layer in rotated(chosen, round_index):
                records.append(_measure_layer(options, round_index, workload, layer))
    return records


def _tag(options: argparse.Namespace, round_index: int) -> str:
    return f"[round {round_index + 1}/{options.rounds}]"


def _ceilings(options: argparse.Namespace, round_index: int) -> list[dict[str, Any]]:
    """Sequential PINGs in each venv that has valkey-py with and without libvalkey."""
    records = []
    ceiling_venvs = [v for v in CEILING_VENVS if python_of(options.venvs, v).exists()]
    for venv in rotated(ceiling_venvs, round_index):
        command: list[str | Path] = [python_of(options.venvs, venv), WORKLOAD, "ceiling"]
        command += ["--url", options.url, "--seconds", str(options.seconds)]
        record = run_json(command, timeout_of(options))
        record.update(round=round_index, venv=venv, workload="ceiling")
        records.append(record)
        log(f"{_tag(options, round_index)} ceiling · {venv}: {describe(record)}")
    return records


def _measure_layer(
    options: argparse.Namespace, round_index: int, workload: Workload, layer: Layer
) -> dict[str, Any]:
    seconds = options.seconds * workload.scale
    command = measure_command(
        python_of(options.venvs, layer.venv),
        options.url,
        layer.path,
        layer.kind,
        workload.key,
        seconds,
        options.warmup,
    )
    tags = {"round": round_index, "key": layer.key, "workload": workload.key}
    record = measure_on(options.url, command, timeout_of(options), tags)
    log(f"{_tag(options, round_index)} {workload.key} · {layer.key}: {describe(record)}")
    return record


def describe(record: dict[str, Any]) -> str:
    """One line of progress for a measurement."""
    if not record.get("ok"):
        return f"FAILED: {record.get('error')}"
    if "ping_rates" in record:
        rates = record["ping_rates"]
        return f"{rates['client']:,.0f} PING/s (bare connection {rates['connection']:,.0f})"
    trips = sum(record["round_trips"].values()) / record["messages"]
    text = f"{record['rate']:,.0f} msgs/s, {trips:.2f} round trips/msg"
    if "latency" in record and record["workload"] == "ping-pong":
        text += f", p99 {record['latency']['p99'] * 1000:.2f} ms"
    if "connections" in record:
        text += f", {record['connections']['peak']} connections at peak"
    return text


def profile(options: argparse.Namespace, layer: Layer, stamp: str) -> int:
    """Record each workload of ``--profile`` on ``layer`` with py-spy: an SVG flame graph and a
    text summary (``reports/profile.py``) in ``<results>/profiles/``."""
    from reports.profile import summarise

    folder = options.results / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    name = layer.key.replace(" ", "-").replace("+", "-")
    failed = 0
    for workload in options.profile:
        base = folder / f"{stamp}-{name}-{workload}"
        if not _record_profile(options, layer, workload, base):
            failed += 1
            continue
        raw = base.with_suffix(".raw")
        base.with_suffix(".txt").write_text(
            f"py-spy, {layer.key} ({layer.path}), {workload}, {options.seconds} s measured "
            f"after a {options.warmup} s warm-up; {options.measured}\n\n"
            + summarise(raw, 30, label=f"{workload} on {layer.key}")
            + "\n"
        )
        raw.unlink()
        log(f"wrote {base}.svg and .txt")
    return 1 if failed else 0


def _record_profile(options: argparse.Namespace, layer: Layer, workload: str, base: Path) -> bool:
    """A flame graph and a raw recording of one measurement each; whether both worked."""
    for output, kind in (
        (base.with_suffix(".svg"), "flamegraph"),
        (base.with_suffix(".raw"), "raw"),
    ):
        reset_server(options.url)
        # --nonblocking: stopping the process for each sample (py-spy's default) makes
        # samples land on system calls far more often than the time spent there.
        command: list[str | Path] = [options.py_spy, "record", "--nonblocking", "--idle"]
        command += ["--rate", "200"]
        command += ["--format", kind, "--output", output, "--"]
        command += measure_command(
            python_of(options.venvs, layer.venv),
            options.url,
            layer.path,
            layer.kind,
            workload,
            options.seconds,
            options.warmup,
        )
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            log(f"profiling {workload} failed:\n{done.stderr[-2000:]}")
            return False
    return True
