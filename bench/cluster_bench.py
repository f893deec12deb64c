"""``bench/run --cluster``: our core layer on one server, on a 1-primary and on a 3-primary cluster.

``driver.py --cluster`` (``bench/run`` passes the standalone server it started as ``--url``)
starts private clusters (:mod:`localcluster`, no replicas), then measures every workload of the
benchmark, plus two that spread over the slots (``spread-24``, ``spread-24-4proc``), on each
of the three, interleaved: the topologies' order is rotated by one every round. Each
measurement is ``workload.py measure`` with the same exactness checks as the main benchmark
(every message received once and in order, nothing left queued on any primary). Besides
messages/s, commands and round trips per message, it records the CPU seconds of the client
processes, of the servers (every node, from ``INFO cpu``) and of the whole machine during the
measured epoch. Results go to ``bench/results/cluster-<UTC time>.{json,md}``.

Only this package's core layer runs: the peers do not support a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from driver import (
    LAYERS,
    WORKLOAD,
    WORKLOADS,
    Layer,
    Workload,
    fmt,
    git_state,
    leftover_messages,
    log,
    machine,
    median,
    python_of,
    reset_server,
    rotated,
    run_json,
    server_version,
)
from localcluster import LocalCluster

SPREAD_WORKLOADS = (
    Workload(
        "spread-24",
        "24 normal channels, 8 in each third of the slots, each with a receiver; one sender "
        "sends to them in turn; one process",
        ("core",),
        "messages/s",
    ),
    Workload(
        "spread-24-4proc",
        "the same 24 channels split over 4 processes (6 each, 2 per third of the slots), each "
        "with one sender and a receiver per channel",
        ("core",),
        "messages/s",
    ),
)
#: The main benchmark's default workloads and the spread ones; not ``concurrent-*``, whose
#: connection count reads one server.
CLUSTER_WORKLOADS = (*(w for w in WORKLOADS if w.default), *SPREAD_WORKLOADS)
CLUSTER_WORKLOAD_KEYS = tuple(w.key for w in CLUSTER_WORKLOADS)

#: How many queues (slots) each workload writes to, for the report.
QUEUES = {
    "send-receive": "1 queue",
    "send-receive-2proc": "1 queue",
    "fan-in-200": "1 queue (one process's)",
    "group-1000": "group key + 1 process queue",
    "group-1000-4proc": "group key + 4 process queues",
    "ping-pong": "2 process queues, one message at a time",
    "spread-24": "24 queues, 8 per primary of 3",
    "spread-24-4proc": "24 queues, 8 per primary of 3",
}

STANDALONE = "standalone"


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


def round_ratios(records: list[dict[str, Any]], workload: str, mine: str, base: str) -> list[float]:
    """Per round: ``mine``'s main number divided by ``base``'s in the same round."""
    by_round: dict[int, dict[str, float]] = {}
    for record in records:
        if record.get("workload") == workload and record.get("ok"):
            by_round.setdefault(record["round"], {})[record["key"]] = main_number(record)
    return [
        found[mine] / found[base] for found in by_round.values() if mine in found and base in found
    ]


def fmt_ratios(values: list[float]) -> str:
    if not values:
        return "-"
    text = f"{median(values):.2f}x"
    if len(values) > 1:
        text += f" ({min(values):.2f}-{max(values):.2f})"
    return text


def markdown(result: dict[str, Any]) -> str:
    records: list[dict[str, Any]] = result["records"]
    topologies = [Topology(**t) for t in result["topologies"]]
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

    cells: dict[tuple[str, str], Cell] = {}
    for workload in CLUSTER_WORKLOADS:
        for topology in topologies:
            mine = [
                r for r in records if r["workload"] == workload.key and r["key"] == topology.key
            ]
            if mine:
                cells[workload.key, topology.key] = cell(mine)
    measured = [w for w in CLUSTER_WORKLOADS if any((w.key, t.key) in cells for t in topologies)]
    clusters = [t for t in topologies if t.key != STANDALONE]

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
            row += f" {fmt_ratios(round_ratios(records, workload.key, numerator, base))} |"
        add(row)
    add("")
    add(
        "Ratios are taken within each round (the two measurements seconds apart), then the "
        "median and, in brackets, the lowest and highest round. ping-pong is in ping-pongs/s, "
        "group workloads in deliveries/s."
    )
    add("")

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

    add("")
    add("## How to read this")
    add("")
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
        f"work and interrupt handling included. The machine has {m['cores']} cores: when "
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
    return "\n".join(lines)


def choose_layer(options: argparse.Namespace) -> Layer:
    wanted = [k.strip() for k in options.layers.split(",") if k.strip()] or ["ours"]
    chosen = [layer for layer in LAYERS if layer.key in wanted]
    if len(chosen) != 1 or chosen[0].key not in ("ours", "ours+pyparser"):
        raise SystemExit("--cluster runs one layer: --layers ours (default) or ours+pyparser")
    return chosen[0]


def run_cluster(options: argparse.Namespace) -> int:
    """Start the clusters, measure, write ``cluster-<UTC>.{json,md}``; 1 if a run failed."""
    layer = choose_layer(options)
    # A terminated run still stops its nodes and removes their directories (``finally``).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    unknown = set(options.workloads) - set(CLUSTER_WORKLOAD_KEYS)
    if unknown:
        raise SystemExit(f"unknown workloads: {', '.join(sorted(unknown))}")
    workloads = [w for w in CLUSTER_WORKLOADS if w.key in options.workloads]
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()[0]
    topologies = [Topology(STANDALONE, "one valkey-server", options.url, 1)]
    clusters: list[LocalCluster] = []
    records: list[dict[str, Any]] = []
    try:
        for primaries in options.primaries:
            log(f"starting a cluster of {primaries} primar{'y' if primaries == 1 else 'ies'}")
            cluster = LocalCluster(primaries, name=f"bench{primaries}").start()
            clusters.append(cluster)
            what = f"a cluster of {primaries} primar{'y' if primaries == 1 else 'ies'}, no replicas"
            topologies.append(Topology(f"cluster-{primaries}", what, cluster.url, primaries))
        timeout = 2 * options.seconds + options.warmup + 240
        for round_index in range(options.rounds):
            tag = f"[round {round_index + 1}/{options.rounds}]"
            for workload in workloads:
                for topology in rotated(topologies, round_index):
                    reset_server(topology.url)
                    command: list[Any] = [python_of(options.venvs, layer.venv), WORKLOAD]
                    command += ["measure", "--url", topology.url, "--layer", layer.path]
                    command += ["--kind", "core", "--workload", workload.key]
                    command += ["--seconds", str(options.seconds * workload.scale)]
                    command += ["--warmup", str(options.warmup)]
                    record = run_json(command, timeout)
                    record.update(round=round_index, key=topology.key, workload=workload.key)
                    record["leftover"] = leftover_messages(topology.url)
                    if record["leftover"] and record.get("ok"):
                        record.update(ok=False, error=f"{record['leftover']} messages left queued")
                    records.append(record)
                    log(f"{tag} {workload.key} · {topology.key}: {describe(record)}")
    finally:
        for cluster in clusters:
            cluster.stop()
    result: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "options": {
            "rounds": options.rounds,
            "seconds": options.seconds,
            "warmup": options.warmup,
            "workloads": [w.key for w in workloads],
            "primaries": options.primaries,
        },
        "machine": machine(),
        "server_version": server_version(options.url),
        "measured": options.measured,
        "git": git_state(),
        "load_before": load_before,
        "layer": {"key": layer.key, "path": layer.path, "venv": layer.venv},
        "topologies": [t.__dict__ for t in topologies],
        "records": records,
    }
    report = markdown(result)
    print(report)
    if not options.no_save:
        options.results.mkdir(parents=True, exist_ok=True)
        stamp = "cluster-" + started.strftime("%Y%m%dT%H%M%SZ")
        (options.results / f"{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
        (options.results / f"{stamp}.md").write_text(report)
        log(f"wrote {options.results / stamp}.json and .md")
    return 1 if any(not r.get("ok") for r in records) else 0


def describe(record: dict[str, Any]) -> str:
    if not record.get("ok"):
        return f"FAILED: {record.get('error')}"
    trips = sum(record["round_trips"].values()) / record["messages"]
    cpu = record["cpu"]
    elapsed = record["elapsed"]
    return (
        f"{main_number(record):,.0f}/s, {trips:.2f} round trips/msg, CPU cores client "
        f"{cpu['client'] / elapsed:.2f} servers {cpu['server'] / elapsed:.2f} "
        f"machine {cpu['machine'] / elapsed:.2f}"
    )
