"""The core layer on a Valkey Cluster while it fails over and reshards under traffic.

The behavioural suite already runs on the ``cluster`` topology; these tests break a cluster
of their own while messages flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.exceptions import NotReplicated, ServerUnreachable
from support.cluster import ValkeyClusterGroup
from support.servers import ValkeyServer

pytestmark = pytest.mark.slow


def cluster_hosts(group: ValkeyClusterGroup) -> list[dict[str, Any]]:
    return [{"cluster": True, "startup_nodes": group.startup_nodes}]


class Traffic:
    """A sender numbering its messages and a receiver collecting them, on one channel."""

    def __init__(self, layer: ValkeyChannelLayer, channel: str) -> None:
        self.layer, self.channel = layer, channel
        self.acknowledged: list[int] = []
        self.received: list[int] = []
        #: Sends that raised ServerUnreachable: none while the cluster recovers in time.
        self.unreachable = 0
        self._stop = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._receive())]

    async def _send(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                await self.layer.send(self.channel, {"type": "m", "n": n})
                self.acknowledged.append(n)
            except ServerUnreachable:
                self.unreachable += 1
            except NotReplicated:
                pass
            n += 1
            await asyncio.sleep(0)

    async def _receive(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            async with self._arrived:
                self.received.append(message["n"])
                self._arrived.notify_all()

    async def until_received(self, count: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)

    async def finish(self) -> None:
        """Stop sending, then wait until every acknowledged message has arrived."""
        self._stop.set()
        await self._tasks[0]
        acknowledged = set(self.acknowledged)
        with contextlib.suppress(asyncio.TimeoutError):
            async with self._arrived:
                arrived = self._arrived.wait_for(lambda: acknowledged <= set(self.received))
                await asyncio.wait_for(arrived, 10)
        self._tasks[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tasks[1]


@pytest.mark.parametrize("kind", ["local", "normal"])
async def test_acknowledged_messages_survive_a_primary_kill(
    cluster_failover_group: ValkeyClusterGroup, kind: str
) -> None:
    """With ``wait_for_replicas=1`` every send that returned is on a replica before the
    primary dies, so the promoted replica still has it."""
    group = cluster_failover_group
    layer = ValkeyChannelLayer(hosts=cluster_hosts(group), capacity=100_000, wait_for_replicas=1)
    channel = await layer.new_channel() if kind == "local" else "work.stream"
    traffic = Traffic(layer, channel)
    await asyncio.wait_for(traffic.until_received(200), 10)
    key = layer._keys.queue(channel)
    victim = await asyncio.to_thread(group.kill_primary_of, key, sync_replica=False)
    # The promoted replica has no replica of its own until the old primary rejoins as one;
    # until then each send raises NotReplicated (queued, but not confirmed).
    await asyncio.to_thread(victim.start)
    await asyncio.to_thread(group.wait_healthy)
    count = len(traffic.acknowledged)
    await asyncio.wait_for(traffic.until_received(count + 200), 20)
    await traffic.finish()
    assert set(traffic.acknowledged) <= set(traffic.received)
    await layer.close()


@pytest.mark.parametrize("kind", ["local", "normal"])
async def test_traffic_flows_while_a_slot_moves(
    cluster_failover_group: ValkeyClusterGroup, kind: str
) -> None:
    group = cluster_failover_group
    layer = ValkeyChannelLayer(hosts=cluster_hosts(group), capacity=100_000)
    channel = await layer.new_channel() if kind == "local" else "work.stream"
    traffic = Traffic(layer, channel)
    await asyncio.wait_for(traffic.until_received(200), 10)
    key = layer._keys.queue(channel)
    before = group.node_for(key)
    after = await asyncio.to_thread(group.move_slot_of, key)
    assert after is not before
    count = len(traffic.acknowledged)
    await asyncio.wait_for(traffic.until_received(count + 200), 20)
    await traffic.finish()
    # None lost, none twice: a send that meets MOVED or ASK did not run, and is sent once
    # more, to the node named.
    assert set(traffic.acknowledged) <= set(traffic.received)
    assert len(traffic.received) == len(set(traffic.received))
    await layer.close()


@pytest.mark.parametrize("kind", ["local", "normal"])
async def test_sends_follow_a_killed_primary_to_its_replica_before_the_deadline(
    cluster_failover_group: ValkeyClusterGroup, kind: str
) -> None:
    """The primary stays dead: sends waiting on it go to the promoted replica as soon as the
    slot map names it, well before the retry policy's deadline would raise."""
    group = cluster_failover_group
    layer = ValkeyChannelLayer(hosts=cluster_hosts(group), capacity=100_000)
    channel = await layer.new_channel() if kind == "local" else "work.stream"
    traffic = Traffic(layer, channel)
    await asyncio.wait_for(traffic.until_received(200), 10)
    await asyncio.to_thread(group.kill_primary_of, layer._keys.queue(channel))
    count = len(traffic.received)
    await asyncio.wait_for(traffic.until_received(count + 200), 20)
    await traffic.finish()
    assert traffic.unreachable == 0
    await layer.close()


async def test_a_send_to_a_slot_being_imported_follows_ask(
    cluster_failover_group: ValkeyClusterGroup,
) -> None:
    """While a slot migrates, its source answers ASK for a queue it no longer holds: the send
    goes to the target after ASKING (loading the script there first), and the message is
    received once the slot has moved."""
    group = cluster_failover_group
    layer = ValkeyChannelLayer(hosts=cluster_hosts(group))
    channel = "work.migrating"
    await layer.send(channel, {"type": "before"})  # the layer knows the slot's owner
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "before"}
    key = layer._keys.queue(channel)
    source = group.node_for(key)
    target = next(node for node in group.primaries() if node is not source)
    src: Any = source.client()
    dst: Any = target.client()
    slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
    assert int(src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) == 0
    dst.execute_command(
        "CLUSTER", "SETSLOT", slot, "IMPORTING", src.execute_command("CLUSTER", "MYID")
    )
    src.execute_command(
        "CLUSTER", "SETSLOT", slot, "MIGRATING", dst.execute_command("CLUSTER", "MYID")
    )
    target.reset_stats()

    await layer.send(channel, {"type": "during"})

    assert int(dst.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) == 1
    assert target.commandstats().get("asking", 0) >= 1  # twice if NOSCRIPT came first
    target_id = dst.execute_command("CLUSTER", "MYID")
    for node in group.primaries():
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "during"}
    await layer.close()


def named_connections(node: ValkeyServer, name: str) -> int:
    clients = node.client().client_list()
    return sum(client.get("name") == name for client in clients)


class PeakConnections:
    """The most connections named ``name`` each node held, sampled from a thread (the event
    loop under test is too busy to sample on time) until :meth:`stop`."""

    def __init__(self, nodes: list[ValkeyServer], name: str) -> None:
        self.peak = {node.port: 0 for node in nodes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(nodes, name), daemon=True)
        self._thread.start()

    def _run(self, nodes: list[ValkeyServer], name: str) -> None:
        while not self._stop.is_set():
            for node in nodes:
                self.peak[node.port] = max(self.peak[node.port], named_connections(node, name))

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def spread_members(
    group: ValkeyClusterGroup, layer: ValkeyChannelLayer, per_node: int
) -> list[str]:
    """Normal channels whose queues are on every primary, ``per_node`` on each."""
    taken: Counter[int] = Counter()
    members = []
    for n in range(10_000):
        member = f"member.{n}"
        port = group.node_for(layer._keys.queue(member)).port
        if taken[port] < per_node:
            taken[port] += 1
            members.append(member)
        if len(members) == per_node * len(group.primaries()):
            return members
    raise LookupError("no spread of members")


async def burst(layer: ValkeyChannelLayer, channels: list[str], group: str) -> None:
    """200 concurrent sends to ``channels`` and a group send to ``group``, at once."""
    sends = [layer.send(channel, {"type": "m", "to": channel}) for channel in channels]
    await asyncio.gather(*sends, layer.group_send(group, {"type": "g"}))


async def test_concurrent_sends_and_a_group_send_over_every_primary_all_arrive(
    valkey_cluster: ValkeyClusterGroup,
) -> None:
    valkey_cluster.flushall()
    layer = ValkeyChannelLayer(hosts=cluster_hosts(valkey_cluster), capacity=1000)
    channels = [await layer.new_channel() for _ in range(200)]
    members = spread_members(valkey_cluster, layer, per_node=4)
    for member in members:
        await layer.group_add("everywhere", member)

    await burst(layer, channels, "everywhere")

    for channel in channels:
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "m", "to": channel}
    for member in members:
        assert await asyncio.wait_for(layer.receive(member), 5) == {"type": "g"}
    await layer.flush()
    await layer.close()


async def test_a_burst_holds_few_connections_per_primary(
    valkey_cluster: ValkeyClusterGroup,
) -> None:
    """200 concurrent sends and a group send over every primary: each primary holds a few
    connections of this layer at most (its lane, a reader's blocking pop, the slot map's),
    however many senders."""
    valkey_cluster.flushall()
    name = "burst-connections"
    hosts = [{**cluster_hosts(valkey_cluster)[0], "client_name": name}]
    layer = ValkeyChannelLayer(hosts=hosts, capacity=1000)
    channels = [await layer.new_channel() for _ in range(200)]
    members = spread_members(valkey_cluster, layer, per_node=4)
    for member in members:
        await layer.group_add("everywhere", member)
    receiving = asyncio.ensure_future(layer.receive(channels[0]))  # the reader's connection
    await burst(layer, channels[:1], "everywhere")
    assert await asyncio.wait_for(receiving, 5) == {"type": "m", "to": channels[0]}
    primaries = valkey_cluster.primaries()
    sampler = PeakConnections(primaries, name)
    try:
        await burst(layer, channels, "everywhere")
    finally:
        peak = sampler.stop()
    assert max(peak.values()) <= 4, peak
    await layer.flush()
    await layer.close()


async def test_group_send_costs_one_script_call_per_slot(
    valkey_cluster: ValkeyClusterGroup,
) -> None:
    valkey_cluster.flushall()
    layer = ValkeyChannelLayer(hosts=cluster_hosts(valkey_cluster))
    members = [f"member.{n}" for n in range(100)]
    for member in members:
        await layer.group_add("big", member)
    await layer.group_send("big", {"type": "warm"})  # scripts loaded, connections open
    primaries: list[ValkeyServer] = valkey_cluster.primaries()
    for node in primaries:
        node.reset_stats()
    await layer.group_send("big", {"type": "m"})
    stats = [node.commandstats() for node in primaries]
    slots = {int(primaries[0].client().cluster("keyslot", layer._keys.queue(m))) for m in members}
    assert sum(s.get("zrangebyscore", 0) for s in stats) == 1
    assert sum(s.get("evalsha", 0) for s in stats) == len(slots)
    assert sum(s.get("zadd", 0) for s in stats) == len(members)
    for member in members[:3]:
        assert await asyncio.wait_for(layer.receive(member), 5) == {"type": "warm"}
        assert await asyncio.wait_for(layer.receive(member), 5) == {"type": "m"}
    await layer.flush()
    await layer.close()


async def test_group_send_multiple_costs_one_script_call_per_slot(
    valkey_cluster: ValkeyClusterGroup,
) -> None:
    valkey_cluster.flushall()
    layer = ValkeyChannelLayer(hosts=cluster_hosts(valkey_cluster))
    members = [f"member.{n}" for n in range(100)]
    for member in members:
        await layer.group_add("big", member)
    await layer.group_send_multiple("big", [{"type": "warm"}])  # scripts, connections
    primaries: list[ValkeyServer] = valkey_cluster.primaries()
    for node in primaries:
        node.reset_stats()
    await layer.group_send_multiple("big", [{"type": "m", "n": n} for n in range(5)])
    stats = [node.commandstats() for node in primaries]
    slots = {int(primaries[0].client().cluster("keyslot", layer._keys.queue(m))) for m in members}
    assert sum(s.get("zrangebyscore", 0) for s in stats) == 1
    assert sum(s.get("evalsha", 0) for s in stats) == len(slots)
    assert sum(s.get("zadd", 0) for s in stats) == 5 * len(members)
    for member in members[:3]:
        assert await asyncio.wait_for(layer.receive(member), 5) == {"type": "warm"}
        for n in range(5):
            assert await asyncio.wait_for(layer.receive(member), 5) == {"type": "m", "n": n}
    await layer.flush()
    await layer.close()
