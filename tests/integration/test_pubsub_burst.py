"""Bursts on the pub/sub layer: what a reading consumer is owed, and what one that stopped
reading costs.

A chat room's burst reaches each member faster than its consumer handles it. The layer must
keep what a reading consumer has not taken yet (earlier versions kept ``capacity`` messages
and dropped the rest), and drop only for a consumer that stopped reading, keeping
``capacity`` messages for it and counting the rest.

Consumers here do their "work" with a short ``asyncio.sleep`` between messages: that is the
slowness under test, not a wait for an event. Messages are published one after another, so
the order they arrive in is defined.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.pubsub import PUBSUB_TOPOLOGIES, OpenLayer, nothing_for, receive

#: Messages in one burst, and local members of the room receiving it.
BURST = 500
MEMBERS = 4
#: What a consumer spends on each message: the burst arrives faster than this.
WORK = 0.001


async def read(layer: ValkeyPubSubChannelLayer, channel: str, count: int) -> list[int]:
    """What a consumer that takes ``count`` messages, working on each, receives."""
    got: list[int] = []
    for _ in range(count):
        got.append((await receive(layer, channel))["n"])
        await asyncio.sleep(WORK)
    return got


async def burst(sender: ValkeyPubSubChannelLayer, group: str, numbers: range) -> None:
    for n in numbers:
        await sender.group_send(group, {"type": "chat.message", "n": n, "text": "x" * 40})


@pytest.mark.parametrize("topology", PUBSUB_TOPOLOGIES, indirect=True)
async def test_a_burst_to_consumers_that_keep_up_on_average_is_delivered_whole(
    hosts: list[Any], open_layer: OpenLayer
) -> None:
    receiver, sender = open_layer(hosts), open_layer(hosts)
    members = [await receiver.new_channel() for _ in range(MEMBERS)]
    for channel in members:
        await receiver.group_add("room", channel)
    readers = [asyncio.create_task(read(receiver, channel, BURST)) for channel in members]
    await burst(sender, "room", range(BURST))
    for got in await asyncio.gather(*readers):
        assert got == list(range(BURST))
    assert receiver.stats().dropped_from_buffers == 0


#: The topologies whose pub/sub paths differ (one server, names hashed over several, sharded
#: pub/sub on a cluster), for the test that must wait out a ``stall_timeout``.
DISTINCT_PATHS = ["standalone", "sharded", "cluster"]


@pytest.mark.parametrize("topology", DISTINCT_PATHS, indirect=True)
async def test_a_channel_nobody_reads_keeps_capacity_and_the_rest_is_counted(
    hosts: list[Any], open_layer: OpenLayer, caplog: pytest.LogCaptureFixture
) -> None:
    """A member that stopped reading does not hold back the others: they get every message
    of both bursts, while it keeps the first ``capacity`` and the rest is counted."""
    # A reader that got no CPU for stall_timeout with capacity messages waiting would count as
    # stopped too: the timeout leaves a busy machine ample room for the readers.
    capacity, stall_timeout, half = 20, 2.0, BURST // 2
    receiver = open_layer(hosts, capacity=capacity, stall_timeout=stall_timeout)
    sender = open_layer(hosts)
    members = [await receiver.new_channel() for _ in range(MEMBERS)]
    idle = await receiver.new_channel()  # a consumer that never reads
    for channel in [*members, idle]:
        await receiver.group_add("room", channel)
    readers = [asyncio.create_task(read(receiver, channel, BURST)) for channel in members]
    await burst(sender, "room", range(half))
    # After this, messages have waited for `idle` longer than stall_timeout with none taken:
    # the passing of that time is what is under test.
    await asyncio.sleep(stall_timeout)
    assert receiver.stats().dropped_from_buffers == 0  # it might have been about to read
    with caplog.at_level(logging.WARNING):
        await burst(sender, "room", range(half, BURST))
        for got in await asyncio.gather(*readers):
            assert got == list(range(BURST))
    # Every copy for `idle` was delivered (or dropped) before the last one for the readers.
    assert receiver.stats().dropped_from_buffers == BURST - capacity
    assert [(await receive(receiver, idle))["n"] for _ in range(capacity)] == list(range(capacity))
    assert await nothing_for(receiver, idle)
    warnings = [r.getMessage() for r in caplog.records if "stall_timeout" in r.getMessage()]
    assert len(warnings) == 1
    assert idle in warnings[0]
