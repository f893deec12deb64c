"""The failover benchmark's measurements, in this process: traffic across a primary's kill,
and the steady-state cost of ``wait_for_replicas``.

``runners/failover.py`` runs these with the ``ours`` venv's Python against private clusters
(``shared/localcluster.py``), some behind the replication-lag proxy (``shared/lagproxy.py``,
controlled by :class:`Proxy`). A :class:`Traffic` numbers every message a sender sends and
checks what a receiver gets, so a run counts exactly what was acknowledged, raised, lost,
duplicated and reordered; see ``runners/failover.py`` for the scenarios and the steps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.localcluster import LocalCluster, Node, die_with_parent, wait_for
from shared.stats import quantile

BENCH = Path(__file__).resolve().parents[1]

#: Messages the sender may have sent and the receiver not yet received.
WINDOW = 50
#: Channel capacity: well above WINDOW, so no send meets a full channel.
CAPACITY = 1000
PREFIX = "asgi"
TEXT = "x" * 100


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    lag_ms: float = 0.0  # replication streams held this long by lagproxy
    delay_ms: float = 0.0  # the receiver's time per message
    steady: bool = False  # also measure the steady-state cost here


class Proxy:
    """``lagproxy.py`` in a process of its own, in front of every node of ``cluster``."""

    def __init__(self, cluster: LocalCluster, lag_ms: float) -> None:
        pairs = [f"{node.announce_port}:{node.port}" for node in cluster.nodes]
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "shared" / "lagproxy.py"), str(lag_ms), *pairs],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        self._expect("ready")

    def _expect(self, line: str) -> None:
        assert self.process.stdout is not None
        got = self.process.stdout.readline().strip()
        if got != line:
            raise RuntimeError(f"lagproxy: expected {line!r}, got {got!r}")

    def _tell(self, command: str, node: Node) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command} {node.announce_port}\n")
        self.process.stdin.flush()

    def crash(self, node: Node) -> None:
        """Reset every connection to ``node``, drop what the proxy still holds for them, and
        refuse new ones."""
        self._tell("crash", node)
        self._expect(f"crashed {node.announce_port}")

    def revive(self, node: Node) -> None:
        """Accept connections to ``node`` again."""
        self._tell("revive", node)
        self._expect(f"revived {node.announce_port}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def now() -> float:
    return time.perf_counter()


class Traffic:
    """A numbering sender and a checking receiver on one channel of one layer."""

    def __init__(self, layer: Any, channel: str, delay: float = 0.0) -> None:
        self.layer = layer
        self.channel = channel
        self.delay = delay  # the receiver's seconds per message
        self.acknowledged: set[int] = set()
        self.failed: dict[int, str] = {}  # number -> exception name
        self.received: Counter[int] = Counter()
        self.out_of_order = 0
        self.latencies: list[tuple[float, float]] = []  # (start, seconds) per returned send
        self.sent = 0
        self.stop_sending = asyncio.Event()
        self._progress = asyncio.Event()
        self._highest = -1
        self._last: int | None = None
        self.errors: list[str] = []
        self.trace = ""  # the traceback of the first unexpected exception of a send

    async def send(self) -> None:
        from channels_valkey.exceptions import NotReplicated

        number = 0
        while not self.stop_sending.is_set():
            await self._window()
            self.sent = number + 1  # attempted, counted before it may be received
            began = now()
            try:
                await self.layer.send(self.channel, {"type": "seq", "n": number, "text": TEXT})
            except NotReplicated:
                self.failed[number] = "NotReplicated"
            except Exception as error:  # counted, and the sender goes on
                self.failed[number] = type(error).__name__
                self.errors.append(f"#{number}: {type(error).__name__}: {error}"[:2000])
                if not self.trace:
                    self.trace = traceback.format_exc()[-6000:]
            else:
                self.acknowledged.add(number)
                self.latencies.append((began, now() - began))
            number += 1

    async def finish(self, sender: asyncio.Future[None], timeout: float = 30.0) -> bool:
        """Stop ``sender`` (the task running :meth:`send`) and, once its last send returned,
        send the last message (retrying until a send returns); ``False`` on timeout.

        Sent any earlier, the last message could overtake a send still in flight: the receiver
        would stop before that message arrived."""
        self.stop_sending.set()
        await asyncio.wait_for(sender, timeout)
        deadline = now() + timeout
        while now() < deadline:
            try:
                await self.layer.send(self.channel, {"type": "seq", "n": -1, "last": True})
            except Exception as error:
                self.errors.append(f"last: {type(error).__name__}: {error}")
                await asyncio.sleep(0.1)
                continue
            return True
        return False

    async def _window(self) -> None:
        """Wait while WINDOW messages are unreceived; give up waiting after a second (lost
        messages never arrive, so they must not hold the window for good)."""
        deadline = now() + 1.0
        while self.sent - len(self.received) >= WINDOW and now() < deadline:
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), max(0.0, deadline - now()))

    def lost(self) -> set[int]:
        """Acknowledged sends that were never received."""
        return self.acknowledged - set(self.received)

    def duplicates(self) -> int:
        """Deliveries beyond the first of each message."""
        return sum(count - 1 for count in self.received.values())

    @staticmethod
    async def stop(*tasks: asyncio.Future[None]) -> None:
        """Cancel the sender and receiver tasks and wait until they have ended."""
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def receive(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            if message.get("last"):
                return
            number = int(message["n"])
            if self.received[number] == 0 and number < self._highest:
                self.out_of_order += 1
            self.received[number] += 1
            self._highest = max(self._highest, number)
            self._progress.set()
            if self.delay:
                await asyncio.sleep(self.delay)


@dataclass
class FailoverRun:
    wait_for_replicas: int
    index: int
    channel: str
    victim: str = ""
    sent: int = 0
    acknowledged: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    received: int = 0  # distinct numbers
    lost: list[int] = field(default_factory=list)  # acknowledged, never received
    duplicates: int = 0  # extra deliveries
    out_of_order: int = 0
    failed_but_received: int = 0
    acknowledged_before_kill: int = 0  # the highest acknowledged number when the kill happened
    unreceived_at_kill: int = 0  # sent but not yet received when the kill happened
    failover_seconds: float = 0.0  # kill until the cluster names a new primary for the queue
    healthy_seconds: float = 0.0  # kill until the restarted node is a replica in sync
    longest_send: float = 0.0
    left_queued: int = 0
    ok: bool = True
    error: str = ""
    errors: list[str] = field(default_factory=list)
    trace: str = ""


def make_layer(cluster: LocalCluster, wait: int) -> Any:
    from channels_valkey.core import ValkeyChannelLayer

    return ValkeyChannelLayer(
        hosts=[{"cluster": True, "startup_nodes": cluster.startup_nodes}],
        prefix=PREFIX,
        capacity=CAPACITY,
        wait_for_replicas=wait,
        replica_timeout=1.0,
    )


def queue_key(channel: str) -> str:
    return f"{PREFIX}{{{channel}}}"


async def failover_run(
    cluster: LocalCluster,
    proxy: Proxy | None,
    scenario: Scenario,
    wait: int,
    index: int,
    options: argparse.Namespace,
) -> FailoverRun:
    channel = f"failover.{scenario.key}.w{wait}.run{index}"
    run = FailoverRun(wait, index, channel)
    layer = make_layer(cluster, wait)
    traffic = Traffic(layer, channel, scenario.delay_ms / 1000)
    receiver = asyncio.ensure_future(traffic.receive())
    sender = asyncio.ensure_future(traffic.send())
    try:
        await asyncio.sleep(options.before)
        victim: Node = await asyncio.to_thread(cluster.node_for, queue_key(channel))
        run.victim = victim.name
        run.acknowledged_before_kill = max(traffic.acknowledged, default=-1)
        run.unreceived_at_kill = traffic.sent - len(traffic.received)
        killed_at = now()
        victim.kill()  # SIGKILL, no WAIT first
        if proxy is not None:
            proxy.crash(victim)  # and what was on its way to the replica is gone

        def taken_over() -> bool:
            try:
                return cluster.node_for(queue_key(channel)) is not victim
            except LookupError:  # no node claims the slot for a moment
                return False

        await asyncio.to_thread(wait_until, taken_over, 30)
        run.failover_seconds = now() - killed_at
        await asyncio.sleep(options.down)
        victim.spawn()  # from this (the main) thread: see Node.spawn
        if proxy is not None:
            proxy.revive(victim)
        await asyncio.to_thread(victim.wait_ready)
        await asyncio.to_thread(cluster.wait_healthy, 60)
        run.healthy_seconds = now() - killed_at
        await asyncio.sleep(options.after)
        if not await traffic.finish(sender):
            raise RuntimeError("the last message could not be sent within 30 s")
        await asyncio.wait_for(asyncio.shield(receiver), 60)
    except Exception as error:
        run.ok = False
        run.error = f"{type(error).__name__}: {error}"
    finally:
        await traffic.stop(sender, receiver)
        primary = await asyncio.to_thread(cluster.node_for, queue_key(channel))
        left = primary.command("ZCARD", queue_key(channel))
        run.left_queued = left if isinstance(left, int) else 0
        await layer.close_pools()
    run.sent = traffic.sent
    run.acknowledged = len(traffic.acknowledged)
    run.failed = dict(Counter(traffic.failed.values()))
    run.received = len(traffic.received)
    run.lost = sorted(traffic.lost())
    run.duplicates = traffic.duplicates()
    run.out_of_order = traffic.out_of_order
    run.failed_but_received = len(set(traffic.failed) & set(traffic.received))
    run.longest_send = max((seconds for _, seconds in traffic.latencies), default=0.0)
    run.errors = traffic.errors[:20]
    run.trace = traffic.trace
    return run


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    wait_for(predicate, timeout, "the failover")


@dataclass
class SteadyRun:
    wait_for_replicas: int
    index: int
    sends: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    p50: float | None = None
    p99: float | None = None
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    ok: bool = True
    error: str = ""


async def steady_run(
    cluster: LocalCluster, scenario: Scenario, wait: int, index: int, options: argparse.Namespace
) -> SteadyRun:
    channel = f"steady.{scenario.key}.w{wait}.run{index}"
    run = SteadyRun(wait, index)
    layer = make_layer(cluster, wait)
    traffic = Traffic(layer, channel)
    receiver = asyncio.ensure_future(traffic.receive())
    # A short warm-up (connections, scripts), not counted.
    warm = Traffic(layer, channel + ".warm")
    warm_receiver = asyncio.ensure_future(warm.receive())
    warm_sender = asyncio.ensure_future(warm.send())
    await asyncio.sleep(0.3)
    await warm.finish(warm_sender)
    await warm_receiver
    sender = asyncio.ensure_future(traffic.send())
    started = now()
    try:
        await asyncio.sleep(options.seconds)
        traffic.stop_sending.set()
        await asyncio.wait_for(asyncio.shield(sender), 30)
        run.seconds = now() - started
        await traffic.finish(sender)
        await asyncio.wait_for(asyncio.shield(receiver), 30)
    except Exception as error:
        run.ok = False
        run.error = f"{type(error).__name__}: {error}"
    finally:
        await traffic.stop(sender, receiver)
        await layer.close_pools()
    latencies = [seconds for _, seconds in traffic.latencies]
    run.sends = len(traffic.acknowledged)
    run.rate = run.sends / run.seconds if run.seconds else 0.0
    run.p50 = quantile(latencies, 0.5)
    run.p99 = quantile(latencies, 0.99)
    run.failed = len(traffic.failed)
    run.lost = len(traffic.lost())
    run.duplicates = traffic.duplicates()
    return run
