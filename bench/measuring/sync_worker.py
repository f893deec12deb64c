"""One ``--sync`` measurement, in the measured layer's venv: calls/s from synchronous code.

``runners/sync.py`` starts ``python measuring/sync_worker.py --url ... --backend ... --how ...
--method ...`` with the Python of the case's venv. The layer comes from ``get_channel_layer()``
with Django settings made here, as a view or a Celery task would get it; one thread calls in a
loop (or, for ``await``, one event loop awaits). Prints one JSON line: calls, seconds, calls/s
and new connections per call (``total_connections_received`` before and after the loop, read on
one connection opened before it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

# Run as a script: the benchmark's packages are imported from bench/, the folder above.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from catalogue import SYNC_METHODS
from shared.resp import RespClient

#: Server processes whose consumers make up the `group_send` group.
SERVER_PROCESSES = 2
GROUP_SIZE = 20


def worker(args: argparse.Namespace) -> None:
    """One measurement; prints one JSON line."""
    from asgiref.sync import async_to_sync
    from django.conf import settings

    settings.configure(
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": args.backend,
                "CONFIG": {"hosts": [args.url], "capacity": 10**9},
            }
        }
    )
    from channels.layers import channel_layers, get_channel_layer

    layer = get_channel_layer()
    message = {"type": "bench.message", "text": "x" * 100}
    if args.method == "group_send":
        servers = [channel_layers.make_backend("default") for _ in range(SERVER_PROCESSES)]
        for i in range(GROUP_SIZE):
            member = async_to_sync(servers[i % SERVER_PROCESSES].new_channel)()
            async_to_sync(layer.group_add)("bench-group", member)
        target = "bench-group"
    elif args.method == "group_send-normal":
        for i in range(GROUP_SIZE):
            async_to_sync(layer.group_add)("bench-group", f"bench.member{i}")
        target = "bench-group"
    else:
        target = "bench.channel"
    method = args.method.partition("-")[0]
    if args.how == "sync":
        from channels_valkey import sync

        call = getattr(sync, method)
    elif args.how == "async_to_sync":
        call = async_to_sync(getattr(layer, method))

    admin = RespClient.from_url(args.url)
    if args.how == "await":
        before, calls, elapsed = asyncio.run(awaited(args, layer, method, target, message, admin))
    else:
        deadline = time.perf_counter() + args.warmup
        while time.perf_counter() < deadline:
            call(target, message)
        before = int(admin.info("stats")["total_connections_received"])
        calls = 0
        start = time.perf_counter()
        deadline = start + args.seconds
        while time.perf_counter() < deadline:
            call(target, message)
            calls += 1
        elapsed = time.perf_counter() - start
    after = int(admin.info("stats")["total_connections_received"])
    admin.close()
    print(
        json.dumps(
            {
                "calls": calls,
                "seconds": elapsed,
                "calls_per_s": calls / elapsed,
                "new_connections_per_call": (after - before) / calls,
            }
        ),
        flush=True,
    )


async def awaited(
    args: argparse.Namespace,
    layer: Any,
    method: str,
    target: str,
    message: dict[str, Any],
    admin: RespClient,
) -> tuple[int, int, float]:
    """The same loop in async code, awaiting the layer on one event loop: the layer's own
    cost, without the hand-over between threads that a synchronous caller pays."""
    call = getattr(layer, method)
    deadline = time.perf_counter() + args.warmup
    while time.perf_counter() < deadline:
        await call(target, message)
    before = int(admin.info("stats")["total_connections_received"])
    calls = 0
    start = time.perf_counter()
    deadline = start + args.seconds
    while time.perf_counter() < deadline:
        await call(target, message)
        calls += 1
    elapsed = time.perf_counter() - start
    await layer.close_pools()
    return before, calls, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--how", choices=["sync", "async_to_sync", "await"], required=True)
    parser.add_argument("--method", choices=SYNC_METHODS, required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.3)
    worker(parser.parse_args())


if __name__ == "__main__":
    main()
