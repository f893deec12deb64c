"""The hot path's commands, sent on connections kept in a plain free list.

A command through valkey-py's client takes a connection from its pool, which first polls the
socket under a zero timeout to see whether the server closed it, then wraps the call in its
retry and response-callback machinery. That adds about a quarter to a command's CPU time
(measured on a ``send``: ~180 µs through the client, ~145 µs here), and the layers' hot path is
CPU-bound. :class:`Lane` keeps what matters of it and nothing else:

- a connection is taken from the free list, or made by the pool (so TLS, Sentinel lookup and
  the health check, see ``_health``, are the pool's) and given back after a complete answer;
- a connection error is retried under the layer's retry policy (``_retry``: backoff until a
  deadline), after reconnecting; a server that closed an idle connection is found this way, by
  the write or the read failing, instead of by a poll before every command. A command whose
  connection failed after it was written may have run: it is sent again all the same (at least
  once);
- a command interrupted half-way (cancelled, failed) leaves its connection closed and out of the
  list, so no answer can ever be read by the wrong command.

Replies are returned as the server sent them (bytes, ints, lists), without valkey-py's
response callbacks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from valkey.asyncio import ConnectionPool
from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import ResponseError

from ._retry import TRANSIENT_ERRORS, Outage


class Lane:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._free: deque[AbstractConnection] = deque()
        self._closed = False

    async def execute_command(self, *args: Any) -> Any:
        """Send one command and return its reply (an error reply raised as its exception)."""
        (reply,) = await self._exchange([args])
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send several commands in one write on one connection (a pipeline, without
        ``MULTI``) and return their replies in order, an error reply as its exception. They
        run in the order given; after a connection error all are sent again, like one
        command."""
        return await self._exchange(commands)

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Write ``commands`` at once and read their replies. After a connection error,
        reconnect and send them again until the policy's deadline, then raise that error."""
        connection = self._free.pop() if self._free else self._new_connection()
        if len(commands) == 1:
            packed = connection.pack_command(*commands[0])
        else:
            packed = connection.pack_commands(commands)
        started = time.monotonic()  # the deadline counts from the first attempt
        outage: Outage | None = None
        try:
            while True:
                try:
                    await connection.send_packed_command(packed, check_health=False)
                    replies = [await _read_reply(connection) for _ in commands]
                    break
                except TRANSIENT_ERRORS:
                    await connection.disconnect()
                    outage = outage or Outage(started)
                    delay = outage.next_pause()
                    if delay is None:
                        raise
                await asyncio.sleep(delay)
        except BaseException:
            await connection.disconnect()
            raise
        await self._give_back(connection)
        return replies

    def _new_connection(self) -> AbstractConnection:
        connection: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        return connection

    async def _give_back(self, connection: AbstractConnection) -> None:
        if self._closed:
            await connection.disconnect()
        else:
            self._free.append(connection)

    async def script_load(self, source: str) -> None:
        await self.execute_command("SCRIPT", "LOAD", source)

    def idle_connections(self) -> list[AbstractConnection]:
        return list(self._free)

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their command ends."""
        self._closed = True
        while self._free:
            await self._free.pop().disconnect()


async def _read_reply(connection: AbstractConnection) -> Any:
    """One reply; an error reply is a whole answer, returned as its exception, and leaves the
    connection in step for the next."""
    try:
        return await connection.read_response()
    except ResponseError as error:
        return error
