"""Bulk sends and ``max_message_size`` of the pub/sub layer, on every topology."""

from __future__ import annotations

from typing import Any

import pytest

from channels_valkey.exceptions import MessageTooLarge
from support.pubsub import OpenLayer, every_topology, nothing_for, receive
from support.servers import ValkeyServer


def publishes(servers: list[ValkeyServer]) -> int:
    """PUBLISH and SPUBLISH calls the servers ran since the topology's reset."""
    return sum(
        calls
        for server in servers
        for command, calls in server.commandstats().items()
        if command in {"publish", "spublish"}
    )


def assert_publishes(hosts: list[Any], servers: list[ValkeyServer], expected: int) -> None:
    """The servers ran ``expected`` publishes for the layer. Sentinels publish their own
    hello messages on the primary they watch (every 2 s each), so behind a Sentinel entry
    only the layer's share is known to be there: at least ``expected``."""
    behind_sentinels = any(isinstance(host, dict) and "sentinels" in host for host in hosts)
    if behind_sentinels:
        assert publishes(servers) >= expected
    else:
        assert publishes(servers) == expected


def numbered(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"type": "m", "n": n} for n in range(start, start + count)]


@every_topology
async def test_send_multiple_arrives_in_order(
    hosts: list[Any], topology_servers: list[ValkeyServer], open_layer: OpenLayer
) -> None:
    receiver, sender = open_layer(hosts), open_layer(hosts)
    channel = await receiver.new_channel()
    await sender.send_multiple(channel, numbered(50))
    assert [(await receive(receiver, channel))["n"] for _ in range(50)] == list(range(50))
    assert await nothing_for(receiver, channel)
    assert_publishes(hosts, topology_servers, 50)
    assert sender.stats().messages_sent == 50


@every_topology
async def test_group_send_multiple_reaches_every_member_in_order(
    hosts: list[Any], open_layer: OpenLayer
) -> None:
    one, two, sender = open_layer(hosts), open_layer(hosts), open_layer(hosts)
    members = [(one, await one.new_channel()), (one, await one.new_channel())]
    members.append((two, await two.new_channel()))
    for layer, channel in members:
        await layer.group_add("room", channel)
    await sender.group_send_multiple("room", numbered(20))
    for layer, channel in members:
        assert [(await receive(layer, channel))["n"] for _ in range(20)] == list(range(20))
        assert await nothing_for(layer, channel)
    stats = sender.stats()
    assert stats.group_sends == 20
    assert stats.group_deliveries == 2 * 20  # two subscribed processes, each message


@every_topology
async def test_empty_bulk_sends_publish_nothing(
    hosts: list[Any], topology_servers: list[ValkeyServer], open_layer: OpenLayer
) -> None:
    layer = open_layer(hosts)
    await layer.send_multiple("some.channel", [])
    await layer.group_send_multiple("room", [])
    assert_publishes(hosts, topology_servers, 0)
    assert layer.stats().messages_sent == layer.stats().group_sends == 0


@every_topology
async def test_oversized_messages_are_refused_before_publishing(
    hosts: list[Any], topology_servers: list[ValkeyServer], open_layer: OpenLayer
) -> None:
    layer = open_layer(hosts, max_message_size=1000)
    channel = await layer.new_channel()
    big = {"type": "m", "body": "x" * 2000}
    small = {"type": "m", "body": "x" * 100}
    with pytest.raises(MessageTooLarge) as refused:
        await layer.send(channel, big)
    assert refused.value.limit == 1000
    assert str(refused.value).startswith(
        f"message for channel '{channel}' is {refused.value.size} bytes serialized, "
        "over max_message_size (1000 bytes)"
    )
    with pytest.raises(MessageTooLarge, match="group 'room' is"):
        await layer.group_send("room", big)
    with pytest.raises(MessageTooLarge, match=f"channel '{channel}'"):
        await layer.send_multiple(channel, [small, big])
    with pytest.raises(MessageTooLarge, match="group 'room'"):
        await layer.group_send_multiple("room", [big, small])
    assert_publishes(hosts, topology_servers, 0)
    await layer.send_multiple(channel, [small, small])
    assert await receive(layer, channel) == small
    assert await receive(layer, channel) == small


async def test_bulk_sends_refuse_bad_input(open_layer: OpenLayer) -> None:
    layer = open_layer(["valkey://127.0.0.1:1"])  # nothing listens: no I/O may be tried
    with pytest.raises(TypeError, match="Channel name"):
        await layer.send_multiple("bad name!", [{"type": "m"}])
    with pytest.raises(TypeError, match="messages must be a list of dicts, got str"):
        await layer.group_send_multiple("room", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"messages\[0\]: A message must be a dict"):
        await layer.send_multiple("ok", [None])  # type: ignore[list-item]
