"""The ``--burst`` report: per burst, what each layer delivered, lost, skipped and dropped.

Ranges are the lowest and highest round, latencies and drain times medians over the rounds;
then the layers' packages and the servers' warnings. Reading only, no I/O.
"""

from __future__ import annotations

from typing import Any

from shared.stats import median


def _span(values: list[float], digits: int = 0, scale: float = 1.0) -> str:
    if not values:
        return "-"
    low, high = min(values) * scale, max(values) * scale
    if round(low, digits) == round(high, digits):
        return f"{low:,.{digits}f}"
    return f"{low:,.{digits}f}-{high:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def summary_row(key: str, runs: list[dict[str, Any]]) -> str:
    """One table row: a layer on one burst, over the rounds."""
    ok = [r for r in runs if r.get("ok")]
    if not ok:
        error = runs[0].get("error", "failed") if runs else "not run"
        return f"| {key} | failed: {str(error)[:80]} | | | | | | | | | |"
    expected = ok[0]["expected"]
    lost = [r["lost"] / r["expected"] * 100 for r in ok]
    counted = [r["counters"] for r in ok if "counters" in r]
    skipped = [c.get("group_members_full", 0) for c in counted]
    dropped = [c.get("dropped_from_buffers", 0) for c in counted]
    cells = [
        key,
        f"{expected:,}",
        _span([r["delivered"] for r in ok]),
        _span(lost, 1) + " %",
        str(sum(r["duplicates"] for r in ok) + sum(r["reordered"] for r in ok)),
        _ms(median(r["latency_p50"] for r in ok)),
        _ms(median(r["latency_p99"] for r in ok)),
        _span([r["drain_seconds"] for r in ok], 2),
        _span(skipped) if counted else "n/a",
        _span(dropped) if counted else "n/a",
        f"{sum(1 for r in ok if r['complete'])}/{len(runs)}",
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    records = result["records"]
    lines = [
        f"# Bursts in the example chat's room, {result['started']}",
        "",
        f"Measured: {result['measured']}. {result['rounds']} rounds, the layers' order rotated "
        f"every round; every run on a fresh example (private valkey-server "
        f"{result['server_version']}, two uvicorn processes). Machine: {result['machine']}, "
        f"load average {result['load_before']:.2f} at the start.",
        "",
        "N clients in one room, half on each process, each sending K messages 5 ms apart; every "
        "client should receive all N x K (expected = N x N x K deliveries). Ranges are the "
        "lowest and highest round; latencies (send to receipt, over every delivery of a run) "
        "and drain (last send to last receipt) are medians over the rounds. *skipped*: members "
        "that group_send skipped as full, counted by the senders; *dropped*: messages dropped "
        "from full receive buffers in the receiving process (n/a: the layer keeps no counters). "
        "*dup/reord*: duplicates plus out-of-order receipts, summed over the rounds. "
        "*complete*: runs in which every client got everything; in the others, drain is the "
        "time to the last message that did arrive.",
        "",
    ]
    for clients, messages in result["bursts"]:
        lines += [f"## {clients} clients x {messages} messages", ""]
        lines.append(
            "| layer | expected | delivered | lost | dup/reord | p50 ms | p99 ms | drain s "
            "| skipped | dropped | complete |"
        )
        lines.append("| --- |" + " ---: |" * 10)
        for layer in result["layers"]:
            runs = [
                r
                for r in records
                if r["key"] == layer["key"] and (r["clients"], r["messages"]) == (clients, messages)
            ]
            lines.append(summary_row(layer["key"], runs))
        lines.append("")
    lines += _environments(result)
    return "\n".join(lines)


def _environments(result: dict[str, Any]) -> list[str]:
    lines = ["## Layers", "", "| layer | class | options | packages |", "| --- | --- | --- | --- |"]
    for layer in result["layers"]:
        packages = result["environments"].get(layer["venv"], {})
        listed = ", ".join(f"{name} {version}" for name, version in sorted(packages.items()))
        options = "capacity = N x K" if layer["options"] == "burst" else "defaults"
        lines.append(f"| {layer['key']} | `{layer['path']}` | {options} | {listed} |")
    lines.append("")
    notes: dict[str, list[str]] = {}
    for record in result["records"]:
        for line in record.get("log_tail", []):
            notes.setdefault(record["key"], []).append(line)
    if notes:
        lines += ["## Server log lines (per run: how often, and the first of each kind)", ""]
        for key, kept in notes.items():
            lines += [f"- {key}:", "", "  ```"]
            lines += [f"  {line}" for line in dict.fromkeys(kept)][:8]
            lines += ["  ```", ""]
    return lines


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs as one: their rounds one after the other, every burst and layer of any."""
    if len(results) == 1:
        return results[0]
    pooled = dict(results[0], records=[], bursts=[], layers=[], environments={})
    offset = 0
    for result in results:
        for record in result["records"]:
            pooled["records"].append({**record, "round": record["round"] + offset})
        offset += result["rounds"]
        pooled["bursts"] += [b for b in result["bursts"] if b not in pooled["bursts"]]
        pooled["layers"] += [x for x in result["layers"] if x not in pooled["layers"]]
        pooled["environments"].update(result["environments"])
    pooled["rounds"] = offset
    pooled["started"] = " + ".join(result["started"] for result in results)
    pooled["measured"] = "; ".join(dict.fromkeys(result["measured"] for result in results))
    pooled["load_before"] = max(result["load_before"] for result in results)
    return pooled
