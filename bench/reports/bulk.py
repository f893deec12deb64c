"""The ``--bulk`` report: bulk sends against loops, and the message-size sweep.

Rates are medians over the rounds with the lowest and highest round; every ``x ...`` column
is a ratio taken within each round (the two measurements seconds apart), then its median.
Reading only, except that ``render`` of a single run writes its ``.md`` again, as its
``--render`` has always done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from catalogue import BULK_BATCHES, BULK_GROUP_MEMBERS, BULK_MODES, BULK_SIZE_LAYERS, BULK_SIZES
from shared.stats import median, within_rounds

Key = tuple[Any, ...]
Groups = dict[Key, list[dict[str, Any]]]


def key_of(record: dict[str, Any]) -> Key:
    """What a record measured: (layer, workload, batch, mode), or (layer, "size", size)."""
    if record["workload"] == "size":
        return (record["layer"], "size", record["size"])
    return (record["layer"], record["workload"], record["batch"], record["mode"])


def _ratio(groups: Groups, key: Key, reference: Key) -> str:
    """The median over the rounds of the two measurements' ratio within each round."""
    ours = {r["round"]: r["sent"] / r["seconds"] for r in groups.get(key, []) if r.get("ok")}
    theirs = {
        r["round"]: r["sent"] / r["seconds"] for r in groups.get(reference, []) if r.get("ok")
    }
    found = median(within_rounds(ours, theirs))
    return "" if found is None else f"{found:.2f}"


def _rate(groups: Groups, key: Key, fan_out: int = 1) -> tuple[str, str, float | None]:
    """The rate as shown (median, lowest-highest), round trips per message, and the median."""
    runs = [r for r in groups.get(key, []) if r.get("ok")]
    if not runs:
        return "failed", "", None
    rates = [r["sent"] * fan_out / r["seconds"] for r in runs]
    trips = median([r["round_trips"] / r["sent"] for r in runs]) or 0.0
    middle = median(rates) or 0.0
    low, high = min(rates), max(rates)
    return f"{middle:,.0f} ({low:,.0f}-{high:,.0f})", f"{trips:.3f}", middle


def markdown(result: dict[str, Any]) -> str:
    groups: Groups = {}
    for record in result["records"]:
        groups.setdefault(key_of(record), []).append(record)
    lines = _header(result)
    workloads = result.get("workloads", ["group", "send", "size"])
    for workload, title, unit, fan_out in (
        ("send", "send to one normal channel", "messages/s", 1),
        (
            "group",
            f"group of {BULK_GROUP_MEMBERS} normal channels",
            "deliveries/s",
            BULK_GROUP_MEMBERS,
        ),
    ):
        if workload in workloads:
            lines += _bulk_table(groups, workload, title, unit, fan_out)
    if "size" in workloads:
        lines += _size_table(groups)
    failed = [r for r in result["records"] if not r.get("ok")]
    if failed:
        lines += ["", "## Failed measurements", ""]
        lines += [f"- {key_of(r)}: {r.get('error')}" for r in failed]
    return "\n".join(lines) + "\n"


def _header(result: dict[str, Any]) -> list[str]:
    return [
        f"# Bulk sends and message sizes, {result['started']}",
        "",
        f"Measured: {result['measured']}. {result['rounds']} rounds of {result['seconds']} s "
        "per measurement, the order of the measurements rotated every round; medians, with "
        "the lowest and highest round; ratios (`x ...`) are taken within each round, then "
        f"their median. Valkey {result['server']}. Machine: "
        f"{result['machine']['cores']} CPUs, load average {result['load']} at the start.",
        "",
        "One sender task in one process, nobody receiving (the queues are emptied between "
        "measurements). `loop`: N awaited `send` calls; `gather`: N concurrent `send` calls "
        "(order not kept); `bulk`: one `send_multiple` / `group_send_multiple` call of N "
        "messages. Round trips are counted in the client (one per command or pipeline written).",
        "",
    ]


def _bulk_table(groups: Groups, workload: str, title: str, unit: str, fan_out: int) -> list[str]:
    lines = [
        f"## {title}",
        "",
        f"| layer | N | mode | {unit} | round trips/message | x ours loop |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for batch in BULK_BATCHES:
        for layer, modes in BULK_MODES:
            base = "ours pubsub" if "pubsub" in layer else "ours"
            reference = (base, workload, batch, "loop")
            # A pub/sub group send is one publish whatever the members: counted as such.
            spread = 1 if "pubsub" in layer else fan_out
            for mode in modes:
                shown, trips, _ = _rate(groups, (layer, workload, batch, mode), spread)
                times = _ratio(groups, (layer, workload, batch, mode), reference)
                lines.append(f"| {layer} | {batch} | {mode} | {shown} | {trips} | {times} |")
    lines += [
        "",
        "(pub/sub rows: `x ours loop` is against `ours pubsub` loop, and the rate is "
        "messages published/s: a pub/sub group send is one publish whatever the members, "
        "which the publisher does not know.)"
        if workload == "group"
        else "(pub/sub rows: `x ours loop` is against `ours pubsub` loop.)",
        "",
    ]
    return lines


def _size_table(groups: Groups) -> list[str]:
    lines = [
        "## Message size: send/receive on one normal channel",
        "",
        "A sender and a receiver task in one process, at most 50 messages in flight; "
        "`x 256 B` is messages/s against the same layer's 256-byte messages.",
        "",
        "| size | layer | messages/s | MB/s | x 256 B |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for size in BULK_SIZES:
        for layer in BULK_SIZE_LAYERS:
            shown, _, value = _rate(groups, (layer, "size", size))
            megabytes = f"{value * size / 1e6:,.1f}" if value else ""
            times = _ratio(groups, (layer, "size", size), (layer, "size", BULK_SIZES[0]))
            label = f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
            lines.append(f"| {label} | {layer} | {shown} | {megabytes} | {times} |")
    return lines


def render(paths: list[str]) -> str:
    """The report of one earlier run (its .md rewritten), or of several pooled: their rounds
    side by side, each ratio still taken within its own round."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    if len(runs) == 1:
        report = markdown(runs[0])
        Path(paths[0]).with_suffix(".md").write_text(report)
        return report
    records: list[dict[str, Any]] = []
    offset = 0
    for run in runs:
        records += [{**record, "round": record["round"] + offset} for record in run["records"]]
        offset += run["rounds"]
    pooled = {
        **runs[-1],
        "started": " + ".join(run["started"] for run in runs),
        "measured": "; ".join(sorted({run["measured"] for run in runs})),
        "rounds": offset,
        "load": ", ".join(run["load"] for run in runs),
        "records": records,
        "workloads": sorted({w for run in runs for w in run.get("workloads", ["size"])}),
    }
    return markdown(pooled)
