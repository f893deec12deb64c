"""The core layer never loses a message Valkey accepted to its own bookkeeping.

- A reader pops only for a ``receive()`` that waits at that moment, and never more than the
  buffers of reading consumers can hold: a burst beyond that stays in Valkey, where the
  sender hears about it (``ChannelFull``, ``group_send``'s skipped members).
- A message a process cannot decode is put back (normal channels) or kept aside for
  inspection (its own process queue), logged and counted, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from channels_valkey._queue.mailbox import STALLED_AFTER
from channels_valkey.core import ValkeyChannelLayer
from support.servers import ValkeyServer, wait_for

KEY = "QXh1UTFGQm9oV0hINXQ2N0RKWkRTT0lOUW9nN2xUZkQ="


async def test_a_served_receive_leaves_the_next_message_to_its_receiver(hosts: list[Any]) -> None:
    """Two layers in one process, one of them encrypted, each receive once on a channel;
    then the second sends and receives again: the first layer's reader, which served its
    receive(), must not pop that message for nobody."""
    plain = ValkeyChannelLayer(hosts=hosts)
    encrypted = ValkeyChannelLayer(hosts=hosts, symmetric_encryption_keys=[KEY])
    await plain.flush()
    for layer in (plain, encrypted):
        await layer.send("chat.room", {"type": "m", "n": 0})
        assert await asyncio.wait_for(layer.receive("chat.room"), 10) == {"type": "m", "n": 0}
    await encrypted.send("chat.room", {"type": "m", "n": 1})
    assert await asyncio.wait_for(encrypted.receive("chat.room"), 10) == {"type": "m", "n": 1}
    assert plain.stats().undecodable == 0
    for layer in (plain, encrypted):
        await layer.flush()
        await layer.close()


async def test_a_message_this_process_cannot_decode_goes_back_for_another(
    valkey_server: ValkeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A process without the sender's serializer pops a normal channel's message while it
    waits there: the message goes back untouched, and a process that can decode it gets it."""
    valkey_server.flushall()
    caplog.set_level(logging.WARNING, logger="channels_valkey.core")
    other_format = ValkeyChannelLayer(hosts=[valkey_server.url], serializer_format="json")
    sender = ValkeyChannelLayer(hosts=[valkey_server.url])
    receiver = ValkeyChannelLayer(hosts=[valkey_server.url])
    waiting = asyncio.create_task(other_format.receive("jobs"))
    admin = valkey_server.client()
    await asyncio.to_thread(
        wait_for,
        lambda: any(c["cmd"] == "bzmpop" for c in admin.client_list()),
        timeout=10,
        describe="the json layer's pop",
    )
    await sender.send("jobs", {"type": "job", "n": 1})
    await asyncio.to_thread(
        wait_for, lambda: other_format.stats().undecodable, timeout=10, describe="the pop"
    )
    # Another receive() of the json process, while its reader holds back: it must not make
    # the reader take the message again before a process that can decode it does.
    also_waiting = asyncio.create_task(other_format.receive("jobs"))
    assert await asyncio.wait_for(receiver.receive("jobs"), 10) == {"type": "job", "n": 1}
    assert other_format.stats().undecodable == 1
    assert not waiting.done()
    assert not also_waiting.done()
    waiting.cancel()
    also_waiting.cancel()
    lines = [r.getMessage() for r in caplog.records if "Could not decode" in r.getMessage()]
    assert len(lines) == 1
    assert "asgijobs" in lines[0]
    for layer in (other_format, sender, receiver):
        await layer.close()


async def test_an_undecodable_message_for_this_process_is_kept_for_inspection(
    valkey_server: ValkeyServer,
) -> None:
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url])
    other_format = ValkeyChannelLayer(hosts=[valkey_server.url], serializer_format="json")
    channel = await layer.new_channel()
    await other_format.send(channel, {"type": "m", "n": 0})
    await layer.send(channel, {"type": "m", "n": 1})
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "m", "n": 1}
    assert layer.stats().undecodable == 1
    queue = layer._keys.queue(channel)
    kept = valkey_server.client().zrange(f"{queue}$undecodable", 0, -1)
    assert len(kept) == 1
    assert b'"n": 0' in kept[0] or b'"n":0' in kept[0]
    await layer.close()
    await other_format.close()


async def _group_burst(layer: ValkeyChannelLayer, members: int, count: int) -> list[str]:
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add("room", channel)
    for n in range(count):
        await layer.group_send("room", {"type": "m", "n": n})
    return channels


async def _read(layer: ValkeyChannelLayer, channel: str, count: int, pause: float) -> list[int]:
    """A consumer that needs ``pause`` seconds of work per message."""
    got = []
    for _ in range(count):
        got.append((await asyncio.wait_for(layer.receive(channel), 30))["n"])
        await asyncio.sleep(pause)
    return got


async def _send_when_room(layer: ValkeyChannelLayer, channel: str, message: Any) -> None:
    """Send, waiting for room while the channel is full: what a sender told ChannelFull does."""
    while True:
        try:
            return await layer.send(channel, message)
        except ChannelFull:
            await asyncio.sleep(0.01)


async def _read_to_end(layer: ValkeyChannelLayer, channel: str, pause: float) -> list[int]:
    """A consumer that needs ``pause`` seconds of work per message, until an ``end``."""
    got = []
    while (message := await layer.receive(channel))["type"] != "end":
        got.append(message["n"])
        await asyncio.sleep(pause)
    return got


async def test_consumers_slower_than_a_burst_lose_nothing(hosts: list[Any]) -> None:
    """A room's burst, as in a chat: 400 group sends while two consumers of one process read,
    one of them far slower than the burst. Each gets every message its process queue
    accepted, in order; nothing is dropped in the process (default options)."""
    layer = ValkeyChannelLayer(hosts=hosts)
    await layer.flush()
    channels = await _group_burst(layer, 2, 0)
    consumers = asyncio.gather(
        _read_to_end(layer, channels[0], 0.002), _read_to_end(layer, channels[1], 0)
    )
    for n in range(400):
        await layer.group_send("room", {"type": "m", "n": n})
        await asyncio.sleep(0)
    accepted = 400 - layer.stats().group_members_full // 2  # one entry for both members
    for channel in channels:
        await _send_when_room(layer, channel, {"type": "end"})
    got = await asyncio.wait_for(consumers, 60)
    assert layer.stats().dropped_from_buffers == 0
    assert got[0] == got[1]
    assert got[0] == sorted(got[0])
    assert len(got[0]) == accepted
    await layer.flush()
    await layer.close()


async def test_a_burst_beyond_capacity_is_refused_to_the_sender(hosts: list[Any]) -> None:
    """With the default capacity, a burst larger than the process queue holds: what does not
    arrive is exactly what group_send reported as skipped, never dropped in the process."""
    layer = ValkeyChannelLayer(hosts=hosts)
    await layer.flush()
    channels = [await layer.new_channel() for _ in range(2)]
    for channel in channels:
        await layer.group_add("room", channel)
    for n in range(300):
        await layer.group_send("room", {"type": "m", "n": n})
    skipped = layer.stats().group_members_full
    assert skipped > 0
    expected = 300 - skipped // 2
    got = await asyncio.gather(*(_read(layer, channel, expected, 0) for channel in channels))
    assert got[0] == got[1]
    assert len(got[0]) == expected
    assert got[0] == sorted(got[0])
    assert layer.stats().dropped_from_buffers == 0
    await layer.flush()
    await layer.close()


async def test_a_consumer_that_stopped_reading_does_not_hold_back_the_others(
    hosts: list[Any],
) -> None:
    """One consumer of a process stops reading while a burst goes on: the other consumer of
    that process still gets everything the process queue accepted (after ``STALLED_AFTER``
    seconds at most it stops waiting for the stuck one); the stuck one's buffer stays at its
    capacity and what it misses is dropped and counted."""
    layer = ValkeyChannelLayer(hosts=hosts)
    await layer.flush()
    stuck, reading = await _group_burst(layer, 2, 0)
    await layer.group_send("room", {"type": "m", "n": -1})
    assert (await asyncio.wait_for(layer.receive(stuck), 10))["n"] == -1  # then stops
    got: list[int] = []
    target: list[int] = []
    arrived = asyncio.Event()

    async def consume() -> None:
        while True:
            got.append((await layer.receive(reading))["n"])
            if target and len(got) >= target[0]:
                arrived.set()

    consumer = asyncio.create_task(consume())
    for n in range(300):
        await layer.group_send("room", {"type": "m", "n": n})
        await asyncio.sleep(0)
    accepted = 300 - layer.stats().group_members_full // 2  # one entry per send, for both
    target.append(accepted + 1)
    if len(got) >= target[0]:
        arrived.set()
    await asyncio.wait_for(arrived.wait(), STALLED_AFTER + 30)
    consumer.cancel()
    assert got[0] == -1
    assert got[1:] == sorted(got[1:])
    assert len(got) == accepted + 1
    assert layer.stats().dropped_from_buffers == accepted - layer.config.capacity_of(stuck)
    await layer.flush()
    await layer.close()
