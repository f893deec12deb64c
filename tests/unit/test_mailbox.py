"""Unit tests for the Mailbox: popped messages, buffers and the receive() calls waiting.

Time is a fake clock patched into the modules that read it, so expiry and rate limiting are
tested without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from channels_valkey._common import log as rate_limited_log
from channels_valkey._queue import mailbox as mailbox_module
from channels_valkey._queue.keys import non_local_name
from channels_valkey._queue.mailbox import STALLED_AFTER, Demand, Mailbox
from support.clock import Clock

EXPIRY = 60
LOGGER = "channels_valkey._queue.mailbox"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1_700_000_000.0)
    monkeypatch.setattr(mailbox_module, "time", fake)
    monkeypatch.setattr(rate_limited_log, "time", fake)
    return fake


def capacity_of(channel: str) -> int:
    return 2 if channel.startswith("small") else 100


@pytest.fixture
def mailbox(clock: Clock) -> Mailbox:
    return Mailbox(capacity_of, EXPIRY)


def queue_of(channel: str) -> str:
    return "asgi" + non_local_name(channel)


def msg(n: int) -> dict[str, Any]:
    return {"type": "test", "n": n}


def drain(mailbox: Mailbox, channel: str) -> list[int]:
    taken = []
    while (message := mailbox.take(channel)) is not None:
        taken.append(message["n"])
    return taken


# --- handing messages to waiters ------------------------------------------------------------


async def test_offer_goes_to_a_waiter(mailbox: Mailbox, clock: Clock) -> None:
    future = mailbox.wait("chat", "asgichat")
    assert mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=False) is True
    assert future.done()
    assert future.result() == (clock.now, msg(1))
    assert mailbox.take("chat") is None


async def test_offer_to_a_waiter_is_not_also_buffered(mailbox: Mailbox, clock: Clock) -> None:
    mailbox.wait("chat", "asgichat")
    assert mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=True) is True
    assert mailbox.take("chat") is None


async def test_waiters_are_served_first_come_first_served(mailbox: Mailbox, clock: Clock) -> None:
    futures = [mailbox.wait("chat", "asgichat") for _ in range(3)]
    for n in (1, 2):
        assert mailbox.offer("chat", queue_of("chat"), clock.now, msg(n), keep=False)
    assert futures[0].result()[1] == msg(1)
    assert futures[1].result()[1] == msg(2)
    assert not futures[2].done()
    assert mailbox.offer("chat", queue_of("chat"), clock.now, msg(3), keep=False)
    assert futures[2].result()[1] == msg(3)


async def test_one_message_goes_to_one_waiter_only(mailbox: Mailbox, clock: Clock) -> None:
    first = mailbox.wait("chat", "asgichat")
    second = mailbox.wait("chat", "asgichat")
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=True)
    assert [first.done(), second.done()] == [True, False]
    assert mailbox.take("chat") is None


async def test_waiters_of_other_channels_are_not_served(mailbox: Mailbox, clock: Clock) -> None:
    other = mailbox.wait("specific.p!b", "asgispecific.p!")
    assert (
        mailbox.offer("specific.p!a", queue_of("specific.p!a"), clock.now, msg(1), keep=False)
        is False
    )
    assert not other.done()


async def test_cancelled_waiter_is_skipped(mailbox: Mailbox, clock: Clock) -> None:
    cancelled = mailbox.wait("chat", "asgichat")
    waiting = mailbox.wait("chat", "asgichat")
    cancelled.cancel()
    assert mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=False) is True
    assert waiting.result()[1] == msg(1)


# --- buffering ------------------------------------------------------------------------------


async def test_keep_buffers_without_a_waiter_in_order(mailbox: Mailbox, clock: Clock) -> None:
    for n in range(1, 5):
        assert mailbox.offer("chat", queue_of("chat"), clock.now, msg(n), keep=True) is True
    assert drain(mailbox, "chat") == [1, 2, 3, 4]


async def test_without_keep_and_without_waiter_offer_declines(
    mailbox: Mailbox, clock: Clock
) -> None:
    assert mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=False) is False
    assert mailbox.take("chat") is None


async def test_take_of_unknown_channel(mailbox: Mailbox) -> None:
    assert mailbox.take("nothing") is None


async def test_buffers_are_per_channel(mailbox: Mailbox, clock: Clock) -> None:
    mailbox.offer("a", queue_of("a"), clock.now, msg(1), keep=True)
    mailbox.offer("b", queue_of("b"), clock.now, msg(2), keep=True)
    assert drain(mailbox, "b") == [2]
    assert drain(mailbox, "a") == [1]


async def test_buffer_is_bounded_by_capacity_newest_dropped(
    mailbox: Mailbox, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for n in range(1, 6):
        assert (
            mailbox.offer("small.chat", queue_of("small.chat"), clock.now, msg(n), keep=True)
            is True
        )
    assert drain(mailbox, "small.chat") == [1, 2]
    # Room again once the consumer has read.
    mailbox.offer("small.chat", queue_of("small.chat"), clock.now, msg(6), keep=True)
    assert drain(mailbox, "small.chat") == [6]


async def test_full_buffer_warns_once_then_rate_limits(
    mailbox: Mailbox, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for n in range(2):
        mailbox.offer("small.chat", queue_of("small.chat"), clock.now, msg(n), keep=True)
    assert caplog.records == []

    for n in range(2, 6):  # four drops
        mailbox.offer("small.chat", queue_of("small.chat"), clock.now, msg(n), keep=True)
        clock.advance(1)
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "small.chat" in warnings[0].getMessage()
    assert "buffer is full (capacity 2)" in warnings[0].getMessage()

    clock.advance(60)
    mailbox.offer("small.chat", queue_of("small.chat"), clock.now, msg(6), keep=True)
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 2
    assert "(3 similar events not logged in the last 60 s)" in warnings[1].getMessage()


async def test_capacity_is_per_channel(mailbox: Mailbox, clock: Clock) -> None:
    for n in range(10):
        mailbox.offer("small.a", queue_of("small.a"), clock.now, msg(n), keep=True)
        mailbox.offer("big", queue_of("big"), clock.now, msg(n), keep=True)
    assert drain(mailbox, "small.a") == [0, 1]
    assert drain(mailbox, "big") == list(range(10))


# --- expiry ---------------------------------------------------------------------------------


async def test_take_skips_expired_messages(mailbox: Mailbox, clock: Clock) -> None:
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=True)
    clock.advance(30)
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(2), keep=True)
    clock.advance(31)
    assert drain(mailbox, "chat") == [2]


async def test_take_of_only_expired_messages(mailbox: Mailbox, clock: Clock) -> None:
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=True)
    clock.advance(EXPIRY + 1)
    assert mailbox.take("chat") is None
    clock.now -= EXPIRY + 1
    assert mailbox.take("chat") is None  # dropped, not just hidden


async def test_message_exactly_expiry_old_is_still_delivered(
    mailbox: Mailbox, clock: Clock
) -> None:
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=True)
    clock.advance(EXPIRY)
    assert drain(mailbox, "chat") == [1]
    future = mailbox.wait("chat", "asgichat")
    mailbox.offer("chat", queue_of("chat"), clock.now - EXPIRY, msg(2), keep=False)
    assert future.result()[1] == msg(2)


@pytest.mark.parametrize("keep", [True, False])
async def test_offer_never_hands_out_an_expired_message(
    mailbox: Mailbox, clock: Clock, keep: bool
) -> None:
    future = mailbox.wait("chat", "asgichat")
    # Consumed (so the caller does not put it back in Valkey), but given to no one.
    assert (
        mailbox.offer("chat", queue_of("chat"), clock.now - EXPIRY - 1, msg(1), keep=keep) is True
    )
    assert not future.done()
    mailbox.done_waiting("chat", "asgichat", future, returned=False)
    assert (
        mailbox.offer("chat", queue_of("chat"), clock.now - EXPIRY - 1, msg(2), keep=keep) is True
    )
    assert mailbox.take("chat") is None


# --- done_waiting ---------------------------------------------------------------------------


async def test_undelivered_message_goes_back_to_the_front(mailbox: Mailbox, clock: Clock) -> None:
    future = mailbox.wait("chat", "asgichat")
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=True)
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(2), keep=True)
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(3), keep=True)
    mailbox.done_waiting("chat", "asgichat", future, returned=False)
    assert drain(mailbox, "chat") == [1, 2, 3]


async def test_returned_message_is_not_kept(mailbox: Mailbox, clock: Clock) -> None:
    future = mailbox.wait("chat", "asgichat")
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=True)
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(2), keep=True)
    mailbox.done_waiting("chat", "asgichat", future, returned=True)
    assert drain(mailbox, "chat") == [2]


async def test_put_back_message_still_expires(mailbox: Mailbox, clock: Clock) -> None:
    future = mailbox.wait("chat", "asgichat")
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=False)
    mailbox.done_waiting("chat", "asgichat", future, returned=False)
    clock.advance(EXPIRY + 1)
    assert mailbox.take("chat") is None


async def test_cancelled_waiter_leaves_nothing_behind(mailbox: Mailbox, clock: Clock) -> None:
    future = mailbox.wait("chat", "asgichat")
    future.cancel()
    mailbox.done_waiting("chat", "asgichat", future, returned=False)
    assert mailbox.take("chat") is None
    assert not mailbox.wanted("asgichat")
    assert mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=False) is False


async def test_done_waiting_unregisters_the_waiter(mailbox: Mailbox, clock: Clock) -> None:
    gone = mailbox.wait("chat", "asgichat")
    staying = mailbox.wait("chat", "asgichat")
    gone.cancel()
    mailbox.done_waiting("chat", "asgichat", gone, returned=False)
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=False)
    assert staying.result()[1] == msg(1)


async def test_failed_waiter_keeps_nothing(mailbox: Mailbox, clock: Clock) -> None:
    future = mailbox.wait("chat", "asgichat")
    mailbox.fail("asgichat", ConnectionError("down"))
    mailbox.done_waiting("chat", "asgichat", future, returned=False)
    assert mailbox.take("chat") is None
    assert mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=False) is False


# --- wanted ---------------------------------------------------------------------------------


async def test_wanted_counts_waiting_receives_per_queue(mailbox: Mailbox) -> None:
    queue = "asgispecific.p!"
    assert not mailbox.wanted(queue)
    first = mailbox.wait("specific.p!a", queue)
    second = mailbox.wait("specific.p!b", queue)
    third = mailbox.wait("specific.p!a", queue)
    elsewhere = mailbox.wait("chat", "asgichat")
    assert mailbox.wanted(queue)
    for future in (first, second):
        mailbox.done_waiting("specific.p!a", queue, future, returned=False)
        assert mailbox.wanted(queue)
    mailbox.done_waiting("specific.p!a", queue, third, returned=False)
    assert not mailbox.wanted(queue)
    assert mailbox.wanted("asgichat")
    mailbox.done_waiting("chat", "asgichat", elsewhere, returned=False)
    assert not mailbox.wanted("asgichat")


async def test_wanted_of_unknown_queue(mailbox: Mailbox) -> None:
    assert mailbox.wanted("asginever") is False


# --- fail -----------------------------------------------------------------------------------


async def test_fail_raises_in_the_waiters_of_that_queue_only(
    mailbox: Mailbox, clock: Clock
) -> None:
    error = ConnectionError("cannot reach Valkey")
    a = mailbox.wait("specific.p!a", "asgispecific.p!")
    b = mailbox.wait("specific.p!b", "asgispecific.p!")
    other = mailbox.wait("chat", "asgichat")
    mailbox.fail("asgispecific.p!", error)
    for future in (a, b):
        with pytest.raises(ConnectionError, match="cannot reach Valkey"):
            await future
    assert not other.done()
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=False)
    assert other.result()[1] == msg(1)


async def test_fail_does_not_take_back_a_delivered_message(mailbox: Mailbox, clock: Clock) -> None:
    delivered = mailbox.wait("chat", "asgichat")
    pending = mailbox.wait("chat", "asgichat")
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=False)
    mailbox.fail("asgichat", ConnectionError("down"))
    assert delivered.result()[1] == msg(1)
    assert isinstance(pending.exception(), ConnectionError)


async def test_failed_waiters_do_not_swallow_later_messages(mailbox: Mailbox, clock: Clock) -> None:
    future = mailbox.wait("chat", "asgichat")
    mailbox.fail("asgichat", ConnectionError("down"))
    assert future.done()
    assert mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=True) is True
    assert drain(mailbox, "chat") == [1]


async def test_fail_with_no_waiters_is_harmless(mailbox: Mailbox, clock: Clock) -> None:
    mailbox.offer("chat", queue_of("chat"), clock.now, msg(1), keep=True)
    mailbox.fail("asgichat", ConnectionError("down"))
    assert drain(mailbox, "chat") == [1]


# --- clear ----------------------------------------------------------------------------------


async def test_clear_forgets_buffers_but_waiters_keep_waiting(
    mailbox: Mailbox, clock: Clock
) -> None:
    mailbox.offer("a", queue_of("a"), clock.now, msg(1), keep=True)
    mailbox.offer("b", queue_of("b"), clock.now, msg(2), keep=True)
    future = mailbox.wait("c", "asgic")
    mailbox.clear()
    assert mailbox.take("a") is None
    assert mailbox.take("b") is None
    assert not future.done()
    assert mailbox.wanted("asgic")
    assert mailbox.offer("c", queue_of("c"), clock.now, msg(3), keep=False) is True
    assert future.result()[1] == msg(3)


async def test_futures_belong_to_the_running_loop(mailbox: Mailbox) -> None:
    future = mailbox.wait("chat", "asgichat")
    assert future.get_loop() is asyncio.get_running_loop()


# --- what a reader may pop: wanted after a hand-off, and backpressure ------------------------

PROCESS = "asgispecific.p!"


def reads(mailbox: Mailbox, channel: str) -> None:
    """A receive() on ``channel`` that waited and went away: its consumer reads."""
    future = mailbox.wait(channel, PROCESS)
    mailbox.done_waiting(channel, PROCESS, future, returned=False)


async def test_a_served_receive_is_no_longer_wanted(mailbox: Mailbox, clock: Clock) -> None:
    """A reader asks right after its hand-off, before the served receive() has resumed:
    nobody waits any more, so it must not start another pop."""
    future = mailbox.wait("chat", "asgichat")
    assert mailbox.wanted("asgichat")
    mailbox.offer("chat", "asgichat", clock.now, msg(1), keep=False)
    assert future.done()
    assert not mailbox.wanted("asgichat")
    assert mailbox.demand("asgichat", 1) == Demand(0)
    assert not mailbox.has_waiter("chat")


async def test_demand_is_the_batch_while_buffers_have_room(mailbox: Mailbox, clock: Clock) -> None:
    assert mailbox.demand(PROCESS, 100) == Demand(0)  # nobody waits
    mailbox.wait("specific.p!a", PROCESS)
    assert mailbox.demand(PROCESS, 100) == Demand(100)


async def test_demand_is_the_room_of_the_fullest_reading_buffer(
    mailbox: Mailbox, clock: Clock
) -> None:
    for n in range(60):
        mailbox.offer("specific.p!b", PROCESS, clock.now, msg(n), keep=True)
    reads(mailbox, "specific.p!b")
    mailbox.take("specific.p!b")  # b reads, slowly: 59 left of its 100
    mailbox.wait("specific.p!a", PROCESS)
    assert mailbox.demand(PROCESS, 100) == Demand(41)


async def test_a_full_reading_buffer_holds_the_reader_back_until_it_has_room(
    clock: Clock,
) -> None:
    poked: list[str] = []
    mailbox = Mailbox(capacity_of, EXPIRY, on_room=poked.append)
    reads(mailbox, "small.b")
    for n in range(2):
        mailbox.offer("small.b", PROCESS, clock.now, msg(n), keep=True)
    mailbox.wait("specific.p!a", PROCESS)
    demand = mailbox.demand(PROCESS, 100)
    assert demand.count == 0
    assert demand.recheck is not None
    assert 0 < demand.recheck <= STALLED_AFTER + 0.1
    assert mailbox.take("small.b") == msg(0)
    assert poked == [PROCESS]
    assert mailbox.demand(PROCESS, 100) == Demand(1)


async def test_a_reading_consumer_never_loses_a_message(mailbox: Mailbox, clock: Clock) -> None:
    """A burst of 1000 for a consumer that reads one message per pop: the reader pops only
    what fits, so nothing is dropped however far the burst outruns the consumer."""
    waiting = mailbox.wait("specific.p!a", PROCESS)  # keeps the reader popping
    burst = list(range(1000))
    taken: list[int] = []
    reads(mailbox, "specific.p!b")
    while burst:
        count = mailbox.demand(PROCESS, 100).count
        for n in burst[:count]:
            mailbox.offer("specific.p!b", PROCESS, clock.now, msg(n), keep=True)
        del burst[:count]
        message = mailbox.take("specific.p!b")
        assert message is not None
        taken.append(message["n"])
        clock.advance(0.01)
    taken += drain(mailbox, "specific.p!b")
    assert taken == list(range(1000))
    assert not waiting.done()


async def test_a_consumer_that_stopped_reading_holds_nobody_back(
    mailbox: Mailbox, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    reads(mailbox, "small.stuck")
    for n in range(2):
        mailbox.offer("small.stuck", PROCESS, clock.now, msg(n), keep=True)
    mailbox.wait("specific.p!a", PROCESS)
    assert mailbox.demand(PROCESS, 100).count == 0
    clock.advance(STALLED_AFTER + 0.1)
    assert mailbox.demand(PROCESS, 100) == Demand(100)
    mailbox.offer("small.stuck", PROCESS, clock.now, msg(2), keep=True)
    assert drain(mailbox, "small.stuck") == [0, 1]
    assert "has not read for 2 s" in caplog.records[-1].getMessage()


async def test_a_channel_never_read_holds_nobody_back(mailbox: Mailbox, clock: Clock) -> None:
    for n in range(5):
        mailbox.offer("small.never", PROCESS, clock.now, msg(n), keep=True)
    mailbox.wait("specific.p!a", PROCESS)
    assert mailbox.demand(PROCESS, 100) == Demand(100)
    assert drain(mailbox, "small.never") == [0, 1]


# --- a loop closed while receive() calls waited ---------------------------------------------


async def test_forget_loop_keeps_what_its_waiters_were_handed(
    mailbox: Mailbox, clock: Clock
) -> None:
    loop = asyncio.get_running_loop()
    handed = mailbox.wait("chat", "asgichat")
    pending = mailbox.wait("chat", "asgichat")
    mailbox.offer("chat", "asgichat", clock.now, msg(1), keep=False)
    assert handed.done()
    mailbox.forget_loop(loop)
    assert not mailbox.wanted("asgichat")
    assert not pending.done()
    assert drain(mailbox, "chat") == [1]


async def test_a_reading_channel_with_a_smaller_capacity_limits_the_pop(
    mailbox: Mailbox, clock: Clock
) -> None:
    """``channel_capacity`` can give one local channel less room than the batch: even with an
    empty buffer it limits what one pop may bring it."""
    reads(mailbox, "small.b")
    mailbox.wait("specific.p!a", PROCESS)
    assert mailbox.demand(PROCESS, 100) == Demand(2)
