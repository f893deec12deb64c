"""Wire compatibility with channels_redis 4.x: both packages share one server.

During a rolling upgrade, processes running ``channels_redis.core.RedisChannelLayer`` ("theirs")
and processes running ``ValkeyChannelLayer`` ("ours") use the same servers at the same time.
Every test here puts one layer of each package on the same ``hosts`` and checks that what one
writes the other reads: messages on normal and process-local channels, groups, encryption and
JSON, key names, capacity and flush. Most tests run in both directions.

A layer stands for a whole process: each has its own ``client_prefix``, so its process-local
channels are its own. Receives are wrapped in ``asyncio.wait_for`` (channels_redis's
``receive()`` blocks forever), so a lost message fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from cryptography.fernet import InvalidToken

from support.servers import ValkeyServer
from support.wire_compat import (
    DIRECTIONS,
    RECEIVE_TIMEOUT,
    SIDES,
    SILENCE_TIMEOUT,
    Layer,
    OpenLayer,
    Side,
    assert_nothing_for,
    keys_of,
    payload,
    receive,
    receive_many,
)


@pytest.fixture
def shards(valkey_shards: list[ValkeyServer]) -> list[ValkeyServer]:
    for server in valkey_shards:
        server.flushall()
    return valkey_shards


# --- 1. normal channels ---------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_normal_channel_keeps_fifo_order(
    direction: tuple[Side, Side], open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    sender, receiver = (open_compat_layer(side, standalone) for side in direction)
    sent = [payload(n) for n in range(6)]
    for message in sent:
        await sender.send("wire.normal", message)
    assert await receive_many(receiver, "wire.normal", len(sent)) == sent


async def test_both_sides_consume_one_normal_channel(
    open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    """Workers of both packages reading one channel: each message reaches exactly one."""
    layers = [open_compat_layer(side, standalone) for side in ("ours", "theirs")]
    count = 40
    got: list[int] = []
    all_in = asyncio.Event()

    async def consume(layer: Layer) -> None:
        while True:
            got.append((await layer.receive("wire.shared"))["n"])
            if len(got) >= count:
                all_in.set()

    consumers = [asyncio.create_task(consume(layer)) for layer in layers for _ in range(2)]
    try:
        for n in range(count):
            await layers[n % 2].send("wire.shared", {"type": "job", "n": n})
        await asyncio.wait_for(all_in.wait(), RECEIVE_TIMEOUT)
        await asyncio.sleep(SILENCE_TIMEOUT)  # time for a duplicate to show up
    finally:
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
    assert sorted(got) == list(range(count))


# --- 2. process-local channels --------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_process_local_channels(
    direction: tuple[Side, Side], open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    sender, receiver = (open_compat_layer(side, standalone) for side in direction)
    first = await receiver.new_channel()
    second = await receiver.new_channel("reply")
    # Interleaved, so each channel's messages share the process queue with the other's.
    for n in range(3):
        await sender.send(first, {"type": "to.first", "n": n})
        await sender.send(second, {"type": "to.second", "n": n, "bytes": b"\x01"})
    assert await receive_many(receiver, second, 3) == [
        {"type": "to.second", "n": n, "bytes": b"\x01"} for n in range(3)
    ]
    assert await receive_many(receiver, first, 3) == [
        {"type": "to.first", "n": n} for n in range(3)
    ]


# --- 3. groups ------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_group_add_on_one_side_group_send_and_discard_on_the_other(
    direction: tuple[Side, Side], open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    sender, member = (open_compat_layer(side, standalone) for side in direction)
    local_a = await member.new_channel()
    local_b = await member.new_channel()
    normal = "wire.group.normal"
    channels = [local_a, local_b, normal]
    for channel in channels:
        await member.group_add("room", channel)

    await sender.group_send("room", {"type": "first", "bytes": b"\x02"})
    await sender.group_send("room", {"type": "second"})
    for channel in channels:
        # The second message right after the first: no member got the first one twice.
        assert await receive_many(member, channel, 2) == [
            {"type": "first", "bytes": b"\x02"},
            {"type": "second"},
        ]

    await sender.group_discard("room", local_b)
    await sender.group_discard("room", normal)
    await sender.group_send("room", {"type": "third"})
    assert await receive(member, local_a) == {"type": "third"}
    await assert_nothing_for(member, local_b)
    await assert_nothing_for(member, normal)


# --- 4. one group, members in both processes ------------------------------------------------


@pytest.mark.parametrize("sender_side", SIDES)
async def test_group_with_members_in_both_processes(
    sender_side: Side, open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    sides: tuple[Side, ...] = ("ours", "theirs")
    layers = {side: open_compat_layer(side, standalone) for side in sides}
    members: dict[Side, list[str]] = {}
    for side, layer in layers.items():
        members[side] = [
            await layer.new_channel(),
            await layer.new_channel(),
            f"wire.mixed.{side}",  # a normal channel that this process reads
        ]
        for channel in members[side]:
            await layer.group_add("mixed", channel)

    await layers[sender_side].group_send("mixed", {"type": "one"})
    await layers[sender_side].group_send("mixed", {"type": "two"})
    for side, layer in layers.items():
        for channel in members[side]:
            assert await receive_many(layer, channel, 2) == [{"type": "one"}, {"type": "two"}]


# --- 5. encryption, JSON, key rotation ------------------------------------------------------

OLD_KEY, NEW_KEY = "old secret key", "new secret key"
OPTIONS = [
    pytest.param({"symmetric_encryption_keys": [OLD_KEY]}, {}, id="encrypted"),
    pytest.param({"serializer_format": "json"}, {}, id="json"),
    pytest.param(
        {"serializer_format": "json", "symmetric_encryption_keys": [OLD_KEY]}, {}, id="json-enc"
    ),
    # The receiver already has the new key first; the sender has not been upgraded yet.
    pytest.param(
        {"symmetric_encryption_keys": [OLD_KEY]},
        {"symmetric_encryption_keys": [NEW_KEY, OLD_KEY]},
        id="rotation",
    ),
]


@pytest.mark.parametrize(("options", "receiver_options"), OPTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_serializer_options(
    direction: tuple[Side, Side],
    options: dict[str, Any],
    receiver_options: dict[str, Any],
    open_compat_layer: OpenLayer,
    standalone: list[ValkeyServer],
) -> None:
    sender_side, receiver_side = direction
    sender = open_compat_layer(sender_side, standalone, **options)
    receiver = open_compat_layer(receiver_side, standalone, **{**options, **receiver_options})
    message: dict[str, Any] = {"type": "secret", "text": "ünïcode", "list": [1, 2.5, None]}
    if options.get("serializer_format") != "json":
        message["bytes"] = b"\x00\x01"
    local = await receiver.new_channel()
    await receiver.group_add("secret-room", local)

    await sender.send("wire.secret", message)
    await sender.send(local, message)
    await sender.group_send("secret-room", {**message, "type": "secret.group"})
    assert await receive(receiver, "wire.secret") == message
    assert await receive_many(receiver, local, 2) == [message, {**message, "type": "secret.group"}]


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_rotated_out_key_is_not_readable(
    direction: tuple[Side, Side], open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    """The other half of rotation: once a receiver drops a key, it cannot read that key's
    messages (both packages drop such a message on receive, so the receiver sees nothing)."""
    sender_side, receiver_side = direction
    sender = open_compat_layer(sender_side, standalone, symmetric_encryption_keys=[OLD_KEY])
    receiver = open_compat_layer(receiver_side, standalone, symmetric_encryption_keys=[NEW_KEY])
    await sender.send("wire.rotated", {"type": "old"})
    if receiver_side == "theirs":
        # channels_redis raises InvalidToken out of receive(); ours logs and drops the message.
        with pytest.raises(InvalidToken):
            await receive(receiver, "wire.rotated")
    else:
        await assert_nothing_for(receiver, "wire.rotated")


# --- 6. key layout --------------------------------------------------------------------------


def snapshot(server: ValkeyServer) -> dict[bytes, tuple[bytes, int]]:
    """Every key with its type and TTL (seconds)."""
    client = server.client()
    return {key: (client.type(key), client.ttl(key)) for key in client.keys("*")}


async def test_key_layout_is_channels_redis_layout(
    open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    server = standalone[0]
    ours = open_compat_layer("ours", standalone, expiry=60, group_expiry=3600)
    theirs = open_compat_layer("theirs", standalone, expiry=60, group_expiry=3600)
    local = await ours.new_channel()
    process_queue = local[: local.index("!") + 1]
    assert process_queue == f"specific.{ours.client_prefix}!"

    async def write(layer: Layer) -> None:
        await layer.send("wire.layout", {"type": "normal"})
        await layer.send(local, {"type": "local"})
        await layer.group_add("layout-group", local)

    started = time.time()
    await write(ours)
    after_ours = snapshot(server)
    expected = {
        b"asgiwire.layout",
        f"asgi{process_queue}".encode(),
        b"asgi:group:layout-group",
    }
    assert set(after_ours) == expected
    for key, (kind, ttl) in after_ours.items():
        assert kind == b"zset", key
        limit = 3600 if key.startswith(b"asgi:group:") else 60
        assert 0 < ttl <= limit, key

    # What channels_redis itself makes of the same calls: the same keys, types and TTLs.
    server.flushall()
    await write(theirs)
    after_theirs = snapshot(server)
    assert set(after_theirs) == set(after_ours)
    for key, (kind, ttl) in after_theirs.items():
        assert after_ours[key][0] == kind, key
        assert abs(after_ours[key][1] - ttl) <= 2, key

    # And the stored members: payloads channels_redis decodes, scored by the send time.
    server.flushall()
    await write(ours)
    client = server.client()
    [(raw, score)] = client.zrange(b"asgiwire.layout", 0, -1, withscores=True)
    assert theirs.deserialize(raw) == {"type": "normal"}
    assert started - 1 <= score <= time.time() + 1
    [(raw, score)] = client.zrange(f"asgi{process_queue}", 0, -1, withscores=True)
    assert theirs.deserialize(raw) == {"type": "local", "__asgi_channel__": local}
    assert started - 1 <= score <= time.time() + 1
    [(member, score)] = client.zrange(b"asgi:group:layout-group", 0, -1, withscores=True)
    assert member == local.encode()
    assert started - 1 <= score <= time.time() + 1


# --- 7. capacity and flush ------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_capacity_counts_the_peers_messages(
    direction: tuple[Side, Side], open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    """``direction`` is (the side that fills the channel, the side whose send must fail)."""
    filler_side, checker_side = direction
    options = {"capacity": 3, "channel_capacity": {"small.*": 2}}
    filler = open_compat_layer(filler_side, standalone, **options)
    checker = open_compat_layer(checker_side, standalone, **options)
    # ``receiver`` only names process-local channels; it never receives here.
    receiver = open_compat_layer("theirs", standalone, **options)
    local = await receiver.new_channel()
    for channel, capacity in (("wire.full", 3), ("small.full", 2), (local, 3)):
        for n in range(capacity - 1):
            await filler.send(channel, {"type": "fill", "n": n})
        await checker.send(channel, {"type": "last"})
        with pytest.raises(ChannelFull):
            await checker.send(channel, {"type": "one too many"})
        with pytest.raises(ChannelFull):
            await filler.send(channel, {"type": "one too many"})

    # A group send skips full members rather than overfilling them.
    await filler.group_add("full-room", "wire.full")
    await checker.group_send("full-room", {"type": "skipped"})
    assert standalone[0].client().zcard(b"asgiwire.full") == 3


@pytest.mark.parametrize("flusher_side", SIDES)
async def test_flush_from_either_side_removes_every_key(
    flusher_side: Side, open_compat_layer: OpenLayer, standalone: list[ValkeyServer]
) -> None:
    layers = {side: open_compat_layer(side, standalone) for side in ("ours", "theirs")}
    for side, layer in layers.items():
        local = await layer.new_channel()
        await layer.send(f"wire.flush.{side}", {"type": "left"})
        await layer.send(local, {"type": "left"})
        await layer.group_add(f"flush-{side}", local)
        # A receive leaves readers (ours) and the backup queue machinery (theirs) in use.
        await layer.send(f"wire.flush.read.{side}", {"type": "read"})
        assert await receive(layer, f"wire.flush.read.{side}") == {"type": "read"}
    for side, layer in layers.items():
        other = "theirs" if side == "ours" else "ours"
        await layer.send(f"wire.flush.{other}.peer", {"type": "left"})
    assert len(keys_of(standalone)) >= 8  # 3 per side and 2 sent across

    await layers[flusher_side].flush()
    assert keys_of(standalone) == []


# --- 8. sharded hosts -----------------------------------------------------------------------
#
# With several hosts, channels_redis picks the server per call:
#   - send() to a normal channel: round robin over the hosts (each layer keeps a cycle);
#   - receive() on a normal channel: the next host of another cycle, and it then waits on that
#     one host only, however long it takes;
#   - send() to a process-local channel: the CRC hash of the FULL channel name, while its
#     receive() and group_send() use the hash of the part up to "!" (a channels_redis bug);
#   - group_add/group_discard/group_send find the group by the hash of the group name, and
#     group_send puts each member's message on the hash of its (non-local) name.
# A channels_redis receiver of a normal channel therefore only gets messages that senders
# spread over every host in turn; ours reads a normal channel on every host.

SHARDED_NORMAL = [
    *DIRECTIONS,
    # The baseline: channels_redis talking to itself meets the same expectation.
    pytest.param(("theirs", "theirs"), id="theirs-to-theirs"),
]


@pytest.mark.parametrize("direction", SHARDED_NORMAL)
async def test_sharded_normal_channel(
    direction: tuple[Side, Side], open_compat_layer: OpenLayer, shards: list[ValkeyServer]
) -> None:
    sender, receiver = (open_compat_layer(side, shards) for side in direction)
    # Two rounds over the hosts: a channels_redis receiver reads host 0, 1, 2, 0, 1, 2.
    sent = [{"type": "sharded", "n": n} for n in range(2 * len(shards))]
    for message in sent:
        await sender.send("wire.sharded", message)
    got = await receive_many(receiver, "wire.sharded", len(sent))
    # Hosts are read independently, so only the set of messages is guaranteed, not the order.
    assert sorted(message["n"] for message in got) == [message["n"] for message in sent]


#: Normal channels whose names hash to host 0, 1 and 2 of three.
NORMAL_ON_EACH_HOST = ["worker.a", "worker.d", "worker.j"]


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_sharded_groups(
    direction: tuple[Side, Side], open_compat_layer: OpenLayer, shards: list[ValkeyServer]
) -> None:
    sender_side, member_side = direction
    sender = open_compat_layer(sender_side, shards)
    # Two member processes, so that their process queues may sit on different hosts.
    processes = [open_compat_layer(member_side, shards) for _ in range(2)]
    theirs = next(layer for layer in (sender, *processes) if isinstance(layer, RedisChannelLayer))
    assert [theirs.consistent_hash(name) for name in NORMAL_ON_EACH_HOST] == [0, 1, 2]
    assert theirs.consistent_hash("sharded-room") != theirs.consistent_hash("lobby")

    members: list[tuple[Layer, str]] = [
        (process, await process.new_channel()) for process in processes for _ in range(2)
    ]
    if member_side == "ours":
        # Not for channels_redis members: group_send (channels_redis's own as well as ours)
        # puts a normal channel's message on the host its name hashes to, while a
        # channels_redis receive() waits on whichever host its round robin has reached.
        members += [(processes[0], name) for name in NORMAL_ON_EACH_HOST]
    for process, channel in members:
        await process.group_add("sharded-room", channel)
    first_process, first = members[0]
    # Added again by the other side (still one copy), and to a group on another host.
    await sender.group_add("sharded-room", first)
    await sender.group_add("lobby", first)

    await sender.group_send("sharded-room", {"type": "one"})
    await sender.group_send("sharded-room", {"type": "two"})
    for process, channel in members:
        assert await receive_many(process, channel, 2) == [{"type": "one"}, {"type": "two"}]

    await first_process.group_discard("lobby", first)
    discarded_process, discarded = members[1]
    await sender.group_discard("sharded-room", discarded)
    await sender.group_send("lobby", {"type": "nobody"})
    await sender.group_send("sharded-room", {"type": "three"})
    for process, channel in members:
        if channel != discarded:
            # For ``first`` too: "nobody" was sent before "three", so it would come first.
            assert await receive(process, channel) == {"type": "three"}
    await assert_nothing_for(discarded_process, discarded)


async def test_sharded_process_local_channel_ours_to_theirs(
    open_compat_layer: OpenLayer, shards: list[ValkeyServer]
) -> None:
    """Only this direction: ours puts a process-local message on the host of the name up to
    "!", where channels_redis's receive() looks. channels_redis's send() hashes the full name,
    so on several hosts it misses its own receivers (and ours) about two times in three; the
    other direction is not a promise channels_redis keeps even to itself."""
    sender = open_compat_layer("ours", shards)
    receiver = open_compat_layer("theirs", shards)
    channels = [await receiver.new_channel() for _ in range(6)]
    for n, channel in enumerate(channels):
        await sender.send(channel, {"type": "local", "n": n})
    for n, channel in enumerate(channels):
        assert await receive(receiver, channel) == {"type": "local", "n": n}
