"""Network faults a real server cannot produce on its own, made in the test's event loop.

- :class:`SilencingProxy` forwards TCP to a server until :meth:`~SilencingProxy.silence`: from
  then on the connections open at that moment carry nothing either way yet stay open, the way
  a NAT gateway or load balancer leaves a connection it dropped while it was idle (no FIN, no
  RST). Connections opened afterwards work.
- :func:`accept_and_close` listens and closes every connection at once, the way a proxy in
  front of a dead node behaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class SilencingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"valkey://{host}:{port}"

    async def start(self) -> SilencingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        sink.close()

    def silence(self) -> None:
        """Stop forwarding on every open connection, leaving the sockets open."""
        for pump in self._pumps:
            pump.cancel()

    async def aclose(self) -> None:
        self.silence()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def accept_and_close() -> AsyncIterator[tuple[str, int]]:
    """An address whose listener accepts every connection and closes it at once."""

    async def close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    try:
        host, port = server.sockets[0].getsockname()[:2]
        yield host, port
    finally:
        server.close()
        await server.wait_closed()
