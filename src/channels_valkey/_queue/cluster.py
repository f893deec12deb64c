"""A Valkey Cluster as one :class:`~channels_valkey._queue.shard.QueueServer` of the core layer.

Keys are hash-tagged (``_queue.keys.KeySpace(hash_tags=True)``), so everything a script or a
blocking pop touches at once lives in one slot. The non-blocking commands go through
``_common.cluster_lanes.ClusterLanes``: one multiplexed lane per primary, routed by the layer, which
follows ``MOVED``/``ASK``/``NOSCRIPT`` and rides out a failover under the layer's retry policy
(``_common.retry``), then raises :class:`~channels_valkey.exceptions.ServerUnreachable`. On top of
it:

- a group send writes to many slots: one script call per slot, grouped into one write per
  primary, the primaries concurrently;
- ``wait_for_replicas``: the script and ``WAIT`` on a connection of their own;
- ``flush`` scans every primary through valkey-py's client;
- a reader's blocking connection goes to the node that serves its queue's slot, looked up
  again after an error (a failover or a slot that moved); it is made by
  ``ClusterLanes.connection_to``, as the pub/sub layer's subscriber connections are.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import cast

from valkey.asyncio.cluster import ClusterNode
from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import MovedError

from channels_valkey._common.cluster_lanes import ClusterLanes
from channels_valkey._common.cluster_routing import Call, node_name, positions_by
from channels_valkey._common.hosts import ClusterHost, Host
from channels_valkey._common.scripts import Arg, Script
from channels_valkey.exceptions import ServerUnreachable

from . import scripts
from .shard import ReplicaWait


class ClusterShard:
    """The whole cluster, as one event loop sees it."""

    def __init__(self, host: ClusterHost) -> None:
        self.host: Host = host
        self.lanes = ClusterLanes.for_host(host)
        self.client = self.lanes.client

    def __repr__(self) -> str:
        return f"<ClusterShard {self.host.describe()}>"

    async def _script(self, script: Script, keys: list[str], args: list[Arg]) -> object:
        return await self.lanes.script(script, keys, args)

    async def _script_calls(
        self, script: Script, calls: list[tuple[list[str], list[Arg]]]
    ) -> list[object]:
        """One call of ``script`` per ``(keys, args)``: one write per primary."""
        slot = self.lanes.slot
        return await self.lanes.run_raising(
            [Call(slot(keys[0]), script.command(keys, args), script) for keys, args in calls]
        )

    async def send(
        self,
        queue: str,
        now: float,
        expiry: int,
        capacity: int,
        payload: bytes,
        wait: ReplicaWait | None = None,
    ) -> bool:
        args = scripts.send_args(now, expiry, capacity, payload)
        if wait is None:
            return bool(await self._script(scripts.SEND, [queue], args))
        return bool(await self._confirmed(scripts.SEND, queue, args, wait))

    async def _confirmed(
        self, script: Script, queue: str, args: list[Arg], wait: ReplicaWait
    ) -> object:
        """Run ``script`` on ``queue`` and then ``WAIT`` for ``wait``'s replicas on the same
        connection (WAIT counts the replicas that have that connection's last write): its
        reply, or :class:`~channels_valkey.exceptions.NotReplicated`."""
        reply, confirmed = await self.lanes.pinned(
            script, [queue], args, ("WAIT", wait.replicas, wait.timeout_ms)
        )
        wait.check(self.host, int(cast(int, confirmed)))
        return reply

    async def send_many(
        self, deliveries: Sequence[tuple[str, int, bytes]], now: float, expiry: int
    ) -> list[int]:
        by_slot = positions_by(self.lanes.slot(queue) for queue, _, _ in deliveries)
        calls = []
        for positions in by_slot.values():
            slot_deliveries = [deliveries[position] for position in positions]
            args = scripts.send_many_args(now, expiry, slot_deliveries)
            calls.append(([queue for queue, _, _ in slot_deliveries], args))
        results = await self._script_calls(scripts.SEND_MANY, calls)
        return [
            positions[int(index) - 1]
            for positions, full in zip(by_slot.values(), results, strict=True)
            for index in cast("list[int]", full)
        ]

    async def send_batch(
        self,
        writes: Sequence[scripts.BatchWrite],
        scores: Sequence[float],
        shared: Sequence[bytes],
        now: float,
        expiry: int,
        wait: ReplicaWait | None = None,
    ) -> list[int]:
        """One script call per slot, as for ``send_many``; a single queue (``send_multiple``)
        is one call to its node, followed by ``WAIT`` on the same connection with ``wait``."""
        by_slot = positions_by(self.lanes.slot(queue) for queue, _, _ in writes)
        calls = []
        for positions in by_slot.values():
            slot_writes = [writes[position] for position in positions]
            args = scripts.batch_args(slot_writes, scores, shared, now, expiry)
            calls.append(([queue for queue, _, _ in slot_writes], args))
        if wait is not None:
            if len(writes) != 1:
                raise ValueError("waiting for replicas needs a single queue")
            keys, args = calls[0]
            results = [await self._confirmed(scripts.SEND_BATCH, keys[0], args, wait)]
        else:
            results = await self._script_calls(scripts.SEND_BATCH, calls)
        return [
            positions[int(index) - 1]
            for positions, full in zip(by_slot.values(), results, strict=True)
            for index in cast("list[int]", full)
        ]

    async def group_add(self, group_key: str, channel: str, group_expiry: int) -> None:
        args = scripts.group_add_args(channel, group_expiry)
        await self._script(scripts.GROUP_ADD, [group_key], args)

    async def group_discard(self, group_key: str, channel: str) -> None:
        await self.lanes.command(group_key, "ZREM", group_key, channel)

    async def group_members(self, group_key: str, joined_after: float) -> list[str]:
        members: list[bytes] = await self.lanes.command(
            group_key, "ZRANGEBYSCORE", group_key, f"({joined_after!r}", "+inf"
        )
        return [member.decode("utf8") for member in members]

    async def group_count(self, group_key: str, joined_after: float) -> int:
        count = await self.lanes.command(
            group_key, "ZCOUNT", group_key, f"({joined_after!r}", "+inf"
        )
        return int(count)

    async def group_remove(self, group_key: str, channels: Sequence[str]) -> None:
        await self.lanes.command(group_key, "ZREM", group_key, *channels)

    async def unlink(self, keys: Sequence[str]) -> None:
        """One ``UNLINK`` per slot, one write per primary."""
        by_slot = positions_by(self.lanes.slot(key) for key in keys)
        calls = [
            Call(slot, ("UNLINK", *(keys[position] for position in positions)))
            for slot, positions in by_slot.items()
        ]
        await self.lanes.run_raising(calls)

    async def alive(
        self, registry: str, process: str, expiry: float, keep: int, known: tuple[int, str]
    ) -> scripts.AliveReply:
        args = scripts.alive_args(process, expiry, keep, known)
        return scripts.parse_alive(await self._script(scripts.ALIVE, [registry], args))

    async def requeue(self, queue: str, expiry: int, items: Sequence[tuple[float, bytes]]) -> None:
        await self._script(scripts.REQUEUE, [queue], scripts.requeue_args(expiry, items))

    async def wake(self, wake_key: str, tokens: int) -> None:
        await self._script(scripts.WAKE, [wake_key], [tokens])

    async def delete_matching(self, pattern: str) -> int:
        """``SCAN`` every primary; ``UNLINK`` what matches, one call per slot."""
        await self.lanes.ready()
        counts = await asyncio.gather(
            *(self._delete_on(node, pattern) for node in self.client.get_primaries())
        )
        return sum(counts)

    async def _delete_on(self, node: ClusterNode, pattern: str) -> int:
        deleted = 0
        cursor: int | bytes = 0
        while True:
            cursor, keys = await node.execute_command(
                "SCAN", cursor, "MATCH", pattern, "COUNT", 1000
            )
            by_slot: dict[int, list[bytes]] = defaultdict(list)
            for key in keys:
                by_slot[self.client.keyslot(key)].append(key)
            for slot_keys in by_slot.values():
                deleted += int(await node.execute_command("UNLINK", *slot_keys))
            if int(cursor) == 0:
                return deleted

    async def reader_connection(self, queue: str, *, after: Exception | None) -> AbstractConnection:
        """A connection to the node serving ``queue``.

        After ``MOVED`` it goes straight to the node the error names. After other errors (a
        failover) the slot map is read again first; a reload closes no lane, so commands in
        flight are not disturbed by it.
        """
        if isinstance(after, MovedError):
            return self.lanes.connection_to(node_name(after.host, after.port))
        if after is not None:
            await self.lanes.refresh()
        else:
            await self.lanes.ready()
        node = self.client.get_node_from_key(queue)
        if node is None:
            raise ServerUnreachable(self.host.describe(), LookupError(f"no node serves {queue}"))
        return self.lanes.connection_to(node.name)

    def abandon(self) -> None:
        self.lanes.abandon()

    async def aclose(self) -> None:
        await self.lanes.aclose()
