"""What the benchmark's servers hold and have done: reset, leftovers, counters, connections.

Every measurement starts on a flushed server with reset statistics and ends by checking that
no message is left queued; the counters read here (commands, CPU, connections) are exact and
do not depend on the machine, unlike the rates. A URL is a server (``redis://host:port``) or
a private cluster (``cluster://host:port,host:port,...``, every node listed). Standard library
and :mod:`shared.resp` only, so both the runners and the measuring processes in the venvs use it.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from shared.resp import RespClient, command_calls, nodes_of

#: Seconds between two samples of the server's connected clients.
SAMPLE_EVERY = 0.002


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


def queued_messages(url: str) -> int:
    """Messages still queued (on every primary): members of sorted sets that are neither
    groups nor our own keys.

    channels_redis keeps a receive's message in ``<queue>$inflight`` until it is processed, so
    those count as queued; other keys with ``$`` (wake keys) and groups do not.
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


def server_version(url: str) -> str:
    """The version the (first) server behind ``url`` reports."""
    with RespClient(*nodes_of(url)[0]) as client:
        info = client.info("server")
    return info.get("valkey_version") or info.get("redis_version") or "unknown"


def server_counts(url: str) -> tuple[list[int], dict[str, int], float]:
    """Commands processed by each node, calls by command and CPU seconds used (both summed
    over every node)."""
    totals = []
    calls: Counter[str] = Counter()
    cpu = 0.0
    for host, port in nodes_of(url):
        with RespClient(host, port) as client:
            info = client.info("stats", "commandstats", "cpu")
        totals.append(int(info["total_commands_processed"]))
        calls.update(command_calls(info))
        cpu += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return totals, dict(calls), cpu


class ConnectionSampler:
    """The connections the server holds, sampled every SAMPLE_EVERY seconds from a thread on
    a connection of its own, so that a peak is seen however short the epoch.

    The benchmark's server is private and nothing else talks to it during a measured epoch,
    so ``connected_clients`` minus its value when the sampler connected (the sampler's own
    connection) is the number of connections the measuring process holds. A thread rather
    than a task: the event loop being measured may be too busy to sample on time.
    """

    def __init__(self, url: str) -> None:
        self._client = RespClient(*nodes_of(url)[0])
        self.baseline = self._connected()[0]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = self.samples = self.opened = self._opened_before = 0

    def _connected(self) -> tuple[int, int]:
        """``connected_clients`` and ``total_connections_received`` now."""
        info = self._client.info("clients", "stats")
        return int(info["connected_clients"]), int(info["total_connections_received"])

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._connected()[0])
            self.samples += 1
            self._stop.wait(SAMPLE_EVERY)

    def start(self) -> None:
        self._stop.clear()
        self.peak = self.samples = 0
        self._opened_before = self._connected()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, int]:
        """Stop sampling; what the process held at peak and at the end, and opened."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        connected, received = self._connected()
        return {
            "peak": self.peak - self.baseline,
            "end": connected - self.baseline,
            # New connections during the epoch (the sampler's own is older).
            "opened": received - self._opened_before,
            "samples": self.samples,
        }

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._client.close()
