"""What one event loop of the pub/sub layer knows: its local channels and groups. No I/O.

A *local channel* is a channel with state in this process (made by ``new_channel()`` or by a
``receive()`` on it): an :class:`Inbox` of payloads pushed by the server, waiting for its
consumer. A *local group* maps a group's pub/sub channel to the local channels in it.

The methods decide, the caller does the I/O: they return the pub/sub names that stop being
needed (to ``UNSUBSCRIBE``), and ``deliver`` routes a pushed payload to the inboxes.

Why inboxes are bounded the way they are: pub/sub cannot push back. The subscriber connection
must be read as fast as the server writes, or the server's ``client-output-buffer-limit`` for
pub/sub clients closes it and every channel on it loses messages. So a burst that arrives
faster than a consumer takes it must wait here, and the only choice is how much may wait. A
count is the wrong measure: a chat room's burst is hundreds of messages per member, which a
reading consumer takes soon after. So the bounds are:

- up to ``capacity`` messages per inbox are always accepted (the bound of earlier versions);
- beyond ``capacity``, an inbox takes more only while its consumer is *reading*, up to
  ``channel_bytes`` per inbox and ``total_bytes`` for all the inboxes of the event loop
  together (:class:`OverflowLimits`; the bytes are counted per inbox, so a group message held
  by several local members counts once for each, although they share one copy);
- a consumer has *stopped reading* when messages have waited in its inbox for
  ``stall_timeout`` seconds with none taken. Its inbox is cut back to ``capacity`` (the
  newest beyond are dropped) by the next payload for it, or when the loop's inboxes reach
  ``total_bytes`` (:class:`Budget`), and takes nothing more until its consumer takes a
  message: once cut, it holds none of the shared ``total_bytes``. With ``stall_timeout=0``
  every inbox holds at most ``capacity`` payloads, as before.

Invariants:
- payloads are dropped only for the reasons above, each one counted (:class:`Drops`): a
  consumer that never lets messages wait ``stall_timeout`` seconds without taking one, and
  whose backlog beyond ``capacity`` stays under ``channel_bytes`` (its loop's under
  ``total_bytes``), loses nothing;
- ``Budget.held`` is the sum of the bytes charged to the inboxes of its loop (payloads
  accepted beyond ``capacity``, until they are taken, cut or forgotten);
- notices (disconnect/reconnect) are never charged nor cut: a reading consumer always gets
  them, and one that stopped reading gets them while its inbox holds less than
  ``capacity + NOTICE_HEADROOM`` items, so a consumer that fell behind still learns that it
  missed messages;
- each payload in an inbox goes to exactly one ``get()``; a ``get()`` cancelled after it was
  handed a payload passes it on to the next waiter or back to the front of the inbox;
- every channel in a local group is a local channel; a group with no local channel is
  forgotten (and its pub/sub name returned to be unsubscribed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from channels_valkey._common.log import RateLimitedLog
from channels_valkey.stats import StatsRecorder

logger = logging.getLogger(__name__)

#: A pushed payload, still serialized, or a notice the layer made itself.
Item = bytes | dict[str, Any]

#: Slots beyond ``capacity`` that only notices may use: one disconnect, one reconnect.
NOTICE_HEADROOM = 2

#: What one queued payload costs besides its own bytes, counted against the byte limits: on
#: 64-bit CPython a ``bytes`` header is 33 bytes, the ``(item, charge)`` pair 56 and the
#: deque slot 8. Without it, a burst of tiny messages would be counted as nearly free.
ITEM_OVERHEAD = 100

#: The defaults of :class:`OverflowLimits`, also the layer's option defaults.
DEFAULT_STALL_TIMEOUT = 10.0
DEFAULT_CHANNEL_BYTES = 4 * 1024 * 1024
DEFAULT_TOTAL_BYTES = 64 * 1024 * 1024

#: A monotonic clock in seconds.
Clock = Callable[[], float]


class ChannelClosed(RuntimeError):
    """A ``receive()`` was waiting when its loop's state was flushed or closed."""


@dataclass(frozen=True)
class OverflowLimits:
    """How far beyond ``capacity`` an inbox may grow while its consumer is reading.

    ``stall_timeout``: seconds messages may wait with none taken before the consumer counts
    as stopped (0: at once, so no inbox ever grows beyond ``capacity``). ``channel_bytes``:
    what one inbox may hold beyond ``capacity``, so a consumer that reads but never catches
    up cannot take the whole ``total_bytes``. ``total_bytes``: what all the inboxes of one
    event loop may hold beyond ``capacity`` together, so a process whose consumers all fall
    behind stays bounded. Bytes are a payload's length plus :data:`ITEM_OVERHEAD`.
    """

    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    channel_bytes: int = DEFAULT_CHANNEL_BYTES
    total_bytes: int = DEFAULT_TOTAL_BYTES


class Drops:
    """The layer's policy for its local queues (:class:`OverflowLimits`), and the count of
    what they drop (in the layer's :class:`~channels_valkey.stats.StatsRecorder`) with one log
    line a minute at most for each reason.

    Shared by every event loop of one layer, so the count covers the whole layer. It holds no
    byte count itself: that is per event loop (:class:`Budget`), since loops may run on
    different threads.
    """

    def __init__(
        self, stats: StatsRecorder | None = None, limits: OverflowLimits | None = None
    ) -> None:
        self._stats = stats if stats is not None else StatsRecorder()
        self.limits = limits if limits is not None else OverflowLimits()
        self._stopped_log = RateLimitedLog(logger)
        self._behind_log = RateLimitedLog(logger)
        self._total_log = RateLimitedLog(logger)

    @property
    def count(self) -> int:
        return self._stats.dropped_from_buffers

    def stopped(self, channel: str, capacity: int, dropped: int = 1) -> None:
        """``dropped`` payloads for a consumer that stopped reading: its inbox is cut back to
        ``capacity``, or already there."""
        self._stats.dropped_from_buffers += dropped
        self._stopped_log.warning(
            "Dropped %d message(s) for %s: its queue is full (capacity %d) and its consumer "
            "took nothing for %g s (stall_timeout); is it still reading? (%d dropped by this "
            "layer so far)",
            dropped,
            channel,
            capacity,
            self.limits.stall_timeout,
            self.count,
        )

    def behind(self, channel: str, held: int) -> None:
        """A payload for a consumer that reads, but is ``channel_bytes`` behind."""
        self._stats.dropped_from_buffers += 1
        self._behind_log.warning(
            "Dropped a message for %s: its consumer is reading, but %d bytes already wait "
            "for it beyond its capacity (channel_buffer_bytes %d); it is slower than its "
            "senders (%d dropped by this layer so far)",
            channel,
            held,
            self.limits.channel_bytes,
            self.count,
        )

    def over_total(self, channel: str, held: int) -> None:
        """A payload refused because the loop's inboxes hold ``total_bytes`` together."""
        self._stats.dropped_from_buffers += 1
        self._total_log.warning(
            "Dropped a message for %s: the local queues of this process already hold %d "
            "bytes beyond their capacity (total_buffer_bytes %d); its consumers are slower "
            "than their senders (%d dropped by this layer so far)",
            channel,
            held,
            self.limits.total_bytes,
            self.count,
        )


class Budget:
    """What the inboxes of one event loop share: their limits, their clock, and the bytes
    they hold beyond ``capacity`` together (``held``).

    ``holders`` are the inboxes with bytes charged. An inbox whose consumer stopped reading
    is cut back by its next ``put``; one that gets no more messages would keep its bytes, so
    when ``total_bytes`` is reached, the holders whose consumers stopped reading are cut back
    before anything is refused. That scan visits every holder, so it runs at most once per
    ``stall_timeout`` to bound its cost while the total stays reached: a consumer that stopped
    reading keeps the others from its share of the total for ``stall_timeout`` at most after
    it counts as stopped.
    """

    __slots__ = ("_next_reclaim", "capacity", "clock", "drops", "held", "holders", "limits")

    def __init__(self, capacity: int, drops: Drops, clock: Clock = time.monotonic) -> None:
        self.capacity = capacity
        self.drops = drops
        self.limits = drops.limits
        self.clock = clock
        self.held = 0
        self.holders: set[Inbox] = set()
        self._next_reclaim = 0.0

    def reclaim(self) -> None:
        """Cut back the holders whose consumers stopped reading (see the class docstring)."""
        now = self.clock()
        if now < self._next_reclaim:
            return
        self._next_reclaim = now + self.limits.stall_timeout
        for inbox in list(self.holders):
            if inbox.stopped(now):
                inbox.cut()


class Inbox:
    """The queue of one local channel; several ``get()`` calls share it, first come first
    served. See the module docstring for its bounds."""

    __slots__ = ("_budget", "_charged", "_items", "_since", "_waiters", "name", "receivers")

    def __init__(self, name: str, budget: Budget) -> None:
        self.name = name
        self._budget = budget
        #: Queued items with the bytes charged for each (0: within capacity, or a notice).
        self._items: deque[tuple[Item, int]] = deque()
        self._waiters: deque[asyncio.Future[Item]] = deque()
        #: Bytes charged to this inbox, part of ``budget.held``.
        self._charged = 0
        #: When items last started waiting or one was last taken; meaningful while queued.
        self._since = 0.0
        #: ``receive()`` calls in progress on this channel; the last one to leave by an
        #: exception (cancellation) frees the channel.
        self.receivers = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def capacity(self) -> int:
        return self._budget.capacity

    @property
    def charged(self) -> int:
        """Bytes held beyond ``capacity`` (see :data:`ITEM_OVERHEAD`)."""
        return self._charged

    def stopped(self, now: float) -> bool:
        """Whether the consumer took nothing for ``stall_timeout`` while items waited."""
        return bool(self._items) and now - self._since >= self._budget.limits.stall_timeout

    def put(self, item: Item, *, notice: bool = False) -> bool:
        """Hand ``item`` to a waiter or queue it; ``False`` when it is dropped (and counted)."""
        if self._hand_over(item):
            return True
        items = self._items
        budget = self._budget
        if not items:
            self._since = budget.clock()
        if len(items) < budget.capacity:
            items.append((item, 0))
            return True
        if self.stopped(budget.clock()):
            self.cut()
            if notice and len(items) < budget.capacity + NOTICE_HEADROOM:
                items.append((item, 0))
                return True
            budget.drops.stopped(self.name, budget.capacity)
            return False
        if notice:
            items.append((item, 0))
            return True
        size = len(item) + ITEM_OVERHEAD
        if self._charged + size > budget.limits.channel_bytes:
            budget.drops.behind(self.name, self._charged)
            return False
        if budget.held + size > budget.limits.total_bytes:
            budget.reclaim()
            if budget.held + size > budget.limits.total_bytes:
                budget.drops.over_total(self.name, budget.held)
                return False
        self._charge(size)
        items.append((item, size))
        return True

    def cut(self) -> None:
        """Keep the first ``capacity`` items and the notices, uncharged; drop the payloads
        beyond (counted). Called once the consumer stopped reading."""
        if not self._charged:
            return
        capacity = self._budget.capacity
        kept: deque[tuple[Item, int]] = deque()
        dropped = 0
        for index, (item, _) in enumerate(self._items):
            if index < capacity or isinstance(item, dict):
                kept.append((item, 0))
            else:
                dropped += 1
        self._items = kept
        self._release(self._charged)
        if dropped:
            self._budget.drops.stopped(self.name, capacity, dropped)

    async def get(self) -> Item:
        if self._items:
            item, charge = self._items.popleft()
            self._since = self._budget.clock()
            if charge:
                self._release(charge)
            return item
        future: asyncio.Future[Item] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if not future.done():
                self._waiters.remove(future)
            elif not future.cancelled() and future.exception() is None:
                # Handed an item, but cancelled before it could return it: pass it on.
                item = future.result()
                if not self._hand_over(item):
                    if not self._items:
                        self._since = self._budget.clock()
                    self._items.appendleft((item, 0))
            raise

    def forget(self) -> None:
        """Drop the queued items without counting them (the channel is freed) and give back
        their bytes."""
        self._items.clear()
        self._release(self._charged)

    def close(self, error: BaseException) -> None:
        """Raise ``error`` in every waiting ``get()`` and forget the queued items."""
        self.forget()
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(error)

    def _hand_over(self, item: Item) -> bool:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(item)
                return True
        return False

    def _charge(self, size: int) -> None:
        if not self._charged:
            self._budget.holders.add(self)
        self._charged += size
        self._budget.held += size

    def _release(self, size: int) -> None:
        if not size:
            return
        self._charged -= size
        self._budget.held -= size
        if not self._charged:
            self._budget.holders.discard(self)


class LocalState:
    """Local channels and groups of one event loop."""

    def __init__(self, capacity: int, drops: Drops, clock: Clock = time.monotonic) -> None:
        self._budget = Budget(capacity, drops, clock)
        self._channels: dict[str, Inbox] = {}
        #: group pub/sub name -> local channels in it
        self._groups: dict[str, set[str]] = {}
        #: local channel -> group pub/sub names it is in
        self._memberships: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        return (
            f"<LocalState channels={len(self._channels)} groups={len(self._groups)} "
            f"held={self._budget.held}>"
        )

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def group_count(self) -> int:
        return len(self._groups)

    def members_of(self, group: str) -> int:
        """How many local channels are in ``group`` (its pub/sub name)."""
        return len(self._groups.get(group, ()))

    @property
    def held_bytes(self) -> int:
        """Bytes the inboxes hold beyond their capacity, together."""
        return self._budget.held

    def inbox(self, channel: str) -> Inbox | None:
        return self._channels.get(channel)

    def open(self, channel: str) -> Inbox:
        """The inbox of ``channel``, created if needed."""
        inbox = self._channels.get(channel)
        if inbox is None:
            inbox = self._channels[channel] = Inbox(channel, self._budget)
        return inbox

    def free(self, channel: str) -> list[str]:
        """Forget ``channel`` and its memberships; returns the pub/sub names no longer needed."""
        inbox = self._channels.pop(channel, None)
        if inbox is None:
            return []
        inbox.forget()
        unneeded = [channel]
        for group in self._memberships.pop(channel, ()):
            if self._remove_member(group, channel):
                unneeded.append(group)
        return unneeded

    def join(self, group: str, channel: str) -> bool:
        """Put local ``channel`` in ``group``; ``True`` if it was not in it yet."""
        if channel not in self._channels:
            raise KeyError(channel)
        groups = self._memberships.setdefault(channel, set())
        if group in groups:
            return False
        groups.add(group)
        self._groups.setdefault(group, set()).add(channel)
        return True

    def leave(self, group: str, channel: str) -> bool:
        """Take ``channel`` out of ``group``; ``True`` when the group has no local channel left."""
        groups = self._memberships.get(channel)
        if groups is None or group not in groups:
            return False
        groups.discard(group)
        if not groups:
            del self._memberships[channel]
        return self._remove_member(group, channel)

    def _remove_member(self, group: str, channel: str) -> bool:
        members = self._groups.get(group)
        if members is None:
            return False
        members.discard(channel)
        if members:
            return False
        del self._groups[group]
        return True

    def deliver(self, name: str, payload: bytes) -> None:
        """Route a payload pushed on pub/sub channel ``name`` to the inboxes that want it
        (each counts its own drops)."""
        inbox = self._channels.get(name)
        if inbox is not None:
            inbox.put(payload)
        for channel in self._groups.get(name, ()):
            self._channels[channel].put(payload)

    def affected(self, names: Iterable[str]) -> set[str]:
        """Local channels that receive through any of the pub/sub ``names``."""
        channels: set[str] = set()
        for name in names:
            if name in self._channels:
                channels.add(name)
            channels.update(self._groups.get(name, ()))
        return channels

    def notify(self, channels: Iterable[str], notice: dict[str, Any]) -> None:
        """Queue a copy of ``notice`` for each of ``channels`` that is still local."""
        for channel in channels:
            inbox = self._channels.get(channel)
            if inbox is not None:
                inbox.put(dict(notice), notice=True)

    def clear(self, error: BaseException) -> None:
        """Forget everything; waiting ``receive()`` calls raise ``error``."""
        channels, self._channels = self._channels, {}
        self._groups.clear()
        self._memberships.clear()
        for inbox in channels.values():
            inbox.close(error)
