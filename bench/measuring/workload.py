"""One benchmark measurement: one workload on one channel layer, verified and counted.

``runners/benchmark.py`` and ``runners/cluster.py`` run this script under the virtual
environment of the layer being measured:

    python bench/measuring/workload.py measure --layer channels_redis.core.RedisChannelLayer \\
        --kind core --workload send-receive --url redis://127.0.0.1:6379 [--seconds 1.5] \\
        [--warmup 0.3]
    python bench/measuring/workload.py ceiling --url redis://127.0.0.1:6379 [--seconds 1.5]

and reads one JSON object from the last line of its standard output. Multi-process workloads
start helper processes running this same script (``workload.py helper ROLE PARAMS``)
and talk to them over their stdin/stdout, one JSON object per line.

Only the Channels layer API is used (``new_channel``, ``send``, ``receive``, ``group_add``,
``group_send``), so any layer class works. Every workload runs two *epochs*: a short warm-up
(connections opened, scripts loaded) and the measured one. Each message carries its epoch and
its sequence number on its channel, and every receiver checks that it gets exactly
``0, 1, 2, ...`` of the current epoch: a lost, duplicated or reordered message fails the
measurement (non-zero exit). An epoch runs for a fixed time; then the sender sends each
channel a message marked ``last``, after which its receiver stops, so no receiver is ever left
waiting on an empty channel.

Senders never run ahead of receivers by more than ``WINDOW`` messages (half the default
capacity of 100): receivers in the same process report progress directly, helpers over their
stdout. So no layer ever meets a full channel or drops from a full buffer, and the numbers
compare layers at their default settings.

Counting, over the measured epoch only:

- *client round trips*: calls of ``send_packed_command`` on valkey-py's and redis-py's asyncio
  connections, in every process; one call writes one command or one whole pipeline and is
  followed by waiting for the reply (pub/sub pushes are read without any write). Each asyncio
  task is tagged with its role, so the sender's share is reported apart.
- *server commands*: ``total_commands_processed`` from ``INFO stats`` just before and just
  after the epoch, which counts commands run inside Lua scripts too, minus the ``INFO`` call
  itself; ``INFO commandstats`` gives the same by command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections import Counter
from typing import Any

# Run as a script: the benchmark's packages are imported from bench/, the folder above.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from catalogue import CLUSTER_WORKLOAD_KEYS, WORKLOAD_KEYS
from shared.machine import busy_cpu_seconds
from shared.server_state import server_counts
from shared.stats import quantile

from measuring.channel_api import close_layer, layer_options, make_layer
from measuring.flow import BenchFailure
from measuring.helpers import Coordinator
from measuring.roles import HELPER_ROLES
from measuring.roundtrips import ROLE, ROUND_TRIPS, count_round_trips
from measuring.shapes import WORKLOAD_CLASSES, Epoch, Workload

#: Every workload this script runs: the main benchmark's and the cluster's.
WORKLOADS = tuple(dict.fromkeys((*WORKLOAD_KEYS, *CLUSTER_WORKLOAD_KEYS)))


async def helper_main(role: str, params: dict[str, Any]) -> int:
    count_round_trips()
    ROLE.set("setup")
    layer = make_layer(params["layer"], params["url"])
    link = Coordinator()
    await link.listen()
    try:
        await HELPER_ROLES[role](layer, link, params)
    except Exception as error:
        link.emit("error", message=f"{type(error).__name__}: {error}")
        return 1
    await link.exit.wait()
    await close_layer(layer, params["kind"])
    return 0


def environment() -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version()}
    for dist in (
        "channels-valkey",
        "channels-redis",
        "channels",
        "valkey",
        "redis",
        "libvalkey",
        "hiredis",
        "msgpack",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    parsers = {}
    with contextlib.suppress(ImportError):
        from valkey.utils import LIBVALKEY_AVAILABLE

        parsers["valkey"] = "libvalkey" if LIBVALKEY_AVAILABLE else "python"
    with contextlib.suppress(ImportError):
        from redis.utils import HIREDIS_AVAILABLE

        parsers["redis"] = "hiredis" if HIREDIS_AVAILABLE else "python"
    found["parsers"] = parsers
    return found


async def measure(options: argparse.Namespace) -> dict[str, Any]:
    """Set up the workload, run its warm-up epoch, then its measured epoch with every count."""
    patched = count_round_trips()
    ROLE.set("setup")
    options_used = layer_options(options.workload, options.kind)
    layer = make_layer(options.layer, options.url, **options_used)
    workload = WORKLOAD_CLASSES[options.workload](layer, options)
    report: dict[str, Any] = {
        "layer": options.layer,
        "kind": options.kind,
        "workload": options.workload,
        "processes": workload.processes,
        "seconds": options.seconds,
        "counted_clients": patched,
        "layer_options": options_used,
        "environment": environment(),
    }
    try:
        await workload.setup()
        await workload.epoch(0, options.warmup)
        report.update(await measured_epoch(workload, options))
    except Exception as error:
        if not isinstance(error, BenchFailure):
            traceback.print_exc()
        report.update(ok=False, error=f"{type(error).__name__}: {error}")
    finally:
        await workload.teardown()
        await close_layer(layer, options.kind)
    return report


async def measured_epoch(workload: Workload, options: argparse.Namespace) -> dict[str, Any]:
    """Epoch 1 with the counters read around it: the report's numbers."""
    await workload.helpers.reset()
    ROUND_TRIPS.clear()
    total_before, calls_before, server_cpu_before = server_counts(options.url)
    busy_before, cpu_before = busy_cpu_seconds(), time.process_time()
    measured = await workload.epoch(1, options.seconds)
    client_cpu = time.process_time() - cpu_before
    busy = busy_cpu_seconds() - busy_before
    total_after, calls_after, server_cpu_after = server_counts(options.url)
    trips = Counter(ROUND_TRIPS)
    helper_trips, helper_cpu = await workload.helpers.round_trips()
    trips.update(helper_trips)
    calls = {
        name: calls_after.get(name, 0) - calls_before.get(name, 0)
        for name in calls_after
        if name != "info" and calls_after.get(name, 0) != calls_before.get(name, 0)
    }
    info_calls = calls_after.get("info", 0) - calls_before.get("info", 0)
    # One INFO per node before the epoch ends up counted on each node.
    by_node = [after - before - 1 for before, after in zip(total_before, total_after, strict=True)]
    report: dict[str, Any] = {
        "ok": True,
        "messages": measured.messages,
        "operations": measured.operations,
        "elapsed": measured.elapsed,
        "rate": measured.messages / measured.elapsed,
        "operation_rate": measured.operations / measured.elapsed,
        "commands": sum(total_after) - sum(total_before) - info_calls,
        "commands_by_node": by_node,
        "command_calls": calls,
        "round_trips": dict(trips),
        # CPU seconds during the measured epoch: this process and its helpers, the servers
        # (every node), and the whole machine (other work included).
        "cpu": {
            "client": client_cpu + helper_cpu,
            "server": server_cpu_after - server_cpu_before,
            "machine": busy,
        },
    }
    report.update(measured.extra)
    if measured.latencies:
        report["latency"] = latency(measured)
    return report


def latency(measured: Epoch) -> dict[str, Any]:
    """The epoch's ping round trips or group_send calls, in seconds."""
    return {
        "p50": quantile(measured.latencies, 0.50),
        "p99": quantile(measured.latencies, 0.99),
        "mean": statistics.fmean(measured.latencies),
        "max": max(measured.latencies),
        "count": len(measured.latencies),
    }


async def ceiling(options: argparse.Namespace) -> dict[str, Any]:
    """Sequential PINGs of one valkey-py asyncio connection: through the client, and bare."""
    from valkey.asyncio import Valkey

    client = Valkey.from_url(options.url)
    rates = {}
    try:

        async def through_client() -> None:
            await client.ping()

        connection = client.connection_pool.make_connection()
        await connection.connect()

        async def bare() -> None:
            await connection.send_command("PING")
            await connection.read_response()

        for name, ping in (("client", through_client), ("connection", bare)):
            for _ in range(200):
                await ping()
            count = 0
            start = time.perf_counter()
            deadline = start + options.seconds
            while time.perf_counter() < deadline:
                await ping()
                count += 1
            rates[name] = count / (time.perf_counter() - start)
        await connection.disconnect()
    finally:
        await client.aclose()
    return {"ok": True, "ping_rates": rates, "environment": environment()}


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "helper":
        role, params = sys.argv[2], json.loads(sys.argv[3])
        return asyncio.run(helper_main(role, params))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("measure", "ceiling"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--layer", help="the layer class, as module.Class")
    parser.add_argument("--kind", choices=("core", "pubsub"), default="core")
    parser.add_argument("--workload", choices=WORKLOADS)
    parser.add_argument("--seconds", type=float, default=1.5, help="measured epoch")
    parser.add_argument("--warmup", type=float, default=0.3, help="warm-up epoch")
    options = parser.parse_args()
    if options.mode == "ceiling":
        report = asyncio.run(ceiling(options))
    else:
        if not options.layer or not options.workload:
            parser.error("measure needs --layer and --workload")
        report = asyncio.run(measure(options))
    sys.stdout.write(json.dumps(report) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
