"""Where the pub/sub layer publishes and subscribes, as one event loop sees it.

A :class:`Placement` routes each pub/sub name to the connection that carries it. Two exist:

- :class:`ServerPlacement` (here): servers and Sentinel-managed primaries listed in ``hosts``,
  each name on the entry its name hashes to (the consistent hash of ``channels_redis``), with
  classic ``PUBLISH``/``SUBSCRIBE``;
- ``ClusterPlacement`` (``_pubsub.cluster``): a Valkey Cluster, with sharded pub/sub.

One server is a :class:`PubSubServer`: a pool (from ``_common.connections.build_pool``, which
handles TLS, unix sockets and Sentinel) serves ``PUBLISH``; subscriptions use a connection made by
that pool but kept outside it, owned by a :class:`~channels_valkey._pubsub.subscriber.Subscriber`,
because a subscribed connection can carry nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from valkey.asyncio.connection import AbstractConnection

from channels_valkey._common.connections import (
    abandon_connections,
    build_pool,
    close_connections,
)
from channels_valkey._common.health import without_health_check
from channels_valkey._common.hosts import SentinelHost, ServerHost
from channels_valkey._common.lane import Lane
from channels_valkey._common.retry import TRANSIENT_ERRORS
from channels_valkey._common.sharding import shard_index
from channels_valkey.exceptions import ServerUnreachable

from .subscriber import Hooks, Subscriber

PubSubHost = ServerHost | SentinelHost


class Placement(Protocol):
    """Publishing and subscribing on one event loop, whatever the servers."""

    @property
    def subscribers(self) -> list[Subscriber]: ...

    async def publish(self, name: str, payload: bytes) -> int:
        """Publish; returns how many subscribed connections the server handed it to."""
        ...

    async def subscribed(self, name: str) -> int:
        """How many connections, in any process, the server that carries ``name`` has
        subscribed to it."""
        ...

    async def publish_many(self, name: str, payloads: Sequence[bytes]) -> list[int]:
        """Publish each payload on ``name`` in order, in one pipeline; returns each one's
        receiver count."""
        ...

    async def subscribe(self, name: str) -> None:
        """Return once the server that carries ``name`` has confirmed the subscription."""
        ...

    def unsubscribe(self, name: str) -> None: ...

    def describe(self, key: object) -> str:
        """Where the subscriber ``key`` (of the hooks' callbacks) connects, for logs."""
        ...

    async def aclose(self) -> None: ...

    def abandon(self) -> None:
        """Close every connection without the event loop, which was closed under them."""


class PubSubServer:
    def __init__(self, host: PubSubHost) -> None:
        self.host = host
        self.pool = build_pool(host)
        self.lane = Lane(self.pool)

    def __repr__(self) -> str:
        return f"<PubSubServer {self.host.describe()}>"

    def describe(self) -> str:
        return self.host.describe()

    async def publish(self, name: str, payload: bytes) -> int:
        """``PUBLISH``; returns how many subscribed connections (in any process) got it."""
        try:
            return int(await self.lane.execute_command("PUBLISH", name, payload))
        except TRANSIENT_ERRORS as error:
            raise ServerUnreachable(self.describe(), error) from error

    async def subscribed(self, name: str) -> int:
        """``PUBSUB NUMSUB``: how many connections (in any process) subscribe to ``name``."""
        try:
            _, count = await self.lane.execute_command("PUBSUB", "NUMSUB", name)
        except TRANSIENT_ERRORS as error:
            raise ServerUnreachable(self.describe(), error) from error
        return int(count)

    async def publish_many(self, name: str, payloads: Sequence[bytes]) -> list[int]:
        """One ``PUBLISH`` per payload, written together on one connection."""
        try:
            replies = await self.lane.execute_many(
                [("PUBLISH", name, payload) for payload in payloads]
            )
        except TRANSIENT_ERRORS as error:
            raise ServerUnreachable(self.describe(), error) from error
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [int(reply) for reply in replies]

    def subscriber_connection(self) -> AbstractConnection:
        """A new, unconnected connection outside the pool, for one subscriber to own."""
        connection: AbstractConnection = self.pool.make_connection()  # type: ignore[no-untyped-call]
        return without_health_check(connection)

    async def aclose(self) -> None:
        await close_connections(self.pool, self.lane)

    def abandon(self) -> None:
        abandon_connections(self.pool, self.lane)


class ServerPlacement:
    """The ``hosts`` entries of a standalone or Sentinel setup: one server and one subscriber
    per entry; a name lives on the entry it hashes to. Subscriber keys are entry indexes."""

    def __init__(self, hosts: Sequence[PubSubHost], hooks: Hooks) -> None:
        self.servers = [PubSubServer(host) for host in hosts]
        self._subscribers = [
            Subscriber(server, hooks, key=index) for index, server in enumerate(self.servers)
        ]

    def __repr__(self) -> str:
        return f"<ServerPlacement shards={len(self.servers)}>"

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._subscribers)

    def _index(self, name: str) -> int:
        return shard_index(name, len(self.servers))

    async def publish(self, name: str, payload: bytes) -> int:
        return await self.servers[self._index(name)].publish(name, payload)

    async def subscribed(self, name: str) -> int:
        return await self.servers[self._index(name)].subscribed(name)

    async def publish_many(self, name: str, payloads: Sequence[bytes]) -> list[int]:
        return await self.servers[self._index(name)].publish_many(name, payloads)

    async def subscribe(self, name: str) -> None:
        await self._subscribers[self._index(name)].subscribe(name)

    def unsubscribe(self, name: str) -> None:
        self._subscribers[self._index(name)].unsubscribe(name)

    def describe(self, key: object) -> str:
        return self.servers[key].describe() if isinstance(key, int) else str(key)

    def abandon(self) -> None:
        for subscriber in self._subscribers:
            subscriber.abandon()
        for server in self.servers:
            server.abandon()

    async def aclose(self) -> None:
        await asyncio.gather(*(subscriber.aclose() for subscriber in self._subscribers))
        await asyncio.gather(*(server.aclose() for server in self.servers))
