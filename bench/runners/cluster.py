"""``bench/run --cluster``: our core layer on one server, on a 1-primary and on a 3-primary cluster.

``driver.py --cluster`` (``bench/run`` passes the standalone server it started as ``--url``)
starts private clusters (``shared/localcluster.py``, no replicas), then measures every workload
of the benchmark, plus two that spread over the slots (``spread-24``, ``spread-24-4proc``), on
each of the three, interleaved: the topologies' order is rotated by one every round. Each
measurement is ``workload.py measure`` with the same exactness checks as the main benchmark
(every message received once and in order, nothing left queued on any primary). Besides
messages/s, commands and round trips per message, it records the CPU seconds of the client
processes, of the servers (every node, from ``INFO cpu``) and of the whole machine during the
measured epoch. Results go to ``bench/results/cluster-<UTC time>.{json,md}``.

Only this package's core layer runs: the peers do not support a cluster.
"""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import datetime, timezone
from typing import Any

from catalogue import CLUSTER_WORKLOAD_KEYS, CLUSTER_WORKLOADS, LAYERS, STANDALONE, Layer, Workload
from reports.cluster import Topology, main_number, markdown
from shared.localcluster import LocalCluster
from shared.machine import git_state, load_average, machine
from shared.procs import log, python_of
from shared.resultfiles import save_results, stamp_of
from shared.server_state import server_version
from shared.stats import rotated

from runners.benchmark import measure_command, measure_on, recorded_options, timeout_of


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
    load_before = load_average()
    topologies = [Topology(STANDALONE, "one valkey-server", options.url, 1)]
    clusters: list[LocalCluster] = []
    try:
        for primaries in options.primaries:
            log(f"starting a cluster of {primaries} primar{'y' if primaries == 1 else 'ies'}")
            cluster = LocalCluster(primaries, name=f"bench{primaries}").start()
            clusters.append(cluster)
            what = f"a cluster of {primaries} primar{'y' if primaries == 1 else 'ies'}, no replicas"
            topologies.append(Topology(f"cluster-{primaries}", what, cluster.url, primaries))
        records = measure_rounds(options, layer, workloads, topologies)
    finally:
        for cluster in clusters:
            cluster.stop()
    result: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "options": {
            **recorded_options(options, [w.key for w in workloads]),
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
        stamp = stamp_of(started, "cluster-")
        save_results(options.results, stamp, result, report)
        log(f"wrote {options.results / stamp}.json and .md")
    return 1 if any(not r.get("ok") for r in records) else 0


def measure_rounds(
    options: argparse.Namespace,
    layer: Layer,
    workloads: list[Workload],
    topologies: list[Topology],
) -> list[dict[str, Any]]:
    """Every round, every workload on every topology, the topologies' order rotated."""
    records: list[dict[str, Any]] = []
    python = python_of(options.venvs, layer.venv)
    for round_index in range(options.rounds):
        tag = f"[round {round_index + 1}/{options.rounds}]"
        for workload in workloads:
            for topology in rotated(topologies, round_index):
                seconds = options.seconds * workload.scale
                command = measure_command(
                    python, topology.url, layer.path, "core", workload.key, seconds, options.warmup
                )
                tags = {"round": round_index, "key": topology.key, "workload": workload.key}
                record = measure_on(topology.url, command, timeout_of(options), tags)
                records.append(record)
                log(f"{tag} {workload.key} · {topology.key}: {describe(record)}")
    return records


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
