"""Choose the core layer's server class for each ``hosts`` entry: one server, Sentinel, or a
cluster."""

from __future__ import annotations

from ._client import QueueServer, Shard
from ._cluster import ClusterShard
from ._hosts import ClusterHost, Host


def open_server(host: Host) -> QueueServer:
    """The core layer's commands for ``host``, on the running event loop (opens nothing yet)."""
    return ClusterShard(host) if isinstance(host, ClusterHost) else Shard(host)
