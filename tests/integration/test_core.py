"""What a user of ValkeyChannelLayer observes, on every topology the ``hosts`` fixture offers.

Each test runs against real servers: standalone, three shards, unix socket, TLS and Sentinel.
Receives are wrapped in ``asyncio.wait_for`` so a lost message fails the test instead of
hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from channels_valkey.core import ValkeyChannelLayer
from support.servers import Topology

RECEIVE_TIMEOUT = 5


async def receive(layer: ValkeyChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)


async def test_send_receive_keeps_order(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology
) -> None:
    sender, receiver = make_layer(), make_layer()
    for n in range(12):
        await sender.send("work.queue", {"type": "job", "n": n})
    got = [(await receive(receiver, "work.queue"))["n"] for _ in range(12)]
    if topology.name == "sharded":
        # A normal channel's messages take the shards in turn (as channels_redis does):
        # order holds on each shard, every third message here.
        assert sorted(got) == list(range(12))
        for shard in range(3):
            on_shard = [n for n in got if n % 3 == shard]
            assert on_shard == sorted(on_shard)
    else:
        assert got == list(range(12))


async def test_process_local_channels_get_their_own_messages(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    sender, owner = make_layer(), make_layer()
    first, second = await owner.new_channel(), await owner.new_channel("reply")
    await sender.send(second, {"type": "to.second"})
    await sender.send(first, {"type": "to.first"})
    assert await receive(owner, first) == {"type": "to.first"}
    assert await receive(owner, second) == {"type": "to.second"}


async def test_several_receivers_on_one_channel_share_the_messages(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    layer = make_layer()
    local = await layer.new_channel()
    for channel in ("shared.work", local):
        receivers = [asyncio.create_task(receive(layer, channel)) for _ in range(3)]
        for n in range(3):
            await layer.send(channel, {"type": "job", "n": n})
        got = sorted(message["n"] for message in await asyncio.gather(*receivers))
        assert got == [0, 1, 2]


async def test_group_send_reaches_every_member_once(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    sender, process_a, process_b = make_layer(), make_layer(), make_layer()
    members = [
        (process_a, await process_a.new_channel()),
        (process_a, await process_a.new_channel()),
        (process_b, await process_b.new_channel()),
        (process_b, "plain.member"),
    ]
    for _, channel in members:
        await sender.group_add("room", channel)
    await sender.group_add("room", members[0][1])  # joining twice changes nothing
    await sender.group_discard("room", "never.joined")
    await sender.group_send("room", {"type": "chat", "text": "hi"})
    for layer, channel in members:
        assert await receive(layer, channel) == {"type": "chat", "text": "hi"}
    await sender.group_discard("room", members[0][1])
    await sender.group_send("room", {"type": "chat", "text": "second"})
    for layer, channel in members[1:]:
        assert (await receive(layer, channel))["text"] == "second"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(process_a.receive(members[0][1]), 0.3)


def queues_per_normal_channel(topology: Topology) -> int:
    """A normal channel has a queue on each shard (its messages take them in turn, as with
    channels_redis), and capacity counts per queue."""
    return len(topology.servers) if topology.name == "sharded" else 1


async def test_channel_full_exactly_at_capacity(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology
) -> None:
    layer = make_layer(capacity=3, channel_capacity={"big.*": 5})
    queues = queues_per_normal_channel(topology)
    for n in range(3 * queues):
        await layer.send("small", {"type": "m", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send("small", {"type": "m"})
    for _ in range(5 * queues):
        await layer.send("big.one", {"type": "m"})
    with pytest.raises(ChannelFull):
        await layer.send("big.one", {"type": "m"})
    local = await layer.new_channel()  # a process queue lives on one shard whatever the hosts
    for _ in range(3):
        await layer.send(local, {"type": "m"})
    with pytest.raises(ChannelFull):
        await layer.send(local, {"type": "m"})
    await receive(layer, local)
    await layer.send(local, {"type": "m"})  # room again after a receive


async def test_concurrent_senders_never_exceed_capacity(
    make_layer: Callable[..., ValkeyChannelLayer], topology: Topology
) -> None:
    senders = [make_layer(capacity=10) for _ in range(4)]
    attempts = [
        sender.send("contended", {"type": "m", "n": n}) for n in range(25) for sender in senders
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert sum(result is None for result in results) == 10 * queues_per_normal_channel(topology)
    others = [r for r in results if r is not None and not isinstance(r, ChannelFull)]
    assert not others, others


async def test_expired_messages_are_never_delivered(
    make_layer: Callable[..., ValkeyChannelLayer], monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = make_layer(expiry=60)
    real_time = time.time
    # Sent "61 seconds ago": it waits in Valkey, but must not be handed out.
    monkeypatch.setattr("channels_valkey.core.time.time", lambda: real_time() - 61)
    await layer.send("stale", {"type": "old"})
    monkeypatch.setattr("channels_valkey.core.time.time", real_time)
    await layer.send("stale", {"type": "fresh"})
    assert await receive(layer, "stale") == {"type": "fresh"}

    # A message already in a local buffer expires there too.
    owner = make_layer(expiry=60)
    waiting, idle = await owner.new_channel(), await owner.new_channel()
    await owner.send(idle, {"type": "buffered"})
    await owner.send(waiting, {"type": "wake"})
    assert await receive(owner, waiting) == {"type": "wake"}  # the batch buffered `idle`'s
    monkeypatch.setattr("channels_valkey._queue.mailbox.time.time", lambda: real_time() + 61)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(owner.receive(idle), 0.3)


async def test_group_membership_expires(
    make_layer: Callable[..., ValkeyChannelLayer], monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = make_layer(group_expiry=100)
    real_time = time.time
    monkeypatch.setattr("channels_valkey._queue.scripts.time.time", lambda: real_time() - 101)
    await layer.group_add("g", "joined.long.ago")
    monkeypatch.setattr("channels_valkey._queue.scripts.time.time", real_time)
    await layer.group_add("g", "joined.now")
    await layer.group_send("g", {"type": "m"})
    assert await receive(layer, "joined.now") == {"type": "m"}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive("joined.long.ago"), 0.3)


@pytest.mark.parametrize("kind", ["normal", "local"])
async def test_cancelled_receive_never_loses_or_duplicates(
    make_layer: Callable[..., ValkeyChannelLayer], kind: str
) -> None:
    """Cancel receive() at every point of its life while messages flow; count what arrives."""
    layer = make_layer()
    channel = "cancel.me" if kind == "normal" else await layer.new_channel()
    got: list[int] = []
    sent = 40
    for n in range(sent):
        task = asyncio.create_task(layer.receive(channel))
        for _ in range(n % 5):
            await asyncio.sleep(0)  # cancel after a varying number of loop turns
        await layer.send(channel, {"type": "m", "n": n})
        for _ in range(n % 3):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            got.append((await task)["n"])
    while len(got) < sent:
        got.append((await receive(layer, channel))["n"])
    assert sorted(got) == list(range(sent))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.3)


async def test_local_buffer_is_bounded_and_logs_drops(
    make_layer: Callable[..., ValkeyChannelLayer], caplog: pytest.LogCaptureFixture
) -> None:
    layer = make_layer(capacity=3)
    busy, slow = await layer.new_channel(), await layer.new_channel()
    caplog.set_level(logging.WARNING, logger="channels_valkey")
    # A process's local channels share one queue in Valkey, so capacity 3 counts all of them.
    for round_ in range(2):
        for n in range(2):
            await layer.send(slow, {"type": "m", "n": round_ * 2 + n})
        await layer.send(busy, {"type": "tick"})
        await receive(layer, busy)  # the reader pops `slow`'s messages into its buffer
    assert [(await receive(layer, slow))["n"] for _ in range(3)] == [0, 1, 2]
    assert "receive buffer is full" in caplog.text
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(slow), 0.3)


async def test_group_send_skips_full_members_and_logs(
    make_layer: Callable[..., ValkeyChannelLayer], caplog: pytest.LogCaptureFixture
) -> None:
    layer = make_layer(capacity=1)
    owner = make_layer(capacity=1)
    members = ["m.one", "m.two", await owner.new_channel()]
    for channel in members:
        await layer.group_add("g", channel)
    caplog.set_level(logging.INFO, logger="channels_valkey")
    await layer.group_send("g", {"type": "first"})
    assert "were full" not in caplog.text
    await layer.group_send("g", {"type": "second"})  # every member still holds "first"
    assert "3 of 3 channels in group g were full" in caplog.text
    assert await receive(layer, "m.one") == {"type": "first"}
    assert await receive(owner, members[2]) == {"type": "first"}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive("m.one"), 0.3)


async def test_flush_removes_exactly_this_prefix(
    make_layer: Callable[..., ValkeyChannelLayer], topology_servers: list[Any]
) -> None:
    ours, theirs = make_layer(prefix="ours"), make_layer(prefix="theirs")
    for layer in (ours, theirs):
        for n in range(20):
            await layer.send(f"chan{n}", {"type": "m"})
        await layer.group_add("g", "chan0")
    await ours.flush()
    keys = [k.decode() for s in topology_servers for k in s.client().scan_iter(count=1000)]
    assert keys
    assert all(key.startswith("theirs") for key in keys)
    assert not any("keys" in server.commandstats() for server in topology_servers)
    assert await receive(theirs, "chan3") == {"type": "m"}


async def test_encrypted_and_json_layers_round_trip(
    make_layer: Callable[..., ValkeyChannelLayer],
) -> None:
    old = make_layer(symmetric_encryption_keys=["old-key"], serializer_format="json")
    rotated = make_layer(symmetric_encryption_keys=["new-key", "old-key"], serializer_format="json")
    await old.send("secret", {"type": "m", "text": "héllo"})
    assert await receive(rotated, "secret") == {"type": "m", "text": "héllo"}
    await rotated.send("secret", {"type": "m"})
    with pytest.raises(asyncio.TimeoutError):  # undecryptable with the old key alone: dropped
        await asyncio.wait_for(old.receive("secret"), 0.5)
