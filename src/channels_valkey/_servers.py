"""Choose the server class for each ``hosts`` entry: one server, Sentinel, or a cluster."""

from __future__ import annotations

from ._client import QueueServer, Shard
from ._cluster import ClusterShard
from ._connections import check_cluster_host, check_host
from ._hosts import ClusterHost, Host


def open_server(host: Host) -> QueueServer:
    """The core layer's commands for ``host``, on the running event loop (opens nothing yet)."""
    return ClusterShard(host) if isinstance(host, ClusterHost) else Shard(host)


def check_server(host: Host) -> None:
    """Fail at construction on options the client would only reject when connecting."""
    if isinstance(host, ClusterHost):
        check_cluster_host(host)
    else:
        check_host(host)
