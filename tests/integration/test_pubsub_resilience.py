"""The pub/sub layer when connections drop: restarts, killed connections, failover, silence.

When a shard's subscribed connection drops, the layer reconnects with backoff, re-subscribes
every channel and group, and tells each local channel that could have missed messages: first
``{"type": on_disconnect}``, then, once every subscription is confirmed again,
``{"type": on_reconnect}``. A message published after the second notice is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.consumer import AsyncConsumer
from channels.layers import channel_layers
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff
from valkey.exceptions import ResponseError

from channels_valkey._common import retry
from channels_valkey._pubsub import subscriber
from channels_valkey.exceptions import ServerUnreachable
from support.pubsub import (
    RECEIVE_TIMEOUT,
    OpenLayer,
    every_topology,
    loop_layer,
    made_by_valkey_py,
    numsub,
    owner,
    receive,
    until_subscribed,
)
from support.servers import SentinelGroup, ValkeyServer, free_port

HOOKS = {"on_disconnect": "valkey.disconnect", "on_reconnect": "valkey.reconnect"}
DISCONNECT = {"type": "valkey.disconnect"}
RECONNECT = {"type": "valkey.reconnect"}


def no_task_died(caplog: pytest.LogCaptureFixture) -> bool:
    """asyncio logs a task that ended with an exception nobody retrieved."""
    return "exception was never retrieved" not in caplog.text and "stopped:" not in caplog.text


def kill_layer_connections(server: ValkeyServer) -> int:
    """``CLIENT KILL`` every subscribed connection of the layers (not Sentinel's own)."""
    admin = server.client()
    killed = 0
    for client in admin.client_list(_type="pubsub"):
        if made_by_valkey_py(client):
            killed += admin.client_kill_filter(_id=client["id"])
    return killed


async def test_a_server_restart_is_announced_and_every_subscription_restored(
    persistent_server: ValkeyServer, open_layer: OpenLayer, caplog: pytest.LogCaptureFixture
) -> None:
    servers = [persistent_server]
    layer = open_layer([persistent_server.url], **HOOKS)
    sender = open_layer([persistent_server.url])
    alone, member = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", member)
    waiting = asyncio.create_task(receive(layer, alone))  # waits across the restart
    await asyncio.to_thread(persistent_server.restart)
    assert await waiting == DISCONNECT
    assert await receive(layer, alone) == RECONNECT
    assert [await receive(layer, member), await receive(layer, member)] == [DISCONNECT, RECONNECT]
    # on_reconnect comes once the server confirmed every subscription again:
    assert numsub(servers, alone) == numsub(servers, member) == 1
    assert numsub(servers, "asgi__group__room") == 1
    await sender.send(alone, {"type": "after.restart"})
    await sender.group_send("room", {"type": "group.after.restart"})
    assert await receive(layer, alone) == {"type": "after.restart"}
    assert await receive(layer, member) == {"type": "group.after.restart"}
    assert no_task_died(caplog)


async def test_client_kill_type_pubsub_is_announced_and_recovered(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer = open_layer([valkey_server.url], **HOOKS)
    channel = await layer.new_channel()
    assert valkey_server.client().execute_command("CLIENT KILL TYPE pubsub") >= 1
    assert await receive(layer, channel) == DISCONNECT
    assert await receive(layer, channel) == RECONNECT
    await layer.send(channel, {"type": "after.kill"})
    assert await receive(layer, channel) == {"type": "after.kill"}


@every_topology
async def test_each_channel_hears_of_each_drop_that_concerns_it(
    hosts: list[Any], topology_servers: list[ValkeyServer], open_layer: OpenLayer
) -> None:
    """A channel is concerned by the shards holding its own name and its groups' names."""
    layer = open_layer(hosts, **HOOKS)
    channels = [await layer.new_channel() for _ in range(6)]
    for channel in channels[:3]:
        await layer.group_add("room", channel)
    for server in topology_servers:
        kill_layer_connections(server)
    for channel in channels:
        names = [channel, "asgi__group__room"] if channel in channels[:3] else [channel]
        drops = len({owner(topology_servers, name).port for name in names})
        notices = [await receive(layer, channel) for _ in range(2 * drops)]
        assert Counter(n["type"] for n in notices) == {
            "valkey.disconnect": drops,
            "valkey.reconnect": drops,
        }
        assert notices[0] == DISCONNECT
        assert notices[-1] == RECONNECT
    await layer.group_send("room", {"type": "after"})
    for channel in channels[:3]:
        assert await receive(layer, channel) == {"type": "after"}


async def test_without_hooks_a_drop_is_silent_but_recovered(
    valkey_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    layer = open_layer([valkey_server.url])
    channel = await layer.new_channel()
    assert kill_layer_connections(valkey_server) == 1  # CLIENT KILL is done when it returns
    await until_subscribed([valkey_server], channel, 1)  # so this is the new connection
    await layer.send(channel, {"type": "first.message"})
    assert await receive(layer, channel) == {"type": "first.message"}


class Watcher(AsyncConsumer):  # type: ignore[misc]
    """A consumer as users write it: handlers named after the configured message types."""

    channel_layer_alias = "pubsub-resilience"

    async def join(self, message: dict[str, Any]) -> None:
        await self.channel_layer.group_add("room", self.channel_name)
        await self.send({"type": "joined"})

    async def valkey_disconnect(self, message: dict[str, Any]) -> None:
        await self.send({"type": "handled", "event": "disconnect"})

    async def valkey_reconnect(self, message: dict[str, Any]) -> None:
        await self.send({"type": "handled", "event": "reconnect"})

    async def chat_message(self, message: dict[str, Any]) -> None:
        await self.send({"type": "handled", "event": "chat", "text": message["text"]})


async def test_a_consumers_disconnect_and_reconnect_handlers_run(
    valkey_server: ValkeyServer, open_layer: OpenLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_database() -> None:
        """The consumer's dispatch closes stale Django database connections; none here."""

    monkeypatch.setattr("channels.consumer.aclose_old_connections", no_database)
    layer = open_layer([valkey_server.url], **HOOKS)
    monkeypatch.setitem(channel_layers.backends, Watcher.channel_layer_alias, layer)
    # asgiref declares no types on ApplicationCommunicator's methods.
    communicator: Any = ApplicationCommunicator(  # type: ignore[no-untyped-call]
        Watcher.as_asgi(), {"type": "test"}
    )
    await communicator.send_input({"type": "join"})
    assert await communicator.receive_output(RECEIVE_TIMEOUT) == {"type": "joined"}
    kill_layer_connections(valkey_server)
    handled = [await communicator.receive_output(RECEIVE_TIMEOUT) for _ in range(2)]
    assert handled == [
        {"type": "handled", "event": "disconnect"},
        {"type": "handled", "event": "reconnect"},
    ]
    await layer.group_send("room", {"type": "chat.message", "text": "still here"})
    assert await communicator.receive_output(RECEIVE_TIMEOUT) == {
        "type": "handled",
        "event": "chat",
        "text": "still here",
    }
    communicator.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await communicator.future
    # The consumer's receive() was cancelled: its channel and group are gone.
    state = loop_layer(layer).state
    assert (state.channel_count, state.group_count) == (0, 0)


async def test_a_silent_server_is_detected_by_keepalive(
    persistent_server: ValkeyServer, open_layer: OpenLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that stops answering (a frozen host, a dead network path) sends no FIN."""
    monkeypatch.setattr(subscriber, "KEEPALIVE_SECONDS", 0.2)
    layer = open_layer([persistent_server.url], **HOOKS)
    channel = await layer.new_channel()
    assert persistent_server.pid is not None
    os.kill(persistent_server.pid, signal.SIGSTOP)
    try:
        assert await receive(layer, channel) == DISCONNECT
    finally:
        os.kill(persistent_server.pid, signal.SIGCONT)
    assert await receive(layer, channel) == RECONNECT
    await layer.send(channel, {"type": "awake"})
    assert await receive(layer, channel) == {"type": "awake"}


async def test_an_unreachable_server_fails_new_channel_and_send_clearly(
    open_layer: OpenLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber, "SUBSCRIBE_TIMEOUT", 0.3)
    monkeypatch.setattr(retry, "DEADLINE", 0.3)
    port = free_port()  # nothing listens there
    layer = open_layer([{"host": "127.0.0.1", "port": port, "retry": Retry(NoBackoff(), 1)}])
    with pytest.raises(ServerUnreachable, match=f"127.0.0.1:{port}"):
        await layer.new_channel()
    assert loop_layer(layer).state.channel_count == 0
    with pytest.raises(ServerUnreachable, match=f"127.0.0.1:{port}"):
        await layer.send("somewhere", {"type": "m"})


@pytest.mark.slow
async def test_a_sentinel_failover_is_announced_and_followed(
    sentinel_failover_group: SentinelGroup, open_layer: OpenLayer
) -> None:
    group = sentinel_failover_group
    hosts = [{"sentinels": list(group.sentinels), "master_name": group.master_name}]
    layer = open_layer(hosts, **HOOKS)
    channel = await layer.new_channel()
    await asyncio.to_thread(group.failover_by_killing_primary)
    assert await asyncio.wait_for(layer.receive(channel), 30) == DISCONNECT
    assert await asyncio.wait_for(layer.receive(channel), 30) == RECONNECT
    assert numsub([group.primary], channel) == 1  # on the promoted replica
    await layer.send(channel, {"type": "after.failover"})
    assert await receive(layer, channel) == {"type": "after.failover"}


async def test_a_refused_subscription_fails_its_caller_only(
    persistent_server: ValkeyServer, open_layer: OpenLayer
) -> None:
    """An ACL that forbids a channel: that SUBSCRIBE fails, the connection carries on."""
    admin = persistent_server.client()
    admin.acl_setuser(
        "limited", enabled=True, passwords=["+secret"], keys=["*"], channels=["allowed.*"]
    )
    admin.execute_command("ACL SETUSER limited +@all")
    hosts = [{"address": persistent_server.url, "username": "limited", "password": "secret"}]
    layer = open_layer(hosts)
    # Valkey says "No permissions to access a channel", Redis 7.0 "...one of the channels...".
    with pytest.raises(ResponseError, match=r"(?i)no permissions to access (a|one of the) channel"):
        await layer.new_channel()
    assert loop_layer(layer).state.channel_count == 0
    waiting = asyncio.create_task(receive(layer, "allowed.room"))
    await until_subscribed([persistent_server], "allowed.room", 1)
    await layer.send("allowed.room", {"type": "fine"})
    assert await waiting == {"type": "fine"}
