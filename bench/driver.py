"""Run every workload against every layer, interleaved, and write the results.

``bench/run`` starts a private valkey-server and the virtual environments, then calls

    python3 bench/driver.py --url redis://127.0.0.1:PORT --venvs bench/.venvs [--rounds 3]

Each round measures the PING ceiling, then every workload on every layer, the layers' order
rotated by one per round (A B C, B C A, C A B, ...). Before each measurement the server is
flushed and its statistics reset; afterwards any message left in a queue is counted (there
should be none). Results go to ``bench/results/<UTC time>.json`` and ``.md`` and to
``bench/results/latest.md``. Standard library only, so any ``python3`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from resp import RespClient, nodes_of  # noqa: E402

WORKLOAD = BENCH / "workload.py"


@dataclass(frozen=True)
class Layer:
    key: str  # the name in tables
    venv: str  # under --venvs
    path: str  # module.Class
    kind: str  # "core" or "pubsub"
    peer: str  # the key of the layer it is compared with

    @property
    def is_peer(self) -> bool:
        return self.key == self.peer


CORE_PEER = "channels_redis"
PUBSUB_PEER = "channels_redis pubsub"
LAYERS = (
    Layer(CORE_PEER, "channels-redis", "channels_redis.core.RedisChannelLayer", "core", CORE_PEER),
    Layer("ours", "ours", "channels_valkey.core.ValkeyChannelLayer", "core", CORE_PEER),
    Layer(
        "ours+pyparser",
        "ours-pyparser",
        "channels_valkey.core.ValkeyChannelLayer",
        "core",
        CORE_PEER,
    ),
    Layer(
        "channels_valkey 0.3",
        "channels-valkey-0.3",
        "channels_valkey.core.ValkeyChannelLayer",
        "core",
        CORE_PEER,
    ),
    Layer(
        "ours-baseline",
        "ours-baseline",
        "channels_valkey.core.ValkeyChannelLayer",
        "core",
        CORE_PEER,
    ),
    Layer(
        PUBSUB_PEER,
        "channels-redis",
        "channels_redis.pubsub.RedisPubSubChannelLayer",
        "pubsub",
        PUBSUB_PEER,
    ),
    Layer(
        "ours pubsub",
        "ours",
        "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
        "pubsub",
        PUBSUB_PEER,
    ),
    Layer(
        "ours pubsub+pyparser",
        "ours-pyparser",
        "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
        "pubsub",
        PUBSUB_PEER,
    ),
    Layer(
        "ours-baseline pubsub",
        "ours-baseline",
        "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
        "pubsub",
        PUBSUB_PEER,
    ),
    Layer(
        "channels_valkey 0.3 pubsub",
        "channels-valkey-0.3",
        "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
        "pubsub",
        PUBSUB_PEER,
    ),
)

#: The virtual environments the ceiling is measured in (valkey-py with and without libvalkey).
CEILING_VENVS = ("ours", "ours-pyparser")
#: Our layers and the same layers of the baseline build (``bench/run --baseline REF``).
BASELINE_OF = {"ours": "ours-baseline", "ours pubsub": "ours-baseline pubsub"}
BASELINE_VENV = "ours-baseline"


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    kinds: tuple[str, ...]
    what: str
    #: Measured for this many times --seconds (ping-pong: more samples for its p99).
    scale: float = 1.0
    #: Run when --workloads is not given (else only when named, or as ``concurrent``).
    default: bool = True


WORKLOADS = (
    Workload(
        "send-receive",
        "send/receive, one normal channel, sender and receiver tasks in one process",
        ("core",),
        "messages/s",
    ),
    Workload(
        "send-receive-2proc",
        "send/receive, one normal channel, sender and receiver in two processes",
        ("core",),
        "messages/s",
    ),
    Workload(
        "fan-in-200",
        "fan-in: 200 process-local channels each receiving, one sender, one process",
        ("core", "pubsub"),
        "messages/s",
    ),
    Workload(
        "group-1000",
        "group_send to 1000 process-local channels of one process (sender in it too)",
        ("core", "pubsub"),
        "deliveries/s",
    ),
    Workload(
        "group-1000-4proc",
        "group_send to 1000 process-local channels spread over 4 processes (sender in a 5th)",
        ("core", "pubsub"),
        "deliveries/s",
    ),
    Workload(
        "ping-pong",
        "ping-pong between process-local channels of two processes, one exchange at a time",
        ("core", "pubsub"),
        "ping-pongs/s",
        scale=2.0,
    ),
    *(
        Workload(
            f"concurrent-{senders}-{scope}",
            f"{senders} sender tasks at once, each to its own {what} received by its own "
            "receiver task, one process",
            kinds,
            "messages/s",
            default=False,
        )
        for scope, what, kinds in (
            ("local", "process-local channel", ("core", "pubsub")),
            ("normal", "normal channel", ("core",)),
        )
        for senders in (40, 200)
    ),
)
WORKLOAD_KEYS = tuple(w.key for w in WORKLOADS)
DEFAULT_WORKLOAD_KEYS = tuple(w.key for w in WORKLOADS if w.default)
#: ``--workloads concurrent`` names these.
CONCURRENT_KEYS = tuple(w.key for w in WORKLOADS if w.key.startswith("concurrent-"))


# --- running -----------------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def python_of(venvs: Path, venv: str) -> Path:
    return venvs / venv / "bin" / "python"


def available(venvs: Path, layer: Layer) -> str | None:
    """``None`` when the layer's class imports in its venv, else why not."""
    python = python_of(venvs, layer.venv)
    if not python.exists():
        return f"no virtual environment {venvs / layer.venv}"
    module, _, name = layer.path.rpartition(".")
    probe = f"import importlib; getattr(importlib.import_module({module!r}), {name!r})"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    if done.returncode:
        return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "import failed"
    return None


def primaries_of(url: str) -> list[tuple[str, int]]:
    """The servers behind ``url`` that hold data: the server, or a cluster's primaries."""
    found = []
    for host, port in nodes_of(url):
        with RespClient(host, port) as client:
            if client.info("replication").get("role") != "slave":
                found.append((host, port))
    return found


def reset_server(url: str) -> None:
    """Flush every primary and reset every node's statistics."""
    primaries = primaries_of(url)
    for host, port in nodes_of(url):
        with RespClient(host, port) as client:
            if (host, port) in primaries:
                client.command("FLUSHALL")
            client.command("CONFIG", "RESETSTAT")


def leftover_messages(url: str) -> int:
    """Messages still queued (on every primary): members of sorted sets that are neither
    groups nor our own keys.

    channels_redis keeps a receive's message in ``<queue>$inflight`` until it is processed, so
    those count as left over; other keys with ``$`` (wake keys) and groups do not.
    """
    total = 0
    for host, port in primaries_of(url):
        with RespClient(host, port) as client:
            cursor: Any = b"0"
            while True:
                reply = client.command("SCAN", cursor, "COUNT", 1000)
                assert isinstance(reply, list)
                cursor, keys = reply[0], reply[1]
                assert isinstance(keys, list)
                for key in keys:
                    assert isinstance(key, bytes)
                    if b":group:" in key or (b"$" in key and not key.endswith(b"$inflight")):
                        continue
                    if client.text("TYPE", key) == "zset":
                        count = client.command("ZCARD", key)
                        assert isinstance(count, int)
                        total += count
                if cursor in (b"0", 0, "0"):
                    break
    return total


def run_json(command: list[str | Path], timeout: float) -> dict[str, Any]:
    """Run a workload process; its report, or a failed one with the end of its stderr."""
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


def rotated(items: list[Any], by: int) -> list[Any]:
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def describe(record: dict[str, Any]) -> str:
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
    text summary (``profile_summary.py``) in ``<results>/profiles/``."""
    from profile_summary import summarise

    folder = options.results / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    name = layer.key.replace(" ", "-").replace("+", "-")
    failed = 0
    for workload in options.profile:
        base = folder / f"{stamp}-{name}-{workload}"
        outputs = ((base.with_suffix(".svg"), "flamegraph"), (base.with_suffix(".raw"), "raw"))
        for output, kind in outputs:
            reset_server(options.url)
            # --nonblocking: stopping the process for each sample (py-spy's default) makes
            # samples land on system calls far more often than the time spent there.
            command: list[str | Path] = [options.py_spy, "record", "--nonblocking", "--idle"]
            command += ["--rate", "200"]
            command += ["--format", kind, "--output", output, "--"]
            command += [python_of(options.venvs, layer.venv), WORKLOAD, "measure"]
            command += ["--url", options.url, "--layer", layer.path, "--kind", layer.kind]
            command += ["--workload", workload, "--seconds", str(options.seconds)]
            command += ["--warmup", str(options.warmup)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                log(f"profiling {workload} failed:\n{done.stderr[-2000:]}")
                failed += 1
                break
        else:
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


def run_all(options: argparse.Namespace, layers: list[Layer]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    workloads = [w for w in WORKLOADS if w.key in options.workloads]
    ceiling_venvs = [v for v in CEILING_VENVS if python_of(options.venvs, v).exists()]
    timeout = 2 * options.seconds + options.warmup + 240
    for round_index in range(options.rounds):
        tag = f"[round {round_index + 1}/{options.rounds}]"
        for venv in rotated(ceiling_venvs, round_index):
            command: list[str | Path] = [python_of(options.venvs, venv), WORKLOAD, "ceiling"]
            command += ["--url", options.url, "--seconds", str(options.seconds)]
            record = run_json(command, timeout)
            record.update(round=round_index, venv=venv, workload="ceiling")
            records.append(record)
            log(f"{tag} ceiling · {venv}: {describe(record)}")
        for workload in workloads:
            chosen = [layer for layer in layers if layer.kind in workload.kinds]
            for layer in rotated(chosen, round_index):
                reset_server(options.url)
                command = [python_of(options.venvs, layer.venv), WORKLOAD, "measure"]
                command += ["--url", options.url, "--layer", layer.path, "--kind", layer.kind]
                seconds = options.seconds * workload.scale
                command += ["--workload", workload.key, "--seconds", str(seconds)]
                command += ["--warmup", str(options.warmup)]
                record = run_json(command, timeout)
                record.update(round=round_index, key=layer.key, workload=workload.key)
                record["leftover"] = leftover_messages(options.url)
                if record["leftover"] and record.get("ok"):
                    record.update(ok=False, error=f"{record['leftover']} messages left queued")
                records.append(record)
                log(f"{tag} {workload.key} · {layer.key}: {describe(record)}")
    return records


# --- summarising -------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


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


# --- the report --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    return f"{value * scale:,.{digits}f}"


def ratio(value: float | None, peer: float | None) -> float | None:
    if value is None or peer is None or peer == 0:
        return None
    return value / peer


def ratio_range(values: list[float] | None) -> str:
    """``(lowest-highest round)``, or nothing for fewer than two rounds."""
    if not values or len(values) < 2:
        return ""
    return f"({min(values):.2f}-{max(values):.2f})"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                system = line.split("=", 1)[1].strip('"') + f", Linux {platform.release()}"
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": system}


def server_version(url: str) -> str:
    with RespClient(*nodes_of(url)[0]) as client:
        info = client.info("server")
    return info.get("valkey_version") or info.get("redis_version") or "unknown"


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "src_changes": changed}


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


def package_line(environment: dict[str, Any]) -> str:
    names = ("channels-valkey", "channels-redis", "channels", "valkey", "redis", "libvalkey")
    parts = [f"{name} {environment[name]}" for name in names if name in environment]
    parsers = ", ".join(f"{k}: {v} parser" for k, v in environment.get("parsers", {}).items())
    return ", ".join(parts) + (f" ({parsers})" if parsers else "")


def targets(
    summaries: dict[str, dict[str, Summary]], ours: str, ours_pubsub: str
) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the issue's targets, for one flavour of our layers."""
    rows: list[tuple[str, str, str]] = []

    def pair(workload: str, key: str, peer: str) -> tuple[Summary, Summary] | None:
        mine, theirs = summaries.get(workload, {}).get(key), summaries.get(workload, {}).get(peer)
        return None if mine is None or theirs is None else (mine, theirs)

    def verdict(ok: bool | None, rounds: list[bool] | None = None) -> str:
        text = "n/a" if ok is None else ("met" if ok else "**not met**")
        if ok is not None and rounds:
            text += f" ({sum(rounds)} of {len(rounds)} rounds)"
        return text

    def at_least(value: float | None, per_round: list[float] | None, bound: float) -> str:
        ok = None if value is None else value >= bound
        return verdict(ok, [r >= bound for r in per_round or ()])

    for workload in ("send-receive", "send-receive-2proc"):
        found = pair(workload, ours, CORE_PEER)
        if found:
            mine, peer = found
            r = mine.ratio
            trips = mine.round_trips
            ok = None if r is None or trips is None else r >= 3 and trips <= 2
            rounds = [x >= 3 and (trips or 0) <= 2 for x in mine.ratios or ()]
            rows.append(
                (
                    f"core {workload}: ≥3x msgs/s at ≤2 round trips/msg",
                    f"{fmt_ratio(r)} {ratio_range(mine.ratios)} at {fmt(trips, 2)} round trips/msg",
                    verdict(ok, rounds),
                )
            )
    found = pair("fan-in-200", ours, CORE_PEER)
    if found:
        mine = found[0]
        rows.append(
            (
                "core fan-in-200: ≥4x msgs/s",
                f"{fmt_ratio(mine.ratio)} {ratio_range(mine.ratios)}",
                at_least(mine.ratio, mine.ratios, 4),
            )
        )
    senders: list[float] = []
    for workload in ("group-1000", "group-1000-4proc"):
        found = pair(workload, ours, CORE_PEER)
        if found:
            mine = found[0]
            rows.append(
                (
                    f"core {workload}: ≥3x deliveries/s",
                    f"{fmt_ratio(mine.ratio)} {ratio_range(mine.ratios)}",
                    at_least(mine.ratio, mine.ratios, 3),
                )
            )
            if found[0].sender_round_trips is not None:
                senders.append(found[0].sender_round_trips)
    if len(senders) == 2:
        rows.append(
            (
                "core group_send: constant round trips per group_send",
                f"{senders[0]:.2f} and {senders[1]:.2f} by the sender "
                "(1000 members in 1 process, in 4)",
                verdict(max(senders) - min(senders) < 0.05),
            )
        )
    for key, peer_key, bound, kind in (
        (ours, CORE_PEER, 0.5, "core"),
        (ours_pubsub, PUBSUB_PEER, 0.8, "pub/sub"),
    ):
        found = pair("ping-pong", key, peer_key)
        if found:
            mine, peer = found
            r = mine.p99_ratio
            rows.append(
                (
                    f"{kind} ping-pong: p99 ≤{bound}x the peer's",
                    f"{fmt_ratio(r)} {ratio_range(mine.p99_ratios)}; medians "
                    f"{fmt(mine.p99, 2, 1000)} ms vs {fmt(peer.p99, 2, 1000)} ms",
                    verdict(
                        None if r is None else r <= bound,
                        [x <= bound for x in mine.p99_ratios or ()],
                    ),
                )
            )
    found = pair("fan-in-200", ours_pubsub, PUBSUB_PEER)
    if found:
        mine = found[0]
        rows.append(
            (
                "pub/sub fan-in-200: ≥1.2x msgs/s",
                f"{fmt_ratio(mine.ratio)} {ratio_range(mine.ratios)}",
                at_least(mine.ratio, mine.ratios, 1.2),
            )
        )
    return rows


CONCURRENT_HEADER = (
    "| layer | msgs/s | rounds | x peer | x baseline | peak connections | connections opened "
    "| commands/msg | round trips/msg | ok runs |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def concurrent_row(name: str, s: Summary) -> str:
    """A row of a ``concurrent-*`` table: the usual numbers and the connections."""
    spread = f"{fmt(s.spread[0])}-{fmt(s.spread[1])}" if s.spread else "-"
    return (
        f"| {name} | {fmt(s.rate)} | {spread} | {fmt_ratio(s.ratio)} "
        f"| {fmt_ratio(s.baseline_ratio)} | {fmt(s.peak_connections)} "
        f"| {fmt(s.opened_connections)} | {fmt(s.commands, 2)} | {fmt(s.round_trips, 2)} "
        f"| {s.ok}/{s.runs} |"
    )


def rates_by_round(records: list[dict[str, Any]], workload: str, key: str) -> dict[int, float]:
    return {
        r["round"]: r["rate"]
        for r in records
        if r.get("ok") and r.get("workload") == workload and r.get("key") == key
    }


def concurrency_targets(
    records: list[dict[str, Any]], summaries: dict[str, dict[str, Summary]]
) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the targets on concurrent senders, for ``ours``."""
    rows: list[tuple[str, str, str]] = []

    def found(workload: str) -> Summary | None:
        return summaries.get(workload, {}).get("ours")

    def verdict(per_round: list[bool]) -> str:
        if not per_round:
            return "n/a"
        met = sorted(per_round)[len(per_round) // 2]  # the median round
        return f"{'met' if met else '**not met**'} ({sum(per_round)} of {len(per_round)} rounds)"

    local, normal = found("concurrent-200-local"), found("concurrent-200-normal")
    if local is not None and local.peak_connections is not None:
        peaks = [
            r["connections"]["peak"]
            for r in records
            if r.get("ok") and r.get("workload") == "concurrent-200-local" and r["key"] == "ours"
        ]
        rows.append(
            (
                "concurrent-200-local: at most 4 connections at peak",
                f"{fmt(local.peak_connections)} ({min(peaks)}-{max(peaks)})",
                verdict([peak <= 4 for peak in peaks]),
            )
        )
    if normal is not None and normal.peak_connections is not None:
        rows.append(
            ("concurrent-200-normal: connections at peak", fmt(normal.peak_connections), "-")
        )
    if local is not None and local.baseline_ratios:
        rows.append(
            (
                "concurrent-200-local: ≥3x the baseline's msgs/s",
                f"{fmt_ratio(local.baseline_ratio)} {ratio_range(local.baseline_ratios)}",
                verdict([x >= 3 for x in local.baseline_ratios]),
            )
        )
    at_200 = rates_by_round(records, "concurrent-200-local", "ours")
    at_40 = rates_by_round(records, "concurrent-40-local", "ours")
    scaling = [at_200[n] / at_40[n] for n in sorted(at_200.keys() & at_40.keys())]
    if scaling:
        rows.append(
            (
                "concurrent-200-local: ≥ the msgs/s of concurrent-40-local",
                f"{fmt_ratio(median(scaling))} {ratio_range(scaling)}",
                verdict([x >= 1 for x in scaling]),
            )
        )
    normal_40 = found("concurrent-40-normal")
    if normal_40 is not None and normal_40.ratios:
        rows.append(
            (
                "concurrent-40-normal: ≥6x channels_redis msgs/s",
                f"{fmt_ratio(normal_40.ratio)} {ratio_range(normal_40.ratios)}",
                verdict([x >= 6 for x in normal_40.ratios]),
            )
        )
    return rows


def markdown(result: dict[str, Any], summaries: dict[str, dict[str, Summary]]) -> str:
    options = result["options"]
    lines: list[str] = []
    add = lines.append
    add(f"# Channel layer benchmark, {result['started']}")
    add("")
    if result.get("pooled"):
        add(
            "Rounds pooled from several runs: each ratio is still taken within one round, "
            "but the runs may have measured different versions of this package."
        )
        add("")
    m = result["machine"]
    add(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['system']}")
    add(f"- Server: valkey-server {result['server_version']}, private, no persistence, loopback")
    git = result["git"]
    dirty = f" with {len(git['src_changes'])} uncommitted change(s) under src/" * bool(
        git["src_changes"]
    )
    if "measured" not in result:  # runs before the package was measured as a wheel
        add(
            "- This package: the working tree installed editable, as it was at each "
            f"measurement; when the run ended: {git['commit'][:12]}{dirty}"
        )
    else:
        add(f"- This package: {result['measured']}")
    if result.get("baseline"):
        add(f"- Baseline (`ours-baseline`): {result['baseline']}")
    if "git_after" in result and result["git"] != result["git_after"]:
        add("- The working tree changed during the run (the measured wheel did not)")
    if "load_before" in result:
        add(
            f"- Load average when the run started: {result['load_before']:.2f} "
            "(other work on the machine makes rounds differ)"
        )
    for venv, environment in result["environments"].items():
        add(f"- `{venv}`: Python {environment.get('python')}, {package_line(environment)}")
    add(
        f"- Rounds: {options['rounds']}; each measurement {options['seconds']} s "
        f"(ping-pong {options['seconds'] * 2} s) after a {options['warmup']} s warm-up; "
        "layers interleaved, their order rotated every round; medians over rounds"
    )
    for key, why in result["skipped"].items():
        add(f"- Not measured: {key} ({why})")
    add("")

    ceilings = result["ceilings"]
    reference = (ceilings.get("ours") or {}).get("client")
    add("## Ceiling: sequential PINGs on one valkey-py asyncio connection")
    add("")
    add("| valkey-py | PING/s through the client (pool checkout) | PING/s on the bare connection |")
    add("| --- | ---: | ---: |")
    for venv, label in (("ours", "libvalkey parser"), ("ours-pyparser", "pure-Python parser")):
        if venv in ceilings:
            c = ceilings[venv]
            add(f"| {label} | {fmt(c['client'])} | {fmt(c['connection'])} |")
    add("")
    add(
        "A layer that needs one round trip per message on one connection cannot beat the first "
        "column; `% of ceiling` below is a layer's messages/s divided by it (libvalkey parser, "
        "as installed)."
    )
    add("")

    add("## Results")
    for workload in WORKLOADS:
        table = summaries.get(workload.key)
        if not table:
            continue
        add("")
        add(f"### `{workload.key}`: {workload.title}")
        add("")
        layers_here = [layer for layer in LAYERS if layer.key in table]
        grouped = workload.key.startswith("group")
        concurrent = workload.key.startswith("concurrent-")
        if concurrent:
            add(CONCURRENT_HEADER)
        elif workload.key == "ping-pong":
            add(
                "| layer | ping-pongs/s | rounds | x peer | p50 ms | p99 ms | p99 x peer "
                "| commands/msg | round trips/msg | ok runs |"
            )
            add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        elif grouped:
            add(
                "| layer | deliveries/s | rounds | x peer | group_send call ms (p50) "
                "| sender round trips/group_send | round trips/group_send (all) "
                "| commands/group_send | ok runs |"
            )
            add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        else:
            add(
                "| layer | msgs/s | rounds | x peer | % of ceiling | commands/msg "
                "| round trips/msg | ok runs |"
            )
            add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for layer in layers_here:
            s = table[layer.key]
            name = f"**{layer.key}**" if layer.key.startswith("ours") else layer.key
            x = fmt_ratio(s.ratio)
            ok = f"{s.ok}/{s.runs}"
            spread = f"{fmt(s.spread[0])}-{fmt(s.spread[1])}" if s.spread else "-"
            if concurrent:
                add(concurrent_row(name, s))
            elif workload.key == "ping-pong":
                x99 = fmt_ratio(s.p99_ratio)
                add(
                    f"| {name} | {fmt(s.operation_rate)} | {spread} | {x} | {fmt(s.p50, 2, 1000)} "
                    f"| {fmt(s.p99, 2, 1000)} | {x99} | {fmt(s.commands, 2)} "
                    f"| {fmt(s.round_trips, 2)} | {ok} |"
                )
            elif grouped:
                add(
                    f"| {name} | {fmt(s.rate)} | {spread} | {x} | {fmt(s.p50, 2, 1000)} "
                    f"| {fmt(s.sender_round_trips, 2)} | {fmt(s.round_trips_per_operation, 2)} "
                    f"| {fmt(s.commands_per_operation, 1)} | {ok} |"
                )
            else:
                share = ratio(s.rate, reference)
                add(
                    f"| {name} | {fmt(s.rate)} | {spread} | {x} | {fmt(share, 0, 100)}% "
                    f"| {fmt(s.commands, 2)} | {fmt(s.round_trips, 2)} | {ok} |"
                )
        for layer in layers_here:
            for error in table[layer.key].errors or ():
                add(f"\n{layer.key} failed: `{error}`")

    add("")
    add("## Targets")
    add("")
    add("| target | measured | verdict |")
    add("| --- | --- | --- |")
    for ours, ours_pubsub in (("ours", "ours pubsub"), ("ours+pyparser", "ours pubsub+pyparser")):
        for target, measured, verdict in targets(summaries, ours, ours_pubsub):
            add(f"| {ours}: {target} | {measured} | {verdict} |")
    for target, measured, verdict in concurrency_targets(result["records"], summaries):
        add(f"| ours: {target} | {measured} | {verdict} |")

    add("")
    add("## Server commands per delivered message, by command")
    add("")
    add("| workload | layer | commands |")
    add("| --- | --- | --- |")
    for workload in WORKLOADS:
        for key, s in summaries.get(workload.key, {}).items():
            mix = s.command_mix or {}
            scale = 1000 if workload.key.startswith("group") else 1
            unit = " (per 1000 deliveries)" if scale != 1 else ""
            text = ", ".join(
                f"{name} {count * scale:.2f}"
                for name, count in sorted(mix.items(), key=lambda item: -item[1])
                if count * scale >= 0.005
            )
            add(f"| {workload.key} | {key} | {text}{unit} |")

    add("")
    add("## How to read this")
    add("")
    add(
        "- `x peer`: the layer's number divided by channels_redis 4.3.0's measured in the same "
        "round, seconds apart, on the same server (`RedisChannelLayer` for core layers, "
        "`RedisPubSubChannelLayer` for pub/sub layers); the median of those per-round ratios. "
        "Above 1 is faster; for latency (p99 x peer) below 1 is better. `x baseline`: the same "
        "against this package's baseline build (`--baseline REF`) in the same round."
    )
    add(
        "- `concurrent-*`: `peak connections` is the most connections the measuring process "
        "held to the server during the measured epoch: the server's `connected_clients` "
        "(`INFO clients`), sampled every 2 ms from a thread on a connection of its own, minus "
        "its value when that connection was opened, before the layer made any. `connections "
        "opened` is `total_connections_received` during the epoch. Core layers run "
        "`concurrent-*-local` with `capacity` 10000, as all process-local channels of a process "
        "share one queue; every other measurement uses the defaults."
    )
    add(
        "- Pub/sub layers are not run on the normal-channel workloads: with pub/sub a message "
        "sent to a normal channel goes to every process subscribed to it, not to one receiver."
    )
    add(
        "- Every run checks that each receiver got every message of the measured epoch exactly "
        "once and in order, and that no message was left queued; `ok runs` counts the runs "
        "that passed. Senders keep at most 50 messages (group sends) in flight, so no channel "
        "reaches its capacity of 100."
    )
    add(
        "- Round trips are counted in the clients: each call of valkey-py's or redis-py's "
        "asyncio `send_packed_command` (one command, or one whole pipeline) in every process "
        "during the measured epoch. Pushed pub/sub messages cost none. `sender round trips` "
        "are those made by the task calling `group_send`."
    )
    add(
        "- Commands are the server's: `total_commands_processed` from `INFO stats` just before "
        "and after the measured epoch, minus that `INFO`; commands run by Lua scripts count, so "
        "one `EVALSHA` running `ZCARD`, `ZADD`, `EXPIRE` is 4 commands and 1 round trip."
    )
    add(
        "- Both counts are per delivered message (per group_send for groups, where one "
        "group_send delivers 1000 messages); they do not depend on the machine."
    )
    add(
        "- ping-pong p50/p99: the time from sending a ping to receiving its pong. group_send "
        "p50: the time one `group_send` call takes. `rounds`: the lowest and highest round "
        "of the first number."
    )
    add("")
    return "\n".join(lines)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the server to use, redis://host:port (bench/run sets it)")
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print the Markdown report of an earlier run's results and exit; given several "
        "runs, pool their rounds into one report",
    )
    parser.add_argument(
        "--venvs", type=Path, default=BENCH / ".venvs", help="default: bench/.venvs"
    )
    parser.add_argument(
        "--results", type=Path, default=BENCH / "results", help="default: bench/results"
    )
    parser.add_argument("--rounds", type=int, default=3, help="default: 3")
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.5,
        help="per measurement (ping-pong: twice that); default: 1.5",
    )
    parser.add_argument(
        "--warmup", type=float, default=0.3, help="warm-up per measurement; default: 0.3"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s measurements")
    parser.add_argument(
        "--workloads",
        default="",
        help="comma-separated subset (default: all but concurrent-*; `concurrent` names "
        "the four concurrent-* workloads; with --cluster also spread-24, spread-24-4proc)",
    )
    parser.add_argument(
        "--layers",
        default="",
        help="comma-separated subset of: " + ", ".join(layer.key for layer in LAYERS),
    )
    parser.add_argument("--no-save", action="store_true", help="print, do not write results")
    parser.add_argument(
        "--profile",
        default="",
        metavar="WORKLOADS",
        help="instead of the benchmark, record these workloads (comma-separated) on "
        "--profile-layer with py-spy into <results>/profiles/",
    )
    parser.add_argument(
        "--profile-layer", default="ours", help="the layer to profile; default: ours"
    )
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy command")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="instead of the benchmark, run our core layer on the --url server and on private "
        "clusters of --primaries primaries (see cluster_bench.py); writes "
        "<results>/cluster-<UTC>.{json,md}",
    )
    parser.add_argument(
        "--primaries",
        default="1,3",
        help="with --cluster: the clusters' sizes, comma-separated; default: 1,3",
    )
    parser.add_argument(
        "--measured",
        default="working tree as installed in the venvs",
        help="what build of this package is measured (bench/run sets it)",
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="what build of this package the ours-baseline venv holds (bench/run --baseline "
        "REF sets it); without it the baseline layers are not measured",
    )
    options = parser.parse_args()
    if options.render:
        loaded = [json.loads(path.read_text()) for path in options.render]
        if "topologies" in loaded[0]:  # a --cluster run
            from cluster_bench import markdown as cluster_markdown

            print(cluster_markdown(loaded[0]))
            return 0
        earlier = pool(loaded)
        measured = [Layer(**layer) for layer in earlier["layers"]]
        earlier["summary"], earlier["ceilings"] = summarise_all(earlier["records"], measured)
        print(markdown(earlier, earlier["summary"]))
        return 0
    if not options.url:
        parser.error("--url is required")
    if options.quick:
        options.rounds, options.seconds, options.warmup = 1, 0.5, 0.2
    options.workloads = [w.strip() for w in options.workloads.split(",") if w.strip()]
    if "concurrent" in options.workloads:
        at = options.workloads.index("concurrent")
        options.workloads[at : at + 1] = CONCURRENT_KEYS
    if options.cluster:
        from cluster_bench import CLUSTER_WORKLOAD_KEYS, run_cluster

        options.workloads = options.workloads or list(CLUSTER_WORKLOAD_KEYS)
        try:
            options.primaries = [int(n) for n in options.primaries.split(",") if n.strip()]
        except ValueError:
            parser.error("--primaries takes numbers, e.g. 1,3")
        return run_cluster(options)
    options.workloads = options.workloads or list(DEFAULT_WORKLOAD_KEYS)
    unknown = set(options.workloads) - set(WORKLOAD_KEYS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    options.profile = [w.strip() for w in options.profile.split(",") if w.strip()]
    unknown = set(options.profile) - set(WORKLOAD_KEYS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if options.profile:
        chosen = [layer for layer in LAYERS if layer.key == options.profile_layer]
        if not chosen:
            parser.error(f"unknown layer: {options.profile_layer}")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return profile(options, chosen[0], stamp)
    wanted = {k.strip() for k in options.layers.split(",") if k.strip()}
    unknown = wanted - {layer.key for layer in LAYERS}
    if unknown:
        parser.error(f"unknown layers: {', '.join(sorted(unknown))}")

    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()[0]
    git_before = git_state()
    layers, skipped = [], {}
    for layer in LAYERS:
        if wanted and layer.key not in wanted:
            continue
        if layer.venv == BASELINE_VENV and not options.baseline:
            continue
        why = available(options.venvs, layer)
        if why is None:
            layers.append(layer)
        else:
            skipped[layer.key] = why
            log(f"not measuring {layer.key}: {why}")
    records = run_all(options, layers)
    summaries, ceilings = summarise_all(records, layers)
    result: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "options": {
            "rounds": options.rounds,
            "seconds": options.seconds,
            "warmup": options.warmup,
            "workloads": options.workloads,
        },
        "machine": machine(),
        "server_version": server_version(options.url),
        "measured": options.measured,
        "baseline": options.baseline or None,
        "git": git_before,
        "git_after": git_state(),
        "load_before": load_before,
        "environments": environments(records),
        "layers": [asdict(layer) for layer in layers],
        "skipped": skipped,
        "ceilings": ceilings,
        "summary": {
            workload: {key: asdict(s) for key, s in table.items()}
            for workload, table in summaries.items()
        },
        "records": records,
    }
    report = markdown(result, summaries)
    print(report)
    if not options.no_save:
        options.results.mkdir(parents=True, exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        (options.results / f"{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
        (options.results / f"{stamp}.md").write_text(report)
        written = f"{options.results / stamp}.json and .md"
        if not wanted and set(options.workloads) == set(DEFAULT_WORKLOAD_KEYS):
            # latest.md is the last run of everything; a subset does not replace it.
            shutil.copyfile(options.results / f"{stamp}.md", options.results / "latest.md")
            written += " and latest.md"
        log(f"wrote {written}")
    failed = [r for r in records if not r.get("ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
