"""The multiplexed connection every non-blocking command of a loop shares (``_common.lane``)."""

from __future__ import annotations

import asyncio

from channels_valkey._common.connections import build_pool
from channels_valkey._common.hosts import parse_hosts
from channels_valkey._common.lane import Lane
from support.servers import ValkeyServer


def lane_for(server: ValkeyServer) -> Lane:
    (host,) = parse_hosts([server.url])
    return Lane(build_pool(host))  # type: ignore[arg-type]


def clients_named(server: ValkeyServer, name: str) -> int:
    return sum(1 for client in server.client().client_list() if client["name"] == name)


async def test_many_tasks_share_one_connection(valkey_server: ValkeyServer) -> None:
    """200 tasks at once each get their own reply, on one connection to the server."""
    lane = lane_for(valkey_server)
    await lane.execute_command("CLIENT", "SETNAME", "lane-under-test")
    replies = await asyncio.gather(*(lane.execute_command("ECHO", f"n{n}") for n in range(200)))
    assert replies == [f"n{n}".encode() for n in range(200)]
    assert clients_named(valkey_server, "lane-under-test") == 1
    await lane.aclose()
    assert clients_named(valkey_server, "lane-under-test") == 0


async def test_a_command_cancelled_before_it_is_written_never_runs(
    valkey_server: ValkeyServer,
) -> None:
    valkey_server.flushall()
    lane = lane_for(valkey_server)
    await lane.execute_command("PING")  # connected
    first = asyncio.ensure_future(lane.execute_command("INCR", "written"))
    second = asyncio.ensure_future(lane.execute_command("INCR", "cancelled"))
    await asyncio.sleep(0)  # both queued; the first went out at once, the second waits
    second.cancel()
    assert await first == 1
    assert await lane.execute_command("EXISTS", "cancelled") == 0
    await lane.aclose()


async def test_close_while_connecting_with_nothing_left_to_send(
    valkey_server: ValkeyServer,
) -> None:
    """The only command is cancelled while its connection is being made; close() returns
    once the connection is made and closed again."""
    lane = lane_for(valkey_server)
    call = asyncio.ensure_future(lane.execute_command("PING"))
    await asyncio.sleep(0)  # the link is connecting, the command queued
    call.cancel()
    await lane.aclose()
    assert lane.connections() == []


async def test_a_connection_killed_under_waiting_commands(valkey_server: ValkeyServer) -> None:
    """Writes held by the server (``CLIENT PAUSE``) when it kills their connection are sent
    again on a new one, and each runs."""
    valkey_server.flushall()
    lane = lane_for(valkey_server)
    await lane.execute_command("CLIENT", "SETNAME", "lane-killed")
    (client_id,) = [
        c["id"] for c in valkey_server.client().client_list() if c["name"] == "lane-killed"
    ]
    admin = valkey_server.client()
    admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        waiting = [
            asyncio.ensure_future(lane.execute_command("SET", f"k{n}", n)) for n in range(20)
        ]
        await asyncio.sleep(0)  # all written
        admin.execute_command("CLIENT", "KILL", "ID", client_id)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    assert await asyncio.gather(*waiting) == [b"OK"] * 20
    assert admin.mget([f"k{n}" for n in range(20)]) == [str(n).encode() for n in range(20)]
    await lane.aclose()


async def test_a_reply_later_than_socket_timeout_moves_the_command_to_a_new_connection(
    valkey_server: ValkeyServer,
) -> None:
    """The server holds a write (``CLIENT PAUSE``) longer than ``socket_timeout``: the link
    gives up on its connection, and the command runs once, on a new one, after the pause."""
    valkey_server.flushall()
    (host,) = parse_hosts([{"address": valkey_server.url, "socket_timeout": 0.3}])
    lane = Lane(build_pool(host))  # type: ignore[arg-type]
    await lane.execute_command("PING")
    admin = valkey_server.client()
    opened = int(admin.info("stats")["total_connections_received"])
    admin.execute_command("CLIENT", "PAUSE", 1_500, "WRITE")  # ends by itself
    assert await lane.execute_command("INCR", "held") == 1
    assert int(admin.info("stats")["total_connections_received"]) > opened
    assert admin.get("held") == b"1"
    await lane.aclose()
