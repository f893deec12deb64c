"""The pub/sub layer's behaviour, on every topology a user can configure.

A layer instance stands for a whole process: two instances on the same ``hosts`` are two
processes sharing the servers. Receives are wrapped in ``asyncio.wait_for``, so a lost message
fails the test instead of hanging it. Unsubscribing is not awaited by the layer, so the tests
wait for the server to show it with a bounded poll (there is no event to await).

The helpers (tests/support/pubsub.py) look at the servers the way the layer places names:
on the ``cluster`` topology as shard channels on the primary serving a name's slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import pytest

from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.pubsub import (
    RECEIVE_TIMEOUT,
    OpenLayer,
    eventually,
    every_topology,
    layer_connections,
    loop_layer,
    nothing_for,
    numsub,
    owner,
    receive,
    subscribed_names,
    until_nothing_subscribed,
    until_subscribed,
)
from support.servers import ValkeyServer

# --- sending and receiving ---------------------------------------------------------------


@every_topology
async def test_new_channel_is_subscribed_when_returned(
    hosts: list[Any], topology_servers: list[ValkeyServer], open_layer: OpenLayer
) -> None:
    layer = open_layer(hosts)
    channel = await layer.new_channel()
    assert re.fullmatch(r"asgispecific\.[0-9a-f]{32}", channel)
    assert numsub(topology_servers, channel) == 1
    await layer.send(channel, {"type": "hello", "body": "x" * 10_000, "raw": b"\x00\xff"})
    assert await receive(layer, channel) == {
        "type": "hello",
        "body": "x" * 10_000,
        "raw": b"\x00\xff",
    }
    assert (await layer.new_channel("custom.")).startswith("asgicustom.")


@every_topology
async def test_group_send_reaches_every_member_in_every_process(
    hosts: list[Any], open_layer: OpenLayer
) -> None:
    one, two, sender = open_layer(hosts), open_layer(hosts), open_layer(hosts)
    members = [await one.new_channel(), await one.new_channel(), await two.new_channel()]
    outsider = await two.new_channel()
    await one.group_add("room", members[0])
    await one.group_add("room", members[1])
    await two.group_add("room", members[2])
    await two.group_add("room", members[2])  # twice is once
    await sender.group_send("room", {"type": "chat", "text": "hi"})
    assert await receive(one, members[0]) == {"type": "chat", "text": "hi"}
    assert await receive(one, members[1]) == {"type": "chat", "text": "hi"}
    assert await receive(two, members[2]) == {"type": "chat", "text": "hi"}
    assert await nothing_for(two, members[2])  # one copy, though added twice
    assert await nothing_for(two, outsider)


@every_topology
async def test_subscriptions_live_on_the_owning_shard_one_connection_each(
    hosts: list[Any], topology_servers: list[ValkeyServer], open_layer: OpenLayer
) -> None:
    layer = open_layer(hosts)
    channels = [await layer.new_channel() for _ in range(30)]
    for index, channel in enumerate(channels):
        await layer.group_add(f"g{index % 5}", channel)
    names = channels + [f"asgi__group__g{n}" for n in range(5)]
    assert subscribed_names(topology_servers) == set(names)
    for name in names:
        assert numsub(topology_servers, name) == 1
    used = {owner(topology_servers, name).port for name in names}
    for server in topology_servers:
        assert layer_connections(server) == (1 if server.port in used else 0)


@every_topology
async def test_group_discard_stops_delivery_and_unsubscribes_the_last_member(
    hosts: list[Any], topology_servers: list[ValkeyServer], open_layer: OpenLayer
) -> None:
    layer = open_layer(hosts)
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", a)
    await layer.group_add("room", b)
    await layer.group_discard("room", a)
    await layer.group_discard("room", a)  # not a member: nothing happens
    await layer.group_discard("room", "not.local")
    await layer.group_send("room", {"type": "m"})
    assert await receive(layer, b) == {"type": "m"}
    assert await nothing_for(layer, a)
    await layer.group_discard("room", b)
    await eventually(lambda: numsub(topology_servers, "asgi__group__room") == 0, "unsubscribe")
    assert loop_layer(layer).state.group_count == 0


@every_topology
async def test_normal_channel_copy_per_process_one_receiver_per_message_within_one(
    hosts: list[Any], topology_servers: list[ValkeyServer], open_layer: OpenLayer
) -> None:
    one, two, sender = open_layer(hosts), open_layer(hosts), open_layer(hosts)
    in_one = [asyncio.create_task(receive(one, "jobs")) for _ in range(2)]
    in_two = asyncio.create_task(receive(two, "jobs"))
    await until_subscribed(topology_servers, "jobs", 2)  # one connection per process
    await sender.send("jobs", {"type": "job", "n": 1})
    await sender.send("jobs", {"type": "job", "n": 2})
    got_in_one = sorted(message["n"] for message in await asyncio.gather(*in_one))
    assert got_in_one == [1, 2]  # each message to exactly one of the two receivers
    assert await in_two == {"type": "job", "n": 1}
    assert await receive(two, "jobs") == {"type": "job", "n": 2}


async def test_a_message_published_before_anyone_listens_is_gone(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer = open_layer([valkey_server.url])
    await layer.send("early", {"type": "lost"})
    waiting = asyncio.create_task(receive(layer, "early"))
    await until_subscribed([valkey_server], "early", 1)
    await layer.send("early", {"type": "kept"})
    assert await waiting == {"type": "kept"}


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"serializer_format": "json"}, id="json"),
        pytest.param({"symmetric_encryption_keys": ["k1"]}, id="msgpack-encrypted"),
        pytest.param(
            {"serializer_format": "json", "symmetric_encryption_keys": ["k1"]},
            id="json-encrypted",
        ),
    ],
)
async def test_serializer_options(
    valkey_server: ValkeyServer,
    open_layer: OpenLayer,
    options: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = open_layer([valkey_server.url], **options)
    sender = open_layer([valkey_server.url], **options)
    stranger = open_layer([valkey_server.url], symmetric_encryption_keys=["other"])
    channel = await receiver.new_channel()
    await stranger.send(channel, {"type": "unreadable"})
    await sender.send(channel, {"type": "m", "text": "é✓"})
    # The unreadable message is logged and skipped; the receive goes on to the next one.
    assert await receive(receiver, channel) == {"type": "m", "text": "é✓"}
    assert "could not be decoded" in caplog.text
    assert "unreadable" not in caplog.text


# --- bounded memory ----------------------------------------------------------------------


async def test_a_full_queue_drops_new_messages_and_counts_them(
    valkey_server: ValkeyServer, open_layer: OpenLayer, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``stall_timeout=0`` a consumer counts as stopped as soon as ``capacity`` messages
    wait (the bounds of a reading consumer are in ``test_pubsub_burst``)."""
    layer = open_layer([valkey_server.url], capacity=3, stall_timeout=0)
    channel = await layer.new_channel()
    with caplog.at_level(logging.WARNING):
        for n in range(10):
            await layer.send(channel, {"type": "m", "n": n})
        await eventually(lambda: layer.dropped_messages == 7, "7 drops")
    assert [(await receive(layer, channel))["n"] for _ in range(3)] == [0, 1, 2]
    await layer.send(channel, {"type": "m", "n": 10})
    assert (await receive(layer, channel))["n"] == 10
    drop_lines = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(drop_lines) == 1  # rate-limited
    assert channel in drop_lines[0].getMessage()


async def consumer_lifecycle(layer: ValkeyPubSubChannelLayer, groups: list[str]) -> None:
    """What a websocket consumer does from connect to disconnect."""
    channel = await layer.new_channel()
    for group in groups:
        await layer.group_add(group, channel)
    consumer = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)  # it is now waiting
    consumer.cancel()  # the websocket closed
    with contextlib.suppress(asyncio.CancelledError):
        await consumer


@every_topology
async def test_consumer_lifecycles_leave_only_live_subscriptions(
    hosts: list[Any], topology_servers: list[ValkeyServer], open_layer: OpenLayer
) -> None:
    layer = open_layer(hosts)
    keeper = await layer.new_channel()  # keeps the "room" group subscribed throughout
    await layer.group_add("room", keeper)
    for n in range(200):
        await consumer_lifecycle(layer, ["room", f"private-{n}"])
    state = loop_layer(layer).state
    assert (state.channel_count, state.group_count) == (1, 1)
    await eventually(
        lambda: subscribed_names(topology_servers) == {keeper, "asgi__group__room"},
        "only the keeper's subscriptions to remain",
    )
    names = [name for subscriber in loop_layer(layer).subscribers for name in subscriber.names]
    assert sorted(names) == sorted([keeper, "asgi__group__room"])


async def test_2000_connect_disconnect_cycles_leave_nothing(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    """Counts, not timings: no channel state, no group state, no server subscription."""
    layer = open_layer([valkey_server.url])
    for n in range(1000):
        await consumer_lifecycle(layer, ["room", f"private-{n}"])
    for n in range(1000):  # receive() on a normal channel: it subscribes, cancelling frees it
        consumer = asyncio.create_task(layer.receive(f"normal.{n}"))
        await asyncio.sleep(0)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    state = loop_layer(layer).state
    assert (state.channel_count, state.group_count) == (0, 0)
    assert loop_layer(layer).subscribers[0].names == []
    await until_nothing_subscribed([valkey_server])
    assert layer.dropped_messages == 0


async def test_cancelling_one_of_two_receivers_keeps_the_channel(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer = open_layer([valkey_server.url])
    channel = await layer.new_channel()
    first = asyncio.create_task(layer.receive(channel))
    second = asyncio.create_task(receive(layer, channel))
    await asyncio.sleep(0)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await layer.send(channel, {"type": "still.here"})
    assert await second == {"type": "still.here"}


# --- groups: ownership -------------------------------------------------------------------


async def test_group_add_of_a_channel_this_process_does_not_own_is_refused(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    mine, theirs = open_layer([valkey_server.url]), open_layer([valkey_server.url])
    foreign = await theirs.new_channel()
    with pytest.raises(RuntimeError) as raised:
        await mine.group_add("room", foreign)
    message = str(raised.value)
    assert foreign in message
    assert "self.channel_name" in message
    assert subscribed_names([valkey_server]) == {foreign}


# --- no polling --------------------------------------------------------------------------


async def test_an_idle_layer_sends_no_command_at_all(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer = open_layer([valkey_server.url])
    channels = [await layer.new_channel() for _ in range(50)]
    waiting = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    await asyncio.sleep(0)
    valkey_server.reset_stats()
    await asyncio.sleep(0.5)  # the idle period under test
    commands = set(valkey_server.commandstats()) - {"info", "config|resetstat"}
    assert commands == set()
    await layer.send(channels[7], {"type": "wake"})
    assert await asyncio.wait_for(waiting[7], RECEIVE_TIMEOUT) == {"type": "wake"}
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


# --- closing -----------------------------------------------------------------------------


async def test_close_is_idempotent_and_the_layer_reopens_on_use(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer = open_layer([valkey_server.url])
    channel = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)
    await layer.close()
    await layer.close()
    await layer.close_pools()
    with pytest.raises(RuntimeError, match="flushed or closed"):
        await waiting
    await until_nothing_subscribed([valkey_server])
    again = await layer.new_channel()
    await layer.send(again, {"type": "after.close"})
    assert await receive(layer, again) == {"type": "after.close"}


async def test_flush_forgets_local_channels_and_groups(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer = open_layer([valkey_server.url])
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.flush()
    await until_nothing_subscribed([valkey_server])
    with pytest.raises(RuntimeError, match=r"self\.channel_name"):
        await layer.group_add("room", channel)


@every_topology
async def test_group_size_counts_local_channels_and_other_subscribers(
    hosts: list[Any], topology_servers: list[ValkeyServer], open_layer: OpenLayer
) -> None:
    """This process's channels count exactly; another process counts once per subscribed
    connection, however many of its channels are in the group (a lower bound)."""
    here, there = open_layer(hosts), open_layer(hosts)
    assert await here.group_size("room") == 0
    mine = [await here.new_channel() for _ in range(3)]
    for channel in mine:
        await here.group_add("room", channel)
    assert await here.group_size("room") == 3
    theirs = [await there.new_channel() for _ in range(2)]
    for channel in theirs:
        await there.group_add("room", channel)
    assert await here.group_size("room") == 4  # 3 here, and one subscribed process
    assert await there.group_size("room") == 3  # 2 there, and one subscribed process
    await here.group_discard("room", mine[0])
    assert await here.group_size("room") == 3
    for channel in mine[1:]:
        await here.group_discard("room", channel)
    await until_subscribed(topology_servers, "asgi__group__room", 1)
    assert await here.group_size("room") == 1
    assert await there.group_size("room") == 2
