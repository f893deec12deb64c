"""The core layer's connections and tasks on one event loop.

One :class:`LoopResources` per event loop (see ``_common.per_loop`` for why, and for how it is
closed with its loop). Besides the readers, it owns the layer's heartbeat when this is the loop
the layer receives on (see ``_queue.liveness``), and a read of the live processes that concurrent
group sends share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from channels_valkey._common.hosts import Host
from channels_valkey._common.per_loop import LoopOwned, quiet

from .reader import QueueReader
from .servers import open_server
from .shard import QueueServer


class LoopResources(LoopOwned):
    """The shards and readers of one layer on one event loop; one owner closes them all."""

    def __init__(self, hosts: Sequence[Host], on_closed: Callable[[], None]) -> None:
        self.shards: list[QueueServer] = [open_server(host) for host in hosts]
        self.readers: dict[tuple[int, str], QueueReader] = {}
        self.loop = asyncio.get_running_loop()
        self._heartbeat: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[object] | None = None
        super().__init__(on_closed)

    def __repr__(self) -> str:
        shards = ", ".join(repr(shard) for shard in self.shards)
        return f"<LoopResources [{shards}] readers={len(self.readers)}>"

    def reader(self, shard_index: int, queue: str) -> QueueReader | None:
        """The running reader of ``queue`` on that shard, if any."""
        reader = self.readers.get((shard_index, queue))
        return reader if reader is not None and reader.running else None

    def readers_of(self, queue: str) -> list[QueueReader]:
        return [reader for (_, key), reader in self.readers.items() if key == queue]

    def add_reader(self, shard_index: int, reader: QueueReader) -> None:
        self.readers[(shard_index, reader.queue)] = reader
        reader.task.add_done_callback(lambda _: self._forget(shard_index, reader))

    def _forget(self, shard_index: int, reader: QueueReader) -> None:
        if self.readers.get((shard_index, reader.queue)) is reader:
            del self.readers[(shard_index, reader.queue)]

    @property
    def heartbeating(self) -> bool:
        """Whether this loop runs the layer's heartbeat (never once the loop is closed)."""
        return (
            self._heartbeat is not None and not self._heartbeat.done() and not self.loop.is_closed()
        )

    def start_heartbeat(self, heartbeat: Coroutine[Any, Any, None]) -> None:
        self._heartbeat = self.loop.create_task(heartbeat, name="channels_valkey heartbeat")

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat from any thread: the layer now receives on another loop, which
        heartbeats instead. A loop closed meanwhile runs nothing anyway."""
        task = self._heartbeat
        if task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self.loop.call_soon_threadsafe(task.cancel)

    def refresh(self, make: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Start a read of the live processes unless one is under way on this loop; it runs
        as a task of this loop, so it ends with the loop like the others."""
        if self._refresh is None or self._refresh.done():
            self._refresh = self.loop.create_task(make(), name="channels_valkey liveness read")

    def _abandon(self) -> None:
        for task in (self._heartbeat, self._refresh):
            if task is not None:
                quiet(task)
        for reader in self.readers.values():
            reader.abandon()
        for shard in self.shards:
            shard.abandon()

    async def _release(self) -> None:
        """Stop the tasks (readers hand on what they popped), then close the connections."""
        tasks = [task for task in (self._heartbeat, self._refresh) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(reader.stop() for reader in list(self.readers.values())))
        await asyncio.gather(*(shard.aclose() for shard in self.shards))
