"""Every connection both layers and the command-line tool make: options, pools, clients.

One place decides how a ``hosts`` entry becomes connections: the layer's defaults for
networks that drop idle connections (keepalive, a bounded connect), no retries of valkey-py's
own (the layer's policy in ``_common.retry`` decides), the health check (``_common.health``), TLS,
unix sockets, Sentinel and Cluster. The core layer's servers (``_queue.shard.Shard``,
``_queue.cluster.ClusterShard``), the pub/sub layer's (``_pubsub.placement``, ``_pubsub.cluster``)
and the command-line tool all take their pools and clients from here; the hot path's commands then
ride one multiplexed connection per server and event loop (``_common.lane``).
"""

from __future__ import annotations

import socket
from typing import Any, cast

from valkey.asyncio import ConnectionPool
from valkey.asyncio.cluster import ClusterNode, ValkeyCluster
from valkey.asyncio.connection import AbstractConnection, Connection
from valkey.asyncio.retry import Retry
from valkey.asyncio.sentinel import Sentinel, SentinelConnectionPool
from valkey.backoff import NoBackoff
from valkey.exceptions import (
    AskError,
    ClusterDownError,
    TryAgainError,
    ValkeyClusterException,
)

from channels_valkey.exceptions import ConfigurationError

from .health import health_checked, take_interval
from .hosts import ClusterHost, Host, SentinelHost, ServerHost
from .lane import Lane
from .per_loop import release_dead
from .retry import TRANSIENT_ERRORS

#: Errors of a blocking pop after which the reader reconnects, looking the queue's server up
#: again: connection trouble, and on a cluster a slot that moved or a failover in progress.
REDIRECT_ERRORS: tuple[type[Exception], ...] = (
    *TRANSIENT_ERRORS,
    AskError,  # MovedError is an AskError
    TryAgainError,
    ClusterDownError,
    ValkeyClusterException,  # no node answered while the slot map was reloaded
)


def no_retry() -> Retry:
    """valkey-py's retry for the layers' connections: none. A connection error ends the
    attempt, and the layer's own policy (``_common.retry``) decides whether to make another;
    retrying here too would multiply the attempts under that policy's deadline. A ``retry``
    the user puts in a host's options is kept: it then works inside each of the layer's
    attempts, which makes them, and the time to ``ServerUnreachable``, longer."""
    return Retry(NoBackoff(), 0)


#: Connection defaults for networks that drop idle connections (managed Valkey services,
#: load balancers, NAT): TCP keepalive probes after a minute of silence and a bounded connect,
#: so an unreachable host fails in seconds. Each can be overridden in the host's options.
#: ``health_check_interval`` (on by default) is handled by ``_common.health``, not by valkey-py.
MANAGED_DEFAULTS: dict[str, Any] = {
    "socket_keepalive": True,
    "socket_keepalive_options": {
        option: value
        for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))
        if (option := getattr(socket, name, None)) is not None
    },
    "socket_connect_timeout": 5,
}


def _is_unix_socket(host: Host) -> bool:
    if not isinstance(host, ServerHost):
        return False
    return (host.url or "").startswith("unix:") or "path" in host.kwargs


def connection_kwargs(host: Host) -> dict[str, Any]:
    """The user's connection options, with the layer's defaults for what they left out."""
    kwargs = dict(host.kwargs)
    _require_binary(host, kwargs)
    kwargs["decode_responses"] = False
    for option, value in MANAGED_DEFAULTS.items():
        if option.startswith("socket_keepalive") and _is_unix_socket(host):
            continue  # no TCP under a unix socket
        kwargs.setdefault(option, value)
    kwargs.setdefault("retry", no_retry())
    return kwargs


def build_pool(host: ServerHost | SentinelHost) -> ConnectionPool:
    """A connection pool for ``host``; no connection is opened until a command needs one.
    Its connections are health-checked (``_common.health``)."""
    pool = _unchecked_pool(host)
    interval = take_interval(pool.connection_kwargs, host.describe())
    pool.connection_class = health_checked(pool.connection_class, interval)
    return pool


def _unchecked_pool(host: ServerHost | SentinelHost) -> ConnectionPool:
    kwargs = connection_kwargs(host)
    if isinstance(host, SentinelHost):
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(host.sentinels), sentinel_kwargs=dict(host.sentinel_kwargs)
        )
        return SentinelConnectionPool(  # type: ignore[no-untyped-call]
            host.master_name, sentinel, **kwargs
        )
    if host.url is not None:
        return ConnectionPool.from_url(host.url, **kwargs)
    if "path" in kwargs:
        from valkey.asyncio.connection import UnixDomainSocketConnection

        kwargs.setdefault("connection_class", UnixDomainSocketConnection)
    return ConnectionPool(**kwargs)


async def close_connections(pool: ConnectionPool, lane: Lane) -> None:
    """Close every connection made by ``pool``: the lane's, the pool's own, and those a
    Sentinel-managed pool opened to ask the sentinels (it does not close those itself)."""
    await lane.aclose()
    await pool.disconnect()
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def abandon_connections(pool: ConnectionPool, lane: Lane) -> None:
    """What :func:`close_connections` does, for a loop closed without cleanup: each
    connection is released without its loop (see ``per_loop.release_dead``)."""
    lane.abandon()
    for connection in pool_connections(pool):
        release_dead(connection)


def pool_connections(pool: ConnectionPool) -> list[AbstractConnection]:
    """Every connection ``pool`` made and still holds, and those of a Sentinel-managed pool's
    sentinels (valkey-py offers no public list)."""
    pools = [pool]
    if isinstance(pool, SentinelConnectionPool):
        pools += [sentinel.connection_pool for sentinel in pool.sentinel_manager.sentinels]
    connections: list[AbstractConnection] = []
    for each in pools:
        connections += getattr(each, "_available_connections", [])
        connections += getattr(each, "_in_use_connections", [])
    return connections


def check_host(host: ServerHost | SentinelHost) -> None:
    """Fail at construction on connection options valkey-py would only reject at connect time."""
    try:
        pool = build_pool(host)
        pool.make_connection()  # type: ignore[no-untyped-call]
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"{host.describe()}: bad connection option: {error}") from error
    _require_binary(host, pool.connection_kwargs)  # it may be set in the URL's query string


def _require_binary(host: Host, options: dict[str, Any]) -> None:
    if options.get("decode_responses"):
        raise ConfigurationError(
            f"{host.describe()}: decode_responses must stay off, messages are binary"
        )


def check_server(host: Host) -> None:
    """Fail at construction on options the client would only reject when connecting."""
    if isinstance(host, ClusterHost):
        check_cluster_host(host)
    else:
        check_host(host)


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


def check_cluster_host(host: ClusterHost) -> None:
    try:
        client = build_cluster(host)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"{host.describe()}: bad connection option: {error}") from error
    del client
