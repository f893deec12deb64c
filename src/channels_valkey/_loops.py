"""Per-event-loop ownership of connections and reader tasks, closed with the loop.

valkey-py connections belong to the event loop that opened them, and Django code often runs
the layer on short-lived loops (``async_to_sync`` in a view, a signal or a Celery task starts
and closes a loop per call). Each loop therefore gets its own :class:`LoopResources`.

Closing without the user calling ``close_pools()``: every loop gets a *keeper* task that waits
forever. ``asyncio.run()`` and ``async_to_sync`` cancel all remaining tasks before they close
their loop, so the keeper's cancellation is the signal to stop this loop's readers and close
its connections while the loop can still run the I/O. No monkeypatching of ``loop.close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Sequence
from functools import partial

from ._client import QueueServer
from ._hosts import Host
from ._reader import QueueReader
from ._servers import open_server


class LoopResources:
    """The shards and readers of one layer on one event loop; one owner closes them all."""

    def __init__(self, hosts: Sequence[Host], on_closed: Callable[[], None]) -> None:
        self.shards: list[QueueServer] = [open_server(host) for host in hosts]
        self.readers: dict[tuple[int, str], QueueReader] = {}
        self._on_closed = on_closed
        self._closing: asyncio.Future[None] | None = None
        #: True while the keeper waits; False once its cancellation has started the close.
        self._keeping = True
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep(), name="channels_valkey loop keeper"
        )

    async def _keep(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self._keeping = False
            if self._closing is None:  # else close() is already running, and cancelled us
                await self.aclose()

    def reader(self, shard_index: int, queue: str) -> QueueReader | None:
        """The running reader of ``queue`` on that shard, if any."""
        reader = self.readers.get((shard_index, queue))
        return reader if reader is not None and reader.running else None

    def add_reader(self, shard_index: int, reader: QueueReader) -> None:
        self.readers[(shard_index, reader.queue)] = reader
        reader.task.add_done_callback(lambda _: self._forget(shard_index, reader))

    def _forget(self, shard_index: int, reader: QueueReader) -> None:
        if self.readers.get((shard_index, reader.queue)) is reader:
            del self.readers[(shard_index, reader.queue)]

    async def aclose(self) -> None:
        """Stop the readers (they hand on what they popped), then close the connections."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._on_closed()
        await asyncio.gather(*(reader.stop() for reader in list(self.readers.values())))
        await asyncio.gather(*(shard.aclose() for shard in self.shards))
        if self._keeping:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper


class LoopRegistry:
    """Finds, or opens, the resources of the running loop."""

    def __init__(self, hosts: Sequence[Host]) -> None:
        self._hosts = hosts
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopResources] = (
            weakref.WeakKeyDictionary()
        )

    def current(self) -> LoopResources:
        loop = asyncio.get_running_loop()
        resources = self._by_loop.get(loop)
        if resources is None:
            # A weak reference: the entry must not keep its own key (the loop) alive.
            resources = LoopResources(self._hosts, partial(self._forget, weakref.ref(loop)))
            self._by_loop[loop] = resources
        return resources

    def _forget(self, loop: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        alive = loop()
        if alive is not None:
            self._by_loop.pop(alive, None)

    async def close_current(self) -> None:
        resources = self._by_loop.get(asyncio.get_running_loop())
        if resources is not None:
            await resources.aclose()
