"""channels_valkey.sync: publishing from synchronous code on warm connections."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.exceptions import ChannelFull, InvalidChannelLayerError
from channels.layers import channel_layers
from django.conf import settings
from django.test import override_settings

from channels_valkey import sync
from channels_valkey._common import retry
from channels_valkey._common.background import background
from channels_valkey.exceptions import ServerUnreachable
from support.servers import ValkeyServer

BACKENDS = {
    "core": "channels_valkey.core.ValkeyChannelLayer",
    "pubsub": "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
}
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(autouse=True)
def django_settings() -> Iterator[None]:
    """Django settings for channels.layers to read; the background loop is stopped after each
    test, so no test inherits another's connections."""
    if not settings.configured:
        settings.configure(CHANNEL_LAYERS={})
    yield
    background.stop()


def layers_setting(hosts: list[Any], kind: str = "core", **config: Any) -> dict[str, Any]:
    return {"default": {"BACKEND": BACKENDS[kind], "CONFIG": {"hosts": hosts, **config}}}


def connections_received(servers: list[ValkeyServer]) -> int:
    return sum(int(s.client().info("stats")["total_connections_received"]) for s in servers)


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_many_threads_at_once_deliver_everything(kind: str, hosts: list[Any]) -> None:
    """8 threads, each sending 20 group messages and 20 to one channel, all at once: every
    async receiver gets each message meant for it once, each thread's in the order sent."""
    threads, per_thread = 8, 20
    with override_settings(CHANNEL_LAYERS=layers_setting(hosts, kind, capacity=1000)):
        receiving = channel_layers.make_backend("default")  # as another process would

        async def main() -> dict[str, list[tuple[int, int]]]:
            members = [await receiving.new_channel() for _ in range(3)]
            for channel in members:
                await receiving.group_add("room", channel)
            direct = await receiving.new_channel()

            def publish(t: int) -> None:
                for n in range(per_thread):
                    sync.group_send("room", {"type": "m", "t": t, "n": n})
                    sync.send(direct, {"type": "m", "t": t, "n": n})

            async def drain(channel: str) -> list[tuple[int, int]]:
                got = []
                for _ in range(threads * per_thread):
                    message = await receiving.receive(channel)
                    got.append((message["t"], message["n"]))
                return got

            receivers = [asyncio.create_task(drain(c)) for c in [*members, direct]]
            await asyncio.gather(*(asyncio.to_thread(publish, t) for t in range(threads)))
            received = await asyncio.wait_for(asyncio.gather(*receivers), 30)
            await receiving.flush()
            await receiving.close()
            return dict(zip([*members, direct], received, strict=True))

        received = asyncio.run(main())
    expected = {(t, n) for t in range(threads) for n in range(per_thread)}
    for got in received.values():
        assert set(got) == expected
        assert len(got) == len(expected)
        for t in range(threads):
            assert [n for sender, n in got if sender == t] == list(range(per_thread))


def test_stopping_the_loop_while_threads_call_loses_no_call(
    valkey_server: ValkeyServer,
) -> None:
    """What exit and fork do to the loop, while other threads publish: each call in flight
    finishes first, later calls start a new loop; none hangs, fails or is lost."""
    valkey_server.flushall()
    threads, per_thread = 4, 50
    with override_settings(CHANNEL_LAYERS=layers_setting([valkey_server.url], capacity=1000)):
        sync.send("warm", {"type": "m"})
        done = 0
        lock = threading.Lock()

        def publish(t: int) -> None:
            nonlocal done
            for n in range(per_thread):
                sync.send("jobs", {"type": "m", "t": t, "n": n})
            with lock:
                done += 1

        workers = [threading.Thread(target=publish, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        while any(worker.is_alive() for worker in workers):
            background.stop()
        for worker in workers:
            worker.join()
        assert done == threads
        assert valkey_server.client().zcard("asgijobs") == threads * per_thread


def test_the_layer_is_the_one_of_the_alias(valkey_server: ValkeyServer) -> None:
    valkey_server.flushall()
    layers = {
        alias: {"BACKEND": BACKENDS["core"], "CONFIG": {"hosts": [valkey_server.url], **cfg}}
        for alias, cfg in {"default": {}, "events": {"prefix": "events"}}.items()
    }
    with override_settings(CHANNEL_LAYERS=layers):
        sync.send("jobs", {"type": "to.events"}, alias="events")
        sync.send("jobs", {"type": "to.default"})

        async def receive(alias: str) -> dict[str, Any]:
            message: dict[str, Any] = await channel_layers[alias].receive("jobs")
            return message

        assert asyncio.run(receive("events")) == {"type": "to.events"}
        assert asyncio.run(receive("default")) == {"type": "to.default"}
        with pytest.raises(InvalidChannelLayerError, match="'nowhere'"):
            sync.group_send("room", {"type": "lost"}, alias="nowhere")
        assert valkey_server.client().exists("asgijobs", "eventsjobs") == 0  # both queues taken


def test_bulk_sends_from_sync_code_arrive_in_order(valkey_server: ValkeyServer) -> None:
    valkey_server.flushall()
    setting = {"default": {"BACKEND": BACKENDS["core"], "CONFIG": {"hosts": [valkey_server.url]}}}
    with override_settings(CHANNEL_LAYERS=setting):
        layer = channel_layers["default"]

        async def member() -> str:
            channel: str = await layer.new_channel()
            await layer.group_add("room", channel)
            return channel

        channel = asyncio.run(member())
        sync.send_multiple("jobs", [{"type": "m", "n": n} for n in range(5)])
        sync.group_send_multiple("room", [{"type": "m", "n": n} for n in range(5)])

        async def receive_all() -> tuple[list[int], list[int]]:
            jobs = [(await layer.receive("jobs"))["n"] for _ in range(5)]
            room = [(await layer.receive(channel))["n"] for _ in range(5)]
            return jobs, room

        assert asyncio.run(receive_all()) == (list(range(5)), list(range(5)))


@pytest.mark.parametrize("kind", sorted(BACKENDS))
@pytest.mark.parametrize(
    "topology", ["standalone", "sharded", "sentinel", "cluster"], indirect=True
)
def test_no_new_connection_per_call(
    kind: str, hosts: list[Any], topology_servers: list[ValkeyServer]
) -> None:
    """Once a first round of calls has reached every server (a normal channel's messages go
    to the shards in turn, a cluster's nodes each hold some names), the same 100 calls again
    open no connection on any server."""

    def calls() -> None:
        for n in range(50):
            sync.group_send(f"room{n % 5}", {"type": "m", "n": n})
            sync.send(f"jobs{n % 5}", {"type": "m", "n": n})

    with override_settings(CHANNEL_LAYERS=layers_setting(hosts, kind)):
        calls()
        before = connections_received(topology_servers)
        calls()
        assert connections_received(topology_servers) == before


def test_the_layer_errors_reach_the_caller_unchanged(valkey_server: ValkeyServer) -> None:
    valkey_server.flushall()
    with override_settings(CHANNEL_LAYERS=layers_setting([valkey_server.url], capacity=1)):
        sync.send("jobs", {"type": "first"})
        with pytest.raises(ChannelFull):
            sync.send("jobs", {"type": "second"})
        with pytest.raises(TypeError, match="name"):
            sync.send("bad name!", {"type": "m"})
        with pytest.raises(TypeError, match="name"):
            sync.group_send("bad group!", {"type": "m"})
        with pytest.raises(TypeError):
            sync.group_send("room", ["not", "a", "dict"])  # type: ignore[arg-type]
        sync.group_send("room", {"type": "still works"})


def test_an_unreachable_server_raises_server_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layer's own error, after its retry deadline (shortened here)."""
    monkeypatch.setattr(retry, "DEADLINE", 0.3)
    with socket.socket() as bound:  # a port that refuses connections: bound, not listening
        bound.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{bound.getsockname()[1]}"
        with override_settings(CHANNEL_LAYERS=layers_setting([url])):
            with pytest.raises(ServerUnreachable):
                sync.send("jobs", {"type": "m"})
            with pytest.raises(ServerUnreachable):
                sync.group_send("room", {"type": "m"})


async def test_calling_from_a_running_loop_says_to_await(valkey_server: ValkeyServer) -> None:
    with override_settings(CHANNEL_LAYERS=layers_setting([valkey_server.url])):
        with pytest.raises(RuntimeError, match=r"running event loop.*await"):
            sync.group_send("room", {"type": "m"})
        with pytest.raises(RuntimeError, match=r"sync\.send\(\) cannot be called"):
            sync.send("jobs", {"type": "m"})


def test_a_replaced_layer_closes_its_connections(valkey_server: ValkeyServer) -> None:
    """When CHANNEL_LAYERS changes, Channels makes a new layer; the old one's connections on
    the background loop are closed at the next call instead of staying open."""
    valkey_server.flushall()
    baseline = len(valkey_server.client().client_list())
    setting = layers_setting([valkey_server.url])
    for _ in range(3):
        with override_settings(CHANNEL_LAYERS=setting):
            sync.send("jobs", {"type": "m"})
    assert len(valkey_server.client().client_list()) == baseline + 1


# A process that uses sync from two threads and exits. It registers its check at exit before
# importing channels_valkey, so it runs after the layer's own handler (atexit is last in, first
# out), and prints what is still running or connected then.
EXITING = """
import atexit, gc, json, os, sys, threading

def report(when):
    from valkey.asyncio.connection import AbstractConnection
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    open_ = [c for c in gc.get_objects()
             if isinstance(c, AbstractConnection) and c.is_connected]
    if threads or open_:
        print(f"left {when}:", threads, open_)

def check():
    report("once the layer's exit handler ran")
    sync.send("late", {"type": "late"})  # an exit handler that still publishes
    report("after a call from a later exit handler")

atexit.register(check)

from django.conf import settings
settings.configure(CHANNEL_LAYERS={"default": {
    "BACKEND": os.environ["LAYER_BACKEND"],
    "CONFIG": {"hosts": json.loads(os.environ["LAYER_HOSTS"])},
}})
from channels_valkey import sync

def publish(t):
    for n in range(5):
        sync.group_send("room", {"type": "m", "t": t, "n": n})

workers = [threading.Thread(target=publish, args=(t,)) for t in range(2)]
for w in workers:
    w.start()
for w in workers:
    w.join()
"""

FORKING = """
import json, os, sys
from django.conf import settings
settings.configure(CHANNEL_LAYERS={"default": {
    "BACKEND": os.environ["LAYER_BACKEND"],
    "CONFIG": {"hosts": json.loads(os.environ["LAYER_HOSTS"])},
}})
from channels_valkey import sync

def sockets():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # the listing's own descriptor, closed since
            pass
    return count

before_use = sockets()
sync.group_send("room", {"type": "m", "by": "parent before fork"})
pid = os.fork()
if pid == 0:
    if sockets() != before_use:
        print("the child inherited", sockets() - before_use, "socket(s)")
    sync.group_send("room", {"type": "m", "by": "child"})
    sys.exit(0)
_, status = os.waitpid(pid, 0)
sync.group_send("room", {"type": "m", "by": "parent after fork"})
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_script(script: str, kind: str, hosts: list[Any]) -> str:
    env = {
        **os.environ,
        "LAYER_BACKEND": BACKENDS[kind],
        "LAYER_HOSTS": json.dumps(hosts),
        "PYTHONPATH": SRC,
    }
    run = subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def wait_for_clients(server: ValkeyServer, count: int, timeout: float = 10) -> int:
    """The server's client count once it is ``count``, or when ``timeout`` runs out: the
    server learns of another process's closed connections on its own schedule."""
    deadline = time.monotonic() + timeout
    while True:
        now = len(server.client().client_list())
        if now == count or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_a_process_using_sync_exits_clean(kind: str, valkey_server: ValkeyServer) -> None:
    """Nothing printed (in development mode, which shows ResourceWarnings), no thread and no
    connection left once the layer's exit handler ran, no client left on the server; a call
    from an exit handler that runs later still publishes, and leaves nothing either."""
    valkey_server.flushall()
    baseline = len(valkey_server.client().client_list())
    output = run_script(EXITING, kind, [valkey_server.url])
    assert output == ""
    assert wait_for_clients(valkey_server, baseline) == baseline
    if kind == "core":  # the late call's message waits in Valkey
        assert valkey_server.client().zcard("asgilate") == 1


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_a_forked_child_publishes_on_its_own_connections(
    kind: str, valkey_server: ValkeyServer
) -> None:
    valkey_server.flushall()
    baseline = len(valkey_server.client().client_list())
    with override_settings(CHANNEL_LAYERS=layers_setting([valkey_server.url], kind)):
        receiving = channel_layers.make_backend("default")

        async def main() -> list[str]:
            channel = await receiving.new_channel()
            await receiving.group_add("room", channel)
            output = await asyncio.to_thread(run_script, FORKING, kind, [valkey_server.url])
            assert output == ""
            got = [(await receiving.receive(channel))["by"] for _ in range(3)]
            await receiving.flush()
            await receiving.close()
            return got

        got = asyncio.run(main())
    assert got == ["parent before fork", "child", "parent after fork"]
    assert wait_for_clients(valkey_server, baseline) == baseline
