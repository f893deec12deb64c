"""Process-local receive state: popped messages and the ``receive()`` calls waiting for them.

The :class:`Mailbox` does no I/O. Readers (``_reader``) pop messages from Valkey and
:meth:`Mailbox.offer` them; ``receive()`` calls :meth:`Mailbox.take` or waits on a future from
:meth:`Mailbox.wait`.

Invariants:
- a message is handed to exactly one ``receive()`` call: a waiter's future gets it, or it is
  buffered, or (for normal channels, whose messages other processes could take) it goes back
  to the caller to return to Valkey;
- a waiter that is cancelled after its future got a message puts the message back at the
  front of its buffer (:meth:`Mailbox.done_waiting`), so cancellation neither loses nor
  duplicates;
- :meth:`Mailbox.offer` never fills a buffer beyond its channel's capacity: the newest
  message is dropped instead, and counted in a rate-limited warning (a message put back by a
  cancelled waiter is kept even then: it was already accepted);
- nothing older than ``expiry`` seconds (by its send time) is ever handed out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from ._log import RateLimitedLog
from .stats import StatsRecorder

logger = logging.getLogger(__name__)

Message = dict[str, Any]
#: A message with its send time, which decides when it expires.
Stamped = tuple[float, Message]


class Mailbox:
    def __init__(
        self, capacity_of: Callable[[str], int], expiry: int, stats: StatsRecorder | None = None
    ) -> None:
        self._capacity_of = capacity_of
        self._expiry = expiry
        self._buffers: dict[str, deque[Stamped]] = {}
        self._waiters: dict[str, deque[asyncio.Future[Stamped]]] = {}
        #: Waiting receive() calls per queue key, so a reader knows whether anyone still wants
        #: what it pops.
        self._waiting_on: Counter[str] = Counter()
        self._queue_of: dict[str, str] = {}
        self._drops = RateLimitedLog(logger)
        self._stats = stats or StatsRecorder()

    def take(self, channel: str) -> Message | None:
        """A buffered message for ``channel`` that has not expired, if any."""
        buffer = self._buffers.get(channel)
        if buffer is None:
            return None
        oldest_allowed = time.time() - self._expiry
        message = None
        while buffer:
            sent_at, candidate = buffer.popleft()
            if sent_at >= oldest_allowed:
                message = candidate
                break
            logger.debug("Dropped a message for %s: older than expiry", channel)
            self._stats.expired += 1
        if not buffer:
            del self._buffers[channel]
        return message

    def wait(self, channel: str, queue: str) -> asyncio.Future[Stamped]:
        future: asyncio.Future[Stamped] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, deque()).append(future)
        self._queue_of[channel] = queue
        self._waiting_on[queue] += 1
        return future

    def done_waiting(
        self, channel: str, queue: str, future: asyncio.Future[Stamped], *, returned: bool
    ) -> None:
        """Unregister ``future``; unless its ``receive()`` ``returned`` it, keep its message."""
        self._waiting_on[queue] -= 1
        if self._waiting_on[queue] <= 0:
            del self._waiting_on[queue]
        waiters = self._waiters.get(channel)
        if waiters is not None and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[channel]
                del self._queue_of[channel]
        if not returned and future.done() and not future.cancelled() and not future.exception():
            # Delivered, but its receive() was cancelled before it could return it.
            self._buffers.setdefault(channel, deque()).appendleft(future.result())

    def wanted(self, queue: str) -> bool:
        """Whether any ``receive()`` is waiting on a channel stored in ``queue``."""
        return self._waiting_on[queue] > 0

    def offer(self, channel: str, sent_at: float, message: Message, *, keep: bool) -> bool:
        """Hand ``message`` to a waiter, or buffer it when ``keep``; ``False`` if neither."""
        if sent_at < time.time() - self._expiry:
            logger.debug("Dropped a message for %s: older than expiry", channel)
            self._stats.expired += 1
            return True
        if self._hand_to_waiter(channel, (sent_at, message)):
            return True
        if not keep:
            return False
        buffer = self._buffers.setdefault(channel, deque())
        if len(buffer) >= self._capacity_of(channel):
            self._stats.dropped_from_buffers += 1
            self._drops.warning(
                "Dropped a message for %s: its receive buffer is full (capacity %d); "
                "is its consumer still reading?",
                channel,
                len(buffer),
            )
            return True
        buffer.append((sent_at, message))
        return True

    def fail(self, queue: str, error: BaseException) -> None:
        """Raise ``error`` in every ``receive()`` waiting on a channel stored in ``queue``."""
        for channel in [c for c, q in self._queue_of.items() if q == queue]:
            for future in self._waiters.get(channel, ()):
                if not future.done():
                    future.set_exception(error)

    def _hand_to_waiter(self, channel: str, stamped: Stamped) -> bool:
        waiters = self._waiters.get(channel)
        if waiters is None:
            return False
        handed = False
        while waiters and not handed:
            future = waiters.popleft()
            if not future.done():  # a cancelled waiter has not unregistered yet
                future.set_result(stamped)
                handed = True
        if not waiters:
            del self._waiters[channel]
            del self._queue_of[channel]
        return handed

    def clear(self) -> None:
        """Forget every buffered message (``flush``); waiters keep waiting."""
        self._buffers.clear()
