"""One benchmark measurement: one workload on one channel layer, verified and counted.

``driver.py`` runs this script under the virtual environment of the layer being measured:

    python workload.py measure --layer channels_redis.core.RedisChannelLayer --kind core \\
        --workload send-receive --url redis://127.0.0.1:6379 [--seconds 1.5] [--warmup 0.3]
    python workload.py ceiling --url redis://127.0.0.1:6379 [--seconds 1.5]

and reads one JSON object from the last line of its standard output. Multi-process workloads
start helper processes running this same script (``python workload.py helper ROLE PARAMS``)
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
import contextvars
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

SCRIPT = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(SCRIPT))

from localcluster import key_slot, primary_of_slot  # noqa: E402
from resp import CLUSTER_SCHEME, RespClient, command_calls, nodes_of  # noqa: E402

#: Messages a sender may have in flight (sent, not yet received): half the default capacity.
WINDOW = 50
FAN_IN_CHANNELS = 200
GROUP_MEMBERS = 1000
GROUP_PROCESSES = 4
GROUP = "bench-group"
NORMAL_CHANNEL = "bench.sendrecv"
#: ``spread-*``: normal channels whose queues' slots fall evenly into SPREAD_PRIMARIES ranges.
SPREAD_CHANNELS = 24
SPREAD_PRIMARIES = 3
SPREAD_PROCESSES = 4
#: The body every message carries, about the size of a chat message.
TEXT = "x" * 100
#: Seconds an epoch may take beyond its planned duration before the measurement fails.
EPOCH_GRACE = 60.0
#: A helper acknowledges received messages every this many (and at the last one).
ACK_EVERY = 10
#: ``concurrent-*``: messages each sender may have in flight to its own receiver.
CONCURRENT_WINDOW = 5
#: ``concurrent-*-local`` on core layers: all process-local channels of a process share one
#: queue, so N senders with CONCURRENT_WINDOW in flight each could exceed the default
#: capacity of 100 there; this capacity leaves room for any of them.
CONCURRENT_CAPACITY = 10_000
#: Seconds between two samples of the server's connected clients.
SAMPLE_EVERY = 0.002

WORKLOADS = (
    "send-receive",
    "send-receive-2proc",
    "fan-in-200",
    "group-1000",
    "group-1000-4proc",
    "ping-pong",
    "spread-24",
    "spread-24-4proc",
    "concurrent-40-local",
    "concurrent-200-local",
    "concurrent-40-normal",
    "concurrent-200-normal",
)

Message = dict[str, Any]


class BenchFailure(Exception):
    """A message was lost, duplicated, reordered or late: the measurement is invalid."""


# --- client round trips ------------------------------------------------------------------------

#: The role of the asyncio task (and of the tasks it starts) that sends a command.
ROLE: contextvars.ContextVar[str] = contextvars.ContextVar("bench_role", default="other")
ROUND_TRIPS: Counter[str] = Counter()


def count_round_trips() -> list[str]:
    """Count every command (or pipeline) written by valkey-py's or redis-py's asyncio clients."""
    patched = []
    for package in ("valkey", "redis"):
        try:
            module = importlib.import_module(f"{package}.asyncio.connection")
        except ImportError:
            continue
        cls = module.AbstractConnection
        original = cls.send_packed_command

        async def counted(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            ROUND_TRIPS[ROLE.get()] += 1
            return await _original(self, *args, **kwargs)

        cls.send_packed_command = counted
        patched.append(package)
    return patched


# --- messages ----------------------------------------------------------------------------------


def message(kind: str, epoch: int, seq: int, *, last: bool = False) -> Message:
    body: Message = {"type": f"bench.{kind}", "e": epoch, "n": seq, "text": TEXT}
    if last:
        body["last"] = True
    return body


def check(channel: str, got: Message, kind: str, epoch: int, seq: int) -> bool:
    """Raise unless ``got`` is message ``seq`` of ``epoch``; return whether it is the last."""
    if (
        got.get("type") != f"bench.{kind}"
        or got.get("e") != epoch
        or got.get("n") != seq
        or got.get("text") != TEXT
    ):
        raise BenchFailure(
            f"{channel}: expected {kind} #{seq} of epoch {epoch}, got "
            f"{got.get('type')} #{got.get('n')} of epoch {got.get('e')}"
        )
    return bool(got.get("last"))


async def receive_epoch(
    layer: Any, channel: str, epoch: int, on_message: Callable[[int], None]
) -> int:
    """Receive ``channel``'s messages of ``epoch`` up to its last; ``on_message(count)`` each."""
    ROLE.set("receiver")
    count = 0
    while True:
        got = await layer.receive(channel)
        last = check(channel, got, "message", epoch, count)
        count += 1
        on_message(count)
        if last:
            return count


class Window:
    """Flow control: ``acquire()`` before each send waits while ``size`` sends are unacked."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self._acked: dict[str, int] = {}
        self._changed = asyncio.Event()

    @property
    def acked(self) -> int:
        return min(self._acked.values(), default=0)

    def expect(self, sources: list[str]) -> None:
        """Acknowledgements come from several ``sources``; a send counts once all acked it."""
        self._acked = dict.fromkeys(sources, 0)

    def ack(self, count: int, source: str = "") -> None:
        if count > self._acked.get(source, 0):
            self._acked[source] = count
            self._changed.set()

    async def acquire(self) -> None:
        while self.sent - self.acked >= self.size:
            self._changed.clear()
            await self._changed.wait()
        self.sent += 1


class Progress:
    """How many messages all of ``members`` receivers have got (the slowest one's count)."""

    def __init__(self, members: int) -> None:
        self.members = members
        self.complete = 0
        self._reached: Counter[int] = Counter()

    def advance(self, count: int) -> bool:
        """One receiver now has ``count`` messages; ``True`` when ``complete`` grew."""
        self._reached[count] += 1
        if self._reached[count] == self.members:
            del self._reached[count]
            self.complete = count
            return True
        return False


async def gather_all(*aws: Awaitable[Any]) -> list[Any]:
    """``asyncio.gather`` that cancels the others when one fails."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


# --- helper processes: the coordinator's side -------------------------------------------------


class Helper:
    """A helper process (this script, ``helper`` mode) and the lines it writes."""

    def __init__(self, name: str, on_ack: Callable[[int, str], None] | None = None) -> None:
        self.name = name
        self._on_ack = on_ack
        self._process: asyncio.subprocess.Process | None = None
        self._events: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False
        self.failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Reported through guard() or expect() when it matters; never "never retrieved".
        self.failure.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def start(self, role: str, params: dict[str, Any]) -> dict[str, Any]:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            "helper",
            role,
            json.dumps(params),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        self._reader = asyncio.ensure_future(self._read())
        return await self.expect("ready")

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        while True:
            line = await self._process.stdout.readline()
            if not line:
                code = await self._process.wait()
                if not self._stopping or code:
                    self._fail(f"helper {self.name} exited (code {code})")
                return
            event = json.loads(line)
            kind = event["event"]
            if kind == "ack" and self._on_ack is not None:
                self._on_ack(event["n"], self.name)
            elif kind == "error":
                self._fail(f"helper {self.name}: {event['message']}")
                return
            else:
                self._events.setdefault(kind, asyncio.Queue()).put_nowait(event)

    def _fail(self, reason: str) -> None:
        if not self.failure.done():
            self.failure.set_exception(BenchFailure(reason))

    async def expect(self, kind: str, timeout: float = 60.0) -> dict[str, Any]:
        queue = self._events.setdefault(kind, asyncio.Queue())
        got = asyncio.ensure_future(queue.get())
        waiting: set[asyncio.Future[Any]] = {got, self.failure}
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            got.cancel()
        if self.failure in done:
            self.failure.result()
        if got not in done:
            raise BenchFailure(f"helper {self.name}: no {kind!r} within {timeout:.0f} s")
        return got.result()

    def tell(self, command: str, **fields: Any) -> None:
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"cmd": command, **fields}).encode() + b"\n")

    async def stop(self) -> None:
        if self._process is None:
            return
        self._stopping = True
        if self._process.returncode is None:
            with contextlib.suppress(Exception):
                self.tell("exit")
            try:
                await asyncio.wait_for(self._process.wait(), 20)
            except asyncio.TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if not self.failure.done():
            self.failure.cancel()


class Helpers:
    """Several helper processes handled together."""

    def __init__(self, helpers: list[Helper]) -> None:
        self.helpers = helpers

    async def start(self, role: str, params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(helper.start(role, p) for helper, p in zip(self.helpers, params, strict=True))
        )

    async def expect(self, kind: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        return await asyncio.gather(*(helper.expect(kind, timeout) for helper in self.helpers))

    def tell(self, command: str, **fields: Any) -> None:
        for helper in self.helpers:
            helper.tell(command, **fields)

    async def reset(self) -> None:
        self.tell("reset")
        await self.expect("reset")

    async def round_trips(self) -> tuple[Counter[str], float]:
        """The helpers' round trips since ``reset``, and their CPU seconds."""
        self.tell("report")
        total: Counter[str] = Counter()
        cpu = 0.0
        for report in await self.expect("report"):
            total.update(report["round_trips"])
            cpu += report["cpu"]
        return total, cpu

    async def guard(self, aw: Awaitable[Any], timeout: float) -> Any:
        """Await ``aw`` unless a helper fails first or ``timeout`` passes."""
        task = asyncio.ensure_future(aw)
        failures = [helper.failure for helper in self.helpers]
        try:
            done, _ = await asyncio.wait(
                {task, *failures}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            task.cancel()
        for failure in failures:
            if failure in done:
                failure.result()
        if task not in done:
            raise BenchFailure(f"no result within {timeout:.0f} s")
        return task.result()

    async def stop(self) -> None:
        await asyncio.gather(*(helper.stop() for helper in self.helpers))


# --- helper processes: the helper's side ------------------------------------------------------


class Coordinator:
    """The helper's link to the process that started it: commands in, events out."""

    def __init__(self) -> None:
        self.exit = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._cpu_since = time.process_time()

    def emit(self, event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self._task = asyncio.ensure_future(self._serve(reader))

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                self.exit.set()
                return
            received = json.loads(line)
            command = received["cmd"]
            if command == "reset":
                ROUND_TRIPS.clear()
                self._cpu_since = time.process_time()
                self.emit("reset")
            elif command == "report":
                cpu = time.process_time() - self._cpu_since
                self.emit("report", round_trips=dict(ROUND_TRIPS), cpu=cpu)
            elif command == "exit":
                self.exit.set()
                return
            else:
                self._commands.put_nowait(received)

    async def command(self, name: str) -> dict[str, Any]:
        """The next command that is not handled here (it must be ``name``)."""
        received = await self._commands.get()
        if received["cmd"] != name:
            raise BenchFailure(f"expected the command {name!r}, got {received['cmd']!r}")
        return received


async def helper_receiver(layer: Any, link: Coordinator, params: dict[str, Any]) -> None:
    """``send-receive-2proc``: receive the normal channel, acknowledging every ACK_EVERY."""
    channel = params["channel"]
    link.emit("ready")
    for epoch in (0, 1):

        def ack(count: int) -> None:
            if count % ACK_EVERY == 0:
                link.emit("ack", n=count)

        count = await receive_epoch(layer, channel, epoch, ack)
        link.emit("ack", n=count)
        link.emit("done", epoch=epoch)


async def helper_members(layer: Any, link: Coordinator, params: dict[str, Any]) -> None:
    """``group-1000-4proc``: this process's share of the group; acknowledge complete sends."""
    channels = await make_members(layer, params["members"])
    link.emit("ready")
    for epoch in (0, 1):
        progress = Progress(len(channels))

        def advance(count: int, progress: Progress = progress) -> None:
            if progress.advance(count):
                link.emit("ack", n=progress.complete)

        await gather_all(*(receive_epoch(layer, c, epoch, advance) for c in channels))
        link.emit("done", epoch=epoch)


async def helper_ponger(layer: Any, link: Coordinator, params: dict[str, Any]) -> None:
    """``ping-pong``: answer each ping on the pinger's channel."""
    ROLE.set("ponger")
    own = await layer.new_channel()
    peer = params["peer"]
    link.emit("ready", channel=own)
    for epoch in (0, 1):
        seq = 0
        while True:
            got = await layer.receive(own)
            last = check(own, got, "ping", epoch, seq)
            await layer.send(peer, message("pong", epoch, seq, last=last))
            seq += 1
            if last:
                break
        link.emit("done", epoch=epoch)


async def helper_spread(layer: Any, link: Coordinator, params: dict[str, Any]) -> None:
    """``spread-24-4proc``: a sender and a receiver per channel for this process's channels,
    one epoch per ``run`` command."""
    channels = params["channels"]
    link.emit("ready")
    for epoch in (0, 1):
        command = await link.command("run")
        sent = await fan_in_epoch(layer, channels, epoch, command["seconds"], Window(WINDOW))
        link.emit("done", epoch=epoch, sent=sent)


HELPER_ROLES: dict[str, Callable[[Any, Coordinator, dict[str, Any]], Coroutine[Any, Any, None]]]
HELPER_ROLES = {
    "receiver": helper_receiver,
    "members": helper_members,
    "ponger": helper_ponger,
    "spread": helper_spread,
}


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


# --- layers ------------------------------------------------------------------------------------


def make_layer(path: str, url: str, **options: Any) -> Any:
    """The layer class at ``path`` on the server at ``url``, or on the cluster of a
    ``cluster://`` URL (every node a startup node), with ``options`` beyond ``hosts``."""
    module_name, _, class_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if url.startswith(CLUSTER_SCHEME):
        return cls(hosts=[{"cluster": True, "startup_nodes": nodes_of(url)}], **options)
    return cls(hosts=[url], **options)


def layer_options(workload: str, kind: str) -> dict[str, Any]:
    """Options a workload needs beyond the defaults: only ``concurrent-*-local`` on core
    layers, whose senders together keep more messages in flight than one shared queue of the
    default capacity holds (see CONCURRENT_CAPACITY)."""
    if workload.startswith("concurrent-") and workload.endswith("-local") and kind == "core":
        return {"capacity": CONCURRENT_CAPACITY}
    return {}


async def close_layer(layer: Any, kind: str) -> None:
    """Close the layer's connections (a pub/sub ``flush`` only forgets local state)."""
    close = getattr(layer, "close_pools", None) if kind == "core" else None
    if close is None:
        close = layer.flush
    try:
        await asyncio.wait_for(close(), 20)
    except Exception as error:
        print(f"closing the layer failed: {type(error).__name__}: {error}", file=sys.stderr)


async def make_members(layer: Any, count: int) -> list[str]:
    """``count`` new channels of this process, all added to GROUP."""
    channels = [await layer.new_channel() for _ in range(count)]
    for start in range(0, count, 100):
        await asyncio.gather(*(layer.group_add(GROUP, c) for c in channels[start : start + 100]))
    return channels


# --- workloads ---------------------------------------------------------------------------------


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
        ROLE.set("sender")
        deadline = start + seconds
        seq = 0
        while time.perf_counter() < deadline:
            await window.acquire()
            await self.layer.send(NORMAL_CHANNEL, message("message", epoch, seq))
            seq += 1
        await window.acquire()
        await self.layer.send(NORMAL_CHANNEL, message("message", epoch, seq, last=True))
        return seq + 1


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

        async def send() -> int:
            ROLE.set("sender")
            seq = 0
            while time.perf_counter() < deadline:
                await window.acquire()
                await self.layer.send(channel, message("message", epoch, seq))
                seq += 1
            await window.acquire()
            await self.layer.send(channel, message("message", epoch, seq, last=True))
            return seq + 1

        receiver = receive_epoch(self.layer, channel, epoch, window.ack)
        sent, _ = await gather_all(send(), receiver)
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


# --- measuring ---------------------------------------------------------------------------------


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


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle (``/proc/stat``); 0 where unknown."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


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
    patched = count_round_trips()
    ROLE.set("setup")
    layer = make_layer(options.layer, options.url, **layer_options(options.workload, options.kind))
    workload = WORKLOAD_CLASSES[options.workload](layer, options)
    report: dict[str, Any] = {
        "layer": options.layer,
        "kind": options.kind,
        "workload": options.workload,
        "processes": workload.processes,
        "seconds": options.seconds,
        "counted_clients": patched,
        "layer_options": layer_options(options.workload, options.kind),
        "environment": environment(),
    }
    try:
        await workload.setup()
        await workload.epoch(0, options.warmup)
        await workload.helpers.reset()
        ROUND_TRIPS.clear()
        total_before, calls_before, server_cpu_before = server_counts(options.url)
        busy_before, cpu_before = machine_busy(), time.process_time()
        measured = await workload.epoch(1, options.seconds)
        client_cpu = time.process_time() - cpu_before
        busy = machine_busy() - busy_before
        total_after, calls_after, server_cpu_after = server_counts(options.url)
        trips = Counter(ROUND_TRIPS)
        helper_trips, helper_cpu = await workload.helpers.round_trips()
        trips.update(helper_trips)
    except Exception as error:
        if not isinstance(error, BenchFailure):
            traceback.print_exc()
        report.update(ok=False, error=f"{type(error).__name__}: {error}")
        return report
    finally:
        await workload.teardown()
        await close_layer(layer, options.kind)
    calls = {
        name: calls_after.get(name, 0) - calls_before.get(name, 0)
        for name in calls_after
        if name != "info" and calls_after.get(name, 0) != calls_before.get(name, 0)
    }
    info_calls = calls_after.get("info", 0) - calls_before.get("info", 0)
    # One INFO per node before the epoch ends up counted on each node.
    by_node = [after - before - 1 for before, after in zip(total_before, total_after, strict=True)]
    report.update(
        ok=True,
        messages=measured.messages,
        operations=measured.operations,
        elapsed=measured.elapsed,
        rate=measured.messages / measured.elapsed,
        operation_rate=measured.operations / measured.elapsed,
        commands=sum(total_after) - sum(total_before) - info_calls,
        commands_by_node=by_node,
        command_calls=calls,
        round_trips=dict(trips),
        # CPU seconds during the measured epoch: this process and its helpers, the servers
        # (every node), and the whole machine (other work included).
        cpu={
            "client": client_cpu + helper_cpu,
            "server": server_cpu_after - server_cpu_before,
            "machine": busy,
        },
    )
    report.update(measured.extra)
    if measured.latencies:
        report["latency"] = {
            "p50": quantile(measured.latencies, 0.50),
            "p99": quantile(measured.latencies, 0.99),
            "mean": statistics.fmean(measured.latencies),
            "max": max(measured.latencies),
            "count": len(measured.latencies),
        }
    return report


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
