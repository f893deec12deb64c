"""The test bed itself: every fixture yields a server that really works.

These talk to the servers with valkey-py only (no channel layer), so a
failure here points at the environment, not at the package.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import valkey
import valkey.asyncio
import valkey.asyncio.cluster
import valkey.asyncio.sentinel

from support.servers import SentinelGroup, Topology, ValkeyServer


@asynccontextmanager
async def async_client_for(entry: Any) -> AsyncIterator[Any]:
    """Connect to one ``hosts`` entry the way a channel layer would.

    Always closes what it opened: unclosed connections are errors in this
    suite (ResourceWarning is turned into an error).
    """
    if isinstance(entry, dict) and entry.get("cluster"):
        cluster = valkey.asyncio.cluster.ValkeyCluster(
            startup_nodes=[
                valkey.asyncio.cluster.ClusterNode(host, port)
                for host, port in entry["startup_nodes"]
            ]
        )
        try:
            yield cluster
        finally:
            await cluster.aclose()
        return
    if isinstance(entry, dict) and "sentinels" in entry:
        sentinel = valkey.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            entry["sentinels"], sentinel_kwargs=entry.get("sentinel_kwargs")
        )
        client = sentinel.master_for(entry["master_name"])
        try:
            yield client
        finally:
            await client.aclose()
            for sentinel_client in sentinel.sentinels:
                await sentinel_client.aclose()
        return
    if isinstance(entry, dict):
        kwargs = dict(entry)
        client = valkey.asyncio.from_url(kwargs.pop("address"), **kwargs)  # type: ignore[no-untyped-call]
    elif isinstance(entry, tuple):
        client = valkey.asyncio.Valkey(host=entry[0], port=entry[1])
    else:
        client = valkey.asyncio.from_url(entry)  # type: ignore[no-untyped-call]
    try:
        yield client
    finally:
        await client.aclose()


async def _check_cluster_entry(entry: Any, primaries: list[ValkeyServer]) -> None:
    """A cluster is one ``hosts`` entry for several primaries: keys must land
    on exactly one of them each, spread over more than one."""
    assert len(primaries) >= 3
    assert all(server.client().dbsize() == 0 for server in primaries)
    keys = [f"probe:cluster:{i}" for i in range(20)]
    async with async_client_for(entry) as client:
        assert await client.ping() is True
        for key in keys:
            await client.set(key, b"value")
    # KEYS only looks at the node itself (EXISTS would answer MOVED).
    per_node = [
        {key.decode() for key in server.client().keys("probe:cluster:*")} for server in primaries
    ]
    assert sorted(key for node in per_node for key in node) == sorted(keys)
    assert sum(1 for node in per_node if node) > 1


async def test_every_topology_answers_through_its_hosts_form(
    topology: Topology, hosts: list[Any], topology_servers: list[ValkeyServer]
) -> None:
    if topology.name == "cluster":
        assert len(hosts) == 1
        await _check_cluster_entry(hosts[0], topology_servers)
        return
    assert len(hosts) == len(topology_servers)
    for index, (entry, server) in enumerate(zip(hosts, topology_servers, strict=True)):
        # The fixture emptied every server before the test.
        assert server.client().dbsize() == 0
        key = f"probe:{topology.name}:{index}"
        async with async_client_for(entry) as client:
            assert await client.ping() is True
            await client.set(key, b"value")
        # The write went to exactly the server the fixture says is behind it.
        assert server.client().get(key) == b"value"
        assert server.commandstats().get("set") == 1
        assert "flushall" not in server.commandstats()


async def test_shards_are_separate_servers(valkey_shards: list[ValkeyServer]) -> None:
    ports = {shard.port for shard in valkey_shards}
    assert len(ports) == 3
    first, *others = valkey_shards
    first.client().set("only-on-first", b"1")
    try:
        assert all(other.client().get("only-on-first") is None for other in others)
    finally:
        first.client().delete("only-on-first")


async def test_standalone_url(valkey_server: ValkeyServer) -> None:
    assert valkey_server.url == f"valkey://127.0.0.1:{valkey_server.port}"
    client = valkey.asyncio.from_url(valkey_server.url)  # type: ignore[no-untyped-call]
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_unix_socket_server_has_no_tcp_port(valkey_unix: ValkeyServer) -> None:
    assert valkey_unix.port == 0
    assert valkey_unix.unix_path is not None
    assert valkey_unix.url == f"unix://{valkey_unix.unix_path}"
    assert valkey_unix.client().config_get("port") == {"port": "0"}
    client = valkey.asyncio.Valkey(unix_socket_path=valkey_unix.unix_path)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_tls_with_client_certificate(valkey_tls: ValkeyServer) -> None:
    assert valkey_tls.tls is not None
    client = valkey.asyncio.from_url(valkey_tls.tls_url, **valkey_tls.ssl_kwargs())  # type: ignore[no-untyped-call]
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_tls_rejects_missing_client_certificate(valkey_tls: ValkeyServer) -> None:
    client = valkey.asyncio.from_url(valkey_tls.tls_url, **valkey_tls.ssl_kwargs(client_cert=False))  # type: ignore[no-untyped-call]
    try:
        with pytest.raises(valkey.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()


async def test_tls_rejects_unknown_ca(valkey_tls: ValkeyServer) -> None:
    kwargs = valkey_tls.ssl_kwargs()
    del kwargs["ssl_ca_certs"]  # fall back to the system store: our CA is unknown there
    client = valkey.asyncio.from_url(valkey_tls.tls_url, **kwargs)  # type: ignore[no-untyped-call]
    try:
        with pytest.raises(valkey.ConnectionError) as excinfo:
            await client.ping()
        assert isinstance(excinfo.value.__cause__, ssl.SSLError) or "certificate" in str(
            excinfo.value
        )
    finally:
        await client.aclose()


async def test_sentinel_finds_primary(valkey_sentinel: SentinelGroup) -> None:
    primary = valkey_sentinel.primary
    assert primary.role() == "master"
    assert valkey_sentinel.replica.role() == "slave"
    sentinel = valkey.asyncio.sentinel.Sentinel(valkey_sentinel.sentinels, sentinel_kwargs={})  # type: ignore[no-untyped-call]
    client = sentinel.master_for("mymaster")
    try:
        assert await sentinel.discover_master("mymaster") == primary.address
        await client.set("via-sentinel", b"1")
        assert primary.client().get("via-sentinel") == b"1"
        assert primary.client().delete("via-sentinel") == 1
    finally:
        await client.aclose()
        for sentinel_client in sentinel.sentinels:
            await sentinel_client.aclose()


def test_commandstats_counts_calls(valkey_server: ValkeyServer) -> None:
    valkey_server.reset_stats()
    client = valkey_server.client()
    for i in range(3):
        client.set(f"stats:{i}", i)
    client.delete("stats:0", "stats:1", "stats:2")
    stats = valkey_server.commandstats()
    assert stats["set"] == 3
    assert stats["del"] == 1
    assert "get" not in stats


def test_persistent_server_keeps_data_across_restart(persistent_server: ValkeyServer) -> None:
    port, directory = persistent_server.port, persistent_server.dir
    old_pid = persistent_server.pid
    persistent_server.client().set("survivor", b"graceful")
    persistent_server.restart()
    assert persistent_server.pid != old_pid
    assert (persistent_server.port, persistent_server.dir) == (port, directory)
    assert persistent_server.client().get("survivor") == b"graceful"

    # appendfsync always: even a crash keeps every acknowledged write.
    persistent_server.client().set("survivor", b"crash")
    persistent_server.kill()
    assert not persistent_server.running
    with pytest.raises(valkey.ConnectionError):
        valkey.Valkey(host="127.0.0.1", port=port, socket_connect_timeout=1).ping()
    persistent_server.start()
    assert persistent_server.client().get("survivor") == b"crash"


def test_non_persistent_server_loses_data_on_restart() -> None:
    # Counterpart of the test above, on a throw-away server: without
    # persistence a restart must come back empty.
    with ValkeyServer(name="ephemeral") as server:
        server.client().set("gone", b"1")
        server.restart()
        assert server.client().get("gone") is None


@pytest.mark.slow
async def test_failover_promotes_replica(sentinel_failover_group: SentinelGroup) -> None:
    group = sentinel_failover_group
    old_primary, replica = group.primary, group.replica
    old_primary.client().set("before-failover", b"kept")

    new_address = group.failover_by_killing_primary()

    assert new_address == replica.address
    assert not old_primary.running
    assert group.primary is replica
    assert replica.role() == "master"
    assert replica.client().get("before-failover") == b"kept"

    # Clients that go through Sentinel now land on the promoted replica.
    sentinel = valkey.asyncio.sentinel.Sentinel(group.sentinels, sentinel_kwargs={})  # type: ignore[no-untyped-call]
    client = sentinel.master_for("mymaster")
    try:
        assert await sentinel.discover_master("mymaster") == replica.address
        await client.set("after-failover", b"1")
        assert replica.client().get("after-failover") == b"1"
    finally:
        await client.aclose()
        for sentinel_client in sentinel.sentinels:
            await sentinel_client.aclose()
