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
it all. Results go to ``bench/results/burst-<UTC time>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
EXAMPLE = REPO / "example"

#: Seconds without a new message before a run stops waiting (when the servers' counters, if
#: any, account for what has not arrived; see example/burst.py).
QUIET = 3.0
#: Seconds after the last send that a run waits at most for the room to drain.
DRAIN_TIMEOUT = 120.0


@dataclass(frozen=True)
class BurstLayer:
    key: str  # the name in tables
    venv: str  # under --venvs
    path: str  # module.Class
    #: "default" (the layer's defaults) or "burst" (capacity = the burst's clients x messages).
    options: str = "default"

    def config(self, clients: int, messages: int) -> dict[str, Any] | None:
        return {"capacity": clients * messages} if self.options == "burst" else None


CORE = "channels_valkey.core.ValkeyChannelLayer"
PUBSUB = "channels_valkey.pubsub.ValkeyPubSubChannelLayer"
LAYERS = (
    BurstLayer("ours", "ours", CORE),
    BurstLayer("ours capacity=burst", "ours", CORE, "burst"),
    BurstLayer("ours pubsub", "ours", PUBSUB),
    BurstLayer("ours pubsub capacity=burst", "ours", PUBSUB, "burst"),
    BurstLayer(
        "channels_redis pubsub", "channels-redis", "channels_redis.pubsub.RedisPubSubChannelLayer"
    ),
    BurstLayer("channels_redis", "channels-redis", "channels_redis.core.RedisChannelLayer"),
)
DEFAULT_BURSTS = ((10, 5), (20, 10), (60, 20))


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _load_example() -> tuple[Any, Any]:
    """The example's launcher and burst client (imported here: the client needs websockets)."""
    sys.path.insert(0, str(EXAMPLE))
    import burst
    import launcher

    return launcher, burst


def python_of(venvs: Path, venv: str) -> Path:
    return venvs / venv / "bin" / "python"


def versions(python: Path) -> dict[str, str]:
    """Versions of the packages that serve the example in one virtual environment."""
    names = ["channels-valkey", "channels-redis", "channels", "django", "uvicorn", "valkey"]
    names += ["redis", "websockets"]
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
    return json.loads(done.stdout) if done.returncode == 0 else {}


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
        return sent and delivered + missing >= clients * clients * messages

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


def rotated(items: list[Any], by: int) -> list[Any]:
    by %= max(1, len(items))
    return items[by:] + items[:by]


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


# --- summarising -------------------------------------------------------------------------------


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


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
        _ms(_median(r["latency_p50"] for r in ok)),
        _ms(_median(r["latency_p99"] for r in ok)),
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
    notes = {}
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


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


def server_version() -> str:
    try:
        done = subprocess.run(["valkey-server", "--version"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    words = [w for w in done.stdout.split() if w.startswith("v=")]
    return words[0][2:] if words else done.stdout.strip()


def parse_bursts(text: str) -> list[tuple[int, int]]:
    bursts = []
    for item in text.split(","):
        clients, _, messages = item.strip().partition("x")
        bursts.append((int(clients), int(messages)))
    return bursts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venvs", type=Path, default=BENCH / ".venvs")
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    parser.add_argument("--rounds", type=int, default=3, help="default: 3")
    parser.add_argument(
        "--bursts",
        default=",".join(f"{c}x{m}" for c, m in DEFAULT_BURSTS),
        help="CLIENTSxMESSAGES, comma-separated; default: 10x5,20x10,60x20",
    )
    parser.add_argument(
        "--layers",
        default="",
        help="comma-separated subset of: " + ", ".join(layer.key for layer in LAYERS),
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
    unknown = wanted - {layer.key for layer in LAYERS}
    if unknown:
        parser.error(f"unknown layers: {', '.join(sorted(unknown))}")
    layers = [layer for layer in LAYERS if not wanted or layer.key in wanted]
    started = datetime.now(timezone.utc)
    result: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "measured": options.measured,
        "rounds": options.rounds,
        "bursts": bursts,
        "machine": machine(),
        "load_before": os.getloadavg()[0],
        "server_version": server_version(),
        "layers": [asdict(layer) for layer in layers],
        "environments": {
            venv: versions(python_of(options.venvs, venv))
            for venv in {layer.venv for layer in layers}
        },
    }
    result["records"] = run_all(options, layers, bursts)
    report = markdown(result)
    print(report)
    if not options.no_save:
        options.results.mkdir(parents=True, exist_ok=True)
        base = options.results / f"burst-{started.strftime('%Y%m%dT%H%M%SZ')}"
        base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        base.with_suffix(".md").write_text(report)
        log(f"wrote {base}.json and .md")
    return 0 if all(r.get("ok") for r in result["records"]) else 1


if __name__ == "__main__":
    sys.exit(main())
