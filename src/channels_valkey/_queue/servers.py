"""Choose the core layer's server class for each ``hosts`` entry: one server, Sentinel, or a
cluster."""

from __future__ import annotations

from channels_valkey._common.hosts import ClusterHost, Host

from .cluster import ClusterShard
from .shard import QueueServer, Shard


def open_server(host: Host) -> QueueServer:
    """The core layer's commands for ``host``, on the running event loop (opens nothing yet)."""
    return ClusterShard(host) if isinstance(host, ClusterHost) else Shard(host)
