"""What each operation costs on the server, read from INFO commandstats (exact, not timed).

Top-level commands (EVALSHA, BZMPOP, ZRANGEBYSCORE...) are client round trips; the commands a
script runs are counted by Valkey too, so both numbers come from the same place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from channels_valkey.core import ValkeyChannelLayer
from support.servers import ValkeyServer

#: Commands sent by a client itself; everything else in commandstats ran inside a script.
TOP_LEVEL = {"evalsha", "bzmpop", "zrangebyscore", "zcount", "zrem", "scan", "unlink"}


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


async def test_group_size_costs_one_round_trip(
    layer: ValkeyChannelLayer, valkey_server: ValkeyServer
) -> None:
    for n in range(100):
        await layer.group_add("big", f"member.{n}")
    valkey_server.reset_stats()
    assert await layer.group_size("big") == 100
    assert sender_costs(valkey_server) == (1, 1)  # ZCOUNT: the names are not sent


async def test_a_heartbeat_costs_one_round_trip(
    layer: ValkeyChannelLayer, valkey_server: ValkeyServer
) -> None:
    """What a process pays every process_expiry / 4 seconds while it receives."""
    liveness = layer._liveness
    assert liveness is not None
    shard = (await layer._resources()).shards[0]
    valkey_server.reset_stats()
    assert await liveness.beat(shard)
    # EVALSHA(alive: INFO, TIME, ZSCORE, ZADD, ZREMRANGEBYSCORE, EXPIRE, then ZCOUNT of the
    # dead, none here, unless the server started less than process_expiry ago).
    # The script's ZCOUNT is not a round trip here, so commandstats are read directly.
    stats = valkey_server.commandstats()
    del stats["config|resetstat"]
    stats.pop("bzmpop", None)  # a reader of the warm-up, receiving, not heartbeating
    assert stats.pop("evalsha") == 1
    assert set(stats) <= {"info", "time", "zscore", "zadd", "zremrangebyscore", "expire", "zcount"}
    assert all(calls == 1 for calls in stats.values())


async def test_dead_members_cost_one_removal_per_group(valkey_server: ValkeyServer) -> None:
    """A group send that finds channels of a dead process reads the registry again alongside
    its writes, then removes them (ZREM) and deletes their queue (UNLINK); the next group
    send is back to two."""
    valkey_server.flushall()
    admin = valkey_server.client()
    seconds, _ = admin.time()
    admin.zadd("asgi$alive", {"deadbeef": seconds - 1000})  # its deadline passed 1000 s ago
    admin.zadd("asgispecific.deadbeef!", {b"unread": seconds - 1})  # its queue
    # A layer that only sends (no heartbeat of its own in the counts).
    layer = ValkeyChannelLayer(hosts=[valkey_server.url], process_expiry=5)
    try:
        live = [await layer.new_channel() for _ in range(5)]
        dead = [f"specific.deadbeef!{n}" for n in range(10)]
        for group in ("first", "second"):
            for channel in live + dead:
                await layer.group_add(group, channel)
        deadline = time.monotonic() + 60
        while await layer.group_size("first") != 5:  # once the layer knows who is dead
            assert time.monotonic() < deadline, "the dead process was never found"
            await asyncio.sleep(0.05)
        assert admin.exists("asgispecific.deadbeef!") == 0
        admin.zadd("asgispecific.deadbeef!", {b"unread": seconds - 1})  # written again
        # Warm up: the send script loaded, connections open (one-time costs).
        await layer.group_add("warm", live[0])
        await asyncio.gather(*(layer.group_send("warm", {"type": "warm"}) for _ in range(3)))
        liveness = layer._liveness
        assert liveness is not None
        await liveness.refresh((await layer._resources()).shards[0])  # up to date: no read
        valkey_server.reset_stats()
        await layer.group_send("second", {"type": "m"})
        stats = valkey_server.commandstats()
        # ZRANGEBYSCORE, then EVALSHA(send_many) and EVALSHA(alive) side by side, then ZREM
        # and UNLINK side by side: three round trips in sequence.
        # (The liveness script's ZCOUNT runs inside it, so it is not a round trip here.)
        assert stats["zrangebyscore"] == 1
        assert stats["evalsha"] == 2
        assert stats["zrem"] == stats["unlink"] == 1
        assert admin.zcard("asgi:group:second") == 5
        assert admin.exists("asgispecific.deadbeef!") == 0
        valkey_server.reset_stats()
        await layer.group_send("second", {"type": "m"})
        assert sender_costs(valkey_server)[0] == 2
    finally:
        await layer.flush()
        await layer.close()


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
