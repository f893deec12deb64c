"""Bulk sends (``send_multiple``, ``group_send_multiple``) and ``max_message_size`` of the core
layer, on every topology the ``hosts`` fixture offers.

Receives are wrapped in ``asyncio.wait_for`` so a lost message fails the test instead of
hanging it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.exceptions import MessageTooLarge, NotReplicated
from support.servers import Topology, ValkeyServer

RECEIVE_TIMEOUT = 5
#: How long to watch for a message that must not come; everything it could be was queued
#: before the wait starts.
SILENCE_TIMEOUT = 0.3

#: Commands a sender's I/O would show in commandstats (script calls, group reads).
SENDER_COMMANDS = {"evalsha", "eval", "zrangebyscore", "script|load"}

standalone_only = pytest.mark.parametrize("topology", ["standalone"], indirect=True)


async def receive(layer: ValkeyChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)


async def nothing_for(layer: ValkeyChannelLayer, channel: str) -> bool:
    try:
        await asyncio.wait_for(layer.receive(channel), SILENCE_TIMEOUT)
    except asyncio.TimeoutError:
        return True
    return False


def sender_io(servers: list[ValkeyServer]) -> dict[str, int]:
    """The commands of ``SENDER_COMMANDS`` the servers ran since the topology's reset."""
    seen: dict[str, int] = {}
    for server in servers:
        for command, calls in server.commandstats().items():
            if command in SENDER_COMMANDS:
                seen[command] = seen.get(command, 0) + calls
    return seen


def numbered(count: int, start: int = 0) -> list[dict[str, Any]]:
    # Counting down makes each message's bytes sort before the previous one's, so only the
    # layer's scores, not the bytes, can put them in the order sent.
    return [{"key": 1000 - n, "type": "m", "n": n} for n in range(start, start + count)]


# --- send_multiple -------------------------------------------------------------------------


async def test_send_multiple_is_received_in_order(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    # Without a random prefix a message's bytes are its serialized body.
    sender = make_layer(random_prefix_length=0)
    owner = make_layer(random_prefix_length=0)
    local = await owner.new_channel()
    await sender.send_multiple("work.queue", numbered(30))
    await sender.send_multiple(local, numbered(30))
    # Even with several hosts, one call's messages share a shard, so their order holds.
    assert [(await receive(owner, "work.queue"))["n"] for _ in range(30)] == list(range(30))
    assert [(await receive(owner, local))["n"] for _ in range(30)] == list(range(30))
    assert await nothing_for(owner, local)


async def test_send_multiple_then_send_keeps_order(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    layer = make_layer(random_prefix_length=0)
    local = await layer.new_channel()  # one queue whatever the hosts
    await layer.send(local, {"type": "m", "n": -1})
    await layer.send_multiple(local, numbered(20))
    await layer.send(local, {"type": "m", "n": 20})
    await layer.send_multiple(local, numbered(5, start=21))
    got = [(await receive(layer, local))["n"] for _ in range(27)]
    assert got == list(range(-1, 26))


async def test_send_multiple_is_all_or_nothing(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    layer = make_layer(capacity=5)
    local = await layer.new_channel()
    await layer.send_multiple(local, numbered(3))
    with pytest.raises(ChannelFull):
        await layer.send_multiple(local, numbered(3, start=3))  # room for 2 of them only
    await layer.send_multiple(local, numbered(2, start=6))  # exactly fills it
    with pytest.raises(ChannelFull):
        await layer.send(local, {"type": "m"})
    got = [(await receive(layer, local))["n"] for _ in range(5)]
    assert got == [0, 1, 2, 6, 7]
    assert await nothing_for(layer, local)
    stats = layer.stats()
    assert stats.messages_sent == 5
    assert stats.channel_full == 3 + 1  # a refused bulk send counts each of its messages


async def test_send_multiple_beyond_capacity_queues_none(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    layer = make_layer(capacity=4)
    with pytest.raises(ChannelFull):
        await layer.send_multiple("work.queue", numbered(5))
    assert await nothing_for(layer, "work.queue")
    await layer.send_multiple("work.queue", numbered(4))
    assert [(await receive(layer, "work.queue"))["n"] for _ in range(4)] == [0, 1, 2, 3]


async def test_an_empty_bulk_send_does_nothing(
    make_layer: Callable[..., ValkeyChannelLayer], topology_servers: list[ValkeyServer]
) -> None:
    layer = make_layer()
    await layer.send_multiple("work.queue", [])
    await layer.group_send_multiple("room", ())
    assert sender_io(topology_servers) == {}
    assert layer.stats().messages_sent == layer.stats().group_sends == 0


@standalone_only
async def test_bulk_sends_refuse_bad_input_before_any_io(
    make_layer: Callable[..., ValkeyChannelLayer], topology_servers: list[ValkeyServer]
) -> None:
    layer = make_layer()
    with pytest.raises(TypeError, match="Channel name"):
        await layer.send_multiple("bad name!", [{"type": "m"}])
    with pytest.raises(TypeError, match="Group name"):
        await layer.group_send_multiple("bad name!", [{"type": "m"}])
    for send in (layer.send_multiple, layer.group_send_multiple):
        with pytest.raises(TypeError, match="messages must be a list of dicts, got dict"):
            await send("ok", {"type": "m"})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"messages\[1\]: A message must be a dict, got str"):
            await send("ok", [{"type": "m"}, "text"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match=r"messages\[0\]: .*__asgi_channel__"):
            await send("ok", [{"type": "m", "__asgi_channel__": "x"}])
    assert sender_io(topology_servers) == {}


@pytest.mark.parametrize("topology", ["sentinel", "cluster"], indirect=True)
async def test_send_multiple_waits_for_replicas_in_the_same_round_trip(
    make_layer: Callable[..., ValkeyChannelLayer], topology_servers: list[ValkeyServer]
) -> None:
    layer = make_layer(wait_for_replicas=1)
    await layer.send_multiple("confirmed", [{"type": "warm"}])  # the script on its node
    assert await receive(layer, "confirmed") == {"type": "warm"}
    for server in topology_servers:
        server.reset_stats()
    await layer.send_multiple("confirmed", numbered(10))
    stats = [server.commandstats() for server in topology_servers]
    assert sum(s.get("wait", 0) for s in stats) == 1
    assert sum(s.get("evalsha", 0) for s in stats) == 1
    assert [(await receive(layer, "confirmed"))["n"] for _ in range(10)] == list(range(10))


@standalone_only
async def test_send_multiple_without_a_replica_raises_not_replicated(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    layer = make_layer(wait_for_replicas=1, replica_timeout=0.05)
    with pytest.raises(NotReplicated, match=r"only 0 of 1 replicas confirmed it"):
        await layer.send_multiple("unconfirmed", numbered(3))
    # Queued all the same, as with send.
    assert [(await receive(layer, "unconfirmed"))["n"] for _ in range(3)] == [0, 1, 2]


# --- group_send_multiple -------------------------------------------------------------------


async def test_group_send_multiple_gives_every_member_all_in_order(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    sender, process_a, process_b = make_layer(), make_layer(), make_layer()
    members = [
        (process_a, await process_a.new_channel()),
        (process_a, await process_a.new_channel()),
        (process_b, await process_b.new_channel()),
        (process_b, "plain.one"),
        (process_b, "plain.two"),
    ]
    for _, channel in members:
        await sender.group_add("room", channel)
    await sender.group_send_multiple("room", numbered(10))
    for layer, channel in members:
        assert [(await receive(layer, channel))["n"] for _ in range(10)] == list(range(10))
    for layer, channel in members:
        assert await nothing_for(layer, channel)
    stats = sender.stats()
    assert stats.group_sends == 10  # counted as ten group_send calls would be
    assert stats.group_deliveries == 10 * len(members)
    assert stats.group_members_full == 0


async def test_group_send_multiple_skips_members_without_room_for_all(
    make_layer: Callable[..., ValkeyChannelLayer], caplog: pytest.LogCaptureFixture
) -> None:
    sender, process_a, process_b = make_layer(capacity=3), make_layer(), make_layer()
    crowded, roomy = await process_a.new_channel(), await process_b.new_channel()
    await sender.group_add("fill", crowded)
    await sender.group_add("fill", "plain.crowded")
    await sender.group_send_multiple("fill", numbered(2))  # 2 of 3 places taken
    for channel in (crowded, "plain.crowded", roomy, "plain.roomy"):
        await sender.group_add("room", channel)
    caplog.set_level(logging.INFO, logger="channels_valkey")
    await sender.group_send_multiple("room", numbered(2, start=2))  # room for 1 of 2
    assert "2 of 4 channels in group room had no room for 2 messages" in caplog.text
    for layer, channel, expected in (
        (process_a, crowded, [0, 1]),
        (sender, "plain.crowded", [0, 1]),
        (process_b, roomy, [2, 3]),
        (sender, "plain.roomy", [2, 3]),
    ):
        assert [(await receive(layer, channel))["n"] for _ in range(2)] == expected
        assert await nothing_for(layer, channel)
    stats = sender.stats()
    assert stats.group_sends == 2 + 2
    assert stats.group_deliveries == 2 * 2 + 2 * 2  # fill: 2 members x 2; room: 2 x 2
    assert stats.group_members_full == 2 * 2


# --- max_message_size ----------------------------------------------------------------------


async def test_oversized_messages_are_refused_before_any_io(
    make_layer: Callable[..., ValkeyChannelLayer], topology_servers: list[ValkeyServer]
) -> None:
    layer = make_layer(max_message_size=1000)
    local = await layer.new_channel()
    big = {"type": "m", "body": "x" * 2000}
    small = {"type": "m", "body": "x" * 100}
    with pytest.raises(MessageTooLarge) as refused:
        await layer.send("work.queue", big)
    assert refused.value.limit == 1000
    assert refused.value.size > 2000
    assert str(refused.value).startswith(
        f"message for channel 'work.queue' is {refused.value.size} bytes serialized, "
        "over max_message_size (1000 bytes)"
    )
    with pytest.raises(MessageTooLarge, match=f"channel '{local}'"):
        await layer.send(local, big)
    with pytest.raises(MessageTooLarge, match="group 'room' is"):
        await layer.group_send("room", big)
    with pytest.raises(MessageTooLarge, match=r"channel 'work\.queue'"):
        await layer.send_multiple("work.queue", [small, big, small])
    with pytest.raises(MessageTooLarge, match="group 'room'"):
        await layer.group_send_multiple("room", [small, big])
    assert sender_io(topology_servers) == {}
    # Under the limit, everything goes through.
    await layer.group_add("room", local)
    await layer.send("work.queue", small)
    await layer.send_multiple(local, [small, small])
    await layer.group_send("room", small)
    assert await receive(layer, "work.queue") == small
    for _ in range(3):
        assert await receive(layer, local) == small


async def test_without_max_message_size_a_large_message_goes_through(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    layer = make_layer()
    assert layer.config.max_message_size is None
    big = {"type": "m", "body": b"\x01" * 2_000_000}
    await layer.send("work.queue", big)
    assert await receive(layer, "work.queue") == big


@pytest.mark.parametrize("topology", ["standalone", "sharded"], indirect=True)
async def test_bulk_send_reaches_a_channels_redis_style_reader(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology
) -> None:
    """The queue holds ordinary messages scored by send time, one shard holding them all:
    popping the lowest score one at a time (what a channels_redis receiver does) gives them
    in the order sent."""
    layer = make_layer()
    await layer.send_multiple("work.queue", numbered(5))
    queue = layer._keys.queue("work.queue")
    holding = [server for server in topology.servers if server.client().zcard(queue)]
    assert len(holding) == 1  # one shard, even with several hosts
    popped = [holding[0].client().zpopmin(queue)[0][0] for _ in range(5)]
    assert [layer._serializer.deserialize(payload)["n"] for payload in popped] == list(range(5))
