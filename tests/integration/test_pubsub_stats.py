"""Each counter of the pub/sub layer's ``stats()`` moves when its event happens on a real
server, and ``channels_valkey.prometheus`` exports them."""

from __future__ import annotations

import asyncio
import re

from prometheus_client import CollectorRegistry, generate_latest

from channels_valkey.prometheus import register
from channels_valkey.stats import LayerStats
from support.pubsub import OpenLayer, eventually, receive
from support.servers import ValkeyServer

HOOKS = {"on_disconnect": "valkey.disconnect", "on_reconnect": "valkey.reconnect"}


async def test_sends_and_receives_are_counted(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer, sender = open_layer([valkey_server.url]), open_layer([valkey_server.url])
    assert layer.stats() == LayerStats()
    channel = await layer.new_channel()
    await sender.send(channel, {"type": "m"})
    await sender.send("nobody.listens", {"type": "m"})  # published all the same
    assert await receive(layer, channel) == {"type": "m"}
    assert (sender.stats().messages_sent, sender.stats().messages_received) == (2, 0)
    assert (layer.stats().messages_sent, layer.stats().messages_received) == (0, 1)


async def test_group_sends_count_the_receivers_the_server_reports(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    """``PUBLISH`` answers how many subscribed connections got the message: one per process
    with members, however many members it has."""
    one, two, sender = (open_layer([valkey_server.url]) for _ in range(3))
    members = [await one.new_channel(), await one.new_channel(), await two.new_channel()]
    await one.group_add("room", members[0])
    await one.group_add("room", members[1])
    await two.group_add("room", members[2])
    await sender.group_send("room", {"type": "m"})
    await sender.group_send("empty", {"type": "m"})
    stats = sender.stats()
    assert (stats.group_sends, stats.group_deliveries) == (2, 2)
    assert stats.messages_sent == 0  # group sends are counted apart
    for layer, channel in [(one, members[0]), (one, members[1]), (two, members[2])]:
        assert await receive(layer, channel) == {"type": "m"}
    assert (one.stats().messages_received, two.stats().messages_received) == (2, 1)


async def test_a_full_queue_is_counted_by_the_receiving_process(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer = open_layer([valkey_server.url], capacity=2, stall_timeout=0)
    sender = open_layer([valkey_server.url])
    channel = await layer.new_channel()
    for n in range(5):
        await sender.send(channel, {"type": "m", "n": n})
    await eventually(lambda: layer.stats().dropped_from_buffers == 3, "3 drops")
    assert layer.dropped_messages == 3  # the older name, kept for compatibility
    assert sender.stats().dropped_from_buffers == 0
    # Not the publisher's business: a receiver's full queue never reaches these.
    stats = sender.stats()
    assert (stats.channel_full, stats.group_members_full, stats.expired) == (0, 0, 0)


async def test_a_killed_subscriber_connection_counts_a_reconnect_and_its_outage(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer = open_layer([valkey_server.url], **HOOKS)
    channel = await layer.new_channel()
    assert valkey_server.client().execute_command("CLIENT KILL TYPE pubsub") >= 1
    assert await receive(layer, channel) == {"type": "valkey.disconnect"}
    during = layer.stats()
    assert during.reconnects == 0
    assert during.seconds_disconnected > 0  # an outage in progress counts too
    assert await receive(layer, channel) == {"type": "valkey.reconnect"}
    after = layer.stats()
    assert after.reconnects == 1
    assert after.seconds_disconnected >= during.seconds_disconnected
    assert after.messages_received == 0  # the layer's own notices are not messages
    await asyncio.sleep(0)
    assert layer.stats().seconds_disconnected == after.seconds_disconnected  # over: no growth


async def test_prometheus_exports_the_pubsub_counters(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer = open_layer([valkey_server.url], **HOOKS)
    registry = CollectorRegistry()
    register(layer, alias="pubsub", registry=registry)
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.send(channel, {"type": "m"})
    await layer.group_send("room", {"type": "m"})
    assert [await receive(layer, channel) for _ in range(2)] == [{"type": "m"}] * 2
    valkey_server.client().execute_command("CLIENT KILL TYPE pubsub")
    assert await receive(layer, channel) == {"type": "valkey.disconnect"}
    assert await receive(layer, channel) == {"type": "valkey.reconnect"}
    text = generate_latest(registry).decode()
    for line in [
        'channels_valkey_messages_sent_total{layer="pubsub"} 1.0',
        'channels_valkey_messages_received_total{layer="pubsub"} 2.0',
        'channels_valkey_group_sends_total{layer="pubsub"} 1.0',
        'channels_valkey_group_deliveries_total{layer="pubsub"} 1.0',
        'channels_valkey_dropped_from_buffers_total{layer="pubsub"} 0.0',
        'channels_valkey_reconnects_total{layer="pubsub"} 1.0',
    ]:
        assert line in text
    outage = re.search(r'channels_valkey_seconds_disconnected_total\{layer="pubsub"\} (\S+)', text)
    assert outage is not None
    assert float(outage[1]) > 0
