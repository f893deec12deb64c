"""The core layer when servers restart, connections drop, primaries fail over or vanish."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from valkey.asyncio.connection import AbstractConnection

from channels_valkey._common import retry
from channels_valkey._queue.shard import Shard
from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.exceptions import NotReplicated, ServerUnreachable
from support.servers import SentinelGroup, ValkeyServer, wait_for

RECEIVE_TIMEOUT = 10

pytestmark = pytest.mark.slow


def no_task_died(caplog: pytest.LogCaptureFixture) -> bool:
    """asyncio logs a task that ended with an exception nobody retrieved."""
    return "exception was never retrieved" not in caplog.text


async def readers_blocked(server: ValkeyServer, count: int) -> None:
    """Wait until ``count`` clients sit in a blocking pop on ``server``."""

    def blocked() -> bool:
        clients = server.client().client_list()
        return sum(1 for client in clients if client["cmd"] == "bzmpop") >= count

    await asyncio.to_thread(wait_for, blocked, timeout=5, describe="readers to block")


async def receive(layer: ValkeyChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)


async def test_restart_keeps_queued_messages_and_waiting_receivers(
    persistent_server: ValkeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    layer = ValkeyChannelLayer(hosts=[persistent_server.url])
    local = await layer.new_channel()
    for n in range(10):
        await layer.send("jobs", {"type": "m", "n": n})
        await layer.send(local, {"type": "m", "n": n})
    assert (await receive(layer, "jobs"))["n"] == 0
    waiting = asyncio.create_task(receive(layer, "idle"))  # blocked in BZMPOP across restart
    await asyncio.to_thread(persistent_server.restart)
    got_jobs = [(await receive(layer, "jobs"))["n"] for _ in range(9)]
    got_local = [(await receive(layer, local))["n"] for _ in range(10)]
    assert got_jobs == list(range(1, 10))
    assert got_local == list(range(10))
    await layer.send("idle", {"type": "after.restart"})
    assert await waiting == {"type": "after.restart"}
    await layer.send("jobs", {"type": "m", "n": 10})
    assert (await receive(layer, "jobs"))["n"] == 10
    await layer.close()
    assert no_task_died(caplog)


async def test_killed_connections_are_reopened(
    valkey_server: ValkeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url])
    local = await layer.new_channel()
    await layer.send(local, {"type": "warm"})
    await receive(layer, local)
    waiting = [asyncio.create_task(receive(layer, ch)) for ch in (local, "normal.chan")]
    await readers_blocked(valkey_server, 2)
    killed = valkey_server.client().client_kill_filter(_type="normal", skipme=True)
    assert killed >= 2
    await layer.send(local, {"type": "one"})
    await layer.send("normal.chan", {"type": "two"})
    assert await asyncio.gather(*waiting) == [{"type": "one"}, {"type": "two"}]
    await layer.close()
    assert no_task_died(caplog)


async def test_sentinel_failover_keeps_the_same_layer_working(
    sentinel_failover_group: SentinelGroup, caplog: pytest.LogCaptureFixture
) -> None:
    group = sentinel_failover_group
    hosts = [{"sentinels": group.sentinels, "master_name": group.master_name}]
    layer = ValkeyChannelLayer(hosts=hosts)
    local = await layer.new_channel()
    for n in range(5):
        await layer.send(local, {"type": "m", "n": n})
        assert (await receive(layer, local))["n"] == n
    waiting = asyncio.create_task(layer.receive(local))
    await asyncio.to_thread(group.failover_by_killing_primary)
    # The same layer object sends to the promoted replica and its reader finds it there.
    await layer.send(local, {"type": "m", "n": 5})
    assert (await asyncio.wait_for(waiting, RECEIVE_TIMEOUT))["n"] == 5
    for n in range(6, 20):
        await layer.send("after.failover", {"type": "m", "n": n})
    assert [(await receive(layer, "after.failover"))["n"] for _ in range(6, 20)] == list(
        range(6, 20)
    )
    await layer.close()
    assert no_task_died(caplog)


async def test_unreachable_host_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "DEADLINE", 0.5)
    layer = ValkeyChannelLayer(hosts=["valkey://127.0.0.1:1"])
    with pytest.raises(ServerUnreachable, match=r"cannot reach Valkey at valkey://127\.0\.0\.1:1"):
        await layer.send("chan", {"type": "m"})
    with pytest.raises(ServerUnreachable, match=r"127\.0\.0\.1:1"):
        await asyncio.wait_for(layer.receive("chan"), 10)
    with pytest.raises(ConnectionError):  # also the built-in type, for generic handlers
        await layer.group_send("g", {"type": "m"})
    await layer.close()


async def test_reader_reconnect_is_logged_not_raised(
    persistent_server: ValkeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="channels_valkey")
    layer = ValkeyChannelLayer(hosts=[persistent_server.url])
    waiting = asyncio.create_task(receive(layer, "chan"))
    await readers_blocked(persistent_server, 1)
    await asyncio.to_thread(persistent_server.kill)
    await asyncio.to_thread(persistent_server.start)
    await layer.send("chan", {"type": "m"})
    assert await waiting == {"type": "m"}
    assert "reconnecting" in caplog.text
    await layer.close()


async def test_wait_for_replicas_confirms_sends_on_sentinel(
    sentinel_failover_group: SentinelGroup,
) -> None:
    group = sentinel_failover_group
    hosts = [{"sentinels": group.sentinels, "master_name": group.master_name}]
    layer = ValkeyChannelLayer(hosts=hosts, wait_for_replicas=1)
    for n in range(20):
        await layer.send("confirmed", {"type": "m", "n": n})
    # Every acknowledged send is already on the replica: it survives the primary's death.
    await asyncio.to_thread(group.failover_by_killing_primary, sync_replica=False)
    assert [(await receive(layer, "confirmed"))["n"] for _ in range(20)] == list(range(20))
    await layer.close()


async def test_wait_for_replicas_without_a_replica_raises_not_replicated(
    valkey_server: ValkeyServer,
) -> None:
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url], wait_for_replicas=1, replica_timeout=0.05)
    with pytest.raises(NotReplicated, match=r"only 0 of 1 replicas confirmed it within 0\.05 s"):
        await layer.send("unconfirmed", {"type": "m"})
    assert await receive(layer, "unconfirmed") == {"type": "m"}  # queued all the same
    await layer.flush()
    await layer.close()


async def test_a_send_cancelled_in_flight_leaves_no_answer_behind(
    valkey_server: ValkeyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server holds writes back (``CLIENT PAUSE``) while a send is cancelled with its
    command on the wire: the commands after it must still read their own answers, not the
    cancelled one's (a group_send reading a send's answer would fail), and the cancelled
    message is queued once at most.

    The cancel is delivered once the send waits for its answer, an event this process
    observes, rather than as soon as the server holds the command: between the two, valkey-py
    is still finishing the write inside ``asyncio.wait_for``, which before Python 3.12 drops a
    cancel that lands just as the write completes (CPython gh-86296), so the send would run on.
    """
    valkey_server.flushall()
    admin = valkey_server.client()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url])
    members = [await layer.new_channel() for _ in range(2)]
    for member in members:
        await layer.group_add("answers", member)
    inbox = await layer.new_channel()

    reading = asyncio.Event()
    read_response = AbstractConnection.read_response

    async def noting_the_read(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        reading.set()
        return await read_response(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "read_response", noting_the_read)

    def send_held() -> bool:
        return any(c["cmd"] == "evalsha" and "b" in c["flags"] for c in admin.client_list())

    for n in range(5):
        # Unpaused explicitly below; the timeout only frees the shared server should this
        # test stop half-way.
        admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            reading.clear()
            task = asyncio.create_task(layer.send(inbox, {"type": "m", "n": n}))
            await asyncio.to_thread(wait_for, send_held, timeout=30, describe="the send held")
            await asyncio.wait_for(reading.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        await layer.group_send("answers", {"type": "g", "n": n})
        for member in members:
            assert (await receive(layer, member))["n"] == n
    await layer.send(inbox, {"type": "end"})
    # A cancelled send whose command had gone out may still run, but once at most.
    cancelled = []
    while (message := await receive(layer, inbox))["type"] != "end":
        cancelled.append(message["n"])
    assert cancelled == sorted(set(cancelled))
    assert set(cancelled) <= set(range(5))
    await layer.flush()
    await layer.close()


async def test_connections_keep_alive_by_default(valkey_server: ValkeyServer) -> None:
    """Managed services drop idle connections: TCP keepalive is on unless turned off."""
    layers = [
        ValkeyChannelLayer(hosts=[valkey_server.url]),
        ValkeyChannelLayer(hosts=[{"address": valkey_server.url, "socket_keepalive": False}]),
    ]
    seen = []
    for layer in layers:
        await layer.send("keepalive", {"type": "m"})
        shard = layer._loops.current().shards[0]
        assert isinstance(shard, Shard)  # one server: no Sentinel or cluster in between
        (connection,) = shard.lane.connections()
        assert connection._writer is not None  # connected: the send went through it
        sock = connection._writer.transport.get_extra_info("socket")
        seen.append(bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)))
        await layer.flush()
        await layer.close()
    assert seen == [True, False]


async def test_a_message_that_cannot_go_back_to_valkey_is_kept(
    valkey_server: ValkeyServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader pops for a receive() that was cancelled meanwhile and cannot requeue: the
    message waits in this process for the channel's next receive(), and the reader lives on."""
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url])

    async def refuse(*_: object) -> None:
        raise ServerUnreachable(valkey_server.url, ConnectionError("injected"))

    monkeypatch.setattr(Shard, "requeue", refuse)
    abandoned = asyncio.create_task(layer.receive("jobs"))
    await readers_blocked(valkey_server, 1)
    abandoned.cancel()
    await layer.send("jobs", {"type": "m", "n": 1})  # popped, nobody waits, requeue fails
    assert await receive(layer, "jobs") == {"type": "m", "n": 1}
    await layer.send("jobs", {"type": "m", "n": 2})
    assert await receive(layer, "jobs") == {"type": "m", "n": 2}
    assert "Kept 1 message(s) for jobs locally" in caplog.text
    await layer.flush()
    await layer.close()
