"""Each counter of ``layer.stats()`` moves when its event happens on a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from channels.exceptions import ChannelFull
from prometheus_client import CollectorRegistry, generate_latest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.prometheus import register
from channels_valkey.stats import LayerStats
from support.servers import ValkeyServer, wait_for


@pytest.fixture
async def layer(valkey_server: ValkeyServer) -> AsyncIterator[ValkeyChannelLayer]:
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url], capacity=2)
    yield layer
    await layer.flush()
    await layer.close()


async def test_sends_receives_and_full_channels_are_counted(layer: ValkeyChannelLayer) -> None:
    assert layer.stats() == LayerStats()
    await layer.send("c", {"type": "m"})
    await layer.send("c", {"type": "m"})
    with pytest.raises(ChannelFull):
        await layer.send("c", {"type": "m"})
    await asyncio.wait_for(layer.receive("c"), 5)
    stats = layer.stats()
    assert (stats.messages_sent, stats.channel_full, stats.messages_received) == (2, 1, 1)


async def test_group_sends_count_fan_out_and_full_members(layer: ValkeyChannelLayer) -> None:
    local = [await layer.new_channel() for _ in range(3)]
    for channel in [*local, "plain"]:
        await layer.group_add("g", channel)
    await layer.send("plain", {"type": "filler"})
    await layer.send("plain", {"type": "filler"})
    await layer.group_send("g", {"type": "m"})
    stats = layer.stats()
    assert (stats.group_sends, stats.group_deliveries, stats.group_members_full) == (1, 3, 1)


async def test_buffer_drops_and_expired_messages_are_counted(
    layer: ValkeyChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy, slow = await layer.new_channel(), await layer.new_channel()
    for _ in range(2):  # capacity 2 for the whole process queue: one for each channel
        await layer.send(slow, {"type": "m"})
        await layer.send(busy, {"type": "tick"})
        await asyncio.wait_for(layer.receive(busy), 5)
    await layer.send(slow, {"type": "m"})
    await layer.send(busy, {"type": "tick"})
    await asyncio.wait_for(layer.receive(busy), 5)  # slow's buffer holds 2: the third drops
    assert layer.stats().dropped_from_buffers == 1
    real_time = time.time
    monkeypatch.setattr("channels_valkey._queue.mailbox.time.time", lambda: real_time() + 3600)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(slow), 0.2)
    assert layer.stats().expired == 2


async def test_reconnects_and_time_disconnected_are_counted(
    layer: ValkeyChannelLayer, valkey_server: ValkeyServer
) -> None:
    waiting = asyncio.create_task(layer.receive("after.kill"))

    def reader_blocked() -> bool:
        return any(c["cmd"] == "bzmpop" for c in valkey_server.client().client_list())

    await asyncio.to_thread(wait_for, reader_blocked, timeout=5, describe="the reader")
    valkey_server.client().client_kill_filter(_type="normal", skipme=True)
    await layer.send("after.kill", {"type": "m"})
    assert await asyncio.wait_for(waiting, 10) == {"type": "m"}
    stats = layer.stats()
    assert stats.reconnects == 1
    assert stats.seconds_disconnected > 0


async def test_prometheus_exports_the_counters(layer: ValkeyChannelLayer) -> None:
    registry = CollectorRegistry()
    register(layer, alias="default", registry=registry)
    await layer.send("c", {"type": "m"})
    text = generate_latest(registry).decode()
    assert 'channels_valkey_messages_sent_total{layer="default"} 1.0' in text
    assert 'channels_valkey_reconnects_total{layer="default"} 0.0' in text
