"""A Valkey Cluster as one :class:`~channels_valkey._client.QueueServer` of the core layer.

Keys are hash-tagged (``_keys.KeySpace(hash_tags=True)``), so everything a script or a blocking
pop touches at once lives in one slot. valkey-py's cluster client routes each command by its
key and follows ``MOVED``/``ASK``; this module adds what the core layer needs on top:

- a group send writes to many slots: one script call per slot, sent as one pipeline, which
  valkey-py splits into one batch per node, sent concurrently;
- ``flush`` scans every primary;
- a reader's blocking connection goes to the node that serves its queue's slot, looked up
  again after an error (a failover or a slot that moved);
- commands ride out a failover the way the standalone client does: retried under the layer's
  retry policy (``_retry``), then :class:`~channels_valkey.exceptions.ServerUnreachable`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from valkey.asyncio.cluster import ClusterNode, PipelineCommand, ValkeyCluster
from valkey.asyncio.connection import AbstractConnection, Connection
from valkey.exceptions import AskError, MovedError, NoScriptError

from . import _scripts
from ._client import (
    REDIRECT_ERRORS,
    AliveReply,
    BatchWrite,
    ReplicaWait,
    batch_args,
    connection_kwargs,
    parse_alive,
)
from ._health import health_checked, take_interval
from ._hosts import ClusterHost, Host
from ._per_loop import release_dead
from ._retry import retrying
from .exceptions import ConfigurationError, ServerUnreachable

T = TypeVar("T")

#: Errors worth another attempt. After a connection error valkey-py's cluster client
#: disconnects every node at once, also connections another task is about to write to; that
#: task then fails with an ``AttributeError`` (its writer is gone) before anything was sent,
#: so it is safe to retry.
_RETRIED: tuple[type[Exception], ...] = (*REDIRECT_ERRORS, AttributeError)


def build_cluster(host: ClusterHost) -> ValkeyCluster:
    kwargs = connection_kwargs(host)
    # The cluster client retries redirections itself; connection-level retries would only
    # delay its own recovery, which reloads the slot map. Without a ``retry`` and with no
    # connection-error attempts, its nodes' connections get no retries of their own.
    kwargs.pop("retry", None)
    kwargs.pop("retry_on_error", None)
    kwargs.setdefault("connection_error_retry_attempts", 0)
    # Its commands try once more after a connection error, on the reloaded slot map, and then
    # leave retrying to the layer's policy; 1 is also the least its pipelines work with (with
    # 0 they run no attempt at all).
    kwargs.setdefault("cluster_error_retry_attempts", 1)
    # Follow MOVED by patching the slot map, never by valkey-py's periodic full reload: a
    # reload closes the connections of commands in flight, which valkey-py then resends, so a
    # message could be queued twice while slots move.
    kwargs.setdefault("reinitialize_steps", 0)
    interval = take_interval(kwargs, host.describe())
    nodes = [ClusterNode(node_host, port) for node_host, port in host.startup_nodes]
    client = ValkeyCluster(startup_nodes=nodes, **kwargs)
    # valkey-py picks the connection class itself; every node it creates later, and the
    # layers' own connections, read it from the client's connection options.
    options = client.get_connection_kwargs()
    checked = health_checked(cast("type[Connection]", options["connection_class"]), interval)
    options["connection_class"] = checked
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = checked
    return client


def abandon_cluster(client: ValkeyCluster) -> None:
    """Close a cluster client whose event loop was closed under it (see ``_per_loop``): its
    nodes' connections, and the client itself, which valkey-py would otherwise report as
    unclosed when it is collected (its ``aclose()`` needs the loop)."""
    for connection in cluster_connections(client):
        release_dead(connection)
    client._initialize = True  # what aclose() leaves behind


def cluster_connections(client: ValkeyCluster) -> list[AbstractConnection]:
    """Every connection the cluster client's nodes hold (valkey-py offers no public list)."""
    nodes_manager = client.nodes_manager
    nodes = [*nodes_manager.nodes_cache.values(), *nodes_manager.startup_nodes.values()]
    connections = {
        id(connection): connection
        for node in nodes
        for connection in getattr(node, "_connections", [])
    }
    return list(connections.values())


def check_cluster_host(host: ClusterHost) -> None:
    try:
        client = build_cluster(host)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"{host.describe()}: bad connection option: {error}") from error
    del client


class ClusterShard:
    """The whole cluster, as one event loop sees it."""

    def __init__(self, host: ClusterHost) -> None:
        self.host: Host = host
        self.client = build_cluster(host)
        self._refreshing: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<ClusterShard {self.host.describe()}>"

    async def _refresh(self) -> None:
        """Reload the slot map; concurrent callers share one reload (valkey-py's reload
        replaces node objects other tasks may be using, so two at once would clash)."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self.client.nodes_manager.initialize())
            self._refreshing.add_done_callback(lambda _: setattr(self, "_refreshing", None))
        await asyncio.shield(self._refreshing)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        return await retrying(attempt, _RETRIED, self.host.describe())

    async def _script(self, script: _scripts.Script, keys: list[str], args: list[Any]) -> object:
        return await self._retrying(lambda: script(self.client, keys, args))

    async def send(
        self,
        queue: str,
        now: float,
        expiry: int,
        capacity: int,
        payload: bytes,
        wait: ReplicaWait | None = None,
    ) -> bool:
        args = [repr(now), expiry, capacity, payload]
        if wait is None:
            return bool(await self._script(_scripts.SEND, [queue], args))
        return bool(await self._confirmed(_scripts.SEND, queue, args, wait))

    async def _confirmed(
        self, script: _scripts.Script, queue: str, args: list[Any], wait: ReplicaWait
    ) -> object:
        """Run ``script`` on ``queue`` and wait for ``wait``'s replicas in the same round
        trip; its reply, or :class:`~channels_valkey.exceptions.NotReplicated`."""
        reply, confirmed = await self._retrying(
            lambda: self._run_and_wait(script, queue, args, wait)
        )
        wait.check(self.host, confirmed)
        return reply

    async def _run_and_wait(
        self, script: _scripts.Script, queue: str, args: list[Any], wait: ReplicaWait
    ) -> tuple[object, int]:
        """``EVALSHA`` and ``WAIT`` pipelined on one connection to the queue's node: WAIT
        counts the replicas that have this connection's last write."""
        await self.client.initialize()
        node = self.client.get_node_from_key(queue)
        if node is None:
            raise ConnectionError(f"no node serves {queue} yet")  # retried by _retrying
        send = PipelineCommand(0, "EVALSHA", script.sha, 1, queue, *args)
        confirm = PipelineCommand(1, "WAIT", wait.replicas, wait.timeout_ms)
        try:
            await node.execute_pipeline([send, confirm])
        except REDIRECT_ERRORS:
            await self._refresh()
            raise
        if isinstance(send.result, NoScriptError):  # a node that never saw the script
            await self.client.script_load(script.source)
            return await self._run_and_wait(script, queue, args, wait)
        if isinstance(send.result, AskError):  # the slot moved: learn where, then retry
            await self._refresh()
        queued, confirmed = send.result, confirm.result
        for result in (queued, confirmed):
            if isinstance(result, Exception):
                raise result
        return queued, int(cast(int, confirmed))

    async def send_many(
        self, deliveries: Sequence[tuple[str, int, bytes]], now: float, expiry: int
    ) -> list[int]:
        by_slot: dict[int, list[int]] = defaultdict(list)  # slot -> positions in deliveries
        for position, (queue, _, _) in enumerate(deliveries):
            by_slot[self.client.keyslot(queue)].append(position)
        calls = []
        for positions in by_slot.values():
            args: list[Any] = [repr(now), expiry]
            for position in positions:
                args += [deliveries[position][1], deliveries[position][2]]
            calls.append(([deliveries[position][0] for position in positions], args))
        results = await self._retrying(lambda: self._pipelined(_scripts.SEND_MANY, calls))
        return [
            positions[int(index) - 1]
            for positions, full in zip(by_slot.values(), results, strict=True)
            for index in full
        ]

    async def send_batch(
        self,
        writes: Sequence[BatchWrite],
        scores: Sequence[float],
        shared: Sequence[bytes],
        now: float,
        expiry: int,
        wait: ReplicaWait | None = None,
    ) -> list[int]:
        """One script call per slot, as for ``send_many``; a single queue (``send_multiple``)
        is one call to its node, followed by ``WAIT`` on the same connection with ``wait``."""
        by_slot: dict[int, list[int]] = defaultdict(list)  # slot -> positions in writes
        for position, (queue, _, _) in enumerate(writes):
            by_slot[self.client.keyslot(queue)].append(position)
        calls = []
        for positions in by_slot.values():
            slot_writes = [writes[position] for position in positions]
            args = batch_args(slot_writes, scores, shared, now, expiry)
            calls.append(([queue for queue, _, _ in slot_writes], args))
        if wait is not None:
            if len(writes) != 1:
                raise ValueError("waiting for replicas needs a single queue")
            keys, args = calls[0]
            results = [await self._confirmed(_scripts.SEND_BATCH, keys[0], args, wait)]
        elif len(calls) == 1:
            results = [await self._script(_scripts.SEND_BATCH, *calls[0])]
        else:
            results = await self._retrying(lambda: self._pipelined(_scripts.SEND_BATCH, calls))
        return [
            positions[int(index) - 1]
            for positions, full in zip(by_slot.values(), results, strict=True)
            for index in cast("list[int]", full)
        ]

    async def _pipelined(
        self, script: _scripts.Script, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """One ``EVALSHA`` per call, in one pipeline: one batch per node, sent concurrently."""
        async with self.client.pipeline() as pipe:
            for keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        if any(isinstance(result, NoScriptError) for result in results):
            # A node that never saw the script (a new primary after a failover): load it
            # everywhere, then run the calls again; each call is idempotent only as a whole,
            # so the pipeline is resent only when no call ran (NOSCRIPT runs nothing).
            await self.client.script_load(script.source)
            if all(isinstance(result, NoScriptError) for result in results):
                return await self._pipelined(script, calls)
            retry = [
                call for call, r in zip(calls, results, strict=True) if isinstance(r, NoScriptError)
            ]
            again = iter(await self._pipelined(script, retry))
            results = [next(again) if isinstance(r, NoScriptError) else r for r in results]
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def group_add(self, group_key: str, channel: str, group_expiry: int) -> None:
        await self._script(
            _scripts.GROUP_ADD, [group_key], [repr(time.time()), group_expiry, channel]
        )

    async def group_discard(self, group_key: str, channel: str) -> None:
        await self._retrying(lambda: self.client.zrem(group_key, channel))

    async def group_members(self, group_key: str, joined_after: float) -> list[str]:
        members: list[bytes] = await self._retrying(
            lambda: self.client.zrangebyscore(group_key, f"({joined_after!r}", "+inf")
        )
        return [member.decode("utf8") for member in members]

    async def group_count(self, group_key: str, joined_after: float) -> int:
        count: int = await self._retrying(
            lambda: self.client.zcount(group_key, f"({joined_after!r}", "+inf")
        )
        return int(count)

    async def group_remove(self, group_key: str, channels: Sequence[str]) -> None:
        await self._retrying(lambda: self.client.zrem(group_key, *channels))

    async def unlink(self, keys: Sequence[str]) -> None:
        """valkey-py splits the keys by slot and sends one ``UNLINK`` per slot."""
        await self._retrying(lambda: self.client.unlink(*keys))

    async def alive(
        self, registry: str, process: str, expiry: float, keep: int, known: tuple[int, str]
    ) -> AliveReply:
        args = [process, repr(expiry), keep, known[0], known[1]]
        return parse_alive(await self._script(_scripts.ALIVE, [registry], args))

    async def requeue(self, queue: str, expiry: int, items: Sequence[tuple[float, bytes]]) -> None:
        args: list[Any] = [expiry]
        for score, payload in items:
            args += [repr(score), payload]
        await self._script(_scripts.REQUEUE, [queue], args)

    async def wake(self, wake_key: str, tokens: int) -> None:
        await self._script(_scripts.WAKE, [wake_key], [tokens])

    async def delete_matching(self, pattern: str) -> int:
        """``SCAN`` every primary; ``UNLINK`` what matches, one call per slot."""
        await self.client.initialize()
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
        failover) the slot map is read again first. A full reload replaces valkey-py's node
        objects and closes their connections under any command in flight, which valkey-py
        then sends again: a message could be queued twice. So it is done only when the map
        must have changed, never for a moved slot.
        """
        if isinstance(after, MovedError):
            return self._connection_to(after.host, int(after.port))
        if after is not None:
            await self._refresh()
        else:
            await self.client.initialize()
        node = self.client.get_node_from_key(queue)
        if node is None:
            raise ServerUnreachable(self.host.describe(), LookupError(f"no node serves {queue}"))
        connection: AbstractConnection = node.connection_class(**node.connection_kwargs)
        return connection

    def _connection_to(self, host: str, port: int) -> AbstractConnection:
        node = self.client.get_node(host=host, port=port) or self.client.get_default_node()
        kwargs = {**node.connection_kwargs, "host": host, "port": port}
        connection: AbstractConnection = node.connection_class(**kwargs)
        return connection

    def abandon(self) -> None:
        abandon_cluster(self.client)

    async def aclose(self) -> None:
        await self.client.aclose()
        # valkey-py skips its own close while a reload is pending (after a connection error);
        # disconnecting the nodes again is harmless and leaves no socket open.
        await self.client.nodes_manager.aclose()
        await self.client.nodes_manager.aclose("startup_nodes")
