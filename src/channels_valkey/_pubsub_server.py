"""One server as the pub/sub layer sees it from one event loop.

A pool (from ``_client.build_pool``, which handles TLS, unix sockets and Sentinel) serves
``PUBLISH``; subscriptions use a connection made by that pool but kept outside it, owned by a
:class:`~channels_valkey._pubsub_subscriber.Subscriber`, because a subscribed connection can
carry nothing else.
"""

from __future__ import annotations

from valkey.asyncio import Valkey
from valkey.asyncio.connection import AbstractConnection
from valkey.asyncio.sentinel import SentinelConnectionPool

from ._client import TRANSIENT_ERRORS, build_pool
from ._hosts import SentinelHost, ServerHost
from .exceptions import ServerUnreachable

PubSubHost = ServerHost | SentinelHost


class PubSubServer:
    def __init__(self, host: PubSubHost) -> None:
        self.host = host
        self.pool = build_pool(host)
        self.client = Valkey(connection_pool=self.pool)

    def __repr__(self) -> str:
        return f"<PubSubServer {self.host.describe()}>"

    def describe(self) -> str:
        return self.host.describe()

    async def publish(self, name: str, payload: bytes) -> int:
        """``PUBLISH``; returns how many subscribed connections (in any process) got it."""
        try:
            return int(await self.client.publish(name, payload))
        except TRANSIENT_ERRORS as error:
            raise ServerUnreachable(self.describe(), error) from error

    def subscriber_connection(self) -> AbstractConnection:
        """A new, unconnected connection outside the pool, for one subscriber to own."""
        connection: AbstractConnection = self.pool.make_connection()  # type: ignore[no-untyped-call]
        return connection

    async def aclose(self) -> None:
        await self.client.aclose(close_connection_pool=True)
        if isinstance(self.pool, SentinelConnectionPool):
            # The pool asks the sentinels through clients of their own, which it does not close.
            for sentinel in self.pool.sentinel_manager.sentinels:
                await sentinel.aclose()
