"""A TCP proxy that gives Valkey replicas a replication lag on loopback (failover benchmark).

    python lagproxy.py LAG_MS LISTEN_PORT:TARGET_PORT [...]

Listens on each ``LISTEN_PORT`` (a node's ``cluster-announce-port``, so clients and replicas
reach the node through it) and forwards to ``TARGET_PORT`` (the node). Everything passes at
once, except what a primary sends on a replication link (a connection on which the other side
sent ``REPLCONF`` or ``PSYNC``): that is held ``LAG_MS`` milliseconds first. WAIT then takes
the lag too, as the replica acknowledges only what it received.

On loopback the kernel hands written bytes to the other socket at once, so a SIGKILLed
primary loses nothing it had written to its replica's socket; a real crash also loses what was
still on its way. ``crash LISTEN_PORT`` on stdin models that: every connection through that
port is reset at once, the bytes still held are dropped, and the port stops listening, so
connections are refused as by a node that is down. ``revive LISTEN_PORT`` listens again (once
the node is restarted). Prints ``ready`` when listening, then ``crashed LISTEN_PORT`` and
``revived LISTEN_PORT`` when done. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque

HOST = "127.0.0.1"
CHUNK = 1 << 16


class Connection:
    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        lag: float,
    ) -> None:
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = server
        self.lag = lag
        self.replication = False
        self.held: deque[tuple[float, bytes]] = deque()
        self.more = asyncio.Event()
        self.drained = asyncio.Event()  # set whenever nothing is held
        self.drained.set()
        self.tasks = [
            asyncio.ensure_future(self._up()),
            asyncio.ensure_future(self._down()),
            asyncio.ensure_future(self._release()),
        ]

    async def _up(self) -> None:
        """Client to server, at once; notices a replication link."""
        while data := await self.client_reader.read(CHUNK):
            if not self.replication and (b"REPLCONF" in data or b"PSYNC" in data):
                self.replication = True
            self.server_writer.write(data)
            await self.server_writer.drain()
        self.close()

    async def _down(self) -> None:
        """Server to client: at once, or held ``lag`` seconds on a replication link."""
        while data := await self.server_reader.read(CHUNK):
            if self.replication and self.lag > 0:
                self.held.append((time.monotonic() + self.lag, data))
                self.drained.clear()
                self.more.set()
            else:
                self.client_writer.write(data)
                await self.client_writer.drain()
        # The server closed: what it had sent still arrives (only a crash drops it).
        await self.drained.wait()
        self.close()

    async def _release(self) -> None:
        while True:
            while not self.held:
                self.more.clear()
                await self.more.wait()
            due, data = self.held[0]
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.held.popleft()
            self.client_writer.write(data)
            await self.client_writer.drain()
            if not self.held:
                self.drained.set()

    def close(self) -> None:
        for writer in (self.client_writer, self.server_writer):
            writer.close()
        for task in self.tasks:
            task.cancel()

    def crash(self) -> None:
        """Reset both sides now; the held bytes are never delivered."""
        self.held.clear()
        for writer in (self.client_writer, self.server_writer):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class Listener:
    def __init__(self, listen: int, target: int, lag: float) -> None:
        self.listen = listen
        self.target = target
        self.lag = lag
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, HOST, self.listen)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            server = await asyncio.open_connection(HOST, self.target)
        except OSError:
            writer.transport.abort()  # the node is down
            return
        connection = Connection((reader, writer), server, self.lag)
        self.connections.add(connection)
        with contextlib.suppress(BaseException):
            await asyncio.gather(*connection.tasks, return_exceptions=True)
        self.connections.discard(connection)
        connection.close()

    def crash(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for connection in list(self.connections):
            connection.crash()
        self.connections.clear()


async def main() -> int:
    lag = float(sys.argv[1]) / 1000
    listeners: dict[int, Listener] = {}
    for pair in sys.argv[2:]:
        listen, _, target = pair.partition(":")
        listeners[int(listen)] = Listener(int(listen), int(target), lag)
    for listener in listeners.values():
        await listener.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := await stdin.readline():
        command, _, argument = line.decode().strip().partition(" ")
        if command == "crash":
            listeners[int(argument)].crash()
            print(f"crashed {argument}", flush=True)
        elif command == "revive":
            await listeners[int(argument)].start()
            print(f"revived {argument}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
