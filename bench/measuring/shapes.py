"""The workloads a measurement runs: what is sent where, by whom, for one epoch.

Every workload runs two epochs, a short warm-up (connections opened, scripts loaded) and the
measured one; an epoch lasts a fixed time, then every channel gets a message marked last and
its receiver stops, so no ``receive()`` ever waits on an empty channel (a channels_redis
receive would block 5 s there). ``WORKLOAD_CLASSES`` maps the catalogue's names to them.
Runs in the measured layer's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from shared.localcluster import key_slot, primary_of_slot
from shared.server_state import ConnectionSampler

from measuring.channel_api import GROUP, make_members
from measuring.flow import (
    WINDOW,
    BenchFailure,
    Progress,
    Window,
    check,
    gather_all,
    message,
    receive_epoch,
    send_until,
)
from measuring.helpers import Helper, Helpers
from measuring.roundtrips import ROLE

FAN_IN_CHANNELS = 200
GROUP_MEMBERS = 1000
GROUP_PROCESSES = 4
NORMAL_CHANNEL = "bench.sendrecv"
#: ``spread-*``: normal channels whose queues' slots fall evenly into SPREAD_PRIMARIES ranges.
SPREAD_CHANNELS = 24
SPREAD_PRIMARIES = 3
SPREAD_PROCESSES = 4
#: Seconds an epoch may take beyond its planned duration before the measurement fails.
EPOCH_GRACE = 60.0
#: ``concurrent-*``: messages each sender may have in flight to its own receiver.
CONCURRENT_WINDOW = 5


class Epoch:
    """What one epoch measured."""

    def __init__(self) -> None:
        self.messages = 0  # deliveries, last markers included
        self.operations = 0  # sends, group_sends or pings
        self.elapsed = 0.0
        self.latencies: list[float] = []  # ping round trips or group_send calls, seconds
        self.extra: dict[str, Any] = {}  # more fields for the report


class Workload:
    """Set up once, run epochs, tear down; subclasses fill in the steps."""

    processes = 1

    def __init__(self, layer: Any, options: argparse.Namespace) -> None:
        self.layer = layer
        self.options = options
        self.helpers = Helpers([])
        #: The flow control of the running epoch, reported when an epoch fails.
        self.window: Window | None = None

    def helper_params(self) -> dict[str, Any]:
        return {"layer": self.options.layer, "kind": self.options.kind, "url": self.options.url}

    async def setup(self) -> None:
        """Create channels, start helpers; before any epoch."""

    async def epoch(self, epoch: int, seconds: float) -> Epoch:
        raise NotImplementedError

    async def guard(self, aw: Awaitable[Any], seconds: float) -> Any:
        try:
            return await self.helpers.guard(aw, seconds + EPOCH_GRACE)
        except BenchFailure as failure:
            window = self.window
            if window is None:
                raise
            progress = f"sent {window.sent}, all received {window.acked}"
            raise BenchFailure(f"{failure} ({progress})") from None

    async def teardown(self) -> None:
        await self.helpers.stop()


class SendReceive(Workload):
    """One normal channel; a sender task and a receiver task in this process."""

    async def epoch(self, epoch: int, seconds: float) -> Epoch:
        result = Epoch()
        self.window = window = Window(WINDOW)
        receiver = asyncio.ensure_future(
            receive_epoch(self.layer, NORMAL_CHANNEL, epoch, window.ack)
        )
        start = time.perf_counter()
        sender = asyncio.ensure_future(self._send(epoch, seconds, start, window))
        result.operations = (await self.guard(gather_all(sender, receiver), seconds))[0]
        result.elapsed = time.perf_counter() - start
        result.messages = result.operations
        return result

    async def _send(self, epoch: int, seconds: float, start: float, window: Window) -> int:
        return await send_until(self.layer, NORMAL_CHANNEL, epoch, start + seconds, window)


class SendReceiveTwoProcesses(SendReceive):
    """One normal channel; the sender here, the receiver in a helper process."""

    processes = 2

    async def setup(self) -> None:
        self.helpers = Helpers([Helper("receiver", self._ack)])
        await self.helpers.start("receiver", [{**self.helper_params(), "channel": NORMAL_CHANNEL}])

    def _ack(self, count: int, source: str) -> None:
        if self.window is not None:
            self.window.ack(count)

    async def epoch(self, epoch: int, seconds: float) -> Epoch:
        result = Epoch()
        self.window = window = Window(WINDOW)
        start = time.perf_counter()
        sent = await self.guard(self._send(epoch, seconds, start, window), seconds)
        await self.guard(self.helpers.expect("done", seconds + EPOCH_GRACE), seconds)
        result.elapsed = time.perf_counter() - start
        result.operations = result.messages = sent
        return result


async def fan_in_epoch(
    layer: Any, channels: list[str], epoch: int, seconds: float, window: Window
) -> int:
    """One sender sends to ``channels`` in turn for ``seconds``, then each its last message;
    a receiver per channel checks them. Returns the messages sent (and received)."""
    received = 0

    def on_message(_: int) -> None:
        nonlocal received
        received += 1
        window.ack(received)

    async def send() -> int:
        ROLE.set("sender")
        deadline = time.perf_counter() + seconds
        seqs = [0] * len(channels)
        sent = 0
        while time.perf_counter() < deadline:
            index = sent % len(channels)
            await window.acquire()
            await layer.send(channels[index], message("message", epoch, seqs[index]))
            seqs[index] += 1
            sent += 1
        for index, channel in enumerate(channels):
            await window.acquire()
            await layer.send(channel, message("message", epoch, seqs[index], last=True))
            sent += 1
        return sent

    receivers = [receive_epoch(layer, channel, epoch, on_message) for channel in channels]
    counts = await gather_all(send(), *receivers)
    sent: int = counts[0]
    return sent


def spread_channels(count: int = SPREAD_CHANNELS, parts: int = SPREAD_PRIMARIES) -> list[str]:
    """``count`` normal channels, ``count // parts`` of them in each of ``parts`` equal slot
    ranges (the primaries of a ``parts``-primary benchmark cluster), interleaved: consecutive
    channels live on different primaries. The same names on any server."""
    chosen: list[list[str]] = [[] for _ in range(parts)]
    index = 0
    while any(len(names) < count // parts for names in chosen):
        name = f"bench.spread.{index}"
        names = chosen[primary_of_slot(key_slot(name), parts)]
        if len(names) < count // parts:
            names.append(name)
        index += 1
    return [name for group in zip(*chosen, strict=True) for name in group]


class FanIn(Workload):
    """FAN_IN_CHANNELS channels of this process, each with a receiver; one sender, in turn."""

    async def setup(self) -> None:
        self.channels = [await self.layer.new_channel() for _ in range(FAN_IN_CHANNELS)]

    async def epoch(self, epoch: int, seconds: float) -> Epoch:
        result = Epoch()
        self.window = Window(WINDOW)
        start = time.perf_counter()
        sent = fan_in_epoch(self.layer, self.channels, epoch, seconds, self.window)
        result.operations = result.messages = await self.guard(sent, seconds)
        result.elapsed = time.perf_counter() - start
        return result


class Spread(FanIn):
    """SPREAD_CHANNELS normal channels spread over the slots of SPREAD_PRIMARIES primaries,
    each with a receiver; one sender, in turn; one process."""

    async def setup(self) -> None:
        self.channels = spread_channels()


class SpreadProcesses(Workload):
    """The channels of ``spread-24`` split over SPREAD_PROCESSES helper processes, each with a
    sender and a receiver per channel for its share (every share spans every primary)."""

    processes = 1 + SPREAD_PROCESSES

    async def setup(self) -> None:
        channels = spread_channels()
        names = [f"spread-{i}" for i in range(SPREAD_PROCESSES)]
        self.helpers = Helpers([Helper(name) for name in names])
        shares = [channels[i::SPREAD_PROCESSES] for i in range(SPREAD_PROCESSES)]
        await self.helpers.start(
            "spread", [{**self.helper_params(), "channels": share} for share in shares]
        )

    async def epoch(self, epoch: int, seconds: float) -> Epoch:
        result = Epoch()
        start = time.perf_counter()
        self.helpers.tell("run", seconds=seconds)
        done = await self.guard(self.helpers.expect("done", seconds + EPOCH_GRACE), seconds)
        result.elapsed = time.perf_counter() - start
        result.operations = result.messages = sum(report["sent"] for report in done)
        return result


class GroupSend(Workload):
    """A group of GROUP_MEMBERS channels of this process, each with a receiver; one sender."""

    async def setup(self) -> None:
        self.channels = await make_members(self.layer, GROUP_MEMBERS)

    async def epoch(self, epoch: int, seconds: float) -> Epoch:
        result = Epoch()
        self.window = window = Window(WINDOW)
        progress = Progress(len(self.channels))

        def advance(count: int) -> None:
            if progress.advance(count):
                window.ack(progress.complete)

        receivers = [receive_epoch(self.layer, c, epoch, advance) for c in self.channels]
        start = time.perf_counter()
        sender = self._send(epoch, seconds, start, window, result)
        await self.guard(gather_all(sender, *receivers), seconds)
        result.elapsed = time.perf_counter() - start
        result.messages = result.operations * GROUP_MEMBERS
        return result

    async def _send(
        self, epoch: int, seconds: float, start: float, window: Window, result: Epoch
    ) -> None:
        ROLE.set("sender")
        deadline = start + seconds
        seq = 0
        last = False
        while not last:
            last = time.perf_counter() >= deadline
            await window.acquire()
            began = time.perf_counter()
            await self.layer.group_send(GROUP, message("message", epoch, seq, last=last))
            result.latencies.append(time.perf_counter() - began)
            seq += 1
        result.operations = seq


class GroupSendSpread(GroupSend):
    """The same group spread over GROUP_PROCESSES helper processes; the sender here."""

    processes = 1 + GROUP_PROCESSES

    async def setup(self) -> None:
        names = [f"members-{i}" for i in range(GROUP_PROCESSES)]
        self.helpers = Helpers([Helper(name, self._ack) for name in names])
        share = GROUP_MEMBERS // GROUP_PROCESSES
        await self.helpers.start(
            "members", [{**self.helper_params(), "members": share} for _ in names]
        )

    def _ack(self, count: int, source: str) -> None:
        if self.window is not None:
            self.window.ack(count, source)

    async def epoch(self, epoch: int, seconds: float) -> Epoch:
        result = Epoch()
        self.window = Window(WINDOW)
        self.window.expect([helper.name for helper in self.helpers.helpers])
        start = time.perf_counter()
        await self.guard(self._send(epoch, seconds, start, self.window, result), seconds)
        await self.guard(self.helpers.expect("done", seconds + EPOCH_GRACE), seconds)
        result.elapsed = time.perf_counter() - start
        result.messages = result.operations * GROUP_MEMBERS
        return result


class PingPong(Workload):
    """A ping from this process's channel to a helper's, answered by a pong; one at a time."""

    processes = 2

    async def setup(self) -> None:
        self.own = await self.layer.new_channel()
        self.helpers = Helpers([Helper("ponger")])
        (ready,) = await self.helpers.start("ponger", [{**self.helper_params(), "peer": self.own}])
        self.peer = ready["channel"]

    async def epoch(self, epoch: int, seconds: float) -> Epoch:
        result = Epoch()
        start = time.perf_counter()
        await self.guard(self._ping(epoch, seconds, start, result), seconds)
        await self.guard(self.helpers.expect("done", seconds + EPOCH_GRACE), seconds)
        result.elapsed = time.perf_counter() - start
        result.messages = 2 * result.operations
        return result

    async def _ping(self, epoch: int, seconds: float, start: float, result: Epoch) -> None:
        ROLE.set("pinger")
        deadline = start + seconds
        seq = 0
        last = False
        while not last:
            last = time.perf_counter() >= deadline
            began = time.perf_counter()
            await self.layer.send(self.peer, message("ping", epoch, seq, last=last))
            got = await self.layer.receive(self.own)
            result.latencies.append(time.perf_counter() - began)
            check(self.own, got, "pong", epoch, seq)
            seq += 1
        result.operations = seq


class Concurrent(Workload):
    """``senders`` sender tasks at once, each sending to a channel of its own (process-local
    or normal) that a receiver task of its own receives, all in this process; each sender
    keeps at most CONCURRENT_WINDOW messages in flight. Reports the connections the process
    holds to the server at peak during the epoch."""

    def __init__(self, layer: Any, options: argparse.Namespace) -> None:
        super().__init__(layer, options)
        _, senders, scope = options.workload.split("-")
        self.senders = int(senders)
        self.local = scope == "local"

    async def setup(self) -> None:
        self.sampler = ConnectionSampler(self.options.url)
        if self.local:
            self.channels = [await self.layer.new_channel() for _ in range(self.senders)]
        else:
            self.channels = [f"bench.concurrent.{i}" for i in range(self.senders)]

    async def epoch(self, epoch: int, seconds: float) -> Epoch:
        result = Epoch()
        start = time.perf_counter()
        deadline = start + seconds
        self.sampler.start()
        try:
            pairs = [self._pair(channel, epoch, deadline) for channel in self.channels]
            counts = await self.guard(gather_all(*pairs), seconds)
        finally:
            connections = self.sampler.stop()
        result.elapsed = time.perf_counter() - start
        result.operations = result.messages = sum(counts)
        result.extra["connections"] = connections
        return result

    async def _pair(self, channel: str, epoch: int, deadline: float) -> int:
        """One sender and its receiver on ``channel``; the messages sent (and received)."""
        window = Window(CONCURRENT_WINDOW)
        sender = send_until(self.layer, channel, epoch, deadline, window)
        receiver = receive_epoch(self.layer, channel, epoch, window.ack)
        sent, _ = await gather_all(sender, receiver)
        return int(sent)

    async def teardown(self) -> None:
        self.sampler.close()
        await super().teardown()


WORKLOAD_CLASSES: dict[str, type[Workload]] = {
    "send-receive": SendReceive,
    "send-receive-2proc": SendReceiveTwoProcesses,
    "fan-in-200": FanIn,
    "group-1000": GroupSend,
    "group-1000-4proc": GroupSendSpread,
    "ping-pong": PingPong,
    "spread-24": Spread,
    "spread-24-4proc": SpreadProcesses,
    "concurrent-40-local": Concurrent,
    "concurrent-200-local": Concurrent,
    "concurrent-40-normal": Concurrent,
    "concurrent-200-normal": Concurrent,
}
