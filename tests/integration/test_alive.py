"""Liveness and group_size on the core layer, against real servers and real processes.

A process killed with SIGKILL never calls ``group_discard``; once it has been silent for
``process_expiry`` its channels leave the groups and its queue is deleted, while the channels
of processes that do not heartbeat (a real channels_redis layer, and a peer's name added by
hand) are kept and still receive.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import valkey
from channels_redis.core import RedisChannelLayer

from channels_valkey.core import ValkeyChannelLayer
from channels_valkey.exceptions import ConfigurationError
from support.servers import Topology, ValkeyServer

MEMBER = Path(__file__).parent.parent / "peers" / "member.py"

#: process_expiry in these tests: short, so a dead process is found quickly.
EXPIRY = 2.0

#: How long a condition may take before the test fails: generous, for a busy machine, and
#: under the suite's per-test timeout so that the failure names the condition.
BOUND = 40.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check()`` holds (polled: what it waits for is a server's clock)."""
    deadline = time.monotonic() + BOUND
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {BOUND:.0f} s: {what}")
        await asyncio.sleep(0.05)


def on_servers(topology: Topology, command: str, key: str, *args: str) -> float:
    """``command key *args`` on whichever server holds ``key`` (other cluster nodes answer
    MOVED; other shards answer nothing), as a number (nothing counts as 0)."""
    total = 0.0
    for server in topology.servers:
        try:
            reply = server.client().execute_command(command, key, *args)
        except valkey.exceptions.ResponseError:
            continue  # MOVED: another node serves the key
        total += float(reply or 0)
    return total


def member_hosts(topology: Topology) -> list[Any]:
    """``hosts`` as JSON for the member process (a parser class cannot go on a command line,
    and the parser does not matter to a process about to be killed)."""
    if topology.name in ("python-parser", "sharded"):
        return [server.url for server in topology.servers]
    return topology.hosts


def their_hosts(topology: Topology) -> list[Any] | None:
    """The same servers for channels_redis, which knows no valkey:// scheme and no cluster.
    Under Sentinel it gets the primary's address (its Sentinel client leaves connections to
    the sentinels open after ``close_pools``); it shares the server with us all the same."""
    servers = topology.servers
    if topology.name == "cluster":
        return None
    if topology.name == "unix":
        return [f"unix://{servers[0].unix_path}"]
    if topology.name == "tls":
        address = servers[0].tls_url.replace("valkeys://", "rediss://")
        return [{"address": address, **servers[0].ssl_kwargs()}]
    return [f"redis://{server.host}:{server.port}" for server in servers]


@pytest.fixture
async def layers() -> AsyncIterator[list[Any]]:
    """Layers of either package, closed after the test."""
    opened: list[Any] = []
    yield opened
    for layer in opened:
        if isinstance(layer, ValkeyChannelLayer):
            await layer.close()
        else:
            await layer.close_pools()


async def receive(layer: Any, channel: str) -> dict[str, Any]:
    return dict(await asyncio.wait_for(layer.receive(channel), BOUND))


async def test_a_killed_process_leaves_its_groups(
    topology: Topology, hosts: list[Any], layers: list[Any]
) -> None:
    groups = ["room-a", "room-b"]
    options = {"hosts": member_hosts(topology), "process_expiry": EXPIRY}
    member = await asyncio.create_subprocess_exec(
        sys.executable, str(MEMBER), json.dumps(options), "50", *groups, stdout=PIPE
    )
    try:
        assert member.stdout is not None
        line = await asyncio.wait_for(member.stdout.readline(), BOUND)
        assert line, f"the member process exited with {await member.wait()}"
        dead = json.loads(line)
        dead_queue = (
            "asgi"
            + ("{specific.%s!}" if topology.name == "cluster" else "specific.%s!") % dead["process"]
        )

        ours = ValkeyChannelLayer(hosts=hosts, process_expiry=EXPIRY)
        layers.append(ours)
        mine = await ours.new_channel()
        # A process-local channel of a process that never heartbeats (as a channels_redis or
        # older process would make): it is never judged, whatever its silence.
        peer = f"specific.{uuid.uuid4().hex}!{uuid.uuid4().hex}"
        live = [mine, peer]
        theirs_hosts = their_hosts(topology)
        theirs: RedisChannelLayer | None = None
        if theirs_hosts is not None:
            theirs = RedisChannelLayer(hosts=theirs_hosts)
            layers.append(theirs)
            their_channel = await theirs.new_channel()
            live.append(their_channel)
        for group in groups:
            await ours.group_add(group, mine)
            await ours.group_add(group, peer)
            if theirs is not None:
                await theirs.group_add(group, their_channel)
        receiving = asyncio.create_task(receive(ours, mine))  # ours heartbeats too
        registry = "asgi$alive"

        async def ours_registered() -> bool:
            return on_servers(topology, "ZSCORE", registry, ours.client_prefix) > 0

        await eventually(ours_registered, "our layer heartbeats")
        first_beat = on_servers(topology, "ZSCORE", registry, ours.client_prefix)

        assert await ours.group_size("room-a") == 50 + len(live)
        member.kill()
        await member.wait()

        async def only_live_counted() -> bool:
            return await ours.group_size("room-a") == len(live)

        await eventually(only_live_counted, "room-a no longer counts the killed process")
        assert on_servers(topology, "EXISTS", dead_queue) == 0

        # room-b still holds the dead members on the server; a group send removes them and
        # writes only to the live.
        await ours.group_send("room-b", {"type": "hello"})
        assert on_servers(topology, "EXISTS", dead_queue) == 0
        group_b = "asgi:group:{room-b}" if topology.name == "cluster" else "asgi:group:room-b"
        assert on_servers(topology, "ZCARD", group_b) == len(live)
        assert await ours.group_size("room-b") == len(live)
        assert await receiving == {"type": "hello"}
        if theirs is not None:
            assert await receive(theirs, their_channel) == {"type": "hello"}
        await ours.group_send("room-a", {"type": "again"})
        assert on_servers(topology, "EXISTS", dead_queue) == 0
        assert await receive(ours, mine) == {"type": "again"}
        if theirs is not None:
            assert await receive(theirs, their_channel) == {"type": "again"}

        async def ours_renewed() -> bool:
            return on_servers(topology, "ZSCORE", registry, ours.client_prefix) > first_beat

        await eventually(ours_renewed, "our layer's heartbeat renewed")
        assert await ours.group_size("room-a") == len(live)  # a live process is never removed
    finally:
        if member.returncode is None:
            member.kill()
            await member.wait()


async def test_group_size_counts_current_members(
    topology: Topology, hosts: list[Any], layers: list[Any]
) -> None:
    layer = ValkeyChannelLayer(hosts=hosts)
    layers.append(layer)
    assert await layer.group_size("empty") == 0
    channels = [await layer.new_channel() for _ in range(3)] + ["normal.one"]
    for channel in channels:
        await layer.group_add("room", channel)
    await layer.group_add("room", channels[0])  # already in: counted once
    assert await layer.group_size("room") == 4
    await layer.group_discard("room", channels[1])
    assert await layer.group_size("room") == 3


async def test_group_size_leaves_out_expired_members(
    topology: Topology, hosts: list[Any], layers: list[Any]
) -> None:
    layer = ValkeyChannelLayer(hosts=hosts, group_expiry=1)
    layers.append(layer)
    await layer.group_add("room", "normal.one")
    assert await layer.group_size("room") == 1

    async def expired() -> bool:
        return await layer.group_size("room") == 0

    await eventually(expired, "the membership expired")


async def test_with_liveness_off_nothing_is_registered_or_removed(
    valkey_server: ValkeyServer, layers: list[Any]
) -> None:
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url], process_expiry=None)
    layers.append(layer)
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.send(channel, {"type": "m"})
    assert await receive(layer, channel) == {"type": "m"}
    await layer.group_send("room", {"type": "g"})
    assert await receive(layer, channel) == {"type": "g"}
    assert valkey_server.client().exists("asgi$alive") == 0
    assert await layer.group_size("room") == 1


@pytest.mark.parametrize("value", [0, 0.5, -1, "60", True, float("nan"), float("inf")])
def test_process_expiry_is_checked(value: object) -> None:
    with pytest.raises(ConfigurationError, match="process_expiry"):
        ValkeyChannelLayer(process_expiry=value)  # type: ignore[arg-type]


def heartbeats(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks(loop)
        if task.get_name() == "channels_valkey heartbeat" and not task.done()
    ]


def test_one_heartbeat_follows_the_loop_that_receives(valkey_server: ValkeyServer) -> None:
    """The heartbeat runs on the loop that last received on a local channel, once per layer;
    it stops with that loop, whether the loop is closed with or without cleanup, and the next
    loop to receive takes it up."""
    valkey_server.flushall()
    admin = valkey_server.client()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url], process_expiry=1)

    def last_beat() -> float:
        return float(admin.zscore("asgi$alive", layer.client_prefix) or 0)

    async def receive_one() -> None:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "m"})
        assert await receive(layer, channel) == {"type": "m"}

    async def heartbeating_here() -> None:
        await receive_one()
        assert len(heartbeats(asyncio.get_running_loop())) == 1
        before = last_beat()

        async def renewed() -> bool:
            return last_beat() > before

        await eventually(renewed, "the heartbeat renewed on this loop")

    loop_a = asyncio.new_event_loop()
    loop_a.run_until_complete(receive_one())
    assert len(heartbeats(loop_a)) == 1
    # Another loop receives: the heartbeat moves there, and loop A's stops.
    asyncio.run(heartbeating_here())
    loop_a.run_until_complete(asyncio.sleep(0))  # runs the stop handed over to loop A
    loop_a.run_until_complete(asyncio.sleep(0))
    assert heartbeats(loop_a) == []
    loop_a.run_until_complete(layer.close())
    loop_a.close()

    # A loop closed without cleanup while heartbeating: the next loop that receives takes
    # over (and releases what the closed loop held).
    loop_c = asyncio.new_event_loop()
    loop_c.run_until_complete(receive_one())
    assert len(heartbeats(loop_c)) == 1
    loop_c.close()
    asyncio.run(heartbeating_here())
    admin.flushall()


def register_dead(
    server: ValkeyServer, process: str, silent: float, expiry: float = EXPIRY
) -> None:
    """Put ``process`` in the registry as if its last heartbeat was ``silent`` seconds ago,
    by the server's clock (what a process killed that long ago leaves behind): its score is
    the time until which it counted as alive."""
    admin = server.client()
    seconds, micros = admin.time()
    admin.zadd("asgi$alive", {process: seconds + micros / 1e6 - silent + expiry})


async def test_a_layer_that_only_sends_learns_the_dead_and_never_registers(
    valkey_server: ValkeyServer, layers: list[Any]
) -> None:
    """A process that never receives (a Celery worker, a view with async_to_sync) reads the
    registry at most once per interval, alongside its calls, and is never in it itself."""
    valkey_server.flushall()
    register_dead(valkey_server, "deadbeef", silent=1000)
    sender = ValkeyChannelLayer(hosts=[valkey_server.url], process_expiry=EXPIRY)
    layers.append(sender)
    for n in range(3):
        await sender.group_add("room", f"specific.deadbeef!{n}")
    await sender.group_add("room", "normal.kept")

    async def only_the_live_counted() -> bool:
        return await sender.group_size("room") == 1

    await eventually(only_the_live_counted, "the sender learned who is dead")
    await sender.group_send("room", {"type": "m"})
    assert await receive(sender, "normal.kept") == {"type": "m"}
    admin = valkey_server.client()
    assert admin.zrange("asgi:group:room", 0, -1) == [b"normal.kept"]
    assert admin.zscore("asgi$alive", sender.client_prefix) is None


async def test_no_process_is_judged_while_the_server_has_just_restarted(
    persistent_server: ValkeyServer, layers: list[Any]
) -> None:
    """A registry loaded from disk after a restart holds heartbeats as old as the downtime:
    for process_expiry seconds after a restart nobody is taken for dead, so the live
    processes have time to heartbeat again."""
    expiry = 10.0  # well above the few commands between the restart and the first check
    register_dead(persistent_server, "deadbeef", silent=1000)
    persistent_server.client().zadd("asgi:group:room", {"specific.deadbeef!a": time.time()})
    persistent_server.restart()
    layer = ValkeyChannelLayer(hosts=[persistent_server.url], process_expiry=expiry)
    layers.append(layer)
    liveness = layer._liveness
    assert liveness is not None
    shard = (await layer._resources()).shards[0]
    await liveness.refresh(shard)  # what a layer learns right after the restart
    assert await layer.group_size("room") == 1

    async def judged() -> bool:
        await liveness.refresh(shard)
        return await layer.group_size("room") == 0

    await eventually(judged, "the process judged once the server has run process_expiry")


async def test_a_process_that_was_silent_too_long_says_so(
    valkey_server: ValkeyServer, layers: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A process that comes back after other processes may have taken it for dead (a long
    stall, a network partition) logs a warning: its channels may have left their groups."""
    valkey_server.flushall()
    layer = ValkeyChannelLayer(hosts=[valkey_server.url], process_expiry=EXPIRY)
    layers.append(layer)
    liveness = layer._liveness
    assert liveness is not None
    shard = (await layer._resources()).shards[0]
    assert await liveness.beat(shard)
    register_dead(valkey_server, layer.client_prefix, silent=100)
    with caplog.at_level("WARNING", logger="channels_valkey._queue.liveness"):
        assert await liveness.beat(shard)
    assert "did not heartbeat for 100 s" in caplog.text


async def test_a_user_not_allowed_info_writes_nothing_and_sends_as_before(
    valkey_server: ValkeyServer, layers: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Without INFO in its ACL the heartbeat fails before writing anything (logged): the
    process is not registered, so nobody ever judges it, and everything else works."""
    valkey_server.flushall()
    admin: Any = valkey_server.client()
    user = f"alive{uuid.uuid4().hex[:8]}"
    admin.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-info")
    try:
        url = f"valkey://{user}:pw@{valkey_server.host}:{valkey_server.port}"
        layer = ValkeyChannelLayer(hosts=[url], process_expiry=EXPIRY)
        layers.append(layer)
        liveness = layer._liveness
        assert liveness is not None
        shard = (await layer._resources()).shards[0]
        with caplog.at_level("WARNING", logger="channels_valkey._queue.liveness"):
            await liveness.beat(shard)
        assert "Could not record this process's heartbeat" in caplog.text
        assert admin.exists("asgi$alive") == 0
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "m"})
        assert await receive(layer, channel) == {"type": "m"}
        assert await layer.group_size("room") == 1
        assert admin.exists("asgi$alive") == 0
        await layer.close()
    finally:
        admin.execute_command("ACL", "DELUSER", user)


async def test_each_process_is_judged_by_its_own_process_expiry(
    valkey_server: ValkeyServer, layers: list[Any]
) -> None:
    """A process is dead once the time it declared (its heartbeat plus its own
    process_expiry) has passed, whatever the judge's process_expiry; one that comes back
    is live again for the processes that had judged it."""
    valkey_server.flushall()
    register_dead(valkey_server, "patient", silent=10, expiry=60)  # alive for 50 s more
    register_dead(valkey_server, "gone", silent=10, expiry=2)  # dead for 8 s
    judge = ValkeyChannelLayer(hosts=[valkey_server.url], process_expiry=EXPIRY)
    layers.append(judge)
    await judge.group_add("room", "specific.patient!a")
    await judge.group_add("room", "specific.gone!b")

    async def gone_left_out() -> bool:
        return await judge.group_size("room") == 1

    await eventually(gone_left_out, "the dead process left out")
    assert valkey_server.client().zrange("asgi:group:room", 0, -1) == [b"specific.patient!a"]

    register_dead(valkey_server, "gone", silent=0, expiry=60)  # it heartbeats again
    await judge.group_add("room", "specific.gone!c")

    async def back() -> bool:
        return await judge.group_size("room") == 2

    await eventually(back, "the process that came back counted again")
