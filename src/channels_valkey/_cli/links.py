"""How the command-line tool reaches a server: the layer's own clients, asked once.

The tool connects with the layer's helpers (``_queue.shard.Shard``,
``_common.connections.build_cluster``), so a URL, TLS files, a password, a unix socket or a Sentinel
entry mean exactly what they mean to the layer. Two things differ, because a diagnostic must answer
now rather than ride out an outage as the layer does: a command is tried once, and connecting or
waiting for a reply gives up after ``timeout`` seconds (unless the settings set their own socket
timeouts).

:class:`Link` hides whether the server is reached through a plain client or as a node of a
cluster, so the checks and the key scan are written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Protocol

from valkey.asyncio import Valkey
from valkey.asyncio.cluster import ClusterNode, PipelineCommand
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError
from valkey.exceptions import ValkeyClusterException, ValkeyError

from channels_valkey._common.hosts import ClusterHost, Host, SentinelHost
from channels_valkey._common.scripts import Arg

#: Errors that mean the server could not be reached (or refused to log us in: valkey-py's
#: AuthenticationError is a ConnectionError), as opposed to a reply the server refused.
UNREACHABLE: tuple[type[Exception], ...] = (
    ValkeyConnectionError,
    ValkeyTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)

#: Everything a server can answer with besides a reply: unreachable, or a refused command.
FAILURES: tuple[type[Exception], ...] = (*UNREACHABLE, ValkeyError, ValkeyClusterException)


class Link(Protocol):
    """One server, as the tool talks to it."""

    #: ``host:port`` (or the entry's redacted description), for the report.
    address: str

    async def call(self, *args: Arg) -> Any:
        """One command; a refused command raises its ``ResponseError``."""

    async def batch(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands in one round trip; a refused one gives its error as its result."""


class ClientLink:
    """A server behind a plain client: one server, or a Sentinel-managed primary."""

    def __init__(self, client: Valkey, address: str) -> None:
        self.client = client
        self.address = address

    async def call(self, *args: Arg) -> Any:
        return await self.client.execute_command(*args)  # type: ignore[no-untyped-call]

    async def batch(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        if not commands:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))


class NodeLink:
    """One node of a cluster, addressed directly (no slot routing): the tool asks each node
    about itself, and the keys a node's ``SCAN`` returned live on that node."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.address: str = node.name

    async def call(self, *args: Arg) -> Any:
        return await self.node.execute_command(*args)

    async def batch(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        if not commands:
            return []
        pipeline = [PipelineCommand(index, *command) for index, command in enumerate(commands)]
        await self.node.execute_pipeline(pipeline)
        return [command.result for command in pipeline]


def one_attempt() -> Retry:
    return Retry(NoBackoff(), 0)


def for_diagnosis(host: Host, timeout: float) -> Host:
    """``host`` with the tool's socket timeouts where the settings give none, and no retries."""

    def with_timeouts(kwargs: Any) -> dict[str, Any]:
        options = dict(kwargs)
        options.setdefault("socket_connect_timeout", timeout)
        options.setdefault("socket_timeout", timeout)
        return options

    if isinstance(host, ClusterHost):  # the cluster client drops connection retries itself
        return dataclasses.replace(host, kwargs=MappingProxyType(with_timeouts(host.kwargs)))
    kwargs = {**with_timeouts(host.kwargs), "retry": one_attempt()}
    if isinstance(host, SentinelHost):
        return dataclasses.replace(
            host,
            kwargs=MappingProxyType(kwargs),
            sentinel_kwargs=MappingProxyType(with_timeouts(host.sentinel_kwargs)),
        )
    return dataclasses.replace(host, kwargs=MappingProxyType(kwargs))


def text(reply: object) -> str:
    """A reply as text: replies are bytes, since the layer's clients never decode."""
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "backslashreplace")
    return str(reply)


def describe_error(error: BaseException) -> str:
    return str(error) or type(error).__name__
