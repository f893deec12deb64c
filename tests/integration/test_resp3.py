"""The protocol, on every topology, for both layers: RESP2 is spoken, RESP3 is refused.

``protocol=3`` in a ``hosts`` entry (a keyword or in the URL's query string) is refused when
the layer is built, with a ConfigurationError naming the entry; ``protocol=2`` and no
``protocol`` at all work, and every connection the servers see speaks RESP2 (``CLIENT LIST``
reports ``resp=2``). Run on every combination of the CI matrix, the last check also catches a
valkey-py release that would move its default to RESP3 under the layers (as redis-py 8 did).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.exceptions import ConfigurationError
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.servers import Topology, ValkeyServer

RECEIVE_TIMEOUT = 5

LAYERS = [ValkeyChannelLayer, ValkeyPubSubChannelLayer]
#: The topologies whose hosts hold a URL (Sentinel and cluster entries have none).
URL_TOPOLOGIES = ["standalone", "sharded", "unix", "tls", "python-parser"]
LayerClass = type[ValkeyChannelLayer] | type[ValkeyPubSubChannelLayer]


def with_protocol(hosts: list[Any], protocol: int | str) -> list[Any]:
    """``hosts`` with ``protocol`` added to every entry, whatever its form."""
    entries: list[Any] = []
    for entry in hosts:
        if isinstance(entry, str):
            entries.append({"address": entry, "protocol": protocol})
        elif isinstance(entry, tuple | list):
            entries.append({"host": entry[0], "port": entry[1], "protocol": protocol})
        else:
            entries.append({**entry, "protocol": protocol})
    return entries


def in_url_query(hosts: list[Any], protocol: int) -> list[Any]:
    """``hosts`` with ``?protocol=N`` in every URL; entries without a URL are kept as they are."""

    def add(url: str) -> str:
        return f"{url}{'&' if '?' in url else '?'}protocol={protocol}"

    entries: list[Any] = []
    for entry in hosts:
        if isinstance(entry, str):
            entries.append(add(entry))
        elif isinstance(entry, dict) and "address" in entry:
            entries.append({**entry, "address": add(entry["address"])})
        else:
            entries.append(entry)
    return entries


def resp_versions(servers: list[ValkeyServer]) -> list[str]:
    """The protocol of every connection the servers have, as ``CLIENT LIST`` reports it."""
    versions: list[str] = []
    for server in servers:
        admin: Any = server.client()
        versions += [str(client.get("resp")) for client in admin.client_list()]
    return versions


async def round_trip(layer: Any) -> None:
    """A send and a group send to a channel of ``layer``, both received."""
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "direct"})
    assert await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT) == {"type": "direct"}
    await layer.group_add("resp-check", channel)
    await layer.group_send("resp-check", {"type": "to.group"})
    got = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)
    assert got == {"type": "to.group"}


async def close(layer: Any) -> None:
    if isinstance(layer, ValkeyChannelLayer):
        await layer.flush()
    await layer.close()


@pytest.mark.parametrize("layer_class", LAYERS)
def test_protocol_3_is_refused_at_construction(layer_class: LayerClass, topology: Topology) -> None:
    with pytest.raises(ConfigurationError) as refused:
        layer_class(hosts=with_protocol(topology.hosts, 3))
    message = str(refused.value)
    assert re.search(r"hosts\[0\](\['sentinel_kwargs'\])? \(", message), message
    assert "protocol=3 (RESP3)" in message
    assert "RESP2 only" in message


@pytest.mark.parametrize("topology", URL_TOPOLOGIES, indirect=True)
@pytest.mark.parametrize("layer_class", LAYERS)
def test_protocol_3_in_the_url_is_refused_at_construction(
    layer_class: LayerClass, topology: Topology
) -> None:
    hosts = in_url_query(topology.hosts, 3)
    assert hosts != topology.hosts
    with pytest.raises(ConfigurationError, match=r"protocol='3' \(RESP3\)"):
        layer_class(hosts=hosts)


@pytest.mark.parametrize("layer_class", LAYERS)
@pytest.mark.parametrize("protocol", [None, 2, "2"], ids=["default", "2", "2-as-string"])
async def test_the_layers_speak_resp2(
    layer_class: LayerClass, protocol: int | str | None, topology: Topology
) -> None:
    hosts = topology.hosts if protocol is None else with_protocol(topology.hosts, protocol)
    layer: Any = layer_class(hosts=hosts)
    try:
        await round_trip(layer)
        # The layer's connections are open now (a pub/sub layer's subscription among them).
        versions = resp_versions(topology.servers)
    finally:
        await close(layer)
    assert set(versions) == {"2"}, versions
    # Besides each server's own admin connection, the layer's.
    assert len(versions) > len(topology.servers)


@pytest.mark.parametrize("topology", URL_TOPOLOGIES, indirect=True)
async def test_protocol_2_in_the_url_works(topology: Topology) -> None:
    hosts = in_url_query(topology.hosts, 2)
    assert hosts != topology.hosts
    for layer_class in LAYERS:
        layer: Any = layer_class(hosts=hosts)
        try:
            await round_trip(layer)
        finally:
            await close(layer)
