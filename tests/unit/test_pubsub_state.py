"""The pub/sub layer's local state (inboxes, channels, groups): no server involved.

Time is a :class:`Clock` the tests move by hand, so "the consumer took nothing for
``stall_timeout`` seconds" is a fact of the test, not of the machine's speed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from channels_valkey._pubsub.state import (
    ITEM_OVERHEAD,
    NOTICE_HEADROOM,
    Budget,
    ChannelClosed,
    Drops,
    Inbox,
    LocalState,
    OverflowLimits,
)
from support.clock import Clock

STALL = 10.0


def make_inbox(capacity: int = 10, clock: Clock | None = None, **limits: Any) -> Inbox:
    drops = Drops(limits=OverflowLimits(**limits))
    return Inbox("inbox", Budget(capacity, drops, clock or Clock()))


def make_state(
    capacity: int = 10, clock: Clock | None = None, **limits: Any
) -> tuple[LocalState, Drops]:
    drops = Drops(limits=OverflowLimits(**limits))
    return LocalState(capacity, drops, clock or Clock()), drops


def payload(n: int, size: int = 20) -> bytes:
    return str(n).encode().ljust(size, b".")


def cost(item: bytes) -> int:
    """What one queued payload counts against the byte limits."""
    return len(item) + ITEM_OVERHEAD


async def take_all(inbox: Inbox) -> list[object]:
    """Everything queued, without waiting."""
    return [await inbox.get() for _ in range(len(inbox))]


# --- hand-over, cancellation, closing ----------------------------------------------------


async def test_inbox_serves_waiters_first_come_first_served() -> None:
    inbox = make_inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert inbox.put(b"a")
    assert inbox.put(b"b")
    assert await first == b"a"
    assert await second == b"b"
    assert len(inbox) == 0


async def test_a_cancelled_get_passes_its_item_on() -> None:
    inbox = make_inbox()
    cancelled = asyncio.ensure_future(inbox.get())
    other = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put(b"x")  # handed to `cancelled`, which is cancelled before it resumes
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await other == b"x"


async def test_a_cancelled_get_with_no_other_waiter_puts_its_item_back_first() -> None:
    inbox = make_inbox()
    cancelled = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put(b"first")
    inbox.put(b"second")
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert [await inbox.get(), await inbox.get()] == [b"first", b"second"]


async def test_a_cancelled_waiting_get_leaves_no_waiter_behind() -> None:
    inbox = make_inbox()
    cancelled = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert inbox.put(b"kept")
    assert len(inbox) == 1


async def test_close_fails_waiters_and_forgets_items() -> None:
    inbox = make_inbox()
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.close(ChannelClosed("closed"))
    with pytest.raises(ChannelClosed):
        await waiting
    inbox.put(b"x")
    inbox.close(ChannelClosed("closed"))
    assert len(inbox) == 0


async def test_a_get_cancelled_as_its_inbox_closes_raises_the_cancellation() -> None:
    inbox = make_inbox()
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.close(ChannelClosed("closed"))  # the future fails...
    waiting.cancel()  # ...and the task is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiting


# --- bounds: a reading consumer ----------------------------------------------------------


async def test_a_burst_to_a_consumer_slower_than_it_but_reading_loses_nothing() -> None:
    """1000 payloads a millisecond apart; the consumer takes one every two milliseconds
    during the burst (half the rate), then catches up. Earlier versions dropped all but
    ``capacity`` of what it had not taken yet."""
    clock = Clock()
    state, drops = make_state(capacity=100, clock=clock)
    inbox = state.open("room-member")
    got: list[object] = []
    for n in range(1000):
        clock.advance(0.001)
        state.deliver("room-member", payload(n))
        if n % 2:
            got.append(await inbox.get())
    assert len(inbox) > 100  # it did fall behind by more than capacity
    got += await take_all(inbox)
    assert got == [payload(n) for n in range(1000)]
    assert drops.count == 0
    assert state.held_bytes == 0  # every byte charged was given back when taken


async def test_a_consumer_taking_one_message_per_stall_timeout_is_still_reading() -> None:
    clock = Clock()
    inbox = make_inbox(capacity=2, clock=clock, stall_timeout=STALL)
    for n in range(5):
        assert inbox.put(payload(n))
    for n in range(5, 10):
        clock.advance(STALL * 0.9)
        assert await inbox.get() == payload(n - 5)
        assert inbox.put(payload(n))  # it took one in the last stall_timeout: kept
    assert await take_all(inbox) == [payload(n) for n in range(5, 10)]


async def test_a_reading_consumer_that_falls_channel_bytes_behind_loses_the_excess(
    caplog: pytest.LogCaptureFixture,
) -> None:
    item = payload(0)
    inbox = make_inbox(capacity=2, channel_bytes=3 * cost(item), total_bytes=100 * cost(item))
    with caplog.at_level(logging.WARNING):
        accepted = [inbox.put(payload(n)) for n in range(8)]
    assert accepted == [True] * 5 + [False] * 3  # capacity 2, then 3 payloads' worth
    assert inbox.charged == 3 * cost(item)
    assert await take_all(inbox) == [payload(n) for n in range(5)]
    assert inbox.charged == 0
    assert "channel_buffer_bytes" in caplog.text
    assert "inbox" in caplog.text
    assert payload(0).decode() not in caplog.text  # never the message itself


async def test_total_bytes_bound_all_reading_consumers_of_a_loop_together() -> None:
    item = payload(0)
    state, drops = make_state(capacity=1, channel_bytes=4 * cost(item), total_bytes=6 * cost(item))
    a, b = state.open("a"), state.open("b")
    for n in range(5):
        state.deliver("a", payload(n))  # 1 within capacity, 4 charged
    for n in range(5):
        state.deliver("b", payload(n))  # 1 within capacity, 2 charged, then the total is full
    assert (len(a), len(b), drops.count) == (5, 3, 2)
    assert state.held_bytes == 6 * cost(item)
    await a.get()
    await a.get()  # a charged payload taken: room for one more
    state.deliver("b", payload(5))
    assert (len(b), drops.count) == (4, 2)


# --- bounds: a consumer that stopped reading ---------------------------------------------


async def test_a_consumer_that_stopped_reading_is_cut_back_to_capacity_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    state, drops = make_state(capacity=100, clock=clock, stall_timeout=STALL)
    inbox = state.open("stuck")
    for n in range(1000):  # within stall_timeout: it may still be reading
        clock.advance(0.001)
        state.deliver("stuck", payload(n))
    assert (len(inbox), drops.count) == (1000, 0)
    clock.advance(STALL)  # nothing taken for stall_timeout: it stopped reading
    with caplog.at_level(logging.WARNING):
        for n in range(1000, 1100):
            state.deliver("stuck", payload(n))
    assert len(inbox) == 100
    assert drops.count == 900 + 100  # the 900 beyond capacity, then each new one
    assert state.held_bytes == 0  # it holds none of the shared bytes
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # rate-limited
    assert "stuck" in lines[0]
    assert "stall_timeout" in lines[0]
    assert "queue is full" in lines[0]
    # It reads again: the oldest messages first, and new ones are kept again.
    assert await inbox.get() == payload(0)
    state.deliver("stuck", payload(1100))
    state.deliver("stuck", payload(1101))  # beyond capacity, but it reads: kept
    assert drops.count == 1000
    assert (await take_all(inbox))[-2:] == [payload(1100), payload(1101)]


async def test_a_consumer_that_stopped_reading_does_not_hold_back_the_others() -> None:
    clock = Clock()
    item = payload(0)
    limit = 50 * cost(item)
    state, drops = make_state(
        capacity=10, clock=clock, stall_timeout=STALL, channel_bytes=limit, total_bytes=limit
    )
    stuck, reader = state.open("stuck"), state.open("reader")
    for n in range(60):
        state.deliver("stuck", payload(n))  # fills the whole shared total
    assert (state.held_bytes, drops.count) == (limit, 0)
    clock.advance(STALL)  # `stuck` stopped reading; no message comes for it any more
    got: list[object] = []
    for n in range(40):
        clock.advance(0.001)
        state.deliver("reader", payload(n))
        if n % 2:
            got.append(await reader.get())
    got += await take_all(reader)
    assert got == [payload(n) for n in range(40)]  # the reader lost nothing
    assert drops.count == 50  # only what `stuck` held beyond its capacity
    assert len(stuck) == 10


async def test_with_stall_timeout_0_no_queue_grows_beyond_capacity() -> None:
    state, drops = make_state(capacity=3, stall_timeout=0)
    inbox = state.open("a")
    for n in range(10):
        state.deliver("a", payload(n))
    assert await take_all(inbox) == [payload(n) for n in range(3)]
    assert (drops.count, state.held_bytes) == (7, 0)


# --- notices -----------------------------------------------------------------------------


async def test_a_stopped_consumer_gets_notices_in_the_headroom_and_keeps_them() -> None:
    clock = Clock()
    inbox = make_inbox(capacity=2, clock=clock, stall_timeout=STALL)
    for n in range(4):
        assert inbox.put(payload(n))  # 2 charged: it may still be reading
    assert inbox.put({"type": "notice"}, notice=True)
    clock.advance(STALL)
    assert not inbox.put(payload(4))  # stopped: cut back, the notice kept
    for _ in range(NOTICE_HEADROOM - 1):
        assert inbox.put({"type": "notice"}, notice=True)
    assert not inbox.put({"type": "notice"}, notice=True)
    got = await take_all(inbox)
    assert got == [payload(0), payload(1)] + [{"type": "notice"}] * NOTICE_HEADROOM


async def test_a_reading_consumer_gets_notices_beyond_every_bound() -> None:
    item = payload(0)
    inbox = make_inbox(capacity=1, channel_bytes=cost(item), total_bytes=cost(item))
    assert inbox.put(payload(0))
    assert inbox.put(payload(1))
    assert not inbox.put(payload(2))  # channel_bytes reached
    for _ in range(5):
        assert inbox.put({"type": "notice"}, notice=True)
    assert len(inbox) == 7


# --- channels and groups -----------------------------------------------------------------


def test_free_returns_the_channel_and_the_groups_left_empty() -> None:
    state, _ = make_state()
    state.open("a")
    state.open("b")
    state.join("g1", "a")
    state.join("g2", "a")
    state.join("g2", "b")
    assert state.free("a") == ["a", "g1"]  # g2 still has b
    assert state.group_count == 1
    assert state.free("b") == ["b", "g2"]
    assert (state.channel_count, state.group_count) == (0, 0)
    assert state.free("b") == []


def test_freeing_or_clearing_channels_gives_their_bytes_back() -> None:
    state, drops = make_state(capacity=1)
    state.open("a")
    state.open("b")
    for name in ("a", "b"):
        for n in range(5):
            state.deliver(name, payload(n))
    assert state.held_bytes == 8 * cost(payload(0))
    state.free("a")
    assert state.held_bytes == 4 * cost(payload(0))
    state.clear(ChannelClosed("flushed"))
    assert (state.held_bytes, drops.count) == (0, 0)  # forgotten, not dropped


def test_join_and_leave_report_membership_changes() -> None:
    state, _ = make_state()
    state.open("a")
    state.open("b")
    assert state.join("g", "a")
    assert not state.join("g", "a")
    assert state.join("g", "b")
    assert not state.leave("g", "a")  # b is still in g
    assert not state.leave("g", "a")  # not a member any more
    assert state.leave("g", "b")  # g has no local member left: unsubscribe it
    with pytest.raises(KeyError):
        state.join("g", "not-local")


async def test_deliver_routes_to_channels_and_group_members() -> None:
    state, _ = make_state()
    a = state.open("a")
    b = state.open("b")
    state.join("g", "a")
    state.join("g", "b")
    state.deliver("a", b"direct")
    state.deliver("g", b"group")
    state.deliver("nobody", b"lost")
    assert [await a.get(), await a.get()] == [b"direct", b"group"]
    assert await b.get() == b"group"
    assert (len(a), len(b)) == (0, 0)


async def test_affected_and_notify_reach_channels_and_members_still_local() -> None:
    state, _ = make_state()
    a = state.open("a")
    b = state.open("b")
    state.open("c")
    state.join("g", "b")
    assert state.affected(["a", "g", "unknown"]) == {"a", "b"}
    state.notify(["a", "b", "gone"], {"type": "valkey.disconnect"})
    first, second = await a.get(), await b.get()
    assert first == second == {"type": "valkey.disconnect"}
    assert first is not second  # each consumer gets its own dict


async def test_clear_fails_waiting_receivers() -> None:
    state, _ = make_state()
    a = state.open("a")
    waiting = asyncio.ensure_future(a.get())
    await asyncio.sleep(0)
    state.clear(ChannelClosed("flushed"))
    with pytest.raises(ChannelClosed, match="flushed"):
        await waiting
    assert (state.channel_count, state.group_count) == (0, 0)
