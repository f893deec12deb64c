"""The pub/sub layer's local state (inboxes, channels, groups): no server involved."""

from __future__ import annotations

import asyncio
import logging

import pytest

from channels_valkey._pubsub_state import (
    NOTICE_HEADROOM,
    ChannelClosed,
    Drops,
    Inbox,
    LocalState,
)


async def test_inbox_serves_waiters_first_come_first_served() -> None:
    inbox = Inbox(capacity=10)
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert inbox.put(b"a")
    assert inbox.put(b"b")
    assert await first == b"a"
    assert await second == b"b"
    assert len(inbox) == 0


async def test_inbox_drops_beyond_capacity_but_keeps_room_for_notices() -> None:
    inbox = Inbox(capacity=2)
    assert inbox.put(b"1")
    assert inbox.put(b"2")
    assert not inbox.put(b"3")
    for _ in range(NOTICE_HEADROOM):
        assert inbox.put({"type": "notice"}, notice=True)
    assert not inbox.put({"type": "notice"}, notice=True)
    got = [await inbox.get() for _ in range(4)]
    assert got == [b"1", b"2", {"type": "notice"}, {"type": "notice"}]


async def test_a_cancelled_get_passes_its_item_on() -> None:
    inbox = Inbox(capacity=10)
    cancelled = asyncio.ensure_future(inbox.get())
    other = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put(b"x")  # handed to `cancelled`, which is cancelled before it resumes
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await other == b"x"


async def test_a_cancelled_get_with_no_other_waiter_puts_its_item_back_first() -> None:
    inbox = Inbox(capacity=10)
    cancelled = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put(b"first")
    inbox.put(b"second")
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert [await inbox.get(), await inbox.get()] == [b"first", b"second"]


async def test_a_cancelled_waiting_get_leaves_no_waiter_behind() -> None:
    inbox = Inbox(capacity=10)
    cancelled = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert inbox.put(b"kept")
    assert len(inbox) == 1


async def test_close_fails_waiters_and_forgets_items() -> None:
    inbox = Inbox(capacity=10)
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.close(ChannelClosed("closed"))
    with pytest.raises(ChannelClosed):
        await waiting
    inbox.put(b"x")
    inbox.close(ChannelClosed("closed"))
    assert len(inbox) == 0


def test_free_returns_the_channel_and_the_groups_left_empty() -> None:
    state = LocalState(capacity=10, drops=Drops())
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


def test_join_and_leave_report_membership_changes() -> None:
    state = LocalState(capacity=10, drops=Drops())
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
    state = LocalState(capacity=10, drops=Drops())
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


def test_full_inboxes_count_drops_and_log_once(caplog: pytest.LogCaptureFixture) -> None:
    drops = Drops()
    state = LocalState(capacity=1, drops=drops)
    state.open("slow")
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            state.deliver("slow", b"m")
    assert drops.count == 4
    lines = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(lines) == 1
    assert "slow" in lines[0].getMessage()
    assert "b'm'" not in caplog.text  # never the message itself


async def test_affected_and_notify_reach_channels_and_members_still_local() -> None:
    state = LocalState(capacity=10, drops=Drops())
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
    state = LocalState(capacity=10, drops=Drops())
    a = state.open("a")
    waiting = asyncio.ensure_future(a.get())
    await asyncio.sleep(0)
    state.clear(ChannelClosed("flushed"))
    with pytest.raises(ChannelClosed, match="flushed"):
        await waiting
    assert (state.channel_count, state.group_count) == (0, 0)


async def test_a_get_cancelled_as_its_inbox_closes_raises_the_cancellation() -> None:
    inbox = Inbox(capacity=10)
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.close(ChannelClosed("closed"))  # the future fails...
    waiting.cancel()  # ...and the task is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiting
