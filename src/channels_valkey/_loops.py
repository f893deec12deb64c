"""The core layer's connections and reader tasks on one event loop.

One :class:`LoopResources` per event loop (see ``_per_loop`` for why, and for how it is
closed with its loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from ._client import QueueServer
from ._hosts import Host
from ._per_loop import LoopOwned
from ._reader import QueueReader
from ._servers import open_server


class LoopResources(LoopOwned):
    """The shards and readers of one layer on one event loop; one owner closes them all."""

    def __init__(self, hosts: Sequence[Host], on_closed: Callable[[], None]) -> None:
        self.shards: list[QueueServer] = [open_server(host) for host in hosts]
        self.readers: dict[tuple[int, str], QueueReader] = {}
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

    def _abandon(self) -> None:
        for reader in self.readers.values():
            reader.abandon()
        for shard in self.shards:
            shard.abandon()

    async def _release(self) -> None:
        """Stop the readers (they hand on what they popped), then close the connections."""
        await asyncio.gather(*(reader.stop() for reader in list(self.readers.values())))
        await asyncio.gather(*(shard.aclose() for shard in self.shards))
