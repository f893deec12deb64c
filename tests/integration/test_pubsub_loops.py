"""The pub/sub layer from sync code and several event loops, as Django uses it.

Each event loop has its own connections and its own local channels; a loop's share closes
when ``asyncio.run()`` or ``async_to_sync`` finishes the loop, with no ``close()`` call.
Unclosed connections would show as ResourceWarning, an error in this suite's configuration.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import async_to_sync, sync_to_async

from channels_valkey._common.background import background
from channels_valkey.pubsub import ValkeyPubSubChannelLayer
from support.pubsub import receive, subscribed_names, until_subscribed
from support.servers import ValkeyServer, wait_for


def client_count(server: ValkeyServer) -> int:
    return len(server.client().client_list())


def test_sync_code_in_threads_reaches_consumers_on_the_server_loop(
    valkey_server: ValkeyServer,
) -> None:
    """Signal handlers and views call async_to_sync(group_send): a loop per call, whose
    sends run on the background loop; stopping it (as the process's exit does) closes its
    connections."""
    baseline = client_count(valkey_server)
    layer = ValkeyPubSubChannelLayer(hosts=[valkey_server.url])

    def signal_handler(n: int) -> None:
        async_to_sync(layer.group_send)("signals", {"type": "saved", "n": n})

    async def server() -> list[int]:
        channel = await layer.new_channel()
        await layer.group_add("signals", channel)
        with ThreadPoolExecutor(4) as pool:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: list(pool.map(signal_handler, range(12)))
            )
        return sorted([(await receive(layer, channel))["n"] for _ in range(12)])

    assert asyncio.run(server()) == list(range(12))  # no close(): the loop's end closes it
    background.stop()
    gc.collect()  # a leaked transport would now warn, which the test config makes an error
    # The server notices closed connections a moment later; there is no event to await.
    wait_for(lambda: client_count(valkey_server) == baseline, timeout=5, describe="clients")
    assert subscribed_names([valkey_server]) == set()
    assert len(layer._loops._by_loop) == 0


def test_a_sync_consumer_adds_its_channel_to_a_group_from_its_thread(
    valkey_server: ValkeyServer,
) -> None:
    """async_to_sync inside sync_to_async runs on the consumer's loop, which owns the channel."""
    layer = ValkeyPubSubChannelLayer(hosts=[valkey_server.url])

    async def consumer() -> dict[str, object]:
        channel = await layer.new_channel()

        def connect() -> None:  # a SyncConsumer's websocket_connect
            async_to_sync(layer.group_add)("room", channel)

        await sync_to_async(connect)()
        await layer.group_send("room", {"type": "chat"})
        message = await receive(layer, channel)
        await layer.close()
        return message

    assert asyncio.run(consumer()) == {"type": "chat"}


def test_one_layer_serves_two_running_loops_at_once(valkey_server: ValkeyServer) -> None:
    """Each loop is like a process of its own: own channels, own copy of a normal channel."""
    layer = ValkeyPubSubChannelLayer(hosts=[valkey_server.url])
    ready = threading.Barrier(3, timeout=10)
    channels: dict[str, str] = {}
    received: dict[str, list[dict[str, object]]] = {}

    def run_loop(name: str) -> None:
        async def main() -> None:
            channels[name] = await layer.new_channel()
            news = asyncio.create_task(receive(layer, "news"))
            await until_subscribed([valkey_server], "news", 2)  # both loops listen
            await asyncio.to_thread(ready.wait)
            received[name] = [await receive(layer, channels[name]), await news]

        asyncio.run(main())

    threads = [threading.Thread(target=run_loop, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    ready.wait()

    async def publish() -> None:
        for name, channel in channels.items():
            await layer.send(channel, {"type": "direct", "to": name})
        await layer.send("news", {"type": "news"})

    asyncio.run(publish())
    for thread in threads:
        thread.join(10)
    assert received == {
        "a": [{"type": "direct", "to": "a"}, {"type": "news"}],
        "b": [{"type": "direct", "to": "b"}, {"type": "news"}],
    }
    gc.collect()
    assert len(layer._loops._by_loop) == 0
