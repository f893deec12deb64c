"""``bench/run --bulk``: bulk sends against loops of single sends, and a message-size sweep.

``bench/run`` starts a private server and passes it as ``--url``; this script (run with the
``ours`` venv's Python) starts one worker process per measurement
(``measuring/bulk_worker.py``), with the Python of the measured layer's venv, and writes
``bench/results/bulk-<UTC time>.{json,md}`` (``reports/bulk.py``).

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
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from catalogue import BULK_GROUP_MEMBERS, bulk_plan, layer_named
from reports.bulk import key_of, markdown, render
from shared.machine import machine
from shared.procs import log, python_of
from shared.resp import RespClient, command_calls
from shared.resultfiles import RESULTS, save_results, stamp_of
from shared.server_state import queued_messages, server_version

WORKER = str(Path(__file__).resolve().parents[1] / "measuring" / "bulk_worker.py")
NO_REPORT = '{"ok": false, "error": "no report"}'


def measure(options: argparse.Namespace, key: str, params: dict[str, Any]) -> dict[str, Any]:
    """One measurement on a flushed server: the worker's report, the server's command calls
    during the epoch, and (core layers) the check that the queues hold what was sent."""
    layer = layer_named(key)
    full = {
        **params,
        "path": layer.path,
        "kind": layer.kind,
        "url": options.url,
        "seconds": options.seconds,
        "warmup": options.warmup,
    }
    with RespClient.from_url(options.url) as client:
        client.command("FLUSHALL")
    process = subprocess.Popen(
        [python_of(options.venvs, layer.venv), WORKER, json.dumps(full)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    first: dict[str, Any] = json.loads(process.stdout.readline() or NO_REPORT)
    before_queued = 0
    stats_before: dict[str, int] = {}
    if first.get("warm"):
        before_queued = queued_messages(options.url)
        with RespClient.from_url(options.url) as client:
            client.command("CONFIG", "RESETSTAT")
            stats_before = command_calls(client.info("commandstats"))
        process.stdin.write("go\n")
        process.stdin.flush()
        report: dict[str, Any] = json.loads(process.stdout.readline() or NO_REPORT)
    else:
        report = first
    process.wait(timeout=120)
    with RespClient.from_url(options.url) as client:
        stats = command_calls(client.info("commandstats"))
    for name, calls in stats_before.items():
        stats[name] = stats.get(name, 0) - calls
    report.update(layer=key, **params, commandstats=stats)
    if report.get("ok") and layer.kind == "core" and params["workload"] != "size":
        fan_out = BULK_GROUP_MEMBERS if params["workload"] == "group" else 1
        queued = queued_messages(options.url) - before_queued
        if queued != report["sent"] * fan_out:
            report.update(ok=False, error=f"{queued} queued, {report['sent'] * fan_out} sent")
    return report


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main() -> int:
    parser = build_parser()
    options = parser.parse_args()
    if options.render:
        print(render(options.render))
        return 0
    if not options.url or not options.venvs:
        parser.error("--url and --venvs are needed to measure")
    started = datetime.now(timezone.utc)
    load = f"{os.getloadavg()[0]:.2f}"
    wanted = set(options.only.split(","))
    runs = [run for run in bulk_plan() if run[1]["workload"] in wanted]
    records: list[dict[str, Any]] = []
    for round_index in range(options.rounds):
        # Rotated by a share of the plan each round, so every measurement moves in the order.
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
        stamp = stamp_of(started, "bulk-")
        save_results(RESULTS, stamp, result, report)
        log(f"wrote bench/results/{stamp}.md and .json")
    return 0 if all(r.get("ok") for r in records) else 1
