"""What each operation costs on the server, read from INFO commandstats (exact, not timed).

Top-level commands (EVALSHA, BZMPOP, ZRANGEBYSCORE...) are client round trips; the commands a
script runs are counted by Valkey too, so both numbers come from the same place.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from channels_valkey.core import ValkeyChannelLayer
from servers import ValkeyServer

#: Commands sent by a client itself; everything else in commandstats ran inside a script.
TOP_LEVEL = {"evalsha", "bzmpop", "zrangebyscore", "zrem", "scan", "unlink"}


@pytest.fixture
async def layer(valkey_server: ValkeyServer) -> AsyncIterator[ValkeyChannelLayer]:
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url])
    # Warm up: open connections and load the scripts, which are one-time costs.
    channel = await layer.new_channel()
    await layer.group_add("warm", channel)
    await layer.group_send("warm", {"type": "warm"})
    await layer.send("warm", {"type": "warm"})
    await layer.receive(channel)
    await layer.receive("warm")
    yield layer
    await layer.flush()
    await layer.close()


def sender_costs(server: ValkeyServer) -> tuple[int, int]:
    """(round trips, server commands) of senders since the last reset.

    RESETSTAT itself is left out, and so are BZMPOPs: a reader still blocked from an
    earlier receive() may pop what was sent, which is receiving, not sending.
    """
    left_out = {"config|resetstat", "bzmpop"}
    stats = {k: v for k, v in server.commandstats().items() if k not in left_out}
    return sum(v for k, v in stats.items() if k in TOP_LEVEL), sum(stats.values())


async def test_send_then_receive_costs_two_round_trips(
    layer: ValkeyChannelLayer, valkey_server: ValkeyServer
) -> None:
    channel = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)
    valkey_server.reset_stats()
    await layer.send(channel, {"type": "m"})
    assert await waiting == {"type": "m"}
    # EVALSHA(send: ZCARD, ZADD, EXPIRE) + BZMPOP; the reader then blocks again (one more).
    stats = valkey_server.commandstats()
    assert stats["evalsha"] == 1
    assert stats["zcard"] == stats["zadd"] == stats["expire"] == 1
    assert stats["bzmpop"] <= 2


async def test_a_burst_is_drained_in_batches(
    layer: ValkeyChannelLayer, valkey_server: ValkeyServer
) -> None:
    channels = [await layer.new_channel() for _ in range(50)]
    for channel in channels:
        await layer.send(channel, {"type": "m"})
    valkey_server.reset_stats()
    for channel in channels:
        assert await layer.receive(channel) == {"type": "m"}
    assert valkey_server.commandstats()["bzmpop"] <= 2  # not one round trip per message


@pytest.mark.parametrize("members", ["local", "normal"])
async def test_group_send_costs_two_round_trips_whatever_the_size(
    layer: ValkeyChannelLayer, valkey_server: ValkeyServer, members: str
) -> None:
    if members == "local":
        channels = [await layer.new_channel() for _ in range(100)]
    else:
        channels = [f"member.{n}" for n in range(100)]
    for channel in channels:
        await layer.group_add("big", channel)
    valkey_server.reset_stats()
    await layer.group_send("big", {"type": "m"})
    round_trips, commands = sender_costs(valkey_server)
    assert round_trips == 2  # ZRANGEBYSCORE + one EVALSHA
    # Per queue written: ZCARD, ZADD, EXPIRE. 100 local channels of one process share one.
    queues = 1 if members == "local" else 100
    assert commands == 2 + 3 * queues


async def test_send_multiple_costs_one_round_trip_whatever_the_count(
    layer: ValkeyChannelLayer, valkey_server: ValkeyServer
) -> None:
    await layer.send_multiple("warm", [{"type": "warm"}])  # its script loaded
    valkey_server.reset_stats()
    await layer.send_multiple("bulk", [{"type": "m", "n": n} for n in range(50)])
    round_trips, commands = sender_costs(valkey_server)
    assert round_trips == 1  # one EVALSHA
    assert commands == 1 + 1 + 50 + 1  # ZCARD, one ZADD per message, EXPIRE


@pytest.mark.parametrize("members", ["local", "normal"])
async def test_group_send_multiple_costs_two_round_trips_whatever_the_counts(
    layer: ValkeyChannelLayer, valkey_server: ValkeyServer, members: str
) -> None:
    if members == "local":
        channels = [await layer.new_channel() for _ in range(100)]
    else:
        channels = [f"member.{n}" for n in range(100)]
    for channel in channels:
        await layer.group_add("big", channel)
    await layer.group_send_multiple("warm", [{"type": "warm"}])  # its script loaded
    valkey_server.reset_stats()
    await layer.group_send_multiple("big", [{"type": "m", "n": n} for n in range(10)])
    round_trips, commands = sender_costs(valkey_server)
    assert round_trips == 2  # ZRANGEBYSCORE + one EVALSHA
    queues = 1 if members == "local" else 100
    assert commands == 2 + queues * (1 + 10 + 1)  # per queue: ZCARD, 10 ZADD, EXPIRE
