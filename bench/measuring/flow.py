"""The messages of a measurement and the flow control that keeps every layer exact.

Each message carries its epoch and its sequence number on its channel; every receiver checks
that it gets exactly ``0, 1, 2, ...`` of the current epoch, so a lost, duplicated or
reordered message fails the measurement (``BenchFailure``). Senders never run ahead of their
receivers by more than ``WINDOW`` messages (half the default capacity of 100), so no layer
meets a full channel or drops from a full buffer, and layers compare at their defaults.
Runs in the measured layer's venv.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from measuring.roundtrips import ROLE

#: Messages a sender may have in flight (sent, not yet received): half the default capacity.
WINDOW = 50
#: The body every message carries, about the size of a chat message.
TEXT = "x" * 100

Message = dict[str, Any]


class BenchFailure(Exception):
    """A message was lost, duplicated, reordered or late: the measurement is invalid."""


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


async def send_until(layer: Any, channel: str, epoch: int, deadline: float, window: Window) -> int:
    """Send numbered messages of ``epoch`` to ``channel`` until ``deadline`` (a
    ``time.perf_counter()`` value), each when ``window`` has room, then the last one; returns
    how many were sent."""
    ROLE.set("sender")
    seq = 0
    while time.perf_counter() < deadline:
        await window.acquire()
        await layer.send(channel, message("message", epoch, seq))
        seq += 1
    await window.acquire()
    await layer.send(channel, message("message", epoch, seq, last=True))
    return seq + 1


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
