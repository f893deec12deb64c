"""Burst a room of the example chat: many websocket clients, each sending a few messages at once.

    python example/burst.py [--clients 20] [--messages 10] [--interval 0.005] URL [URL ...]

The clients join one room, spread over the servers' URLs in turn (with the example's two
servers, half on each process). Once every client has its welcome (it is then in the room's
group), each sends ``--messages`` messages ``--interval`` seconds apart, all clients at once.
Every client should then receive every message of the room, its own included: clients x
clients x messages in all. The run ends when they all have, or when no client has received
anything for ``--quiet`` seconds after the last send; it prints a JSON summary of what arrived
and what did not, how late, and how long the room took to drain.

Each message's text carries the run, the sending client, its number and its send time, so the
receivers can tell lost, duplicated and reordered messages apart without a shared clock
between processes (every client runs in this one process). Needs the ``websockets`` package
(it comes with ``uvicorn[standard]``). ``tests/integration/test_burst.py`` and ``bench/burst.py``
drive it through :func:`burst`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

#: Seconds to connect and get the welcome, per client.
JOIN_TIMEOUT = 30.0

#: Given the distinct messages received so far (summed over the clients), whether everything
#: else is accounted for; see :func:`burst`.
Accounted = Callable[[int], bool]

# Straight to the servers, whatever proxy the environment names.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Receipt:
    """One message as one client received it."""

    sender: int
    seq: int
    latency: float  # seconds from the sender's send() to this client's receipt
    at: float  # time.monotonic() of the receipt


@dataclass
class BurstResult:
    """What every client received during one burst."""

    clients: int
    messages: int
    #: Per client, in order of arrival.
    received: list[list[Receipt]]
    first_send: float
    last_send: float
    #: Every client got every message before the run stopped waiting.
    complete: bool
    foreign: int = 0  # messages of the room that were not part of this burst

    @property
    def expected(self) -> int:
        return self.clients * self.clients * self.messages

    @property
    def delivered(self) -> int:
        """Distinct messages received, summed over the clients."""
        return sum(len({(r.sender, r.seq) for r in got}) for got in self.received)

    @property
    def lost(self) -> int:
        return self.expected - self.delivered

    @property
    def duplicates(self) -> int:
        return sum(len(got) for got in self.received) - self.delivered

    @property
    def reordered(self) -> int:
        """Receipts that came after a later message of the same sender, per client."""
        count = 0
        for got in self.received:
            newest: dict[int, int] = {}
            for receipt in got:
                if receipt.seq < newest.get(receipt.sender, -1):
                    count += 1
                newest[receipt.sender] = max(receipt.seq, newest.get(receipt.sender, -1))
        return count

    def missing(self, client: int) -> int:
        """Messages of the burst that ``client`` never received."""
        distinct = {(r.sender, r.seq) for r in self.received[client]}
        return self.clients * self.messages - len(distinct)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(r.latency for got in self.received for r in got)
        last = max((r.at for got in self.received for r in got), default=self.last_send)
        return {
            "clients": self.clients,
            "messages": self.messages,
            "expected": self.expected,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "foreign": self.foreign,
            "complete": self.complete,
            "clients_missing_some": sum(1 for c in range(self.clients) if self.missing(c)),
            "latency_p50": _quantile(latencies, 0.50),
            "latency_p99": _quantile(latencies, 0.99),
            "latency_max": latencies[-1] if latencies else None,
            "send_seconds": self.last_send - self.first_send,
            "drain_seconds": max(0.0, last - self.last_send),
        }


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


@dataclass
class _Room:
    """Shared state of the clients of one run."""

    run: str
    clients: int
    messages: int
    received: list[list[Receipt]]
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    foreign: int = 0
    done_clients: int = 0

    def __post_init__(self) -> None:
        #: Per client, the (sender, number) pairs received so far.
        self.distinct: list[set[tuple[int, int]]] = [set() for _ in range(self.clients)]

    def count(self) -> int:
        """Distinct messages received so far, summed over the clients."""
        return sum(len(seen) for seen in self.distinct)

    def record(self, client: int, text: str) -> None:
        now = time.monotonic()
        parts = text.split(" ")
        if len(parts) != 4 or parts[0] != self.run:
            self.foreign += 1
            return
        sender, seq, sent_at = int(parts[1]), int(parts[2]), float(parts[3])
        self.received[client].append(Receipt(sender, seq, now - sent_at, now))
        seen = self.distinct[client]
        before = len(seen)
        seen.add((sender, seq))
        if len(seen) != before and len(seen) == self.clients * self.messages:
            self.done_clients += 1
            if self.done_clients == self.clients:
                self.complete.set()
        self.progress.set()


def _socket_url(base: str, room: str) -> tuple[str, str]:
    origin = base.rstrip("/")
    return f"ws{origin.removeprefix('http')}/ws/chat/{room}/", origin


async def _join(stack: contextlib.AsyncExitStack, base: str, room: str) -> ClientConnection:
    """A client in the room: connected, and welcomed (so already in the room's group)."""
    url, origin = _socket_url(base, room)
    socket = await stack.enter_async_context(
        connect(url, origin=origin, open_timeout=JOIN_TIMEOUT, max_queue=None)
    )

    async def welcomed() -> None:
        while json.loads(await socket.recv()).get("type") != "welcome":
            pass

    await asyncio.wait_for(welcomed(), JOIN_TIMEOUT)
    return socket


async def _read(socket: ClientConnection, client: int, room: _Room) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for raw in socket:
            message = json.loads(raw)
            if message.get("type") == "message":
                room.record(client, message["text"])


async def _send(
    socket: ClientConnection, client: int, room: _Room, start: float, gap: float
) -> None:
    """Send this client's messages on a fixed schedule from ``start``, ``gap`` apart."""
    for seq in range(room.messages):
        delay = start + seq * gap - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await socket.send(json.dumps({"text": f"{room.run} {client} {seq} {time.monotonic()!r}"}))


async def _settle(room: _Room, quiet: float, deadline: float, accounted: Accounted | None) -> bool:
    """Wait until every client has everything (True), or until ``deadline``
    (time.monotonic()) passes or the room has been quiet for ``quiet`` seconds (False).

    When quiet, ``accounted`` (if given) is asked, in a thread, whether the messages received
    so far and what the servers say they did not deliver add up: if not, the wait goes on.
    """
    while not room.complete.is_set():
        room.progress.clear()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        waits = [asyncio.ensure_future(e.wait()) for e in (room.progress, room.complete)]
        try:
            done, _ = await asyncio.wait(waits, timeout=min(quiet, remaining))
        finally:
            for waiting in waits:
                waiting.cancel()
        if not done and (accounted is None or await asyncio.to_thread(accounted, room.count())):
            return False
    return True


async def burst(
    servers: Sequence[str],
    clients: int,
    messages: int,
    *,
    interval: float = 0.005,
    quiet: float = 3.0,
    timeout: float = 120.0,
    accounted: Accounted | None = None,
    room: str | None = None,
) -> BurstResult:
    """Run one burst against the example's ``servers`` (base URLs); client ``i`` uses server
    ``i % len(servers)``. Waits at most ``timeout`` seconds after the last send for the room
    to drain (see :func:`_settle` for ``quiet`` and ``accounted``)."""
    name = room or f"burst-{uuid.uuid4().hex[:12]}"
    state = _Room(uuid.uuid4().hex[:8], clients, messages, [[] for _ in range(clients)])
    async with contextlib.AsyncExitStack() as stack:
        joining = [_join(stack, servers[i % len(servers)], name) for i in range(clients)]
        sockets = await asyncio.gather(*joining)
        readers = [asyncio.create_task(_read(s, i, state)) for i, s in enumerate(sockets)]
        start = time.monotonic()
        await asyncio.gather(*(_send(s, i, state, start, interval) for i, s in enumerate(sockets)))
        last_send = time.monotonic()
        complete = await _settle(state, quiet, last_send + timeout, accounted)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return BurstResult(
        clients, messages, state.received, start, last_send, complete, foreign=state.foreign
    )


def layer_stats(servers: Sequence[str]) -> dict[str, float] | None:
    """The channel layer counters of every server (their ``/stats/`` view), summed; None when
    a server's layer keeps none. A group send's skipped members are counted where it ran,
    and a message dropped from a full buffer where it was to be received, hence the sum."""
    total: dict[str, float] = {}
    for base in servers:
        try:
            with _direct.open(base.rstrip("/") + "/stats/", timeout=10) as response:
                counters = json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
        for name, value in counters.items():
            if isinstance(value, (int, float)):
                total[name] = total.get(name, 0) + value
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("servers", nargs="+", metavar="URL", help="e.g. http://127.0.0.1:8001/")
    parser.add_argument("--clients", type=int, default=20, help="default: 20")
    parser.add_argument("--messages", type=int, default=10, help="per client; default: 10")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds; default: 0.005")
    parser.add_argument("--quiet", type=float, default=3.0, help="seconds; default: 3")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds; default: 120")
    args = parser.parse_args(argv)
    result = asyncio.run(
        burst(
            args.servers,
            args.clients,
            args.messages,
            interval=args.interval,
            quiet=args.quiet,
            timeout=args.timeout,
        )
    )
    print(json.dumps(result.summary()))
    return 0 if result.lost == 0 and result.duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
