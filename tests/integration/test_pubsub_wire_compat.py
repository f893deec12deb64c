"""Wire compatibility with channels_redis 4.x ``RedisPubSubChannelLayer``, both ways.

During a rolling upgrade, processes running ``channels_redis.pubsub.RedisPubSubChannelLayer``
("theirs") and processes running ``ValkeyPubSubChannelLayer`` ("ours") share the servers. Each
test puts one layer of each package on the same ``hosts`` and checks that what one publishes
the other receives: on channels made by ``new_channel()``, on normal channels and to groups,
with msgpack, JSON and encryption, on one server and sharded over three (the same consistent
hash picks the same server for a name).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.pubsub import receive, until_subscribed
from support.servers import ValkeyServer
from support.wire_compat import DIRECTIONS, Side, redis_urls

Layer: TypeAlias = ValkeyPubSubChannelLayer | RedisPubSubChannelLayer
OpenLayer = Callable[..., Layer]

SERIALIZERS = [
    pytest.param({}, id="msgpack"),
    pytest.param({"serializer_format": "json"}, id="json"),
    pytest.param({"symmetric_encryption_keys": ["k1", "old"]}, id="msgpack-encrypted"),
    pytest.param(
        {"serializer_format": "json", "symmetric_encryption_keys": ["k1"]}, id="json-encrypted"
    ),
]

MESSAGE = {"type": "chat.message", "text": "héllo ✓", "n": 42, "nested": {"a": [1, 2]}}


@pytest.fixture(params=["one-server", "three-shards"])
def servers(
    request: pytest.FixtureRequest, valkey_server: ValkeyServer, valkey_shards: list[ValkeyServer]
) -> list[ValkeyServer]:
    return [valkey_server] if request.param == "one-server" else valkey_shards


@pytest.fixture
async def open_compat_pubsub_layer(servers: list[ValkeyServer]) -> AsyncIterator[OpenLayer]:
    """Build a layer of either package on ``servers``; all are closed after the test."""
    opened: list[Layer] = []

    def open_(side: Side, **options: Any) -> Layer:
        hosts = redis_urls(servers)
        layer: Layer
        if side == "ours":
            layer = ValkeyPubSubChannelLayer(hosts=hosts, **options)
        else:
            layer = RedisPubSubChannelLayer(hosts=hosts, **options)
        opened.append(layer)
        return layer

    yield open_
    for layer in opened:
        # channels_redis' flush() also closes its connections; ours is close().
        await (layer.close() if isinstance(layer, ValkeyPubSubChannelLayer) else layer.flush())


@pytest.mark.parametrize("options", SERIALIZERS)
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_send_to_a_new_channel(
    open_compat_pubsub_layer: OpenLayer,
    servers: list[ValkeyServer],
    direction: tuple[Side, Side],
    options: dict[str, Any],
) -> None:
    sender, receiver = (
        open_compat_pubsub_layer(direction[0], **options),
        open_compat_pubsub_layer(direction[1], **options),
    )
    channel = await receiver.new_channel()
    assert re.fullmatch(r"asgispecific\.[0-9a-f]{32}", channel)
    # Ours returns once subscribed; theirs returns once SUBSCRIBE is written.
    await until_subscribed(servers, channel, 1)
    await sender.send(channel, MESSAGE)
    assert await receive(receiver, channel) == MESSAGE


@pytest.mark.parametrize("options", SERIALIZERS)
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_group_send(
    open_compat_pubsub_layer: OpenLayer,
    servers: list[ValkeyServer],
    direction: tuple[Side, Side],
    options: dict[str, Any],
) -> None:
    sender, receiver = (
        open_compat_pubsub_layer(direction[0], **options),
        open_compat_pubsub_layer(direction[1], **options),
    )
    members = [await receiver.new_channel() for _ in range(3)]
    for channel in members:
        await receiver.group_add("room", channel)
    await until_subscribed(servers, "asgi__group__room", 1)
    await sender.group_send("room", MESSAGE)
    for channel in members:
        assert await receive(receiver, channel) == MESSAGE


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_normal_channel(
    open_compat_pubsub_layer: OpenLayer, servers: list[ValkeyServer], direction: tuple[Side, Side]
) -> None:
    sender, receiver = (
        open_compat_pubsub_layer(direction[0]),
        open_compat_pubsub_layer(direction[1]),
    )
    waiting = asyncio.create_task(receive(receiver, "jobs"))
    await until_subscribed(servers, "jobs", 1)
    await sender.send("jobs", MESSAGE)
    assert await waiting == MESSAGE


async def test_both_packages_in_one_group(
    open_compat_pubsub_layer: OpenLayer, servers: list[ValkeyServer]
) -> None:
    """A group with members in processes of both kinds gets one group_send from either."""
    ours, theirs = open_compat_pubsub_layer("ours"), open_compat_pubsub_layer("theirs")
    our_member, their_member = await ours.new_channel(), await theirs.new_channel()
    await ours.group_add("mixed", our_member)
    await theirs.group_add("mixed", their_member)
    await until_subscribed(servers, "asgi__group__mixed", 2)
    for n, sender in enumerate((ours, theirs)):
        await sender.group_send("mixed", {"type": "m", "n": n})
        assert await receive(ours, our_member) == {"type": "m", "n": n}
        assert await receive(theirs, their_member) == {"type": "m", "n": n}


async def test_group_size_counts_a_channels_redis_process(
    open_compat_pubsub_layer: OpenLayer, servers: list[ValkeyServer]
) -> None:
    """A channels_redis process with members in the group counts as one subscriber."""
    ours, theirs = open_compat_pubsub_layer("ours"), open_compat_pubsub_layer("theirs")
    our_member = await ours.new_channel()
    await ours.group_add("mixed", our_member)
    for _ in range(2):
        await theirs.group_add("mixed", await theirs.new_channel())
    await until_subscribed(servers, "asgi__group__mixed", 2)
    assert isinstance(ours, ValkeyPubSubChannelLayer)
    assert await ours.group_size("mixed") == 2
