"""Process-local receive state: popped messages and the ``receive()`` calls waiting for them.

The :class:`Mailbox` does no I/O. Readers (``_queue.reader``) ask it how many messages they may pop
(:meth:`Mailbox.demand`), pop them from Valkey and :meth:`Mailbox.offer` them; ``receive()``
calls :meth:`Mailbox.take` or waits on a future from :meth:`Mailbox.wait`.

Backpressure: a process's local channels share one queue in Valkey, and one pop from it can
carry messages for every channel (a group send puts one entry there for all its members in
this process). A reader therefore pops only while a ``receive()`` waits, and never more
entries than the fullest buffer of a *reading* channel has room for. A burst larger than the
buffers stays in Valkey, where ``capacity`` and ``expiry`` apply and the sender is told
(``ChannelFull``, or the count of members ``group_send`` skipped).

A channel is *reading* while a ``receive()`` waits on it or took from it (or stopped waiting)
within ``STALLED_AFTER`` seconds. A consumer that stopped reading must not hold back the
others of its process, so its full buffer does not limit the pops: messages beyond its
capacity are dropped, counted in ``stats().dropped_from_buffers`` and logged (rate-limited).

Invariants:
- a message is handed to exactly one ``receive()`` call: a waiter's future gets it, or it is
  buffered, or (for normal channels, whose messages other processes could take) it goes back
  to the caller to return to Valkey;
- a waiter that is cancelled after its future got a message puts the message back at the
  front of its buffer (:meth:`Mailbox.done_waiting`), so cancellation neither loses nor
  duplicates; so does a waiter whose event loop was closed (:meth:`Mailbox.forget_loop`);
- a reading channel's buffer never exceeds its capacity through :meth:`offer`, given that each
  popped entry holds at most one message per channel (a message put back by a cancelled
  waiter is kept even then: it was already accepted);
- :meth:`wanted` is true only while a ``receive()`` waits and has not been handed a message;
- nothing older than ``expiry`` seconds (by its send time) is ever handed out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from channels_valkey._common.log import RateLimitedLog
from channels_valkey.stats import StatsRecorder

logger = logging.getLogger(__name__)

Message = dict[str, Any]
#: A message with its send time, which decides when it expires.
Stamped = tuple[float, Message]

#: Seconds without a ``receive()`` after which a channel's consumer counts as stopped: its
#: full buffer no longer holds back the pops of the other channels of its process.
STALLED_AFTER = 2.0

#: Every how many demands the slots of a queue are looked through for channels that are gone.
PRUNE_EVERY = 256


@dataclass(frozen=True)
class Demand:
    """What a reader may do now: pop ``count`` entries; or, when ``count`` is 0, wait for a
    change (held back by a full buffer, and ``recheck`` seconds at most) or, with ``recheck``
    ``None``, stop wanting anything (no ``receive()`` waits)."""

    count: int
    recheck: float | None = None


IDLE = Demand(0)


@dataclass(eq=False)
class _Slot:
    """One local channel: its buffer, its waiting ``receive()`` calls, when it last read."""

    channel: str
    queue: str
    capacity: int
    buffer: deque[Stamped] = field(default_factory=deque)
    waiters: deque[asyncio.Future[Stamped]] = field(default_factory=deque)
    #: ``time.monotonic()`` of the last take or wait; ``None`` before the first.
    last_read: float | None = None

    def reading(self, now: float) -> bool:
        if self.waiters:
            return True
        return self.last_read is not None and now - self.last_read <= STALLED_AFTER


class Mailbox:
    def __init__(
        self,
        capacity_of: Callable[[str], int],
        expiry: int,
        stats: StatsRecorder | None = None,
        on_room: Callable[[str], None] | None = None,
    ) -> None:
        """``on_room(queue)`` is called when a full buffer of a channel in ``queue`` gets
        room again (or buffers are cleared), so that a held-back reader pops again."""
        self._capacity_of = capacity_of
        self._expiry = expiry
        self._stats = stats or StatsRecorder()
        self._on_room = on_room or (lambda queue: None)
        self._slots: dict[str, _Slot] = {}
        #: Slots by queue key, so a reader's demand looks at its own channels only.
        self._slots_of: dict[str, dict[str, _Slot]] = {}
        #: Per queue key, the slots that can limit a pop: those with something buffered, and
        #: those whose capacity is below the batch its reader asks for (with that batch).
        self._buffered_of: dict[str, set[_Slot]] = {}
        self._small_of: dict[str, tuple[int, set[_Slot]]] = {}
        self._demands = 0
        #: Futures of waiting ``receive()`` calls not yet handed a message, per queue key.
        self._pending: dict[str, set[asyncio.Future[Stamped]]] = {}
        self._drops = RateLimitedLog(logger)

    # --- receive() ----------------------------------------------------------------------

    def take(self, channel: str) -> Message | None:
        """A buffered message for ``channel`` that has not expired, if any."""
        slot = self._slots.get(channel)
        if slot is None:
            return None
        slot.last_read = time.monotonic()
        was_full = len(slot.buffer) >= slot.capacity
        oldest_allowed = time.time() - self._expiry
        message = None
        while slot.buffer:
            sent_at, candidate = slot.buffer.popleft()
            if sent_at >= oldest_allowed:
                message = candidate
                break
            logger.debug("Dropped a message for %s: older than expiry", channel)
            self._stats.expired += 1
        if not slot.buffer:
            self._buffered_of.get(slot.queue, set()).discard(slot)
        if was_full:
            self._on_room(slot.queue)
        return message

    def wait(self, channel: str, queue: str) -> asyncio.Future[Stamped]:
        future: asyncio.Future[Stamped] = asyncio.get_running_loop().create_future()
        slot = self._slot(channel, queue)
        slot.waiters.append(future)
        slot.last_read = time.monotonic()
        self._pending.setdefault(queue, set()).add(future)
        return future

    def done_waiting(
        self, channel: str, queue: str, future: asyncio.Future[Stamped], *, returned: bool
    ) -> None:
        """Unregister ``future``; unless its ``receive()`` ``returned`` it, keep its message."""
        self._not_pending(queue, future)
        slot = self._slots.get(channel)
        if slot is None:
            return
        if future in slot.waiters:
            slot.waiters.remove(future)
        slot.last_read = time.monotonic()
        if not returned and _has_result(future):
            # Delivered, but its receive() was cancelled before it could return it.
            self._buffer(slot, future.result(), front=True)

    def forget_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drop the waiters of ``loop``, which was closed while they waited; a message one of
        them was handed goes back to the front of its buffer."""
        for slot in self._slots.values():
            for future in [f for f in slot.waiters if f.get_loop() is loop]:
                slot.waiters.remove(future)
                self._not_pending(slot.queue, future)
                if _has_result(future):
                    self._buffer(slot, future.result(), front=True)

    # --- readers ------------------------------------------------------------------------

    def wanted(self, queue: str) -> bool:
        """Whether a ``receive()`` on a channel stored in ``queue`` waits for a message now."""
        return bool(self._pending.get(queue))

    def has_waiter(self, channel: str) -> bool:
        slot = self._slots.get(channel)
        return slot is not None and any(not f.done() for f in slot.waiters)

    def demand(self, queue: str, batch: int) -> Demand:
        """How many entries a reader of ``queue`` may pop now, at most ``batch``."""
        if not self.wanted(queue):
            return IDLE
        now = time.monotonic()
        self._demands += 1
        if self._demands % PRUNE_EVERY == 0:
            self._prune(queue, now)
        count, recheck = batch, None
        for slot in (*self._buffered_of.get(queue, ()), *self._small(queue, batch)):
            room = slot.capacity - len(slot.buffer)
            if room >= count:
                continue
            if not slot.reading(now):
                continue  # a stopped consumer holds nobody back
            count = max(room, 0)
            if count == 0:
                # Held back until this consumer reads, or until it counts as stopped.
                since = slot.last_read if slot.last_read is not None else now
                wait = max(since + STALLED_AFTER - now, 0.0) + 0.01
                recheck = wait if recheck is None else min(recheck, wait)
        return Demand(count, recheck)

    def offer(
        self, channel: str, queue: str, sent_at: float, message: Message, *, keep: bool
    ) -> bool:
        """Hand ``message`` to a waiter, or buffer it when ``keep``; ``False`` if neither."""
        if sent_at < time.time() - self._expiry:
            logger.debug("Dropped a message for %s: older than expiry", channel)
            self._stats.expired += 1
            return True
        if self._hand_to_waiter(channel, (sent_at, message)):
            return True
        if not keep:
            return False
        slot = self._slot(channel, queue)
        if len(slot.buffer) >= slot.capacity:
            self._drop(channel, slot)
            return True
        self._buffer(slot, (sent_at, message))
        return True

    def fail(self, queue: str, error: BaseException) -> None:
        """Raise ``error`` in every ``receive()`` waiting on a channel stored in ``queue``."""
        for future in self._pending.pop(queue, set()):
            if not future.done():
                future.set_exception(error)

    def clear(self) -> None:
        """Forget every buffered message (``flush``); waiters keep waiting."""
        queues = {slot.queue for slot in self._slots.values() if slot.buffer}
        for slot in self._slots.values():
            slot.buffer.clear()
        self._buffered_of.clear()
        for queue in queues:
            self._on_room(queue)

    # --- internals ----------------------------------------------------------------------

    def _slot(self, channel: str, queue: str) -> _Slot:
        slot = self._slots.get(channel)
        if slot is None:
            slot = _Slot(channel, queue, self._capacity_of(channel))
            self._slots[channel] = slot
            self._slots_of.setdefault(queue, {})[channel] = slot
            small = self._small_of.get(queue)
            if small is not None and slot.capacity < small[0]:
                small[1].add(slot)
        return slot

    def _small(self, queue: str, batch: int) -> set[_Slot]:
        """The slots of ``queue`` holding fewer than ``batch`` messages (channels with a
        smaller ``channel_capacity``), found once per batch size."""
        small = self._small_of.get(queue)
        if small is None or small[0] != batch:
            slots = self._slots_of.get(queue, {}).values()
            small = self._small_of[queue] = (batch, {s for s in slots if s.capacity < batch})
        return small[1]

    def _buffer(self, slot: _Slot, stamped: Stamped, *, front: bool = False) -> None:
        if front:
            slot.buffer.appendleft(stamped)
        else:
            slot.buffer.append(stamped)
        self._buffered_of.setdefault(slot.queue, set()).add(slot)

    def _prune(self, queue: str, now: float) -> None:
        """Forget the slots of ``queue`` with nothing in them whose consumer has not read for
        a while (channels that are gone), so the mailbox does not grow with every channel a
        process ever had."""
        slots = self._slots_of.get(queue, {})
        for channel, slot in list(slots.items()):
            if not (slot.buffer or slot.waiters or slot.reading(now)):
                del self._slots[channel]
                del slots[channel]
                self._small_of.get(queue, (0, set()))[1].discard(slot)
        if not slots:
            self._slots_of.pop(queue, None)
            self._small_of.pop(queue, None)
            self._buffered_of.pop(queue, None)

    def _hand_to_waiter(self, channel: str, stamped: Stamped) -> bool:
        slot = self._slots.get(channel)
        if slot is None:
            return False
        # A handed waiter stays listed until its receive() unregisters (done_waiting), so a
        # loop closed in between can still give its message back (forget_loop).
        for future in slot.waiters:
            if not future.done():  # skips the handed and the cancelled
                future.set_result(stamped)
                self._not_pending(slot.queue, future)
                return True
        return False

    def _not_pending(self, queue: str, future: asyncio.Future[Stamped]) -> None:
        pending = self._pending.get(queue)
        if pending is not None:
            pending.discard(future)
            if not pending:
                del self._pending[queue]

    def _drop(self, channel: str, slot: _Slot) -> None:
        self._stats.dropped_from_buffers += 1
        idle = "" if slot.last_read is None else f" for {time.monotonic() - slot.last_read:.0f} s"
        self._drops.warning(
            "Dropped a message for %s: its receive buffer is full (capacity %d) and its "
            "consumer has not read%s",
            channel,
            slot.capacity,
            idle,
        )


def _has_result(future: asyncio.Future[Stamped]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None
