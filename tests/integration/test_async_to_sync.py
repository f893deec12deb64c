"""``async_to_sync(layer.send)`` and friends from synchronous code (a WSGI view, a Celery task):
asgiref makes an event loop per call, in a thread of its own; the layers' sends run on their
long-lived background loop instead, so its connections stay warm between calls."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull

from channels_valkey._common.background import background
from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.servers import ValkeyServer

LAYERS = {"core": ValkeyChannelLayer, "pubsub": ValkeyPubSubChannelLayer}


def connections_received(servers: list[ValkeyServer]) -> int:
    return sum(int(s.client().info("stats")["total_connections_received"]) for s in servers)


@pytest.fixture(autouse=True)
def stop_background() -> Any:
    """No test inherits another's background connections."""
    yield
    background.stop()


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize(
    "topology", ["standalone", "sharded", "sentinel", "tls", "cluster"], indirect=True
)
async def test_sync_sends_deliver_and_open_no_connection_per_call(
    kind: str, hosts: list[Any], topology_servers: list[ValkeyServer]
) -> None:
    """Two rounds of 40 calls through ``async_to_sync``, each on a new loop: every message
    arrives once, in order, and the second round opens no connection on any server."""
    receiving = LAYERS[kind](hosts=hosts, capacity=1000)
    sending = LAYERS[kind](hosts=hosts, capacity=1000)
    channel = await receiving.new_channel()
    await receiving.group_add("room", channel)

    def calls(first: int) -> None:
        for n in range(first, first + 20):
            async_to_sync(sending.group_send)("room", {"type": "m", "n": n})
            async_to_sync(sending.send)(channel, {"type": "m", "n": n})

    await asyncio.to_thread(calls, 0)  # reaches every server: connections are made
    before = connections_received(topology_servers)
    await asyncio.to_thread(calls, 20)
    assert connections_received(topology_servers) == before

    got = [(await receiving.receive(channel))["n"] for _ in range(80)]
    assert sorted(got[0::2] + got[1::2]) == sorted(list(range(40)) * 2)
    assert [n for i, n in enumerate(got) if i % 2 == 0] == sorted(got[0::2])
    await receiving.flush()
    await receiving.close()
    await asyncio.to_thread(background.stop)


@pytest.mark.parametrize("kind", sorted(LAYERS))
async def test_sync_send_errors_reach_the_caller_unchanged(
    kind: str, valkey_server: ValkeyServer
) -> None:
    valkey_server.flushall()
    layer = LAYERS[kind](hosts=[valkey_server.url], capacity=1)

    def calls() -> None:
        with pytest.raises(TypeError, match="name"):
            async_to_sync(layer.send)("bad name!", {"type": "m"})
        with pytest.raises(TypeError, match="must be a dict"):
            async_to_sync(layer.group_send)("room", ["not", "a", "dict"])

    await asyncio.to_thread(calls)
    if kind == "core":  # only queues have a capacity
        await asyncio.to_thread(async_to_sync(layer.send), "full", {"type": "m"})
        with pytest.raises(ChannelFull):
            await asyncio.to_thread(async_to_sync(layer.send), "full", {"type": "m"})
        await layer.flush()
    await layer.close()


async def test_a_loop_that_receives_keeps_its_own_connections(valkey_server: ValkeyServer) -> None:
    """A loop on which the layer receives (a worker's loop, in any thread) sends on its own
    connections, as a consumer's loop does: no background loop runs for it."""
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url])

    def background_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "channels_valkey background loop"]

    async def echo() -> list[dict[str, Any]]:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "m", "n": 1})  # nothing held yet: handed over
        got = [await layer.receive(channel)]
        await asyncio.to_thread(background.stop)
        await layer.send(channel, {"type": "m", "n": 2})
        got.append(await layer.receive(channel))
        assert not background_threads()
        await layer.close()
        return got

    got = await asyncio.to_thread(asyncio.run, echo())
    assert got == [{"type": "m", "n": 1}, {"type": "m", "n": 2}]
