"""``bench/run --bulk``: bulk sends against loops of single sends, and a message-size sweep.

``bench/run`` starts a private server and passes it as ``--url``; this script (run with the
``ours`` venv's Python) starts one worker process per measurement, with the Python of the
measured layer's venv, and writes ``bench/results/bulk-<UTC time>.{json,md}``.

Bulk workloads (one sender task, one process, nobody receiving; the queues are emptied
between measurements). Each call sends N messages (10 or 100), in one of three ways:

- ``loop``: ``for m in messages: await layer.send(channel, m)``, one round trip each;
- ``gather``: ``await asyncio.gather(*(layer.send(channel, m) for m in messages))``, the N
  sends concurrent (on as many connections as they need), so their order is not kept;
- ``bulk``: ``await layer.send_multiple(channel, messages)``, one call.

``send``: one normal channel (core: queued; pub/sub: published, with no subscriber).
``group``: a group of 20 normal channels, ``group_send`` per message or
``group_send_multiple``; reported in deliveries/s (messages x 20). After each measurement the
queues must hold exactly what the worker reports as sent (core layers), else it fails.

Size sweep (``size``): the ``send-receive`` shape of the main benchmark (one normal channel, a
sender and a receiver task in one process, at most 50 messages in flight) with a message of
``{"type", "n", "body": "x" * size}`` for sizes from 256 B to 1 MiB: messages/s and MB/s of
payload. Every message must arrive once and in order.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resp import RespClient, command_calls

SCRIPT = os.path.abspath(__file__)
RESULTS = Path(__file__).resolve().parent / "results"
CHANNEL = "bench.bulk"
GROUP = "bench-bulk"
GROUP_MEMBERS = 20
BATCHES = (10, 100)
SIZES = (256, 1024, 4096, 16384, 32768, 65536, 131072, 262144, 1048576)
WINDOW = 50
TEXT = "x" * 100
#: Big enough that no send of a measurement meets a full channel.
HUGE_CAPACITY = 10**9

#: (name, venv, class, kind)
LAYERS = {
    "ours": ("ours", "channels_valkey.core.ValkeyChannelLayer", "core"),
    "channels_redis": ("channels-redis", "channels_redis.core.RedisChannelLayer", "core"),
    "ours pubsub": ("ours", "channels_valkey.pubsub.ValkeyPubSubChannelLayer", "pubsub"),
    "channels_redis pubsub": (
        "channels-redis",
        "channels_redis.pubsub.RedisPubSubChannelLayer",
        "pubsub",
    ),
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the worker (runs in the measured layer's venv) ----------------------------------------

ROUND_TRIPS: Counter[str] = Counter()


def count_round_trips() -> None:
    """Count every command or pipeline written by valkey-py's or redis-py's asyncio clients."""
    for package in ("valkey", "redis"):
        try:
            module = importlib.import_module(f"{package}.asyncio.connection")
        except ImportError:
            continue
        cls = module.AbstractConnection
        original = cls.send_packed_command

        async def counted(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            ROUND_TRIPS["all"] += 1
            return await _original(self, *args, **kwargs)

        cls.send_packed_command = counted


def make_layer(path: str, url: str, kind: str) -> Any:
    module_name, _, class_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if kind == "core":
        return cls(hosts=[url], capacity=HUGE_CAPACITY)
    return cls(hosts=[url])


async def send_calls(layer: Any, workload: str, mode: str, batch: int, seconds: float) -> int:
    """Send batches for ``seconds``; returns how many messages were sent."""
    messages = [{"type": "bench.bulk", "n": n, "text": TEXT} for n in range(batch)]
    if workload == "send":
        single, target = layer.send, CHANNEL
        multiple = getattr(layer, "send_multiple", None)
    else:
        single, target = layer.group_send, GROUP
        multiple = getattr(layer, "group_send_multiple", None)
    sent = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if mode == "bulk":
            await multiple(target, messages)
        elif mode == "gather":
            await asyncio.gather(*(single(target, message) for message in messages))
        else:
            for message in messages:
                await single(target, message)
        sent += batch
    return sent


async def size_epoch(layer: Any, size: int, seconds: float) -> int:
    """A sender and a receiver task on one normal channel, at most WINDOW in flight."""
    body = "x" * size
    room = asyncio.Semaphore(WINDOW)
    channel = f"{CHANNEL}.size"

    async def sender() -> int:
        n = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await room.acquire()
            await layer.send(channel, {"type": "bench.size", "n": n, "body": body})
            n += 1
        # Marked last, so the receiver stops without waiting on an empty channel.
        await layer.send(channel, {"type": "bench.size", "n": n, "body": "", "last": True})
        return n

    async def receiver() -> int:
        n = 0
        while True:
            message = await layer.receive(channel)
            if message["n"] != n:
                raise RuntimeError(f"expected message {n}, got {message['n']}")
            if message.get("last"):
                return n
            if len(message["body"]) != size:
                raise RuntimeError(f"message {n} arrived with {len(message['body'])} bytes")
            n += 1
            room.release()

    sending = asyncio.create_task(sender())
    received = await receiver()
    if await sending != received:
        raise RuntimeError(f"{await sending} sent, {received} received")
    return received


async def worker(params: dict[str, Any]) -> dict[str, Any]:
    count_round_trips()
    layer = make_layer(params["path"], params["url"], params["kind"])
    workload = params["workload"]
    if workload == "group" and params["kind"] == "core":
        for n in range(GROUP_MEMBERS):
            await layer.group_add(GROUP, f"bench.member.{n}")
    if workload == "size":
        await size_epoch(layer, params["size"], params["warmup"])
    else:
        await send_calls(layer, workload, params["mode"], params["batch"], params["warmup"])
    # What the warm-up left queued is counted apart, so the check covers only the epoch.
    print(json.dumps({"warm": True}), flush=True)
    sys.stdin.readline()
    ROUND_TRIPS.clear()
    started = time.perf_counter()
    if workload == "size":
        sent = await size_epoch(layer, params["size"], params["seconds"])
    else:
        sent = await send_calls(layer, workload, params["mode"], params["batch"], params["seconds"])
    elapsed = time.perf_counter() - started
    round_trips = ROUND_TRIPS["all"]
    close = getattr(layer, "close_pools", None) or layer.flush
    await close()
    return {"ok": True, "sent": sent, "seconds": elapsed, "round_trips": round_trips}


def worker_main(raw: str) -> int:
    params = json.loads(raw)
    try:
        report = asyncio.run(worker(params))
    except Exception as error:  # reported to the measuring process, which records it
        report = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    print(json.dumps(report), flush=True)
    return 0


# --- the measuring process -----------------------------------------------------------------


def address(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host, int(port)


def queued_messages(url: str) -> int:
    """Messages held in queues (sorted sets other than groups)."""
    total = 0
    with RespClient(*address(url)) as client:
        cursor: Any = b"0"
        while True:
            reply = client.command("SCAN", cursor, "COUNT", 1000)
            assert isinstance(reply, list)
            cursor, keys = reply[0], reply[1]
            assert isinstance(keys, list)
            for key in keys:
                assert isinstance(key, bytes)
                if b":group:" in key:
                    continue
                if client.text("TYPE", key) == "zset":
                    count = client.command("ZCARD", key)
                    assert isinstance(count, int)
                    total += count
            if cursor in (b"0", 0, "0"):
                return total


def measure(options: argparse.Namespace, layer: str, params: dict[str, Any]) -> dict[str, Any]:
    import subprocess

    venv, path, kind = LAYERS[layer]
    python = Path(options.venvs) / venv / "bin" / "python"
    full = {
        **params,
        "path": path,
        "kind": kind,
        "url": options.url,
        "seconds": options.seconds,
        "warmup": options.warmup,
    }
    with RespClient(*address(options.url)) as client:
        client.command("FLUSHALL")
    process = subprocess.Popen(
        [python, SCRIPT, "worker", json.dumps(full)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    first = json.loads(process.stdout.readline() or '{"ok": false, "error": "no report"}')
    before_queued = 0
    stats_before: dict[str, int] = {}
    if first.get("warm"):
        before_queued = queued_messages(options.url)
        with RespClient(*address(options.url)) as client:
            client.command("CONFIG", "RESETSTAT")
            stats_before = command_calls(client.info("commandstats"))
        process.stdin.write("go\n")
        process.stdin.flush()
        report = json.loads(process.stdout.readline() or '{"ok": false, "error": "no report"}')
    else:
        report = first
    process.wait(timeout=120)
    with RespClient(*address(options.url)) as client:
        stats = command_calls(client.info("commandstats"))
    for name, calls in stats_before.items():
        stats[name] = stats.get(name, 0) - calls
    report.update(layer=layer, **params, commandstats=stats)
    if report.get("ok") and kind == "core" and params["workload"] != "size":
        fan_out = GROUP_MEMBERS if params["workload"] == "group" else 1
        queued = queued_messages(options.url) - before_queued
        if queued != report["sent"] * fan_out:
            report.update(ok=False, error=f"{queued} queued, {report['sent'] * fan_out} sent")
    return report


def plan() -> list[tuple[str, dict[str, Any]]]:
    runs: list[tuple[str, dict[str, Any]]] = []
    for workload in ("send", "group"):
        for batch in BATCHES:
            for mode in ("loop", "gather", "bulk"):
                runs.append(("ours", {"workload": workload, "batch": batch, "mode": mode}))
            for mode in ("loop", "gather"):
                runs.append(
                    ("channels_redis", {"workload": workload, "batch": batch, "mode": mode})
                )
            for mode in ("loop", "bulk"):
                runs.append(("ours pubsub", {"workload": workload, "batch": batch, "mode": mode}))
            runs.append(
                ("channels_redis pubsub", {"workload": workload, "batch": batch, "mode": "loop"})
            )
    for size in SIZES:
        for layer in ("ours", "channels_redis"):
            runs.append((layer, {"workload": "size", "size": size}))
    return runs


def key_of(record: dict[str, Any]) -> tuple[Any, ...]:
    if record["workload"] == "size":
        return (record["layer"], "size", record["size"])
    return (record["layer"], record["workload"], record["batch"], record["mode"])


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def markdown(result: dict[str, Any]) -> str:
    records = result["records"]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(key_of(record), []).append(record)

    def ratio(key: tuple[Any, ...], reference: tuple[Any, ...]) -> str:
        """The median over the rounds of the two measurements' ratio within each round."""
        ours = {r["round"]: r["sent"] / r["seconds"] for r in groups.get(key, []) if r.get("ok")}
        theirs = {
            r["round"]: r["sent"] / r["seconds"] for r in groups.get(reference, []) if r.get("ok")
        }
        ratios = [ours[n] / theirs[n] for n in ours if theirs.get(n)]
        return f"{median(ratios):.2f}" if ratios else ""

    def rate(key: tuple[Any, ...], fan_out: int = 1) -> tuple[str, str, float | None]:
        runs = [r for r in groups.get(key, []) if r.get("ok")]
        if not runs:
            return "failed", "", None
        rates = [r["sent"] * fan_out / r["seconds"] for r in runs]
        trips = median([r["round_trips"] / r["sent"] for r in runs])
        low, high = min(rates), max(rates)
        return f"{median(rates):,.0f} ({low:,.0f}-{high:,.0f})", f"{trips:.3f}", median(rates)

    lines = [
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
    workloads = result.get("workloads", ["group", "send", "size"])
    for workload, title, unit, fan_out in (
        ("send", "send to one normal channel", "messages/s", 1),
        ("group", f"group of {GROUP_MEMBERS} normal channels", "deliveries/s", GROUP_MEMBERS),
    ):
        if workload not in workloads:
            continue
        lines += [
            f"## {title}",
            "",
            f"| layer | N | mode | {unit} | round trips/message | x ours loop |",
            "| --- | ---: | --- | ---: | ---: | ---: |",
        ]
        for batch in BATCHES:
            for layer, modes in (
                ("ours", ("loop", "gather", "bulk")),
                ("channels_redis", ("loop", "gather")),
                ("ours pubsub", ("loop", "bulk")),
                ("channels_redis pubsub", ("loop",)),
            ):
                base = "ours pubsub" if "pubsub" in layer else "ours"
                reference = (base, workload, batch, "loop")
                # A pub/sub group send is one publish whatever the members: counted as such.
                spread = 1 if "pubsub" in layer else fan_out
                for mode in modes:
                    shown, trips, _ = rate((layer, workload, batch, mode), spread)
                    times = ratio((layer, workload, batch, mode), reference)
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
    size_lines = [
        "## Message size: send/receive on one normal channel",
        "",
        "A sender and a receiver task in one process, at most 50 messages in flight; "
        "`x 256 B` is messages/s against the same layer's 256-byte messages.",
        "",
        "| size | layer | messages/s | MB/s | x 256 B |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for size in SIZES:
        for layer in ("ours", "channels_redis"):
            shown, _, value = rate((layer, "size", size))
            megabytes = f"{value * size / 1e6:,.1f}" if value else ""
            times = ratio((layer, "size", size), (layer, "size", SIZES[0]))
            label = f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
            size_lines.append(f"| {label} | {layer} | {shown} | {megabytes} | {times} |")
    if "size" in workloads:
        lines += size_lines
    failed = [r for r in records if not r.get("ok")]
    if failed:
        lines += ["", "## Failed measurements", ""]
        lines += [f"- {key_of(r)}: {r.get('error')}" for r in failed]
    return "\n".join(lines) + "\n"


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


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        return worker_main(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--render",
        nargs="+",
        metavar="JSON",
        help="print the report of earlier runs (one run's .md is rewritten; several are pooled)",
    )
    parser.add_argument("--url")
    parser.add_argument("--venvs")
    parser.add_argument("--measured", default="working tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument(
        "--only", default="send,group,size", help="workloads to run: send, group, size"
    )
    options = parser.parse_args()
    if options.render:
        print(render(options.render))
        return 0
    if not options.url or not options.venvs:
        parser.error("--url and --venvs are needed to measure")
    sys.path.insert(0, os.path.dirname(SCRIPT))
    from driver import machine, server_version

    started = datetime.now(timezone.utc)
    load = f"{os.getloadavg()[0]:.2f}"
    wanted = set(options.only.split(","))
    runs = [run for run in plan() if run[1]["workload"] in wanted]
    records: list[dict[str, Any]] = []
    for round_index in range(options.rounds):
        shift = round_index * len(runs) // max(options.rounds, 1)
        for layer, params in runs[shift:] + runs[:shift]:
            record = measure(options, layer, params)
            record["round"] = round_index
            records.append(record)
            rate = record["sent"] / record["seconds"] if record.get("ok") else 0
            error = record.get("error", "")
            log(f"round {round_index + 1} {key_of(record)}: {rate:,.0f}/s {error}")
    result = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "measured": options.measured,
        "rounds": options.rounds,
        "seconds": options.seconds,
        "server": server_version(options.url),
        "machine": machine(),
        "load": load,
        "records": records,
        "workloads": sorted(wanted),
    }
    report = markdown(result)
    print(report)
    if not options.no_save:
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        (RESULTS / f"bulk-{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / f"bulk-{stamp}.md").write_text(report)
        log(f"wrote bench/results/bulk-{stamp}.md and .json")
    return 0 if all(r.get("ok") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
