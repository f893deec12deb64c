"""The core layer from sync code and several event loops, as Django uses it."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import async_to_sync

from channels_valkey.core import ValkeyChannelLayer
from support.servers import ValkeyServer


def client_count(server: ValkeyServer) -> int:
    return len(server.client().client_list())


def test_async_to_sync_calls_leave_no_connection_behind(valkey_server: ValkeyServer) -> None:
    """Each async_to_sync call runs on a loop of its own, closed when the call returns: what
    a receive opened there closes with it; sends run on the background loop, on one warm
    connection, which the layer's close() closes."""
    valkey_server.flushall()
    baseline = client_count(valkey_server)
    layer = ValkeyChannelLayer(hosts=[valkey_server.url])
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("signals", channel)
    async_to_sync(layer.send)("tasks", {"type": "from.sync"})
    assert async_to_sync(layer.receive)("tasks") == {"type": "from.sync"}

    def signal_handler(n: int) -> None:  # e.g. a post_save receiver or a Celery task
        async_to_sync(layer.group_send)("signals", {"type": "saved", "n": n})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(signal_handler, range(12)))
    got = sorted(async_to_sync(layer.receive)(channel)["n"] for _ in range(12))
    assert got == list(range(12))
    gc.collect()  # a leaked transport would now warn, which the test config makes an error
    assert client_count(valkey_server) == baseline + 1
    async_to_sync(layer.flush)()
    async_to_sync(layer.close)()
    assert client_count(valkey_server) == baseline


def test_receive_on_two_loops_at_once_is_refused(valkey_server: ValkeyServer) -> None:
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url])
    first_waiting = threading.Event()
    result: list[object] = []

    async def first_loop() -> None:
        task = asyncio.create_task(layer.receive("first"))
        await asyncio.sleep(0)
        first_waiting.set()
        result.append(await asyncio.wait_for(task, 10))

    thread = threading.Thread(target=asyncio.run, args=(first_loop(),))
    thread.start()
    assert first_waiting.wait(5)
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(layer.receive("second"))
    async_to_sync(layer.send)("first", {"type": "done"})
    thread.join(10)
    assert result == [{"type": "done"}]


def test_finished_event_loops_are_not_kept_alive(valkey_server: ValkeyServer) -> None:
    """A layer used from many short-lived loops (async_to_sync) must not pile them up."""
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url])
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def send_and_note_loop() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await layer.send("short.lived", {"type": "m"})

    for _ in range(5):
        asyncio.run(send_and_note_loop())
    gc.collect()
    assert [ref() for ref in loops] == [None] * 5
    async_to_sync(layer.flush)()
