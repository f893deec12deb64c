"""Helpers for the pub/sub layer's tests: bounded receives, and what the servers show.

Receives are wrapped in ``asyncio.wait_for``, so a lost message fails the test instead of
hanging it. Unsubscribing is not awaited by the layer, so the helpers that wait for the server
to show it poll with a bound (there is no event to await).

On the ``cluster`` topology the layer uses sharded pub/sub: the helpers that look at the
servers ask for shard channels (``PUBSUB SHARDNUMSUB``/``SHARDCHANNELS``) on the primary that
serves a name's slot, instead of classic channels on the shard the name hashes to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from valkey.crc import key_slot

from channels_valkey._common.sharding import shard_index
from channels_valkey._pubsub.loop_layer import LoopLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.servers import ValkeyServer, wait_for

#: How long any one expected message may take.
RECEIVE_TIMEOUT = 5.0
#: How long to watch for a message that must not come. Everything it could be was published
#: before the wait starts, so this only has to cover the push.
SILENCE_TIMEOUT = 0.3

OpenLayer = Callable[..., ValkeyPubSubChannelLayer]

#: The topologies of the ``hosts`` fixture the pub/sub layer serves: all of them.
PUBSUB_TOPOLOGIES = ["standalone", "sharded", "unix", "tls", "sentinel", "cluster", "python-parser"]
every_topology = pytest.mark.parametrize("topology", PUBSUB_TOPOLOGIES, indirect=True)


async def receive(layer: Any, channel: str) -> dict[str, Any]:
    """``receive()`` that fails the test instead of hanging it when a message is lost."""
    message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)
    return message


async def nothing_for(layer: ValkeyPubSubChannelLayer, channel: str) -> bool:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), SILENCE_TIMEOUT)
        return False
    return True


def loop_layer(layer: ValkeyPubSubChannelLayer) -> LoopLayer:
    """The running event loop's state of ``layer``, to count what it holds."""
    return layer._loops.current()


def on_cluster(servers: list[ValkeyServer]) -> bool:
    return any("cluster-enabled yes" in server.extra_config for server in servers)


def owner(servers: list[ValkeyServer], name: str) -> ValkeyServer:
    """The server a pub/sub name lives on: the shard it hashes to (the same hash as
    channels_redis), or on a cluster the primary serving its slot now."""
    if not on_cluster(servers):
        return servers[shard_index(name, len(servers))]
    slot = key_slot(name.encode())
    admin: Any = servers[0].client()
    for start, end, primary, *_ in admin.execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return next(server for server in servers if server.port == int(primary[1]))
    raise LookupError(f"no primary serves slot {slot}")


def numsub(servers: list[ValkeyServer], name: str) -> int:
    """How many connections are subscribed to ``name`` on the server owning it."""
    admin: Any = owner(servers, name).client()
    if on_cluster(servers):
        return int(admin.execute_command("PUBSUB", "SHARDNUMSUB", name)[1])
    return int(admin.pubsub_numsub(name)[0][1])


def subscribed_names(servers: list[ValkeyServer]) -> set[str]:
    """Every pub/sub channel with a subscriber on any server, Sentinel's own excluded."""
    names: set[str] = set()
    for server in servers:
        admin: Any = server.client()
        if on_cluster(servers):
            names |= {name.decode() for name in admin.execute_command("PUBSUB", "SHARDCHANNELS")}
        else:
            names |= {name.decode() for name in admin.pubsub_channels()}
    return {name for name in names if not name.startswith("__sentinel__")}


def made_by_valkey_py(client: dict[str, Any]) -> bool:
    """Whether a ``CLIENT LIST`` entry is a connection valkey-py made, not one of Sentinel's.

    Servers with ``CLIENT SETINFO`` (Valkey, Redis >= 7.2) report the library as ``lib-name``;
    Redis 7.0 does not, and there Sentinel's connections are told apart by the names Sentinel
    gives them (``sentinel-<id>-cmd``, ``sentinel-<id>-pubsub``).
    """
    if "lib-name" in client:
        return bool(client["lib-name"] == "valkey-py")
    return not str(client.get("name", "")).startswith("sentinel-")


def layer_connections(server: ValkeyServer) -> int:
    """Subscribed connections made by valkey-py (Sentinel's own are not)."""
    clients = server.client().client_list(_type="pubsub")
    return sum(made_by_valkey_py(client) for client in clients)


async def eventually(predicate: Callable[[], object], describe: str, timeout: float = 5) -> None:
    """Wait, with a bounded poll, for server state that has no event to await."""
    await asyncio.to_thread(wait_for, predicate, timeout=timeout, describe=describe)


async def until_subscribed(servers: list[ValkeyServer], name: str, count: int) -> None:
    await eventually(lambda: numsub(servers, name) == count, f"{count} subscriber(s) of {name}")


async def until_nothing_subscribed(servers: list[ValkeyServer]) -> None:
    await eventually(lambda: not subscribed_names(servers), "every subscription to go")
