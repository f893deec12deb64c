"""What one event loop of the pub/sub layer knows: its local channels and groups. No I/O.

A *local channel* is a channel with state in this process (made by ``new_channel()`` or by a
``receive()`` on it): an :class:`Inbox` of payloads pushed by the server, waiting for its
consumer. A *local group* maps a group's pub/sub channel to the local channels in it.

The methods decide, the caller does the I/O: they return the pub/sub names that stop being
needed (to ``UNSUBSCRIBE``), and ``deliver`` routes a pushed payload to the inboxes.

Invariants:
- an inbox holds at most ``capacity`` payloads; beyond that new payloads are dropped and
  counted (:class:`Drops`); notices (disconnect/reconnect) may use ``NOTICE_HEADROOM`` more
  slots, so a consumer that fell behind still learns that it missed messages;
- each payload in an inbox goes to exactly one ``get()``; a ``get()`` cancelled after it was
  handed a payload passes it on to the next waiter or back to the front of the inbox;
- every channel in a local group is a local channel; a group with no local channel is
  forgotten (and its pub/sub name returned to be unsubscribed).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

from ._log import RateLimitedLog
from .stats import StatsRecorder

logger = logging.getLogger(__name__)

#: A pushed payload, still serialized, or a notice the layer made itself.
Item = bytes | dict[str, Any]

#: Slots beyond ``capacity`` that only notices may use: one disconnect, one reconnect.
NOTICE_HEADROOM = 2


class ChannelClosed(RuntimeError):
    """A ``receive()`` was waiting when its loop's state was flushed or closed."""


class Drops:
    """Counts the payloads dropped for full inboxes (in the layer's
    :class:`~channels_valkey.stats.StatsRecorder`), with one log line a minute at most.

    Shared by every event loop of one layer, so the count covers the whole layer.
    """

    def __init__(self, stats: StatsRecorder | None = None) -> None:
        self._stats = stats if stats is not None else StatsRecorder()
        self._log = RateLimitedLog(logger)

    @property
    def count(self) -> int:
        return self._stats.dropped_from_buffers

    def record(self, channel: str, capacity: int) -> None:
        self._stats.dropped_from_buffers += 1
        self._log.warning(
            "Dropped a message for %s: its queue is full (capacity %d; %d dropped by this "
            "layer so far); is its consumer still reading?",
            channel,
            capacity,
            self.count,
        )


class Inbox:
    """The bounded queue of one local channel; several ``get()`` calls share it, first come
    first served."""

    __slots__ = ("_items", "_waiters", "capacity", "receivers")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Item] = deque()
        self._waiters: deque[asyncio.Future[Item]] = deque()
        #: ``receive()`` calls in progress on this channel; the last one to leave by an
        #: exception (cancellation) frees the channel.
        self.receivers = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item, *, notice: bool = False) -> bool:
        """Hand ``item`` to a waiter or queue it; ``False`` when full (the item is dropped)."""
        if self._hand_over(item):
            return True
        limit = self.capacity + (NOTICE_HEADROOM if notice else 0)
        if len(self._items) >= limit:
            return False
        self._items.append(item)
        return True

    async def get(self) -> Item:
        if self._items:
            return self._items.popleft()
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
                    self._items.appendleft(item)
            raise

    def close(self, error: BaseException) -> None:
        """Raise ``error`` in every waiting ``get()`` and forget the queued items."""
        self._items.clear()
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


class LocalState:
    """Local channels and groups of one event loop."""

    def __init__(self, capacity: int, drops: Drops) -> None:
        self._capacity = capacity
        self._drops = drops
        self._channels: dict[str, Inbox] = {}
        #: group pub/sub name -> local channels in it
        self._groups: dict[str, set[str]] = {}
        #: local channel -> group pub/sub names it is in
        self._memberships: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        return f"<LocalState channels={len(self._channels)} groups={len(self._groups)}>"

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def group_count(self) -> int:
        return len(self._groups)

    def inbox(self, channel: str) -> Inbox | None:
        return self._channels.get(channel)

    def open(self, channel: str) -> Inbox:
        """The inbox of ``channel``, created if needed."""
        inbox = self._channels.get(channel)
        if inbox is None:
            inbox = self._channels[channel] = Inbox(self._capacity)
        return inbox

    def free(self, channel: str) -> list[str]:
        """Forget ``channel`` and its memberships; returns the pub/sub names no longer needed."""
        if self._channels.pop(channel, None) is None:
            return []
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
        """Route a payload pushed on pub/sub channel ``name`` to the inboxes that want it."""
        inbox = self._channels.get(name)
        if inbox is not None:
            self._offer(name, inbox, payload)
        for channel in self._groups.get(name, ()):
            self._offer(channel, self._channels[channel], payload)

    def _offer(self, channel: str, inbox: Inbox, payload: bytes) -> None:
        if not inbox.put(payload):
            self._drops.record(channel, inbox.capacity)

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
            if inbox is not None and not inbox.put(dict(notice), notice=True):
                self._drops.record(channel, inbox.capacity)

    def clear(self, error: BaseException) -> None:
        """Forget everything; waiting ``receive()`` calls raise ``error``."""
        channels, self._channels = self._channels, {}
        self._groups.clear()
        self._memberships.clear()
        for inbox in channels.values():
            inbox.close(error)
