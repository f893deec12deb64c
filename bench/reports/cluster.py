"""The cluster benchmark's report: scaling across topologies, CPU per message, per workload.

A record here is one workload on one topology (``standalone``, ``cluster-1``, ``cluster-3``)
in one round; ratios between topologies are taken within a round, as in the main report.
The CPU columns are what says whether a topology could add throughput on this machine, so
they sit beside the rates. Reading only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from catalogue import CLUSTER_WORKLOADS, QUEUES, STANDALONE, Workload
from shared.stats import median

from reports.formatting import fmt, fmt_ratios, section


@dataclass(frozen=True)
class Topology:
    key: str
    title: str
    url: str
    nodes: int


@dataclass
class Cell:
    """Medians over the rounds that succeeded, for one workload on one topology."""

    runs: int
    ok: int
    rate: float | None = None
    spread: tuple[float, float] | None = None
    commands: float | None = None
    round_trips: float | None = None
    client_cores: float | None = None
    server_cores: float | None = None
    machine_cores: float | None = None
    client_us: float | None = None  # client CPU microseconds per message
    server_us: float | None = None
    nodes_used: float | None = None  # nodes that ran more than 1% of the commands
    busiest: float | None = None  # the busiest node's share of the commands
    p99: float | None = None
    errors: list[str] | None = None


def main_number(record: dict[str, Any]) -> float:
    rate: float = record["operation_rate"] if record["workload"] == "ping-pong" else record["rate"]
    return rate


def cell(records: list[dict[str, Any]]) -> Cell:
    good = [r for r in records if r.get("ok")]
    result = Cell(runs=len(records), ok=len(good))
    result.errors = sorted({str(r.get("error")) for r in records if not r.get("ok")}) or None
    if not good:
        return result
    numbers = [main_number(r) for r in good]
    result.rate = median(numbers)
    result.spread = (min(numbers), max(numbers))
    result.commands = median(r["commands"] / r["messages"] for r in good)
    result.round_trips = median(sum(r["round_trips"].values()) / r["messages"] for r in good)
    result.client_cores = median(r["cpu"]["client"] / r["elapsed"] for r in good)
    result.server_cores = median(r["cpu"]["server"] / r["elapsed"] for r in good)
    result.machine_cores = median(r["cpu"]["machine"] / r["elapsed"] for r in good)
    result.client_us = median(1e6 * r["cpu"]["client"] / r["messages"] for r in good)
    result.server_us = median(1e6 * r["cpu"]["server"] / r["messages"] for r in good)
    shares = [[n / max(1, sum(r["commands_by_node"])) for n in r["commands_by_node"]] for r in good]
    result.nodes_used = median(sum(1 for share in mine if share > 0.01) for mine in shares)
    result.busiest = median(max(mine) for mine in shares)
    if all("latency" in r for r in good) and good[0]["workload"] == "ping-pong":
        result.p99 = median(r["latency"]["p99"] for r in good)
    return result


def topology_ratios(
    records: list[dict[str, Any]], workload: str, mine: str, base: str
) -> list[float]:
    """Per round: ``mine``'s main number divided by ``base``'s in the same round."""
    by_round: dict[int, dict[str, float]] = {}
    for record in records:
        if record.get("workload") == workload and record.get("ok"):
            by_round.setdefault(record["round"], {})[record["key"]] = main_number(record)
    return [
        found[mine] / found[base] for found in by_round.values() if mine in found and base in found
    ]


def markdown(result: dict[str, Any]) -> str:
    """The whole report of one ``--cluster`` run."""
    records: list[dict[str, Any]] = result["records"]
    topologies = [Topology(**t) for t in result["topologies"]]
    cells: dict[tuple[str, str], Cell] = {}
    for workload in CLUSTER_WORKLOADS:
        for topology in topologies:
            mine = [
                r for r in records if r["workload"] == workload.key and r["key"] == topology.key
            ]
            if mine:
                cells[workload.key, topology.key] = cell(mine)
    measured = [w for w in CLUSTER_WORKLOADS if any((w.key, t.key) in cells for t in topologies)]
    lines = _header(result, topologies)
    lines += _scaling(records, topologies, cells, measured)
    lines += _per_workload(topologies, cells, measured)
    lines += _how_to_read(result["machine"]["cores"])
    return "\n".join(lines)


def _header(result: dict[str, Any], topologies: list[Topology]) -> list[str]:
    """The title, and where, what and how it was measured."""
    options = result["options"]
    lines: list[str] = []
    add = lines.append
    add(f"# Cluster benchmark, {result['started']}")
    add("")
    m = result["machine"]
    add(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['system']}")
    add(f"- Server: valkey-server {result['server_version']}, private, no persistence, loopback")
    add(f"- Layer: `{result['layer']['path']}` from the `{result['layer']['venv']}` venv")
    add(f"- This package: {result['measured']}")
    add(
        f"- Load average when the run started: {result['load_before']:.2f} "
        "(other work on the machine makes rounds differ)"
    )
    add(
        "- Topologies, all running for the whole run (an idle node costs next to nothing): "
        + "; ".join(f"`{t.key}`: {t.title}" for t in topologies)
    )
    add(
        f"- Rounds: {options['rounds']}; each measurement {options['seconds']} s "
        f"(ping-pong {options['seconds'] * 2} s) after a {options['warmup']} s warm-up; "
        "topologies interleaved, their order rotated every round; medians over rounds"
    )
    add("")
    return lines


def _scaling(
    records: list[dict[str, Any]],
    topologies: list[Topology],
    cells: dict[tuple[str, str], Cell],
    measured: list[Workload],
) -> list[str]:
    """Each workload's main number on every topology, and their ratios within rounds."""
    clusters = [t for t in topologies if t.key != STANDALONE]
    lines: list[str] = []
    add = lines.append
    add("## Scaling")
    add("")
    header = "| workload | queues | " + " | ".join(f"{t.key}" for t in topologies)
    ratio_columns = []
    if len(clusters) >= 2:
        ratio_columns.append((clusters[-1].key, clusters[0].key))
    ratio_columns += [(t.key, STANDALONE) for t in clusters]
    header += " | " + " | ".join(f"{a} ÷ {b}" for a, b in ratio_columns) + " |"
    add(header)
    add("| --- | --- |" + " ---: |" * (len(topologies) + len(ratio_columns)))
    for workload in measured:
        row = f"| `{workload.key}` ({workload.what}) | {QUEUES.get(workload.key, '')} |"
        for topology in topologies:
            found = cells.get((workload.key, topology.key))
            row += f" {fmt(found.rate if found else None)} |"
        for numerator, base in ratio_columns:
            row += f" {fmt_ratios(topology_ratios(records, workload.key, numerator, base))} |"
        add(row)
    add("")
    add(
        "Ratios are taken within each round (the two measurements seconds apart), then the "
        "median and, in brackets, the lowest and highest round. ping-pong is in ping-pongs/s, "
        "group workloads in deliveries/s."
    )
    add("")
    return lines


def _per_workload(
    topologies: list[Topology], cells: dict[tuple[str, str], Cell], measured: list[Workload]
) -> list[str]:
    """A table per workload: rates, counts, CPU and how the commands spread over the nodes."""
    lines: list[str] = []
    add = lines.append
    add("## Per workload")
    for workload in measured:
        add("")
        add(f"### `{workload.key}`: {workload.title}")
        add("")
        add(
            "| topology | msgs/s | rounds | commands/msg | round trips/msg "
            "| CPU cores: client / servers / machine | CPU µs/msg: client / servers "
            "| nodes used, busiest's share of commands | ok runs |"
        )
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
        for topology in topologies:
            c = cells.get((workload.key, topology.key))
            if c is None:
                continue
            spread = f"{fmt(c.spread[0])}-{fmt(c.spread[1])}" if c.spread else "-"
            cores = (
                f"{fmt(c.client_cores, 2)} / {fmt(c.server_cores, 2)} / {fmt(c.machine_cores, 2)}"
            )
            micro = f"{fmt(c.client_us)} / {fmt(c.server_us)}"
            nodes = f"{fmt(c.nodes_used)}, {fmt(c.busiest, 0, 100)}%"
            digits = 3 if workload.key.startswith("group") else 2
            add(
                f"| {topology.key} | {fmt(c.rate)} | {spread} | {fmt(c.commands, digits)} "
                f"| {fmt(c.round_trips, digits)} | {cores} | {micro} | {nodes} | {c.ok}/{c.runs} |"
            )
        for topology in topologies:
            c = cells.get((workload.key, topology.key))
            for error in (c.errors if c else None) or ():
                add(f"\n{topology.key} failed: `{error}`")
    return lines


def _how_to_read(cores: int) -> list[str]:
    """What the columns mean and how they were counted."""
    lines = section("How to read this")
    add = lines.append
    add(
        "- Every run checks that each receiver got every message of the measured epoch exactly "
        "once and in order, and that no message was left queued on any primary (`ok runs`); "
        "senders keep at most 50 messages in flight (per process)."
    )
    add(
        "- `commands/msg` are the servers' (`total_commands_processed` of every node, Lua's "
        "inner commands included); `round trips/msg` are counted in the clients, as in the "
        "main benchmark (group workloads: per delivery, 1000 per group_send). `nodes used`: "
        "nodes that ran more than 1% of the commands, and the busiest node's share."
    )
    add(
        "- CPU cores: CPU seconds during the measured epoch divided by its length. `client`: "
        "the measuring process and its helpers (`time.process_time`); `servers`: every node's "
        "`used_cpu_user + used_cpu_sys`; `machine`: everything not idle in `/proc/stat`, other "
        f"work and interrupt handling included. The machine has {cores} cores: when "
        "`machine` is near that, adding servers cannot add throughput, it only shares the same "
        "cores among more processes."
    )
    add(
        "- A process-local channel's queue is shared by every channel of its process, so a "
        "workload of one process touches one slot and one primary whatever the cluster's "
        "size; only the `spread-*` workloads, with normal channels chosen so that 8 hash to "
        "each primary's slots, put load on all three primaries."
    )
    add("")
    return lines
