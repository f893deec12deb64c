"""The pub/sub layer on a Valkey Cluster while it fails over and reshards.

The behavioural suite already runs on the ``cluster`` topology (sharded pub/sub on a healthy
cluster); these tests break a cluster of their own under subscribed channels:

- a primary killed mid-stream: the layer re-subscribes on the promoted replica; the channels
  concerned get ``on_disconnect`` then ``on_reconnect``, and what is published after that
  arrives;
- a slot moved (resharding): the old node drops the slot's subscriptions, the layer subscribes
  them on the new owner. Messages published between the two can be missed, so the channels
  of that slot get the same two notices (and no other channel does), though no connection
  dropped: ``stats().reconnects`` stays 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from valkey.crc import key_slot

from channels_valkey.exceptions import ServerUnreachable
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.cluster import ValkeyClusterGroup
from support.pubsub import (
    RECEIVE_TIMEOUT,
    OpenLayer,
    loop_layer,
    nothing_for,
    numsub,
    receive,
)
from support.servers import ValkeyServer, wait_for

HOOKS = {"on_disconnect": "valkey.disconnect", "on_reconnect": "valkey.reconnect"}
DISCONNECT = {"type": "valkey.disconnect"}
RECONNECT = {"type": "valkey.reconnect"}
#: A failover takes a couple of seconds with the test cluster's 1 s node timeout.
FAILOVER_TIMEOUT = 10.0


def cluster_hosts(group: ValkeyClusterGroup) -> list[dict[str, Any]]:
    return [{"cluster": True, "startup_nodes": group.startup_nodes}]


def group_on(group: ValkeyClusterGroup, node: ValkeyServer, *, other_slot_than: str) -> str:
    """A group name whose pub/sub name lives on ``node``, in another slot than a given name."""
    for n in range(10_000):
        name = f"room{n}"
        pubsub_name = f"asgi__group__{name}"
        if key_slot(pubsub_name.encode()) != key_slot(other_slot_than.encode()) and (
            group.node_for(pubsub_name) is node
        ):
            return name
    raise LookupError(f"no group name on {node.name}")


class Stream:
    """A sender publishing numbered messages on a channel as fast as it can."""

    def __init__(self, layer: ValkeyPubSubChannelLayer, channel: str) -> None:
        self.layer, self.channel = layer, channel
        self.sent = 0
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(ServerUnreachable):
                await self.layer.send(self.channel, {"type": "m", "n": self.sent})
                self.sent += 1
            await asyncio.sleep(0.002)

    async def stop(self) -> None:
        """Stop after the send in flight (not by cancelling it: valkey-py can lose a
        cancellation before Python 3.12)."""
        self._stopping.set()
        await asyncio.wait_for(self._task, FAILOVER_TIMEOUT)


async def receive_until(layer: Any, channel: str, wanted: dict[str, Any]) -> list[dict[str, Any]]:
    """Everything received on ``channel`` up to and including ``wanted``."""
    received = []
    while True:
        message = await asyncio.wait_for(layer.receive(channel), FAILOVER_TIMEOUT)
        received.append(message)
        if message == wanted:
            return received


@pytest.mark.slow
async def test_a_killed_primary_is_followed_to_its_promoted_replica(
    cluster_failover_group: ValkeyClusterGroup, open_layer: OpenLayer
) -> None:
    group = cluster_failover_group
    layer = open_layer(cluster_hosts(group), **HOOKS)
    sender = open_layer(cluster_hosts(group))
    channel = await layer.new_channel()
    victim = group.node_for(channel)
    room = group_on(group, victim, other_slot_than=channel)
    await layer.group_add(room, channel)
    elsewhere = await layer.new_channel()
    while group.node_for(elsewhere) is victim:
        elsewhere = await layer.new_channel()
    # Waits across the failover: its first message tells whether it was told of an outage.
    waiting_elsewhere = asyncio.create_task(layer.receive(elsewhere))
    stream = Stream(sender, channel)
    before = await receive(layer, channel)
    assert before["type"] == "m"

    await asyncio.to_thread(group.kill_primary_of, channel)
    # The connection to the victim dropped; the names moved to the promoted replica.
    received = await receive_until(layer, channel, RECONNECT)
    await stream.stop()
    kinds = [message["type"] for message in received]
    assert kinds.count("valkey.disconnect") == 1  # one outage: the channel and its group
    assert kinds.index("valkey.disconnect") < kinds.index("valkey.reconnect")
    numbers = [message["n"] for message in received if message["type"] == "m"]
    assert numbers == sorted(numbers)  # in order, some missed while down

    promoted = group.node_for(channel)
    assert promoted is not victim
    primaries = group.primaries()
    assert numsub(primaries, channel) == 1
    assert numsub(primaries, f"asgi__group__{room}") == 1
    await sender.send(channel, {"type": "after.failover"})
    await sender.group_send(room, {"type": "group.after.failover"})
    rest = [await receive(layer, channel), await receive(layer, channel)]
    while rest[0]["type"] == "m":  # the stream's last messages, published after the return
        rest = [rest[1], await receive(layer, channel)]
    assert rest == [{"type": "after.failover"}, {"type": "group.after.failover"}]
    await sender.send(elsewhere, {"type": "still.fine"})
    # Its node never failed: no notice came first.
    assert await asyncio.wait_for(waiting_elsewhere, RECEIVE_TIMEOUT) == {"type": "still.fine"}
    stats = layer.stats()
    assert stats.reconnects == 1
    assert stats.seconds_disconnected > 0


@pytest.mark.slow
async def test_a_subscription_to_a_dead_primary_completes_on_the_promoted_replica(
    cluster_failover_group: ValkeyClusterGroup, open_layer: OpenLayer
) -> None:
    """``group_add`` while the primary of the group's slot is dead (the layer's slot map still
    names it): the layer keeps reading the slot map until a replica took over, subscribes
    there, and only then returns. Nothing was subscribed before, so no notice."""
    group = cluster_failover_group
    layer = open_layer(cluster_hosts(group), **HOOKS)
    sender = open_layer(cluster_hosts(group))
    channel = await layer.new_channel()  # the layer reads the slot map
    victim = next(node for node in group.primaries() if node is not group.node_for(channel))
    room = group_on(group, victim, other_slot_than=channel)
    pubsub_name = f"asgi__group__{room}"
    victim.kill()
    joining = asyncio.create_task(layer.group_add(room, channel))
    await asyncio.to_thread(
        wait_for,
        lambda: group.node_for(pubsub_name) is not victim,
        timeout=FAILOVER_TIMEOUT,
        describe="a replica to take over",
    )
    await asyncio.wait_for(joining, FAILOVER_TIMEOUT)
    assert numsub(group.primaries(), pubsub_name) == 1  # on the promoted replica
    await sender.group_send(room, {"type": "hello"})
    assert await receive(layer, channel) == {"type": "hello"}  # no notice before it
    assert layer.stats().reconnects == 0


async def test_a_moved_slot_is_followed_with_notices_for_its_channels_only(
    cluster_failover_group: ValkeyClusterGroup, open_layer: OpenLayer
) -> None:
    """Decision: a slot move is announced like a dropped connection, because messages
    published between the old node dropping the subscription and the new node confirming it
    are lost. Only the channels with a name in that slot are told."""
    group = cluster_failover_group
    layer = open_layer(cluster_hosts(group), **HOOKS)
    sender = open_layer(cluster_hosts(group))
    channel, other = await layer.new_channel(), await layer.new_channel()
    while key_slot(other.encode()) == key_slot(channel.encode()):
        other = await layer.new_channel()
    before = group.node_for(channel)
    await sender.send(channel, {"type": "before.move"})
    assert await receive(layer, channel) == {"type": "before.move"}

    after = await asyncio.to_thread(group.move_slot_of, channel)
    assert after is not before
    assert await receive(layer, channel) == DISCONNECT
    assert await receive(layer, channel) == RECONNECT
    primaries = group.primaries()
    assert numsub(primaries, channel) == 1  # on the new owner
    assert after.client().execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1
    await sender.send(channel, {"type": "after.move"})
    assert await receive(layer, channel) == {"type": "after.move"}
    assert await nothing_for(layer, other)  # its slot did not move
    stats = layer.stats()
    assert (stats.reconnects, stats.seconds_disconnected) == (0, 0)  # no connection dropped
    subscribers = {subscriber.key: subscriber for subscriber in loop_layer(layer).subscribers}
    assert channel in subscribers[f"{after.host}:{after.port}"].names


async def test_a_stream_survives_a_slot_move(
    cluster_failover_group: ValkeyClusterGroup, open_layer: OpenLayer
) -> None:
    group = cluster_failover_group
    layer = open_layer(cluster_hosts(group), **HOOKS)
    sender = open_layer(cluster_hosts(group))
    channel = await layer.new_channel()
    stream = Stream(sender, channel)
    assert (await receive(layer, channel))["type"] == "m"
    await asyncio.to_thread(group.move_slot_of, channel)
    received = await receive_until(layer, channel, RECONNECT)
    assert [m for m in received if m["type"] != "m"] == [DISCONNECT, RECONNECT]
    sent_at_return = stream.sent
    message = await receive(layer, channel)
    while message["n"] < sent_at_return:  # published before the return: may arrive or not
        message = await receive(layer, channel)
    await stream.stop()
    assert message["n"] >= sent_at_return  # what is published after the return arrives


async def test_a_subscription_sent_to_the_old_owner_follows_moved(
    cluster_failover_group: ValkeyClusterGroup, open_layer: OpenLayer
) -> None:
    """The layer's slot map is stale for a slot that moved before anything subscribed there:
    the old owner answers ``-MOVED``, and the subscription goes to the node it names. Nothing
    was subscribed, so nothing was missed: no notice."""
    group = cluster_failover_group
    layer = open_layer(cluster_hosts(group), **HOOKS)
    channel = await layer.new_channel()  # the layer reads the slot map
    room = "moved.room"
    old = group.node_for(f"asgi__group__{room}")
    new = await asyncio.to_thread(group.move_slot_of, f"asgi__group__{room}")
    assert new is not old
    await asyncio.wait_for(layer.group_add(room, channel), RECEIVE_TIMEOUT)
    assert new.client().execute_command("PUBSUB", "SHARDNUMSUB", f"asgi__group__{room}")[1] == 1
    await layer.group_send(room, {"type": "hello"})
    assert await receive(layer, channel) == {"type": "hello"}
    assert layer.stats().group_deliveries == 1
