"""The main benchmark's records summed up: medians over rounds, and ratios within rounds.

A record is what one ``workload.py`` process reported, tagged with its round, layer and
workload. A layer and its peer (or its baseline build) are measured seconds apart within a
round, so every ratio is taken within a round and only then summed up by its median: dividing
medians would mix rounds measured while the machine did different things. Reading only, no
I/O; ``reports/benchmark.py`` turns a summary into Markdown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from catalogue import BASELINE_OF, CEILING_VENVS, LAYERS, WORKLOADS, Layer
from shared.stats import median


@dataclass
class Summary:
    """Medians over the rounds that succeeded."""

    runs: int
    ok: int
    rate: float | None = None  # messages (deliveries) per second
    spread: tuple[float, float] | None = None  # lowest and highest round of the main number
    operation_rate: float | None = None  # sends, group_sends or ping-pongs per second
    p50: float | None = None  # seconds: ping-pong round trip or group_send call
    p99: float | None = None
    commands: float | None = None  # server commands per delivered message
    round_trips: float | None = None  # client round trips per delivered message
    sender_round_trips: float | None = None  # the sender's round trips per operation
    commands_per_operation: float | None = None
    round_trips_per_operation: float | None = None
    command_mix: dict[str, float] | None = None  # server commands per message, by command
    #: Per round: this round's number divided by the peer's in the same round; and medians.
    ratios: list[float] | None = None
    p99_ratios: list[float] | None = None
    ratio: float | None = None
    p99_ratio: float | None = None
    #: ``concurrent-*``: connections the process held at peak and opened during the epoch.
    peak_connections: float | None = None
    opened_connections: float | None = None
    #: Per round: this layer's rate divided by that of the baseline build (BASELINE_OF).
    baseline_ratios: list[float] | None = None
    baseline_ratio: float | None = None
    errors: list[str] | None = None


def summarise(records: list[dict[str, Any]]) -> Summary:
    good = [r for r in records if r.get("ok")]
    summary = Summary(runs=len(records), ok=len(good))
    summary.errors = sorted({str(r.get("error")) for r in records if not r.get("ok")}) or None
    if not good:
        return summary

    def per(field: Callable[[dict[str, Any]], float]) -> float | None:
        return median(field(r) for r in good)

    summary.rate = per(lambda r: r["rate"])
    main = [r["operation_rate"] if r["workload"] == "ping-pong" else r["rate"] for r in good]
    summary.spread = (min(main), max(main))
    summary.operation_rate = per(lambda r: r["operation_rate"])
    if all("latency" in r for r in good):
        summary.p50 = per(lambda r: r["latency"]["p50"])
        summary.p99 = per(lambda r: r["latency"]["p99"])
    summary.commands = per(lambda r: r["commands"] / r["messages"])
    summary.round_trips = per(lambda r: sum(r["round_trips"].values()) / r["messages"])
    summary.commands_per_operation = per(lambda r: r["commands"] / r["operations"])
    summary.round_trips_per_operation = per(
        lambda r: sum(r["round_trips"].values()) / r["operations"]
    )
    if all("sender" in r["round_trips"] for r in good):
        summary.sender_round_trips = per(lambda r: r["round_trips"]["sender"] / r["operations"])
    if all("connections" in r for r in good):
        summary.peak_connections = per(lambda r: r["connections"]["peak"])
        summary.opened_connections = per(lambda r: r["connections"]["opened"])
    names = sorted({name for r in good for name in r["command_calls"]})
    summary.command_mix = {
        name: median(r["command_calls"].get(name, 0) / r["messages"] for r in good) or 0.0
        for name in names
    }
    return summary


def round_ratios(
    records: list[dict[str, Any]], workload: str, layer: Layer, peer_key: str | None = None
) -> tuple[list[float], list[float]]:
    """Per round, (rate, p99) divided by those of the peer (or of ``peer_key``) in the same
    round.

    A layer and its peer are measured seconds apart within a round, so dividing within the
    round cancels slow changes in what else the machine is doing; ratios of the medians
    would not.
    """
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for record in records:
        if record.get("workload") == workload and record.get("ok"):
            by_round.setdefault(record["round"], {})[record["key"]] = record
    rates: list[float] = []
    p99s: list[float] = []
    for found in by_round.values():
        mine, peer = found.get(layer.key), found.get(peer_key or layer.peer)
        if mine is None or peer is None:
            continue
        rates.append(mine["rate"] / peer["rate"])
        if "latency" in mine and "latency" in peer and peer["latency"]["p99"] > 0:
            p99s.append(mine["latency"]["p99"] / peer["latency"]["p99"])
    return rates, p99s


def summarise_all(
    records: list[dict[str, Any]], layers: list[Layer]
) -> tuple[dict[str, dict[str, Summary]], dict[str, dict[str, float | None]]]:
    summaries: dict[str, dict[str, Summary]] = {}
    for workload in WORKLOADS:
        for layer in layers:
            mine = [
                r
                for r in records
                if r.get("workload") == workload.key and r.get("key") == layer.key
            ]
            if mine:
                summaries.setdefault(workload.key, {})[layer.key] = summarise(mine)
        for layer in layers:
            summary = summaries.get(workload.key, {}).get(layer.key)
            if summary is not None:
                summary.ratios, summary.p99_ratios = round_ratios(records, workload.key, layer)
                summary.ratio = median(summary.ratios)
                summary.p99_ratio = median(summary.p99_ratios)
                if layer.key in BASELINE_OF:
                    baseline = BASELINE_OF[layer.key]
                    rates = round_ratios(records, workload.key, layer, baseline)[0]
                    summary.baseline_ratios = rates
                    summary.baseline_ratio = median(summary.baseline_ratios)
    ceilings: dict[str, dict[str, float | None]] = {}
    for venv in CEILING_VENVS:
        mine = [r for r in records if r.get("workload") == "ceiling" and r.get("venv") == venv]
        good = [r for r in mine if r.get("ok")]
        if mine:
            ceilings[venv] = {
                "client": median(r["ping_rates"]["client"] for r in good),
                "connection": median(r["ping_rates"]["connection"] for r in good),
            }
    return summaries, ceilings


def environments(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The package versions each virtual environment reported."""
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        venv = record.get("venv")
        if venv is None:
            venv = next((layer.venv for layer in LAYERS if layer.key == record.get("key")), None)
        if venv and "environment" in record:
            found.setdefault(venv, record["environment"])
    return found


def rates_by_round(records: list[dict[str, Any]], workload: str, key: str) -> dict[int, float]:
    return {
        r["round"]: r["rate"]
        for r in records
        if r.get("ok") and r.get("workload") == workload and r.get("key") == key
    }


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result holding the rounds of several runs (numbered on), described by the last."""
    if len(results) == 1:
        return results[0]
    pooled = dict(results[-1])
    records: list[dict[str, Any]] = []
    layers: dict[str, dict[str, Any]] = {}
    environments: dict[str, Any] = {}
    offset = 0
    for result in results:
        for record in result["records"]:
            records.append({**record, "round": record["round"] + offset})
        offset += result["options"]["rounds"]
        layers.update((layer["key"], layer) for layer in result["layers"])
        environments.update(result["environments"])
    pooled.update(
        records=records,
        layers=[layers[layer.key] for layer in LAYERS if layer.key in layers],
        environments=environments,
        skipped={},
        options={**pooled["options"], "rounds": offset},
        started=" + ".join(result["started"] for result in results),
        measured="; ".join(
            str(result.get("measured", f"working tree near {result['git']['commit'][:12]}"))
            for result in results
        ),
        pooled=True,
    )
    return pooled
