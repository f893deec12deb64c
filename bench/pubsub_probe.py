"""Measure what the pub/sub layer promises: idle cost, latency, and memory over churn.

    /path/to/venv/bin/python bench/pubsub_probe.py [--channels 1000] [--idle-seconds 10]
        [--messages 5000] [--cycles 100000] [--no-compare] [--cluster HOST:PORT]

Starts a private ``valkey-server`` on a free loopback port (nothing persisted, killed on
exit), then prints:

1. idle CPU: a process with ``--channels`` subscribed channels, each with a consumer waiting in
   ``receive()``, and no traffic, over ``--idle-seconds`` of wall time;
2. latency: publish -> receive, one message at a time, from a second layer instance (another
   "process") to a waiting consumer, p50/p99/max over ``--messages`` messages;
3. churn: ``--cycles`` consumer lifetimes (``new_channel``, ``group_add``, a ``receive()``
   cancelled as when a websocket closes); Python heap (tracemalloc), RSS, local state and the
   server's ``PUBSUB NUMSUB`` / ``PUBSUB CHANNELS`` before and after.

With the package's test dependencies installed, 1 and 2 are also measured for
``channels_redis``' ``RedisPubSubChannelLayer`` for comparison (``--no-compare`` skips that).

``--cluster HOST:PORT`` runs 1 and 2 on a running Valkey Cluster reached through that node
(sharded pub/sub) instead of a private server; channels_redis has no cluster support, so
there is no comparison, and 3 (which counts classic channels on one server) is skipped.

After 2, the receiving layer's ``stats()`` show that every message was counted and none was
dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import valkey
from shared.stats import quantile

from channels_valkey.pubsub import ValkeyPubSubChannelLayer


@contextlib.contextmanager
def private_server() -> Iterator[str]:
    """A throw-away valkey-server; yields ``host:port``."""
    binary = shutil.which("valkey-server")
    if binary is None:
        sys.exit("valkey-server is not on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="pubsub-probe-") as directory:
        args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        args += ["--appendonly", "no", "--dir", directory, "--loglevel", "warning"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            admin = valkey.Valkey(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    admin.ping()
                    break
                except valkey.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            admin.close()
            yield f"127.0.0.1:{port}"
        finally:
            process.kill()
            process.wait()


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def cpu_seconds() -> float:
    return time.process_time()


# --- 1. idle CPU ---------------------------------------------------------------------------


async def idle_cpu(layer: Any, channels: int, seconds: float) -> float:
    """Percent of one core used by this process while ``channels`` consumers wait."""
    names = [await layer.new_channel() for _ in range(channels)]
    waiting = [asyncio.create_task(layer.receive(name)) for name in names]
    await asyncio.sleep(1)  # let subscriptions and tasks settle
    start_cpu, start = cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    used = (cpu_seconds() - start_cpu) / (time.monotonic() - start)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    return used * 100


# --- 2. latency ----------------------------------------------------------------------------


async def latency(sender: Any, receiver: Any, messages: int) -> tuple[list[float], float]:
    """Microseconds from just before ``send()`` to ``receive()`` returning, one at a time;
    and the process's CPU microseconds per message (both ends run in this process)."""
    channel = await receiver.new_channel()
    for _ in range(200):  # warm-up: connections, code paths
        await sender.send(channel, {"type": "warm"})
        await receiver.receive(channel)
    samples: list[float] = []
    cpu_before = cpu_seconds()
    for _ in range(messages):
        waiting = asyncio.create_task(receiver.receive(channel))
        await asyncio.sleep(0)  # the consumer waits, as a real one does
        started = time.perf_counter()
        await sender.send(channel, {"type": "probe"})
        await waiting
        samples.append((time.perf_counter() - started) * 1e6)
    return samples, (cpu_seconds() - cpu_before) / messages * 1e6


def percentiles(samples: list[float]) -> str:
    """p50 and p99 of latency samples in microseconds (:func:`stats.quantile`)."""
    return f"p50 {quantile(samples, 0.5) or 0:.0f} us, p99 {quantile(samples, 0.99) or 0:.0f} us"


# --- 3. churn ------------------------------------------------------------------------------


async def lifecycle(layer: ValkeyPubSubChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    consumer = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer


def server_counts(admin: valkey.Valkey) -> tuple[int, int]:
    """(subscribers of the group, pub/sub channels with a subscriber) on the server."""
    group = int(admin.pubsub_numsub("asgi__group__room")[0][1])
    return group, len(admin.pubsub_channels())


def settle(admin: valkey.Valkey, timeout: float = 10) -> None:
    """Wait until only the keeper's channel and the group are subscribed (a bounded poll)."""
    deadline = time.monotonic() + timeout
    while server_counts(admin)[1] > 2 and time.monotonic() < deadline:
        time.sleep(0.05)


async def churn(layer: ValkeyPubSubChannelLayer, admin: valkey.Valkey, cycles: int) -> None:
    keeper = await layer.new_channel()  # a long-lived member keeps the group subscribed
    await layer.group_add("room", keeper)
    for _ in range(1000):  # warm-up: caches, free lists, the allocator's arenas
        await lifecycle(layer)
    loop_layer = layer._loops.current()

    async def measure() -> tuple[int, int, tuple[int, int], tuple[int, int]]:
        # Unsubscribing is not awaited by the layer: let the last ones land first.
        await asyncio.to_thread(settle, admin)
        gc.collect()
        state = loop_layer.state
        return (
            tracemalloc.get_traced_memory()[0],
            rss_kib(),
            (state.channel_count, state.group_count),
            server_counts(admin),
        )

    tracemalloc.start()
    before = await measure()
    started = time.monotonic()
    for n in range(cycles):
        await lifecycle(layer)
        if n and n % 20000 == 0:
            print(f"   ... {n} cycles", flush=True)
    elapsed = time.monotonic() - started
    after = await measure()
    tracemalloc.stop()
    print(
        f"3. {cycles} connect/disconnect cycles in {elapsed:.1f} s "
        f"({elapsed / cycles * 1e6:.0f} us per cycle, tracemalloc on)"
    )
    print(f"   {'':28} {'before':>12} {'after':>12}")
    print(
        f"   {'python heap (tracemalloc)':28} {before[0] / 1024:>9.0f} KiB "
        f"{after[0] / 1024:>9.0f} KiB  ({(after[0] - before[0]) / 1024:+.0f} KiB)"
    )
    print(f"   {'RSS':28} {before[1]:>9} KiB {after[1]:>9} KiB  ({after[1] - before[1]:+} KiB)")
    print(f"   {'local channels, groups':28} {before[2]!s:>12} {after[2]!s:>12}")
    print(f"   {'server NUMSUB room, CHANNELS':28} {before[3]!s:>12} {after[3]!s:>12}")


# --- main ----------------------------------------------------------------------------------


def theirs_available() -> bool:
    return importlib.util.find_spec("channels_redis") is not None


def their_layer(address: str) -> Any:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    return RedisPubSubChannelLayer(hosts=[f"redis://{address}"])


async def close(layer: Any) -> None:
    await (layer.close() if isinstance(layer, ValkeyPubSubChannelLayer) else layer.flush())


def cluster_hosts(address: str) -> list[Any]:
    host, port = address.rsplit(":", 1)
    return [{"cluster": True, "startup_nodes": [(host, int(port))]}]


async def main(args: argparse.Namespace) -> None:
    server = contextlib.nullcontext(args.cluster) if args.cluster else private_server()
    with server as address:
        url: Any = cluster_hosts(address)[0] if args.cluster else f"valkey://{address}"
        compare = args.compare and theirs_available() and not args.cluster
        what = "Valkey Cluster through" if args.cluster else "valkey-server at"
        print(f"{what} {address}; Python {sys.version.split()[0]}; pid {os.getpid()}")

        ours = ValkeyPubSubChannelLayer(hosts=[url])
        percent = await idle_cpu(ours, args.channels, args.idle_seconds)
        await close(ours)
        print(
            f"1. idle CPU, {args.channels} channels with a waiting consumer, no traffic, "
            f"{args.idle_seconds:g} s: {percent:.3f} % of one core"
        )
        if compare:
            theirs = their_layer(address)
            percent = await idle_cpu(theirs, args.channels, args.idle_seconds)
            await close(theirs)
            print(f"   channels_redis RedisPubSubChannelLayer, same: {percent:.3f} %")

        sender, receiver = (
            ValkeyPubSubChannelLayer(hosts=[url]),
            ValkeyPubSubChannelLayer(hosts=[url]),
        )
        samples, cpu = await latency(sender, receiver, args.messages)
        await close(sender)
        await close(receiver)
        print(
            f"2. publish -> receive latency, {args.messages} messages one at a time: "
            f"{percentiles(samples)}, max {max(samples):.0f} us "
            f"(mean {statistics.fmean(samples):.0f} us); "
            f"CPU {cpu:.0f} us per message, both ends"
        )
        got = receiver.stats()
        print(
            f"   receiver stats: {got.messages_received} received (200 of them warm-up), "
            f"{got.dropped_from_buffers} dropped, {got.reconnects} reconnects; "
            f"sender: {sender.stats().messages_sent} sent"
        )
        if compare:
            sender, receiver = their_layer(address), their_layer(address)
            samples, cpu = await latency(sender, receiver, args.messages)
            await close(sender)
            await close(receiver)
            print(
                f"   channels_redis RedisPubSubChannelLayer, same: "
                f"{percentiles(samples)}; "
                f"CPU {cpu:.0f} us per message"
            )

        if args.cycles and not args.cluster:
            host, port = address.split(":")
            admin = valkey.Valkey(host=host, port=int(port))
            layer = ValkeyPubSubChannelLayer(hosts=[url])
            await churn(layer, admin, args.cycles)
            await close(layer)
            admin.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--cycles", type=int, default=100_000)
    parser.add_argument("--no-compare", dest="compare", action="store_false")
    parser.add_argument("--cluster", metavar="HOST:PORT", help="a node of a running cluster")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
