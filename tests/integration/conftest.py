"""Fixtures that build channel layers on the servers of tests/conftest.py.

Every layer a test builds through them is closed after the test, on the test's own event loop,
so that no connection outlives it (ResourceWarnings are errors in this suite).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from channels_redis.core import RedisChannelLayer

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support import wire_compat
from support.pubsub import OpenLayer
from support.servers import ValkeyServer


@pytest.fixture
async def make_layer(hosts: list[Any]) -> AsyncIterator[Callable[..., ValkeyChannelLayer]]:
    """Build layers on the current topology; each is flushed and closed afterwards."""
    layers: list[ValkeyChannelLayer] = []

    def make(**options: Any) -> ValkeyChannelLayer:
        layer = ValkeyChannelLayer(hosts=hosts, **options)
        layers.append(layer)
        return layer

    yield make
    for layer in layers:
        await layer.flush()
        await layer.close()


@pytest.fixture
async def open_layer() -> AsyncIterator[OpenLayer]:
    """Build layers; every layer built is closed after the test, on the test's loop."""
    opened: list[ValkeyPubSubChannelLayer] = []

    def open_(hosts: list[Any], **options: Any) -> ValkeyPubSubChannelLayer:
        layer = ValkeyPubSubChannelLayer(hosts=hosts, **options)
        opened.append(layer)
        return layer

    yield open_
    for layer in opened:
        await layer.close()


@pytest.fixture
def standalone(valkey_server: ValkeyServer) -> list[ValkeyServer]:
    """The session's standalone server, emptied, as a list of servers."""
    valkey_server.flushall()
    return [valkey_server]


@pytest.fixture
async def open_compat_layer() -> AsyncIterator[wire_compat.OpenLayer]:
    """Build a core layer of either package: ``open_compat_layer("ours" | "theirs", servers)``.

    Every layer built is closed after the test.
    """
    opened: list[wire_compat.Layer] = []

    def open_(
        side: wire_compat.Side, servers: list[ValkeyServer], **options: Any
    ) -> wire_compat.Layer:
        hosts = wire_compat.redis_urls(servers)
        layer: wire_compat.Layer
        if side == "ours":
            layer = ValkeyChannelLayer(hosts=hosts, **options)
        else:
            layer = RedisChannelLayer(hosts=hosts, **options)
        opened.append(layer)
        return layer

    yield open_
    for layer in opened:
        if isinstance(layer, ValkeyChannelLayer):
            await layer.close()
        else:
            await layer.close_pools()
