"""The core layer's servers: the typed commands it sends to one server, and what it asks of
any server behind a ``hosts`` entry (:class:`QueueServer`).

A :class:`Shard` is one server (or one Sentinel-managed primary) as seen from one event loop:
a connection pool (from ``_common.connections``), whose connections carry the hot path's commands
through a ``_common.lane.Lane`` and the rare ones through valkey-py's client, and, for blocking
pops, connections of its own. Nothing typed ``Any`` leaves this module: callers get ``bool``,
``int``, ``list[str]``...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from valkey.asyncio import Valkey
from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import NoScriptError

from channels_valkey._common.connections import (
    abandon_connections,
    build_pool,
    close_connections,
)
from channels_valkey._common.hosts import Host, SentinelHost, ServerHost
from channels_valkey._common.lane import Lane
from channels_valkey._common.retry import TRANSIENT_ERRORS, retrying
from channels_valkey._common.scripts import Arg, Script
from channels_valkey.exceptions import NotReplicated, ServerUnreachable

from . import scripts


@dataclass(frozen=True)
class ReplicaWait:
    """``wait_for_replicas``: how many replicas must confirm a send, and for how long."""

    replicas: int
    timeout: float

    @property
    def timeout_ms(self) -> int:
        return max(1, round(self.timeout * 1000))

    def check(self, host: Host, confirmed: int) -> None:
        if confirmed < self.replicas:
            raise NotReplicated(host.describe(), confirmed, self.replicas, self.timeout)


class QueueServer(Protocol):
    """What the core layer asks of the servers behind one ``hosts`` entry, on one event loop:
    a :class:`Shard` (one server, or a Sentinel-managed primary) or a ``ClusterShard``."""

    host: Host

    async def send(
        self,
        queue: str,
        now: float,
        expiry: int,
        capacity: int,
        payload: bytes,
        wait: ReplicaWait | None = None,
    ) -> bool: ...

    async def send_many(
        self, deliveries: Sequence[tuple[str, int, bytes]], now: float, expiry: int
    ) -> list[int]: ...

    async def send_batch(
        self,
        writes: Sequence[scripts.BatchWrite],
        scores: Sequence[float],
        shared: Sequence[bytes],
        now: float,
        expiry: int,
        wait: ReplicaWait | None = None,
    ) -> list[int]:
        """Queue the same messages, in order, on each of ``writes``' queues, all of them or
        none per queue; returns the positions of the queues skipped for lack of room. With
        ``wait`` (one queue only), also wait for that many replicas, as ``send`` does."""
        ...

    async def group_add(self, group_key: str, channel: str, group_expiry: int) -> None: ...

    async def group_discard(self, group_key: str, channel: str) -> None: ...

    async def group_members(self, group_key: str, joined_after: float) -> list[str]: ...

    async def group_count(self, group_key: str, joined_after: float) -> int: ...

    async def group_remove(self, group_key: str, channels: Sequence[str]) -> None: ...

    async def unlink(self, keys: Sequence[str]) -> None: ...

    async def alive(
        self, registry: str, process: str, expiry: float, keep: int, known: tuple[int, str]
    ) -> scripts.AliveReply: ...

    async def requeue(
        self, queue: str, expiry: int, items: Sequence[tuple[float, bytes]]
    ) -> None: ...

    async def wake(self, wake_key: str, tokens: int) -> None: ...

    async def delete_matching(self, pattern: str) -> int: ...

    async def reader_connection(
        self, queue: str, *, after: Exception | None
    ) -> AbstractConnection: ...

    async def aclose(self) -> None: ...

    def abandon(self) -> None:
        """Close every connection without the event loop, which was closed under them."""


class Shard:
    """One server as seen from one event loop: the commands the layers send to it."""

    def __init__(self, host: ServerHost | SentinelHost) -> None:
        self.host: Host = host
        self.pool = build_pool(host)
        #: Rare commands (scans, pipelines) go through valkey-py's client, the hot path's
        #: commands through the lane.
        self.client = Valkey(connection_pool=self.pool)
        self.lane = Lane(self.pool)

    def __repr__(self) -> str:
        return f"<Shard {self.host.describe()}>"

    async def _run(self, script: Script, keys: list[str], args: list[Arg]) -> object:
        try:
            return await script(self.lane, keys, args)
        except TRANSIENT_ERRORS as error:
            raise ServerUnreachable(self.host.describe(), error) from error

    async def send(
        self,
        queue: str,
        now: float,
        expiry: int,
        capacity: int,
        payload: bytes,
        wait: ReplicaWait | None = None,
    ) -> bool:
        """Queue ``payload``; ``False`` when the channel is at capacity. With ``wait``, also
        wait (in the same round trip) until that many replicas have the message."""
        args = scripts.send_args(now, expiry, capacity, payload)
        if wait is None:
            return bool(await self._run(scripts.SEND, [queue], args))
        queued = await self._confirmed(scripts.SEND, [queue], args, wait)
        return bool(queued)

    async def _confirmed(
        self,
        script: Script,
        keys: list[str],
        args: list[Arg],
        wait: ReplicaWait,
    ) -> object:
        """Run ``script`` and wait for ``wait``'s replicas in the same round trip; its reply,
        or :class:`~channels_valkey.exceptions.NotReplicated`."""
        reply, confirmed = await retrying(
            lambda: self._run_and_wait(script, keys, args, wait),
            TRANSIENT_ERRORS,
            self.host.describe(),
        )
        wait.check(self.host, confirmed)
        return reply

    async def _run_and_wait(
        self,
        script: Script,
        keys: list[str],
        args: list[Arg],
        wait: ReplicaWait,
    ) -> tuple[object, int]:
        """``EVALSHA`` and ``WAIT`` pipelined on one connection: WAIT counts the replicas
        that have this connection's last write."""
        for _ in range(2):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
                queued, confirmed = await pipe.execute(raise_on_error=False)
            if not isinstance(queued, NoScriptError):
                break
            await self.client.script_load(script.source)
        if isinstance(queued, Exception):
            raise queued
        return queued, int(confirmed)

    async def send_many(
        self, deliveries: Sequence[tuple[str, int, bytes]], now: float, expiry: int
    ) -> list[int]:
        """Queue one payload on each ``(queue, capacity, payload)``; returns the positions of
        those that were full."""
        args = scripts.send_many_args(now, expiry, deliveries)
        full = await self._run(scripts.SEND_MANY, [queue for queue, _, _ in deliveries], args)
        return [int(index) - 1 for index in cast("list[int]", full)]

    async def send_batch(
        self,
        writes: Sequence[scripts.BatchWrite],
        scores: Sequence[float],
        shared: Sequence[bytes],
        now: float,
        expiry: int,
        wait: ReplicaWait | None = None,
    ) -> list[int]:
        args = scripts.batch_args(writes, scores, shared, now, expiry)
        keys = [queue for queue, _, _ in writes]
        if wait is None:
            full = await self._run(scripts.SEND_BATCH, keys, args)
        else:
            full = await self._confirmed(scripts.SEND_BATCH, keys, args, wait)
        return [int(index) - 1 for index in cast("list[int]", full)]

    async def group_add(self, group_key: str, channel: str, group_expiry: int) -> None:
        await self._run(
            scripts.GROUP_ADD, [group_key], scripts.group_add_args(channel, group_expiry)
        )

    async def group_discard(self, group_key: str, channel: str) -> None:
        await self._command("ZREM", group_key, channel)

    async def group_members(self, group_key: str, joined_after: float) -> list[str]:
        """Members that joined after ``joined_after``; older ones have expired."""
        members = await self._command("ZRANGEBYSCORE", group_key, f"({joined_after!r}", "+inf")
        return [member.decode("utf8") for member in members]

    async def group_count(self, group_key: str, joined_after: float) -> int:
        """How many members joined after ``joined_after``."""
        return int(await self._command("ZCOUNT", group_key, f"({joined_after!r}", "+inf"))

    async def group_remove(self, group_key: str, channels: Sequence[str]) -> None:
        await self._command("ZREM", group_key, *channels)

    async def unlink(self, keys: Sequence[str]) -> None:
        await self._command("UNLINK", *keys)

    async def alive(
        self, registry: str, process: str, expiry: float, keep: int, known: tuple[int, str]
    ) -> scripts.AliveReply:
        """Heartbeat for ``process`` (unless empty) and read the dead (``lua/alive.lua``)."""
        args = scripts.alive_args(process, expiry, keep, known)
        return scripts.parse_alive(await self._run(scripts.ALIVE, [registry], args))

    async def _command(self, *args: Arg) -> Any:
        try:
            return await self.lane.execute_command(*args)
        except TRANSIENT_ERRORS as error:
            raise ServerUnreachable(self.host.describe(), error) from error

    async def requeue(self, queue: str, expiry: int, items: Sequence[tuple[float, bytes]]) -> None:
        await self._run(scripts.REQUEUE, [queue], scripts.requeue_args(expiry, items))

    async def wake(self, wake_key: str, tokens: int) -> None:
        """Release readers blocked on ``wake_key`` (see ``_queue.reader``)."""
        await self._run(scripts.WAKE, [wake_key], [tokens])

    async def delete_matching(self, pattern: str) -> int:
        """``UNLINK`` every key matching ``pattern``, found with ``SCAN`` (never ``KEYS``);
        after a connection error the scan starts over (what was deleted stays deleted)."""
        return await retrying(
            lambda: self._delete_matching(pattern), TRANSIENT_ERRORS, self.host.describe()
        )

    async def _delete_matching(self, pattern: str) -> int:
        deleted = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.client.unlink(*batch)
        return deleted

    def blocking_connection(self) -> AbstractConnection:
        """A connection outside the pool, for a task that blocks on it (pops, subscriptions).
        A Sentinel-managed connection looks the primary up again each time it connects."""
        connection: AbstractConnection = self.pool.make_connection()  # type: ignore[no-untyped-call]
        return connection

    async def reader_connection(self, queue: str, *, after: Exception | None) -> AbstractConnection:
        """A connection for the reader of ``queue``: the same server whatever the queue."""
        return self.blocking_connection()

    async def aclose(self) -> None:
        await close_connections(self.pool, self.lane)

    def abandon(self) -> None:
        abandon_connections(self.pool, self.lane)
