"""Health checks (``health_check_interval``, on by default): a connection that has been quiet
for longer is pinged before its next command, and replaced when the PING gets no answer."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.exceptions import ServerUnreachable
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.proxy import SilencingProxy, accept_and_close
from support.servers import Topology, ValkeyServer

#: Short enough for a test to wait out; the default is 30 seconds.
INTERVAL = 0.2


def with_options(hosts: list[Any], **options: Any) -> list[Any]:
    """``hosts`` with connection ``options`` added to every entry, whatever its form."""

    def entry_with_options(entry: Any) -> dict[str, Any]:
        if isinstance(entry, dict):
            return {**entry, **options}
        if isinstance(entry, tuple):
            return {"host": entry[0], "port": entry[1], **options}
        return {"address": entry, **options}

    return [entry_with_options(entry) for entry in hosts]


class LayerPings:
    """Counts the PINGs sent by the connections that send the layer's messages, on every
    server, as the servers execute them (``MONITOR``).

    ``INFO commandstats`` would count every client's PINGs: a Sentinel PINGs the primary it
    monitors every second, so on a busy machine, where a round of sends takes longer, one of
    those lands in the count now and then. A connection is the layer's when it also sent the
    ``EVALSHA`` of a send.
    """

    def __init__(self, servers: list[ValkeyServer]) -> None:
        self._servers = servers
        self._monitors: list[Any] = []
        for server in servers:
            monitor = server.client().monitor()
            monitor.__enter__()
            self._monitors.append(monitor)

    def since_last_count(self) -> int:
        """PINGs from the layer's connections since the previous call (or the start)."""
        total = 0
        for server, monitor in zip(self._servers, self._monitors, strict=True):
            marker = f"pings-counted-{uuid.uuid4().hex}"
            server.client().echo(marker)  # executed after everything the layer sent so far
            pings: Counter[tuple[str, str]] = Counter()
            senders: set[tuple[str, str]] = set()
            while True:
                seen = monitor.next_command()
                words = seen["command"].split()
                if words == ["ECHO", marker]:
                    break
                sender = (seen["client_address"], seen["client_port"])
                if words[0].upper() == "PING":
                    pings[sender] += 1
                elif words[0].upper() == "EVALSHA":
                    senders.add(sender)
            total += sum(count for sender, count in pings.items() if sender in senders)
        return total

    def close(self) -> None:
        for monitor in self._monitors:
            monitor.__exit__(None, None, None)


async def quiet() -> None:
    """Let the connections stay quiet for longer than the interval: the waiting is the test."""
    await asyncio.sleep(INTERVAL * 1.5)


async def test_a_quiet_connection_is_pinged_before_its_next_command(
    topology: Topology,
) -> None:
    layer = ValkeyChannelLayer(hosts=with_options(topology.hosts, health_check_interval=INTERVAL))
    # Sends to a normal channel take each hosts entry in turn: one round opens a connection
    # to every server the channel lives on.
    servers = len(topology.hosts)
    sent = 0

    async def send_round() -> None:
        nonlocal sent
        for _ in range(servers):
            await layer.send("jobs", {"type": "m", "n": sent})
            sent += 1

    await send_round()
    pings = LayerPings(topology.servers)
    try:
        await send_round()  # busy connections are not pinged
        assert await asyncio.to_thread(pings.since_last_count) == 0
        await quiet()
        await send_round()
        assert await asyncio.to_thread(pings.since_last_count) == servers
        await send_round()
        assert await asyncio.to_thread(pings.since_last_count) == 0
    finally:
        pings.close()

    received = sorted([(await layer.receive("jobs"))["n"] for _ in range(sent)])
    assert received == list(range(sent))
    await layer.flush()
    await layer.close()


async def test_a_connection_dropped_in_silence_is_replaced(valkey_server: ValkeyServer) -> None:
    """A connection that a NAT or load balancer dropped without a word swallows what is
    written to it: without the check the send would sit out the whole read timeout (here
    30 s, as one might set for slow commands) before retrying; the PING waits only as long as
    a connect may take (``socket_connect_timeout``), and the message itself never goes out on
    the dead connection."""
    valkey_server.flushall()
    proxy = await SilencingProxy(valkey_server.address).start()
    options = {
        "health_check_interval": INTERVAL,
        "socket_connect_timeout": 1,
        "socket_timeout": 30,
    }
    layer = ValkeyChannelLayer(hosts=with_options([proxy.url], **options))
    direct = ValkeyChannelLayer(hosts=[valkey_server.url])

    await layer.send("jobs", {"type": "m", "n": 1})
    proxy.silence()
    await quiet()
    await asyncio.wait_for(layer.send("jobs", {"type": "m", "n": 2}), 10)

    assert [(await direct.receive("jobs"))["n"] for _ in range(2)] == [1, 2]
    await layer.close()
    await direct.close()
    await proxy.aclose()


@pytest.mark.parametrize("entry", ["server", "cluster"])
async def test_an_endpoint_that_accepts_and_closes_fails_in_seconds(entry: str) -> None:
    """The endpoint a proxy in front of a dead node presents: with the check on, as it is by
    default, a command still ends with a clear error instead of hanging."""
    async with accept_and_close() as (host, port):
        hosts: list[Any] = (
            [f"valkey://{host}:{port}"]
            if entry == "server"
            else [{"cluster": True, "startup_nodes": [(host, port)]}]
        )
        layer = ValkeyChannelLayer(hosts=hosts)
        with pytest.raises(ServerUnreachable, match=str(port)):
            await asyncio.wait_for(layer.send("jobs", {"type": "m"}), 30)
        await layer.close()


async def test_pubsub_subscriptions_are_not_disturbed_by_the_check(topology: Topology) -> None:
    """A subscribed connection is read by one task while another writes to it; it watches its
    own liveness and is never probed, or the probe's read would race the reader's."""
    layer = ValkeyPubSubChannelLayer(
        hosts=with_options(topology.hosts, health_check_interval=INTERVAL)
    )
    first = await layer.new_channel()
    await layer.group_add("room", first)
    await quiet()
    second = await layer.new_channel()  # written on the quiet subscribed connection
    await layer.group_add("room", second)
    await layer.group_send("room", {"type": "hello"})
    assert await asyncio.wait_for(layer.receive(first), 5) == {"type": "hello"}
    assert await asyncio.wait_for(layer.receive(second), 5) == {"type": "hello"}
    await layer.close()


async def test_a_refused_ping_still_counts_as_an_answer(valkey_server: ValkeyServer) -> None:
    """An ACL user may lack ``PING``: the server answered, so the connection is alive and the
    command goes on, on the same connection."""
    valkey_server.flushall()
    admin = valkey_server.client()
    admin.execute_command("ACL", "SETUSER", "noping", "reset", "on", ">pw", "~*", "&*", "+@all")
    admin.execute_command("ACL", "SETUSER", "noping", "-ping")
    url = f"valkey://noping:pw@{valkey_server.host}:{valkey_server.port}"
    layer = ValkeyChannelLayer(hosts=with_options([url], health_check_interval=INTERVAL))
    direct = ValkeyChannelLayer(hosts=[valkey_server.url])
    try:
        await layer.send("jobs", {"type": "m", "n": 1})
        connections = len(admin.client_list())
        await quiet()
        await layer.send("jobs", {"type": "m", "n": 2})
        assert len(admin.client_list()) == connections  # not replaced
        assert [(await direct.receive("jobs"))["n"] for _ in range(2)] == [1, 2]
    finally:
        await layer.close()
        await direct.close()
        admin.execute_command("ACL", "DELUSER", "noping")
