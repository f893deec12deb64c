"""Bursts in the example chat's room: how many messages each layer delivers, how late, how fast.

``bench/run --burst`` calls, with the ``ours`` virtual environment's Python (the clients need
``websockets``),

    python bench/burst_bench.py --venvs bench/.venvs [--rounds 3] [--bursts 10x5,20x10,60x20]

For every round, burst and layer (the layers' order rotated by one per round), it starts the
example chat as ``example/run`` does (``example/launcher.py``: a private valkey-server and two
uvicorn processes, run by the Python of the layer's virtual environment, so each layer is
served by its own package), runs ``example/burst.py``'s clients against it (N websocket
clients in one room, half on each process, each sending K messages 5 ms apart), reads the
servers' layer counters where the layer keeps them (the example's ``/stats/`` view), and stops
it all. Results go to ``bench/results/burst-<UTC time>.{json,md}`` (``reports/burst.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from catalogue import BURST_LAYERS, DEFAULT_BURSTS, BurstLayer
from reports.burst import markdown, pool
from shared.machine import cpus_and_python, installed_server_version, load_average
from shared.procs import log, python_of, versions_in
from shared.resultfiles import RESULTS, save_results, stamp_of
from shared.stats import rotated

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
EXAMPLE = REPO / "example"
#: The packages that serve the example, whose versions each venv reports.
PACKAGES = ["channels-valkey", "channels-redis", "channels", "django", "uvicorn", "valkey"]
PACKAGES += ["redis", "websockets"]

#: Seconds without a new message before a run stops waiting (when the servers' counters, if
#: any, account for what has not arrived; see example/burst.py).
QUIET = 3.0
#: Seconds after the last send that a run waits at most for the room to drain.
DRAIN_TIMEOUT = 120.0


def _load_example() -> tuple[Any, Any]:
    """The example's launcher and burst client (imported here: the client needs websockets)."""
    sys.path.insert(0, str(EXAMPLE))
    import burst
    import launcher

    return launcher, burst


def measure(
    modules: tuple[Any, Any], python: Path, layer: BurstLayer, clients: int, messages: int
) -> dict[str, Any]:
    """One burst on a freshly started example; its summary and the servers' counters."""
    launcher, burst = modules
    output: list[str] = []
    example = launcher.Example(
        ports=[0, 0],
        backend=layer.path,
        sink=output.append,
        python=str(python),
        layer_config=layer.config(clients, messages),
    )
    record: dict[str, Any] = {"ok": False}
    try:
        example.start()
        servers = [server.url for server in example.servers]
        before = burst.layer_stats(servers)
        accounted = None
        if before is not None:
            accounted = _accounting(burst, servers, before, clients, messages)
        run = burst.burst(
            servers, clients, messages, quiet=QUIET, timeout=DRAIN_TIMEOUT, accounted=accounted
        )
        result = asyncio.run(run)
        record.update(result.summary(), ok=True)
        after = burst.layer_stats(servers)
        if before is not None and after is not None:
            record["counters"] = {name: after[name] - before.get(name, 0) for name in after}
        if (dead := example.dead_child()) is not None:
            record.update(ok=False, error=f"{dead.name} exited during the burst")
    except Exception as error:  # a layer that cannot serve the example is a result too
        record["error"] = f"{type(error).__name__}: {error}"
    finally:
        example.stop()
    record["log_tail"] = _interesting(output)
    return record


def _accounting(
    burst: Any, servers: list[str], before: dict[str, float], clients: int, messages: int
) -> Any:
    """Whether every message of the burst arrived, was skipped by group_send or was dropped
    from a full buffer, by the servers' counters: only then has a quiet room finished."""

    def accounted(delivered: int) -> bool:
        now = burst.layer_stats(servers) or {}
        counted = {name: now[name] - before.get(name, 0) for name in now}
        missing = counted.get("group_members_full", 0) + counted.get("dropped_from_buffers", 0)
        sent = counted.get("group_sends", 0) >= clients * messages
        return bool(sent and delivered + missing >= clients * clients * messages)

    return accounted


def _interesting(output: list[str], limit: int = 12) -> list[str]:
    """The servers' warnings and errors: the first line of each kind (its first words, without
    the server's name) with how often that kind came up."""
    words = ("Dropped", "rror", "WARNING", "Traceback", "imeout")
    first: dict[str, str] = {}
    counts: dict[str, int] = {}
    for line in output:
        if not any(word in line for word in words):
            continue
        kind = " ".join(line.split()[1:5])
        counts[kind] = counts.get(kind, 0) + 1
        first.setdefault(kind, line[:240])
    kinds = list(first)[:limit]
    return [f"{counts[kind]} x {first[kind]}" for kind in kinds]


def run_all(
    options: argparse.Namespace, layers: list[BurstLayer], bursts: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    modules = _load_example()
    records: list[dict[str, Any]] = []
    for round_index in range(options.rounds):
        for clients, messages in bursts:
            for layer in rotated(layers, round_index):
                python = python_of(options.venvs, layer.venv)
                record = measure(modules, python, layer, clients, messages)
                record.update(round=round_index, key=layer.key, clients=clients, messages=messages)
                records.append(record)
                tag = f"[round {round_index + 1}/{options.rounds}] {clients}x{messages}"
                log(f"{tag} · {layer.key}: {describe(record)}")
    return records


def describe(record: dict[str, Any]) -> str:
    if not record.get("ok"):
        return f"FAILED: {record.get('error')}"
    text = f"{record['delivered']:,} of {record['expected']:,} delivered"
    text += f", {record['duplicates']} duplicates"
    if record["latency_p99"] is not None:
        text += f", p99 {record['latency_p99'] * 1000:.0f} ms"
    text += f", drained in {record['drain_seconds']:.2f} s"
    if "counters" in record:
        counters = record["counters"]
        text += f"; skipped {counters.get('group_members_full', 0):.0f}"
        text += f", dropped {counters.get('dropped_from_buffers', 0):.0f}"
    return text


def parse_bursts(text: str) -> list[tuple[int, int]]:
    bursts = []
    for item in text.split(","):
        clients, _, messages = item.strip().partition("x")
        bursts.append((int(clients), int(messages)))
    return bursts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venvs", type=Path, default=BENCH / ".venvs")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--rounds", type=int, default=3, help="default: 3")
    parser.add_argument(
        "--bursts",
        default=",".join(f"{c}x{m}" for c, m in DEFAULT_BURSTS),
        help="CLIENTSxMESSAGES, comma-separated; default: 10x5,20x10,60x20",
    )
    parser.add_argument(
        "--layers",
        default="",
        help="comma-separated subset of: " + ", ".join(layer.key for layer in BURST_LAYERS),
    )
    parser.add_argument("--no-save", action="store_true", help="print, do not write results")
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print an earlier run's report; given several runs, pool their rounds",
    )
    parser.add_argument("--measured", default="this package as installed in the venvs")
    options = parser.parse_args()
    if options.render:
        print(markdown(pool([json.loads(path.read_text()) for path in options.render])))
        return 0
    try:
        bursts = parse_bursts(options.bursts)
    except ValueError:
        parser.error("--bursts takes CLIENTSxMESSAGES pairs, e.g. 20x10,60x20")
    wanted = {k.strip() for k in options.layers.split(",") if k.strip()}
    unknown = wanted - {layer.key for layer in BURST_LAYERS}
    if unknown:
        parser.error(f"unknown layers: {', '.join(sorted(unknown))}")
    layers = [layer for layer in BURST_LAYERS if not wanted or layer.key in wanted]
    started = datetime.now(timezone.utc)
    result: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "measured": options.measured,
        "rounds": options.rounds,
        "bursts": bursts,
        "machine": cpus_and_python(),
        "load_before": load_average(),
        "server_version": installed_server_version(),
        "layers": [asdict(layer) for layer in layers],
        "environments": {
            venv: versions_in(python_of(options.venvs, venv), PACKAGES)
            for venv in {layer.venv for layer in layers}
        },
    }
    result["records"] = run_all(options, layers, bursts)
    report = markdown(result)
    print(report)
    if not options.no_save:
        stamp = stamp_of(started, "burst-")
        save_results(options.results, stamp, result, report)
        log(f"wrote {options.results / stamp}.json and .md")
    return 0 if all(r.get("ok") for r in result["records"]) else 1
